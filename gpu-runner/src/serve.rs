//! The runner's HTTP contract (SageMaker real-time endpoint shape; the local `medlabel`
//! starts the same server on loopback).
//!
//! - `GET /ping` → `200 {"status":"ok","models":[…]}` once the models are loaded.
//! - `POST /invocations` with a JSON body:
//!   ```json
//!   {"model": "segmentation_spleen",            // optional when only one model is served
//!    "image": "/data/img.nii.gz",               // a file the runner can read, or …
//!    "image_b64": "<base64>", "image_ext": ".nii.gz",   // … the file's bytes inline, or …
//!    "image_url": "https://…/img.nii.gz?X-Amz-…",     // … a URL to GET (presigned S3)
//!    "output": "/data/out/label.nii.gz",        // optional: write the mask there
//!    "result_extension": ".nii.gz",             // format of an inline mask
//!    "params": {"overlap": 0.25, "sw_batch_size": 1, "mode": "gaussian", "amp": true}}
//!   ```
//!   `params` may carry MONAI Label's whole merged request (unknown keys are ignored;
//!   `result_extension` there works too). An `image_url` is how the cloud's infer
//!   function hands over an image on S3: the endpoint shares no file system with it, and
//!   a CT does not fit an InvokeEndpoint payload. The URL's path (or `image_ext`) names
//!   the format; the download is capped like a request body.
//!   Reply `200 {"label": path|null, "label_b64": base64|null, "params": {"model",
//!   "label_names", "latencies"}}`: the mask is written to `output` when given, else
//!   returned inline. `params` is what MONAI Label puts in an infer result's JSON.
//! - Errors are `{"detail": "…"}`: 400 for a malformed request or unreadable image, 404
//!   for an unknown model, 500 when inference itself fails.
//!
//! Paths in requests are only accepted below the configured `data_root` (after
//! canonicalisation), so a caller cannot make the runner read or write elsewhere.
//! Models are the sub-folders of the model directory holding a `config.json` (or the
//! directory itself); a model whose `model.safetensors` changes on disk is reloaded on
//! its next request, the way MONAI Label picks up a newly trained model, and a
//! sub-folder that appears later (a model published to the log the endpoint follows) is
//! loaded on the first request that names it. Inference runs on the blocking pool, one
//! request per model at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::Device;

use crate::config::{CONFIG_FILE, WEIGHTS_FILE};
use crate::error::{Result, RunnerError};
use crate::infer::{InferOptions, Latencies, segment};
use crate::model::Model;

/// Largest accepted request body (an inline CT is tens of MB; base64 adds a third).
const MAX_BODY: usize = 1 << 30;

/// An inference request (see the module docs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invocation {
    pub model: Option<String>,
    pub image: Option<PathBuf>,
    pub image_b64: Option<String>,
    pub image_url: Option<String>,
    pub image_ext: Option<String>,
    pub output: Option<PathBuf>,
    pub result_extension: Option<String>,
    /// MONAI Label's request params, merged flat: the runner reads the [`InferOptions`]
    /// keys and `result_extension`, and ignores the rest (`client_id`, `label_tag`, …).
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// The reply to a successful invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationResult {
    pub label: Option<PathBuf>,
    pub label_b64: Option<String>,
    pub params: ResultParams,
}

/// MONAI Label's infer result JSON fields the runner knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultParams {
    pub model: String,
    pub label_names: BTreeMap<String, i64>,
    pub latencies: Latencies,
}

struct Slot {
    dir: PathBuf,
    loaded: Option<(SystemTime, Model)>,
}

/// Shared server state: the model slots and where request paths may point.
pub struct Runner {
    /// The served models by name; a folder of model folders gains one whenever a new
    /// folder appears in it (a model published to the log it follows).
    models: RwLock<BTreeMap<String, Arc<Mutex<Slot>>>>,
    /// That folder, when the runner serves one (not a single model's own folder).
    model_folders: Option<PathBuf>,
    device: Device,
    data_root: PathBuf,
    http: reqwest::Client,
}

/// An image's bytes fetched from an `image_url`, with the name or extension that names
/// its format.
pub struct Fetched {
    bytes: Vec<u8>,
    ext: String,
}

impl Runner {
    /// Finds and loads the models under `model_dir`; `data_root` bounds request paths.
    pub fn new(model_dir: &Path, device: Device, data_root: &Path) -> Result<Self> {
        let runner = Self::open(model_dir, device, data_root)?;
        if runner.model_names().is_empty() {
            return Err(RunnerError::invalid(format!(
                "no model folders (with {CONFIG_FILE}) in {}",
                model_dir.display()
            )));
        }
        Ok(runner)
    }

