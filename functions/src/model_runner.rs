//! The runner port over the event log and the GPU runner's HTTP contract.
//!
//! - Models are what `ModelPublished` events say (weights and config are blobs), so
//!   `/info/` is a fold of the log like everything else.
//! - Training, epistemic scoring and batch inference are `JobRequested` events; the GPU
//!   runner's worker claims and runs them and reports back with events. A training
//!   request pins the exact label versions it will train on, and the log position.
//! - `dice`, `sum` and `agreement` scoring need no model and run here, at once.
//! - Interactive inference sends the runner's `POST /invocations` request to an
//!   [`InferenceEndpoint`]: locally a child process on loopback that reads the image's
//!   path and writes the mask into the spool folder; in the cloud a SageMaker endpoint
//!   serving the runner image, which fetches the image (and the request's `label`
//!   upload, if any) from its presigned URL and sends the mask back inline. Either way the mask ends up as a file in the spool folder.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use medlabel_events::blob::read_to_vec;
use medlabel_events::datastore::{Datastore, WriteContext};
use medlabel_events::event::{JobKind, LabelVersionRef};
use medlabel_events::jobs::{JobError, Jobs};
use medlabel_events::models::{ModelError, Models, PublishedModel};
use medlabel_events::pinned::{self, PinnedLabels};
use medlabel_events::{Info, ModelName, Tag};
use serde_json::{Value, json};

use crate::runner::{InferRequest, InferResult, Runner, RunnerError, RunnerInfo, TaskQuery};
use crate::scoring;

/// Where the local runner child listens and the secret it wants, as its supervisor
/// last saw it: empty while the child starts or restarts.
#[derive(Debug, Default)]
pub struct LocalRunner {
    current: std::sync::RwLock<Option<LocalAddress>>,
}

/// One start of the local runner child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddress {
    /// Base URL, e.g. `http://127.0.0.1:41873`.
    pub url: String,
    /// The per-start secret it requires as a bearer token.
    pub secret: String,
}

impl LocalRunner {
    /// A runner already listening at `address` (no supervisor moves it).
    pub fn at(address: LocalAddress) -> Self {
        let runner = Self::default();
        runner.set(Some(address));
        runner
    }

    pub fn set(&self, address: Option<LocalAddress>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = address;
    }

    pub fn get(&self) -> Option<LocalAddress> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Where interactive inference runs: a server speaking the runner's HTTP contract.
#[derive(Debug, Clone)]
pub enum InferenceEndpoint {
    /// The local runner child, sharing this machine's file system: it reads images and
    /// writes masks by path.
    Local(Arc<LocalRunner>),
    /// A SageMaker real-time endpoint of this name, called with `InvokeEndpoint`.
    #[cfg(feature = "aws")]
    SageMaker {
        client: aws_sdk_sagemakerruntime::Client,
        name: String,
    },
}

/// The runner of a medlabel deployment.
pub struct ModelRunner {
    datastore: Arc<Datastore>,
    jobs: Arc<Jobs>,
    models: Arc<Models>,
    /// `None` when no runner serves interactive inference.
    endpoint: Option<InferenceEndpoint>,
    http: reqwest::Client,
    spool: PathBuf,
    /// Model configs by blob hash: blobs never change, so neither do these.
    configs: Mutex<HashMap<String, Value>>,
}

impl ModelRunner {
    pub fn new(
        datastore: Arc<Datastore>,
        jobs: Arc<Jobs>,
        models: Arc<Models>,
        endpoint: Option<InferenceEndpoint>,
        spool: PathBuf,
    ) -> Self {
        Self {
            datastore,
            jobs,
            models,
            endpoint,
            http: reqwest::Client::new(),
            spool,
            configs: Mutex::new(HashMap::new()),
        }
    }

    async fn config(&self, blob: &medlabel_events::BlobRef) -> Value {
        if let Some(config) = self.configs.lock().expect("config cache").get(&blob.sha256) {
            return config.clone();
        }
        let config = read_to_vec(self.datastore.blob_store().as_ref(), blob)
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .unwrap_or(Value::Null);
        self.configs
            .lock()
            .expect("config cache")
            .insert(blob.sha256.clone(), config.clone());
        config
    }

    /// Every image with a final label, at its latest version, pinned as a blob with
    /// the log position the list was read at.
    async fn pin_final_labels(&self) -> Result<PinnedLabels, RunnerError> {
        let (labels, position) = self.final_labels().await?;
        pinned::pin(self.datastore.blob_store().as_ref(), &labels, position)
            .await
            .map_err(failed)
    }

