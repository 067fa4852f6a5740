//! Inference and task routes with a runner that has a model: a small CPU "model" that
//! mirrors the image's bytes into a mask, so every reply can be checked byte for byte.

mod common;

use medlabel_events::datastore::WriteContext;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::http::StatusCode;
use common::{Harness, Req};
use medlabel_events::Info;
use medlabel_events::event::JobKind;
use medlabel_functions::runner::{
    InferRequest, InferResult, Runner, RunnerError, RunnerInfo, TaskQuery,
};
use serde_json::{Value, json};

/// A runner with one model, `mirror`, and one-at-a-time training tasks.
#[derive(Default)]
struct MirrorRunner {
    tasks: Mutex<Vec<Value>>,
}

#[async_trait]
impl Runner for MirrorRunner {
    async fn describe(&self) -> Result<RunnerInfo, RunnerError> {
        let mut info = RunnerInfo::default();
        info.models.insert(
            "mirror".into(),
            json!({"type": "segmentation", "labels": {"spleen": 1}, "dimension": 3,
                   "description": "mirrors bytes", "config": {}}),
        );
        info.trainers
            .insert("mirror".into(), json!({"description": "no-op"}));
        Ok(info)
    }

    async fn infer(&self, request: InferRequest) -> Result<InferResult, RunnerError> {
        if request.model != "mirror" {
            return Err(RunnerError::UnknownModel(request.model));
        }
        let mut bytes =
            std::fs::read(&request.image).map_err(|e| RunnerError::Failed(e.to_string()))?;
        bytes.reverse();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        let mut params = Info::new();
        params.insert("label_names".into(), json!({"spleen": 1}));
        params.insert("size".into(), json!(bytes.len()));
        params.insert(
            "echo".into(),
            request.params.get("echo").cloned().unwrap_or(Value::Null),
        );
        Ok(InferResult {
            file: Some(file.into_temp_path()),
            file_name: "mask.nii.gz".into(),
            params,
        })
    }

    async fn start(
        &self,
        _: &WriteContext,
        kind: JobKind,
        name: &str,
        params: Info,
    ) -> Result<Value, RunnerError> {
        if name != "mirror" {
            return Err(RunnerError::UnknownModel(name.into()));
        }
        let mut tasks = self.tasks.lock().unwrap();
        if tasks.iter().any(|t| t["status"] == "RUNNING") {
            return Err(RunnerError::AlreadyRunning(kind));
        }
        let task =
            json!({"id": format!("t{}", tasks.len()), "status": "RUNNING", "request": params});
        tasks.push(task.clone());
        Ok(task)
    }

    async fn status(&self, kind: JobKind, query: TaskQuery) -> Result<Value, RunnerError> {
        let tasks = self.tasks.lock().unwrap();
        if query.all {
            return Ok(Value::Array(tasks.clone()));
        }
        if query.check_if_running {
            return tasks
                .iter()
                .find(|t| t["status"] == "RUNNING")
                .cloned()
                .ok_or(RunnerError::NotRunning(kind));
        }
        tasks.last().cloned().ok_or(RunnerError::NoTasks(kind))
    }

    async fn stop(&self, _: &WriteContext, _: JobKind) -> Result<Option<Value>, RunnerError> {
        let mut tasks = self.tasks.lock().unwrap();
        Ok(tasks
            .iter_mut()
            .find(|t| t["status"] == "RUNNING")
            .map(|t| {
                t["status"] = json!("STOPPED");
                t.clone()
            }))
    }
}

async fn harness() -> Harness {
    let mut h = Harness::new().await;
    h.state.runner = Arc::new(MirrorRunner::default());
    h
}

static CT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| common::ct_volume(1));

fn mirrored() -> Vec<u8> {
    CT.as_slice().iter().rev().copied().collect()
}