    /// [`Runner::new`] for a folder that models are written into while it serves (see
    /// [`crate::worker::sync_models`]): it may start empty.
    pub fn following(model_dir: &Path, device: Device, data_root: &Path) -> Result<Self> {
        Self::open(model_dir, device, data_root)
    }

    fn open(model_dir: &Path, device: Device, data_root: &Path) -> Result<Self> {
        let mut dirs = Vec::new();
        let single = model_dir.join(CONFIG_FILE).is_file();
        if single {
            dirs.push(model_dir.to_path_buf());
        } else {
            for entry in std::fs::read_dir(model_dir).map_err(|e| RunnerError::io(model_dir, e))? {
                let p = entry.map_err(|e| RunnerError::io(model_dir, e))?.path();
                if p.join(CONFIG_FILE).is_file() {
                    dirs.push(p);
                }
            }
        }
        let mut models = BTreeMap::new();
        for dir in dirs {
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("model")
                .to_owned();
            let mut slot = Slot { dir, loaded: None };
            slot.current(device)?;
            models.insert(name, Arc::new(Mutex::new(slot)));
        }
        let data_root = data_root
            .canonicalize()
            .map_err(|e| RunnerError::io(data_root, e))?;
        Ok(Self {
            models: RwLock::new(models),
            model_folders: (!single).then(|| model_dir.to_path_buf()),
            device,
            data_root,
            http: reqwest::Client::new(),
        })
    }

    /// Names of the served models.
    pub fn model_names(&self) -> Vec<String> {
        self.read_models().keys().cloned().collect()
    }

    fn read_models(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Mutex<Slot>>>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of model `name`, loading its folder first if it appeared since.
    fn slot(&self, name: &str) -> Result<Option<Arc<Mutex<Slot>>>> {
        if let Some(slot) = self.read_models().get(name) {
            return Ok(Some(slot.clone()));
        }
        // Only a plain folder name, so a request cannot point outside the folder.
        let plain = !name.starts_with('.')
            && matches!(
                Path::new(name).components().collect::<Vec<_>>()[..],
                [std::path::Component::Normal(_)]
            );
        let Some(dir) = self.model_folders.as_ref().map(|f| f.join(name)) else {
            return Ok(None);
        };
        // Both files: a folder being written gets its config first (each file lands whole).
        if !plain || !dir.join(CONFIG_FILE).is_file() || !dir.join(WEIGHTS_FILE).is_file() {
            return Ok(None);
        }
        let mut slot = Slot { dir, loaded: None };
        slot.current(self.device)?;
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        let slot = models
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(slot)));
        Ok(Some(slot.clone()))
    }

    /// Downloads an invocation's `image_url`, at most [`MAX_BODY`] bytes.
    pub async fn fetch(&self, url: &str, ext: Option<&str>) -> Result<Fetched> {
        let failed = |e: &dyn std::fmt::Display| RunnerError::invalid(format!("image_url: {e}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| failed(&e))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(failed(&"only http and https URLs are fetched"));
        }
        // The path's file name names the format as well as a bare extension does.
        let ext = ext.unwrap_or(parsed.path()).to_owned();
        let mut response = self
            .http
            .get(parsed)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| failed(&e))?;
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(&e))? {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(failed(&format!("larger than {MAX_BODY} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched { bytes, ext })
    }

    /// Runs one invocation synchronously (the HTTP handler calls this on the blocking pool,
    /// with the image it fetched when the invocation names an `image_url`).
    pub fn invoke(
        &self,
        req: &Invocation,
        fetched: Option<Fetched>,
    ) -> Result<InvocationResult, (StatusCode, String)> {
        let bad = |e: RunnerError| (StatusCode::BAD_REQUEST, e.to_string());
        let name = match (&req.model, self.model_names().as_slice()) {
            (Some(m), _) => m.clone(),
            (None, [only]) => only.clone(),
            (None, served) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("`model` is required; served: {served:?}"),
                ));
            }
        };
        let slot = self
            .slot(&name)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .ok_or((StatusCode::NOT_FOUND, format!("unknown model {name:?}")))?;
        let image = match (&req.image, &req.image_b64, fetched) {
            (Some(p), None, None) => {
                crate::io::read_image(&self.checked_path(p, true).map_err(bad)?).map_err(bad)?
            }
            (None, Some(b), None) => {
                let bytes = B64
                    .decode(b)
                    .map_err(|e| (StatusCode::BAD_REQUEST, format!("image_b64: {e}")))?;
                crate::io::read_image_bytes(&bytes, req.image_ext.as_deref().unwrap_or(".nii.gz"))
                    .map_err(bad)?
            }
            (None, None, Some(fetched)) => {
                crate::io::read_image_bytes(&fetched.bytes, &fetched.ext).map_err(bad)?
            }
            _ => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "give exactly one of `image`, `image_b64` and `image_url`".into(),
                ));
            }
        };
        let opts: InferOptions =
            serde_json::from_value(serde_json::Value::Object(req.params.clone()))
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("params: {e}")))?;
        let output = req
            .output
            .as_ref()
            .map(|p| self.checked_path(p, false))
            .transpose()
            .map_err(bad)?;
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        let model = slot
            .current(self.device)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let internal = |e: RunnerError| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        let (mask, mut latencies) = segment(model, &image, &opts).map_err(internal)?;
        let t = std::time::Instant::now();
        let (label, label_b64) = match output {
            Some(path) => {
                crate::io::write_mask(&path, &mask).map_err(internal)?;
                (Some(path), None)
            }
            None => {
                let ext = req
                    .result_extension
                    .as_deref()
                    .or_else(|| req.params.get("result_extension").and_then(|v| v.as_str()))
                    .unwrap_or(".nii.gz");
                (
                    None,
                    Some(B64.encode(crate::io::mask_bytes(&mask, ext).map_err(bad)?)),
                )
            }
        };
        latencies.write = t.elapsed().as_secs_f64();
        latencies.total += latencies.write;
        Ok(InvocationResult {
            label,
            label_b64,
            params: ResultParams {
                model: name,
                label_names: model.config.label_names(),
                latencies,
            },
        })
    }

    /// Resolves a request path and checks it lies under `data_root`; an output's parent
    /// must exist (the file itself need not).
    fn checked_path(&self, p: &Path, must_exist: bool) -> Result<PathBuf> {
        let resolved = if must_exist {
            p.canonicalize().map_err(|e| RunnerError::io(p, e))?
        } else {
            let parent = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = p.file_name().ok_or_else(|| {
                RunnerError::invalid(format!("{} is not a file path", p.display()))
            })?;
            parent
                .canonicalize()
                .map_err(|e| RunnerError::io(parent, e))?
                .join(name)
        };
        if !resolved.starts_with(&self.data_root) {
            return Err(RunnerError::invalid(format!(
                "{} is outside the runner's data root",
                p.display()
            )));
        }
        Ok(resolved)
    }
}