    /// Every image with a final label at its latest version, and the view's position.
    async fn final_labels(&self) -> Result<(Vec<LabelVersionRef>, u64), RunnerError> {
        let view = self.datastore.view().await.map_err(failed)?;
        let labels = view
            .labeled_images(&Tag::final_tag(), &[])
            .into_iter()
            .filter_map(|image| {
                // A labelled DICOMweb series whose series changed since awaits its fetch.
                let record = view.image(&image).filter(|r| !r.awaits_fetch())?;
                let label = record.labels.get(&Tag::final_tag())?.latest();
                Some(LabelVersionRef {
                    image,
                    tag: Tag::final_tag(),
                    version: label.version,
                    image_blob: record.blob.clone(),
                    label_blob: label.blob.clone(),
                })
            })
            .collect();
        Ok((labels, view.position))
    }

    /// The current version of model `name`, from a view caught up with the log.
    async fn published(&self, name: &str) -> Result<PublishedModel, RunnerError> {
        let model = ModelName::parse(name).map_err(|_| RunnerError::UnknownModel(name.into()))?;
        self.models.current(&model).await.map_err(model_error)
    }

    async fn model(&self, name: &str) -> Result<ModelName, RunnerError> {
        Ok(self.published(name).await?.model)
    }
}

impl InferenceEndpoint {
    /// Sends one `/invocations` request; returns the runner's status code and JSON reply.
    async fn invoke(
        &self,
        http: &reqwest::Client,
        body: Value,
    ) -> Result<(u16, Value), RunnerError> {
        let unreachable = |err: &dyn std::fmt::Display| {
            RunnerError::Unavailable(format!("the runner is unreachable: {err}"))
        };
        match self {
            InferenceEndpoint::Local(runner) => {
                let address = runner.get().ok_or_else(|| {
                    RunnerError::Unavailable(
                        "the runner is starting; try again in a few seconds".into(),
                    )
                })?;
                let response = http
                    .post(format!("{}/invocations", address.url))
                    .bearer_auth(&address.secret)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|err| unreachable(&err))?;
                let status = response.status().as_u16();
                Ok((status, response.json().await.map_err(failed)?))
            }
            #[cfg(feature = "aws")]
            InferenceEndpoint::SageMaker { client, name } => {
                use aws_sdk_sagemakerruntime::error::{DisplayErrorContext, SdkError};
                use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError;
                let sent = client
                    .invoke_endpoint()
                    .endpoint_name(name)
                    .content_type("application/json")
                    .accept("application/json")
                    .body(aws_sdk_sagemakerruntime::primitives::Blob::new(
                        body.to_string(),
                    ))
                    .send()
                    .await;
                match sent {
                    Ok(output) => {
                        let reply = output.body.map(|b| b.into_inner()).unwrap_or_default();
                        Ok((200, serde_json::from_slice(&reply).map_err(failed)?))
                    }
                    // The container answered with an error: its status and `{"detail"}` body.
                    Err(SdkError::ServiceError(err)) => match err.into_err() {
                        InvokeEndpointError::ModelError(model) => Ok((
                            model
                                .original_status_code
                                .and_then(|code| u16::try_from(code).ok())
                                .unwrap_or(500),
                            model
                                .original_message
                                .as_deref()
                                .and_then(|m| serde_json::from_str(m).ok())
                                .unwrap_or(Value::Null),
                        )),
                        other => Err(unreachable(&DisplayErrorContext(other))),
                    },
                    Err(other) => Err(unreachable(&DisplayErrorContext(other))),
                }
            }
        }
    }
}

fn failed(err: impl std::fmt::Display) -> RunnerError {
    RunnerError::Failed(err.to_string())
}

fn job_error(err: JobError) -> RunnerError {
    match err {
        JobError::AlreadyRunning(kind) => RunnerError::AlreadyRunning(kind),
        JobError::NotFound(kind) => RunnerError::NoTasks(kind),
        JobError::Contended(_) | JobError::RequestIdReused(_) | JobError::Store(_) => failed(err),
    }
}

fn model_error(err: ModelError) -> RunnerError {
    match err {
        ModelError::NotFound(model) => RunnerError::UnknownModel(model),
        ModelError::Contended(_) | ModelError::RequestIdReused(_) | ModelError::Store(_) => {
            failed(err)
        }
    }
}

/// What `/info/` says of a published model.
struct Description {
    kind: &'static str,
    labels: BTreeMap<String, Value>,
    /// 2 for a network on axial slices: Slicer and OHIF then send one slice's clicks.
    dimension: u64,
    text: String,
}

