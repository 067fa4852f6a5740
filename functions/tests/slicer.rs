//! What 3D Slicer's MONAI Label module does, replayed request by request (login off;
//! `../shared/reference/clients.md`, "3D Slicer module"): info, next sample, the image
//! by `path` or `/datastore/image`, auto segmentation with `result_extension=.nrrd`,
//! the label saved back as `.nrrd`, training started and stopped, and the stop's reply
//! read the way Slicer reads it. The server keeps a studies folder as the local binary
//! does, so the paths it hands out are files Slicer can open.

mod common;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use common::{Reply, Req};
use medlabel_events::Info;
use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::datastore::{StudiesFolder, WriteContext};
use medlabel_events::event::JobKind;
use medlabel_events::store::EventStore;
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_functions::model_import::publish_model_folder;
use medlabel_functions::runner::{
    InferRequest, InferResult, NoRunner, Runner, RunnerError, RunnerInfo, TaskQuery,
};
use medlabel_functions::state::{AppState, Config};
use medlabel_imaging::DataType;
use serde_json::{Value, json};

const MODEL: &str = "segmentation_spleen";

/// The event-driven runner for models and jobs (no GPU runner process: a training job
/// stays `SUBMITTED`), with inference done here: a threshold of the image, written as
/// gzip NRRD when `.nrrd` is asked for, as MONAI Label's writer does by default.
struct SlicerRunner {
    jobs: Arc<dyn Runner>,
}

#[async_trait]
impl Runner for SlicerRunner {
    async fn describe(&self) -> Result<RunnerInfo, RunnerError> {
        self.jobs.describe().await
    }