impl Slot {
    /// The model, reloaded first if its weights file changed since it was loaded.
    fn current(&mut self, device: Device) -> Result<&Model> {
        let weights = self.dir.join(WEIGHTS_FILE);
        let mtime = std::fs::metadata(&weights)
            .and_then(|m| m.modified())
            .map_err(|e| RunnerError::io(&weights, e))?;
        if self.loaded.as_ref().is_none_or(|(t, _)| *t != mtime) {
            self.loaded = Some((mtime, Model::load(&self.dir, device)?));
        }
        Ok(&self.loaded.as_ref().expect("loaded just above").1)
    }
}

/// The axum router for `runner`.
pub fn router(runner: Arc<Runner>) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/invocations", post(invocations))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(runner)
}

async fn ping(State(runner): State<Arc<Runner>>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "models": runner.model_names()}))
}

async fn invocations(State(runner): State<Arc<Runner>>, body: axum::body::Bytes) -> Response {
    let mut req: Invocation = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let fetched = match req.image_url.take() {
        Some(url) => match runner.fetch(&url, req.image_ext.as_deref()).await {
            Ok(fetched) => Some(fetched),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        None => None,
    };
    match tokio::task::spawn_blocking(move || runner.invoke(&req, fetched)).await {
        Ok(Ok(result)) => Json(result).into_response(),
        Ok(Err((status, msg))) => error(status, msg),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference task failed: {e}"),
        ),
    }
}

fn error(status: StatusCode, detail: String) -> Response {
    (status, Json(json!({ "detail": detail }))).into_response()
}

/// Serves `router` on `addr` until the process is stopped.
pub async fn serve(addr: &str, runner: Arc<Runner>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| RunnerError::io(addr, e))?;
    tracing::info!(%addr, models = ?runner.model_names(), "runner serving");
    axum::serve(listener, router(runner))
        .await
        .map_err(|e| RunnerError::io(addr, e))
}