/// A published model's `/info/` `type`, `labels`, `dimension` and description, from
/// its `config.json`: `type` picks the client's panel (segmentation → Auto
/// Segmentation; deepgrow and deepedit → SmartEdit). A deepedit model lists background
/// among its labels, as MONAI Label's does, so Slicer sends background clicks; a
/// deepgrow model segments whatever is clicked and names no labels.
fn describe_model(config: &Value, description: impl Fn(&str) -> String) -> Description {
    // The runner's `ModelConfig::dimension`: only a UNet names `spatial_dims`.
    let dimension = config["network"]["spatial_dims"].as_u64().unwrap_or(3);
    let labels = |keep_background: bool| -> BTreeMap<String, Value> {
        config["labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .filter(|(name, _)| keep_background || name.as_str() != "background")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (kind, labels, what) = match config["type"].as_str() {
        Some("deepgrow") => (
            "deepgrow",
            BTreeMap::new(),
            "DeepGrow: click-guided segmentation of what is clicked",
        ),
        Some("deepedit") => (
            "deepedit",
            labels(true),
            "DeepEdit: automatic segmentation corrected by clicks per label",
        ),
        _ => ("segmentation", labels(false), "UNet segmentation"),
    };
    Description {
        kind,
        labels,
        dimension,
        text: description(&format!("{dimension}D {what}")),
    }
}

/// MONAI Label's trainer config, as `/info/` shows it; requests override it.
fn trainer_config() -> Value {
    json!({
        "name": "train_01", "pretrained": true, "device": ["cuda", "cpu"], "max_epochs": 50,
        "early_stop_patience": -1, "val_split": 0.2, "train_batch_size": 1, "val_batch_size": 1,
        "multi_gpu": false, "gpus": "all", "dataset": ["Dataset"], "dataloader": ["DataLoader"],
        "tracking": ["None"], "tracking_uri": "", "tracking_experiment_name": ""
    })
}

#[async_trait]
impl Runner for ModelRunner {
    async fn describe(&self) -> Result<RunnerInfo, RunnerError> {
        let published: Vec<_> = self
            .models
            .view()
            .await
            .map_err(model_error)?
            .models()
            .cloned()
            .collect();
        let mut info = RunnerInfo {
            scoring: scoring::describe(),
            ..RunnerInfo::default()
        };
        for model in published {
            let config = self.config(&model.config).await;
            let description = |what: &str| {
                format!(
                    "{what}, version {}{}",
                    model.version,
                    model
                        .metric
                        .map(|m| format!(", validation Dice {m:.3}"))
                        .unwrap_or_default()
                )
            };
            let Description {
                kind,
                labels,
                dimension,
                text,
            } = describe_model(&config, description);
            let name = model.model.to_string();
            info.models.insert(
                name.clone(),
                json!({"type": kind, "labels": labels, "dimension": dimension,
                       "description": text, "config": {"device": ["cuda", "cpu"]}}),
            );
            info.trainers.insert(
                name.clone(),
                json!({"description": format!("Train {name}"), "labels": labels, "config": trainer_config()}),
            );
            let stats = self
                .jobs
                .view()
                .await
                .map_err(job_error)?
                .train_stats(&model.model)
                .cloned()
                .unwrap_or_default();
            info.train_stats.insert(name, Value::Object(stats));
        }
        if !info.models.is_empty() {
            info.scoring.insert(
                "epistemic".into(),
                json!({"description": "Epistemic uncertainty (MC dropout) of unlabeled images"}),
            );
        }
        Ok(info)
    }

    async fn infer(&self, request: InferRequest) -> Result<InferResult, RunnerError> {
        let published = self.published(&request.model).await?;
        let endpoint = self.endpoint.as_ref().ok_or_else(|| {
            RunnerError::Unavailable(
                "no runner serves interactive inference in this deployment: it needs a \
                 runner endpoint (InteractiveInference=sagemaker, see docs/deploy.md); \
                 training, scoring and batch inference still run as jobs"
                    .into(),
            )
        })?;
        let ext = request
            .params
            .get("result_extension")
            .and_then(Value::as_str)
            .filter(|e| medlabel_events::Extension::parse(*e).is_ok_and(|e| !e.as_str().is_empty()))
            .unwrap_or(".nii.gz")
            .to_owned();
        let output = tempfile::Builder::new()
            .suffix(&ext)
            .tempfile_in(&self.spool)
            .map_err(failed)?
            .into_temp_path();
        // A blob store without local files (S3) hands out presigned URLs.
        let is_url = |uri: &str| uri.starts_with("https://") || uri.starts_with("http://");
        let image_field = if is_url(&request.image) {
            "image_url"
        } else {
            "image"
        };
        // The version this view of the log has: a runner holding an older one brings
        // it in first, so the first inference after a publication uses it.
        let mut body = json!({
            "model": request.model,
            "model_version": published.version,
            "result_extension": ext,
            "params": request.params,
        });
        body[image_field] = json!(request.image);
        // MONAI Label hands a request's `label` file to the task; so does this.
        if let Some(label) = &request.label {
            let field = if is_url(label) { "label_url" } else { "label" };
            body[field] = json!(label);
        }
        if matches!(endpoint, InferenceEndpoint::Local(_)) {
            body["output"] = json!(output.to_path_buf());
        }
        let (status, reply) = endpoint.invoke(&self.http, body).await?;
        if status == 404 {
            return Err(RunnerError::UnknownModel(request.model));
        }
        if status == 422 {
            return Err(RunnerError::LabelRejected(
                reply["detail"]
                    .as_str()
                    .unwrap_or("the runner refused the request")
                    .to_owned(),
            ));
        }
        if !(200..300).contains(&status) {
            return Err(RunnerError::Failed(
                reply["detail"]
                    .as_str()
                    .unwrap_or("inference failed")
                    .to_owned(),
            ));
        }
        if let Some(inline) = reply["label_b64"].as_str() {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(inline)
                .map_err(|err| RunnerError::Failed(format!("the runner's mask: {err}")))?;
            std::fs::write(&output, bytes).map_err(failed)?;
        }
        let params = reply["params"].as_object().cloned().unwrap_or_default();
        let file_name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("label{ext}"));
        Ok(InferResult {
            file: Some(output),
            file_name,
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
        let enqueue = params
            .get("enqueue")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let job = match kind {
            JobKind::Train => {
                let model = self.model(name).await?;
                let pinned = self.pin_final_labels().await?;
                self.jobs
                    .request(ctx, kind, Some(model), params, Some(pinned), enqueue)
                    .await
            }
            JobKind::BatchInfer => {
                let model = self.model(name).await?;
                self.jobs
                    .request(ctx, kind, Some(model), params, None, enqueue)
                    .await
            }
            JobKind::Scoring if name == "epistemic" || name.ends_with("_epistemic") => {
                let model = match name.strip_suffix("_epistemic") {
                    Some(model) => self.model(model).await?,
                    None => {
                        let view = self.models.view().await.map_err(model_error)?;
                        let first = view.models().next().map(|m| m.model.clone());
                        first.ok_or_else(|| RunnerError::UnknownMethod(name.into()))?
                    }
                };
                let mut params = params;
                params.insert("method".into(), json!("epistemic"));
                self.jobs
                    .request(ctx, kind, Some(model), params, None, enqueue)
                    .await
            }
            JobKind::Scoring => {
                if !scoring::METHODS.iter().any(|(m, _)| *m == name) {
                    return Err(RunnerError::UnknownMethod(name.into()));
                }
                // Runs now; recorded as a job so task status looks as it does in MONAI Label.
                let mut request = params.clone();
                request.insert("method".into(), json!(name));
                let job = self
                    .jobs
                    .request(ctx, kind, None, request, None, enqueue)
                    .await
                    .map_err(job_error)?;
                let step = |s: &str| {
                    WriteContext::new(ctx.actor.clone(), format!("{}/{s}", ctx.request_id))
                };
                let scored = scoring::score(&self.datastore, &step("score"), name, &params).await;
                let (status, result) = match &scored {
                    Ok(scores) => (
                        medlabel_events::event::JobStatus::Done,
                        json!({"scores": scores}),
                    ),
                    Err(err) => (
                        medlabel_events::event::JobStatus::Error,
                        json!({"details": [err.to_string()]}),
                    ),
                };
                let result = result.as_object().cloned().unwrap_or_default();
                self.jobs
                    .finish(&step("finish"), &job, status, result)
                    .await
                    .map_err(job_error)?;
                // MONAI Label's `run_sync` answers with the method's result itself.
                if params.get("run_sync").and_then(Value::as_bool) == Some(true) {
                    return scored
                        .map(Value::Object)
                        .map_err(|err| RunnerError::Failed(err.to_string()));
                }
                let done = self
                    .jobs
                    .view()
                    .await
                    .map_err(job_error)?
                    .job(&job.id)
                    .cloned();
                Ok(done.unwrap_or(job))
            }
        }
        .map_err(job_error)?;
        Ok(job.to_task_json())
    }

    async fn status(&self, kind: JobKind, query: TaskQuery) -> Result<Value, RunnerError> {
        let view = self.jobs.view().await.map_err(job_error)?;
        let jobs = view.all(kind);
        if jobs.is_empty() {
            return Err(RunnerError::NoTasks(kind));
        }
        if query.check_if_running {
            return view
                .active(kind)
                .map(|job| job.to_task_json())
                .ok_or(RunnerError::NotRunning(kind));
        }
        if query.all {
            return Ok(Value::Array(
                jobs.iter().map(|job| job.to_task_json()).collect(),
            ));
        }
        Ok(jobs.last().expect("not empty").to_task_json())
    }

    async fn stop(&self, ctx: &WriteContext, kind: JobKind) -> Result<Option<Value>, RunnerError> {
        Ok(self
            .jobs
            .stop(ctx, kind)
            .await
            .map_err(job_error)?
            .map(|job| job.to_task_json()))
    }
}