#[tokio::test]
async fn infer_replies_in_every_output_and_saves_labels() {
    let h = harness().await;
    h.send(
        Req::new("PUT", "/datastore/?image=ct")
            .multipart(&[], &[("file", "ct.nii.gz", CT.as_slice())])
            .request(),
    )
    .await;
    let info = h.send(Req::new("GET", "/info/").request()).await.json();
    assert_eq!(info["labels"], json!(["spleen"]));
    assert!(info["models"]["mirror"].is_object());

    // The Python client's request: multipart params, no output.
    let reply = h
        .send(
            Req::new("POST", "/infer/mirror?image=ct")
                .multipart(&[("params", r#"{"echo":"hi","client_id":"py"}"#)], &[])
                .request(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let content_type = reply.header("content-type").unwrap().to_owned();
    assert!(content_type.starts_with("multipart/form-data; boundary="));
    let parts = common::multipart_parts(&content_type, &reply.body);
    assert_eq!(parts.len(), 2);
    assert!(parts[0].0.contains("name=\"params\""));
    let params: Value = serde_json::from_slice(&parts[0].1).unwrap();
    assert_eq!(params["echo"], "hi");
    assert!(
        parts[1]
            .0
            .contains("name=\"image\"; filename=\"mask.nii.gz\"")
    );
    assert_eq!(parts[1].1, mirrored());

    let json_reply = h
        .send(Req::new("POST", "/infer/mirror?image=ct&output=json").request())
        .await
        .json();
    assert_eq!(json_reply["size"], CT.as_slice().len());
    let image = h
        .send(Req::new("POST", "/infer/mirror?image=ct&output=image").request())
        .await;
    assert_eq!(image.body, mirrored());
    assert_eq!(
        image.header("content-disposition"),
        Some("attachment; filename=\"mask.nii.gz\"")
    );

    // save_label stores the mask under label_tag (default original) with its model.
    let head = h.head().await;
    h.send(
        Req::new("POST", "/infer/mirror?image=ct&output=json")
            .multipart(&[("params", r#"{"save_label":true}"#)], &[])
            .request(),
    )
    .await;
    assert_eq!(h.head().await, head + 1);
    let label = h
        .send(Req::new("GET", "/datastore/label?label=ct&tag=original").request())
        .await;
    assert_eq!(label.body, mirrored());
    let label_info = h
        .send(Req::new("GET", "/datastore/label/info?label=ct&tag=original").request())
        .await
        .json();
    assert_eq!(label_info["model"], "mirror");
    assert_eq!(label_info["params"]["size"], CT.as_slice().len());
}

#[tokio::test]
async fn infer_takes_sessions_and_uploaded_files() {
    let h = harness().await;
    let other = common::ct_volume(2);
    let session = h
        .send(
            Req::new("PUT", "/session/")
                .multipart(&[], &[("files", "s.nii.gz", &other)])
                .request(),
        )
        .await
        .json();
    let id = session["session_id"].as_str().unwrap();
    let reply = h
        .send(
            Req::new(
                "POST",
                &format!("/infer/mirror?session_id={id}&output=image"),
            )
            .request(),
        )
        .await;
    assert_eq!(reply.body, other.iter().rev().copied().collect::<Vec<_>>());

    let reply = h
        .send(
            Req::new("POST", "/infer/mirror?image=&output=image")
                .multipart(
                    &[("params", "{}")],
                    &[("file", "/abs/path/up.nii.gz", CT.as_slice())],
                )
                .request(),
        )
        .await;
    assert_eq!(reply.body, mirrored());

    let head = h.head().await;
    let none = h.send(Req::new("POST", "/infer/mirror").request()).await;
    assert_eq!(none.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = h
        .send(Req::new("POST", "/infer/mirror?image=missing").request())
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(h.head().await, head);
}

#[tokio::test]
async fn train_tasks_run_one_at_a_time() {
    let h = harness().await;
    let started = h
        .send(
            Req::new("POST", "/train/mirror")
                .json(json!({"max_epochs": 1}))
                .request(),
        )
        .await;
    assert_eq!(started.json()["request"]["max_epochs"], 1);
    let busy = h.send(Req::new("POST", "/train/mirror").request()).await;
    assert_eq!(busy.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(busy.detail(), "++++++++++ Train Task is Already Running");
    let running = h
        .send(Req::new("GET", "/train/?check_if_running=true").request())
        .await;
    assert_eq!(running.json()["status"], "RUNNING");
    let stopped = h.send(Req::new("DELETE", "/train/").request()).await;
    assert_eq!(stopped.json()["status"], "STOPPED");
    let idle = h
        .send(Req::new("GET", "/train/?check_if_running=true").request())
        .await;
    assert_eq!(idle.status, StatusCode::NOT_FOUND);
    assert_eq!(idle.detail(), "No Train Tasks are currently Running");
    let all = h
        .send(
            Req::new("POST", "/train/")
                .json(json!({"mirror": {"max_epochs": 3}}))
                .request(),
        )
        .await;
    assert_eq!(all.json()["mirror"]["result"]["request"]["max_epochs"], 3);
    assert_eq!(all.json()["mirror"]["detail"], Value::Null);
}

#[tokio::test]
async fn whole_slide_requests_are_checked_then_refused_without_recording_anything() {
    let h = harness().await;
    h.send(
        Req::new("PUT", "/datastore/?image=ct")
            .multipart(&[], &[("file", "ct.nii.gz", CT.as_slice())])
            .request(),
    )
    .await;
    let head = h.head().await;
    let region = json!({"level": 1, "location": [512, 256], "size": [1024, 1024], "extra": 1});
    let cases = [
        // A served model that reads volumes, not slides: why, in MONAI Label's shape.
        (
            Req::new("POST", "/infer/wsi/mirror?image=ct&output=dsa").json(region.clone()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no whole-slide reader",
        ),
        (
            Req::new("POST", "/infer/wsi_v2/mirror?image=ct")
                .multipart(&[("wsi", &region.to_string())], &[]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "level-1 region at [512, 256]",
        ),
        (
            Req::new("POST", "/infer/wsi/nope?image=ct").json(region.clone()),
            StatusCode::NOT_FOUND,
            "Model 'nope' NOT Found",
        ),
        (
            Req::new("POST", "/infer/wsi/mirror?image=ct&output=xml").json(region.clone()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "'asap', 'dsa' or 'json'",
        ),
        (
            Req::new("POST", "/infer/wsi/mirror?image=ct").json(json!({"size": [0, 5]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "size and tile_size must be positive",
        ),
        (
            Req::new("POST", "/infer/wsi/mirror?image=ct").json(json!({"location": "top"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid WSIInput",
        ),
        (
            Req::new("POST", "/infer/wsi_v2/mirror?image=ct")
                .multipart(&[("wsi", "{not json")], &[]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "wsi",
        ),
        (
            Req::new("POST", "/infer/wsi/mirror?image=missing").json(region.clone()),
            StatusCode::NOT_FOUND,
            "missing",
        ),
        (
            Req::new("POST", "/infer/wsi/mirror").json(region.clone()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Neither Image nor File",
        ),
    ];
    for (request, status, detail) in cases {
        let reply = h.send(request.request()).await;
        assert_eq!(reply.status, status, "{reply:?}");
        let text = reply.json()["detail"].to_string();
        assert!(text.contains(detail), "{detail}: {text}");
        // The Lambda path answers the same.
        assert_eq!(h.send_lambda(&request).await.status, status);
    }
    assert_eq!(h.head().await, head, "a refused request records nothing");
}