    async fn infer(&self, request: InferRequest) -> Result<InferResult, RunnerError> {
        let failed = |e: medlabel_imaging::ImageError| RunnerError::Failed(e.to_string());
        let image = medlabel_imaging::io::read_volume(&request.image).map_err(failed)?;
        let mask = medlabel_imaging::Volume {
            data: image
                .data
                .iter()
                .map(|&v| f32::from(u8::from(v > 100.0)))
                .collect(),
            ..image
        };
        let nrrd = request.params.get("result_extension") == Some(&json!(".nrrd"));
        let (bytes, file_name) = if nrrd {
            let bytes = medlabel_imaging::nrrd::write_nrrd_bytes(&mask, DataType::U8, true);
            (bytes.map_err(failed)?, "result.nrrd")
        } else {
            let bytes = medlabel_imaging::nifti::write_nifti_bytes(&mask, DataType::U8, true);
            (bytes.map_err(failed)?, "result.nii.gz")
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        let mut params = Info::new();
        params.insert("label_names".into(), json!({"background": 0, "spleen": 1}));
        Ok(InferResult {
            file: Some(file.into_temp_path()),
            file_name: file_name.into(),
            params,
        })
    }

    async fn start(
        &self,
        ctx: &WriteContext,
        kind: JobKind,
        name: &str,
        params: Info,
    ) -> Result<Value, RunnerError> {
        self.jobs.start(ctx, kind, name, params).await
    }

    async fn status(&self, kind: JobKind, query: TaskQuery) -> Result<Value, RunnerError> {
        self.jobs.status(kind, query).await
    }

    async fn stop(&self, ctx: &WriteContext, kind: JobKind) -> Result<Option<Value>, RunnerError> {
        self.jobs.stop(ctx, kind).await
    }
}

/// A local server's state over `studies`: the log and blobs in `studies/.medlabel`, the
/// starter model published, the folder projected and followed.
async fn serve(studies: &Path) -> AppState {
    let home = studies.join(".medlabel");
    std::fs::create_dir_all(home.join("tmp")).unwrap();
    let store = SqliteEventStore::open(home.join("events.db")).unwrap();
    let blobs = FolderBlobStore::open_with_inline(home.join("blobs"), &store).unwrap();
    let config = Config {
        temp_dir: home.join("tmp"),
        max_upload_bytes: 8 << 20,
        ..Config::default()
    };
    let state = AppState::open_with(
        Arc::new(store),
        Arc::new(blobs.clone()),
        Arc::new(medlabel_events::clock::SystemClock),
        Arc::new(NoRunner),
        config,
    )
    .await
    .unwrap()
    .with_model_runner(None);
    let starter = common::manifest_dir()
        .join("../gpu-runner/models")
        .join(MODEL);
    publish_model_folder(
        &state.models,
        state.datastore.blob_store().as_ref(),
        &starter,
    )
    .await
    .unwrap();
    let store: Arc<dyn EventStore> = state.datastore.event_store().clone();
    let folder = Arc::new(StudiesFolder::open(studies, blobs).unwrap());
    let projected = folder.rebuild(&store, &[]).await.unwrap();
    folder
        .clone()
        .follow_in_background(store, projected)
        .unwrap();
    let runner = Arc::new(SlicerRunner {
        jobs: state.runner.clone(),
    });
    AppState { runner, ..state }.with_studies_folder(folder)
}

async fn send(state: &AppState, req: Req) -> Reply {
    common::send(medlabel_functions::app(state.clone()), req.request()).await
}

#[tokio::test]
async fn slicer_module_flow() {
    let studies = tempfile::tempdir().unwrap();
    let ct = common::ct_volume(3);
    let state = serve(studies.path()).await;
    // Uploaded the way Slicer uploads a volume loaded from elsewhere; the projection
    // puts it in the studies folder.
    let uploaded = send(
        &state,
        Req::new("PUT", "/datastore/?image=spleen_3").multipart(
            &[("params", r#"{"client_id": "slicer"}"#)],
            &[("file", "spleen_3.nii.gz", &ct)],
        ),
    )
    .await;
    assert_eq!(uploaded.status, 200, "{}", uploaded.detail());

    // 2. /info/: no truthy top-level `config`, the model's labels, strategies, trainers.
    let info = send(&state, Req::new("GET", "/info/")).await.json();
    assert!(
        info.get("config")
            .is_none_or(|c| c.is_null() || c == &json!({}))
    );
    assert_eq!(info["models"][MODEL]["labels"], json!({"spleen": 1}));
    assert_eq!(info["labels"], json!(["spleen"]));
    assert!(info["strategies"]["random"].is_object(), "{info}");
    assert!(info["trainers"][MODEL].is_object(), "{info}");

    // 3. Next sample: `path` is the image's file in the studies folder, which Slicer
    //    loads directly when it exists; else it downloads /datastore/image.
    let sample = send(
        &state,
        Req::new("POST", "/activelearning/random").json(json!({"client_id": "slicer"})),
    )
    .await
    .json();
    assert_eq!(sample["id"], "spleen_3");
    let path = studies
        .path()
        .canonicalize()
        .unwrap()
        .join("spleen_3.nii.gz");
    assert_eq!(sample["path"], json!(path.to_str().unwrap()));
    assert_eq!(std::fs::read(&path).unwrap(), ct);
    let checksum = format!("SHA256:{}", sha256_hex(&ct));
    assert_eq!(sample["checksum"], checksum);
    let download = send(&state, Req::new("GET", "/datastore/image?image=spleen_3")).await;
    assert_eq!(download.body, ct);

    // 5. Auto segmentation as Slicer asks for it: `.nrrd`, uint8, no `result_compress`
    //    (MONAI Label then writes raw NRRD). Slicer reads `label_names` without
    //    `background`, else the model's labels.
    let params = json!({"result_extension": ".nrrd", "result_dtype": "uint8",
                        "client_id": "slicer"});
    let inferred = send(
        &state,
        Req::new("POST", &format!("/infer/{MODEL}?image=spleen_3"))
            .multipart(&[("params", &params.to_string())], &[]),
    )
    .await;
    assert_eq!(inferred.status, 200, "{}", inferred.detail());
    let content_type = inferred.header("content-type").unwrap().to_owned();
    let parts = common::multipart_parts(&content_type, &inferred.body);
    let (file_headers, nrrd) = parts
        .iter()
        .find(|(headers, _)| headers.contains("filename="))
        .expect("a file part");
    assert!(file_headers.contains(".nrrd"), "{file_headers}");
    let header = String::from_utf8_lossy(&nrrd[..nrrd.len().min(400)]).into_owned();
    assert!(header.contains("encoding: raw"), "{header}");
    let (_, meta) = parts
        .iter()
        .find(|(headers, _)| !headers.contains("filename="))
        .expect("a params part");
    let meta: Value = serde_json::from_slice(meta).unwrap();
    assert_eq!(meta["label_names"], json!({"spleen": 1}));
    assert_eq!(meta["centroids"], json!({}));

    // OHIF asks for `result_compress: false` too; asking for it gives gzip NRRD.
    let compressed = json!({"result_extension": ".nrrd", "result_compress": true});
    let gz = send(
        &state,
        Req::new(
            "POST",
            &format!("/infer/{MODEL}?image=spleen_3&output=image"),
        )
        .multipart(&[("params", &compressed.to_string())], &[]),
    )
    .await;
    assert_eq!(gz.status, 200, "{}", gz.detail());
    let header = String::from_utf8_lossy(&gz.body[..gz.body.len().min(400)]).into_owned();
    assert!(header.contains("encoding: gzip"), "{header}");
    let (raw, gzip) = (
        medlabel_imaging::nrrd::read_nrrd_bytes(nrrd).unwrap(),
        medlabel_imaging::nrrd::read_nrrd_bytes(&gz.body).unwrap(),
    );
    assert_eq!(raw.data, gzip.data);

    // 7. Save the label back as `.nrrd` (tag defaults to `final`) with label_info.
    let label_params = json!({"label_info": [{"name": "spleen", "idx": 1}],
                              "client_id": "slicer"});
    let saved = send(
        &state,
        Req::new("PUT", "/datastore/label?image=spleen_3").multipart(
            &[("params", &label_params.to_string())],
            &[("label", "spleen_3.nrrd", nrrd)],
        ),
    )
    .await;
    assert_eq!(saved.status, 200, "{}", saved.detail());
    let label_file = path.parent().unwrap().join("labels/final/spleen_3.nrrd");
    let trained = send(&state, Req::new("GET", "/datastore/?output=train")).await;
    assert_eq!(
        trained.json(),
        json!([{"image": path.to_str().unwrap(), "label": label_file.to_str().unwrap()}])
    );
    assert_eq!(&std::fs::read(&label_file).unwrap(), nrrd);

    // 8. Training: started, seen running, stopped; the stop's reply read as Slicer's
    //    `status.get("result", status.get("details", [])[-1])` reads it (eagerly).
    let task = send(
        &state,
        Req::new("POST", &format!("/train/{MODEL}")).json(json!({"max_epochs": 1})),
    )
    .await
    .json();
    assert_eq!(task["status"], "SUBMITTED", "{task}");
    assert!(
        task["id"].is_string() && task["start_ts"].is_string(),
        "{task}"
    );
    let running = send(&state, Req::new("GET", "/train/?check_if_running=true")).await;
    assert_eq!(running.status, 200);
    let stopped = send(&state, Req::new("DELETE", "/train/")).await.json();
    assert_eq!(stopped["status"], "STOPPED", "{stopped}");
    assert!(stopped["start_ts"].is_string() && stopped["end_ts"].is_string());
    let details = stopped["details"].as_array().expect("details");
    let last = details.last().expect("Slicer indexes details[-1]");
    let shown = stopped.get("result").unwrap_or(last);
    assert_eq!(
        shown,
        &json!("stopped before a runner took it"),
        "{stopped}"
    );
    let after = send(&state, Req::new("GET", "/train/")).await.json();
    assert_eq!(after["status"], "STOPPED");
    let idle = send(&state, Req::new("GET", "/train/?check_if_running=true")).await;
    assert_ne!(idle.status, 200);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
