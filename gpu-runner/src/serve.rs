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
//!    "label": "/data/scribbles.nrrd",           // optional: the request's label file, or …
//!    "label_url": "https://…", "label_ext": ".nrrd",  // … a URL to GET, like the image
//!    "output": "/data/out/label.nii.gz",        // optional: write the mask there
//!    "result_extension": ".nii.gz",             // format of an inline mask
//!    "params": {"overlap": 0.25, "sw_batch_size": 1, "mode": "gaussian", "amp": true}}
//!   ```
//!   `params` may carry MONAI Label's whole merged request (unknown keys are ignored;
//!   `result_extension` there works too). An `image_url` is how the cloud's infer
//!   function hands over an image on S3: the endpoint shares no file system with it, and
//!   a CT does not fit an InvokeEndpoint payload. For a deepgrow or deepedit model,
//!   `params` carries MONAI Label's clicks (`foreground`/`background`, or
//!   `{<label>: [[i, j, k], ...]}`), answered by [`crate::interactive`]. The URL's path (or `image_ext`) names
//!   the format; the download is capped like a request body.
//!   A `label` is MONAI Label's `label` upload of an infer request (a mask or scribbles):
//!   it is read and must lie on the image's grid, else 422; the segmentation models
//!   served now do not use it.
//!   Reply `200 {"label": path|null, "label_b64": base64|null, "params": {"model",
//!   "label_names", "latencies"}}`: the mask is written to `output` when given, else
//!   returned inline. `params` is what MONAI Label puts in an infer result's JSON.
//! - Errors are `{"detail": "…"}`: 400 for a malformed request or unreadable image or
//!   label, 422 for a label off the image's grid, a click outside the image or a label
//!   name the model does not know, 404
//!   for an unknown model, 500 when inference itself fails.
//!
//! Paths in requests are only accepted below the configured roots ([`DataPaths`]:
//! images are read from some folders, masks written to others, after
//! canonicalisation), so a caller cannot make the runner read or write elsewhere. A
//! runner started with a secret ([`Runner::with_secret`]: the local server's child,
//! which listens on loopback where any local process could call it) answers only
//! requests that carry it as `Authorization: Bearer <secret>`.
//!
//! Models are the sub-folders of the model directory holding a `config.json` (or the
//! directory itself). A model folder written by [`crate::worker`] carries a `.version`
//! stamp; a request may name the `model_version` its caller's view of the log has, and
//! a runner that follows a log ([`ModelSource`]) brings that version in before it
//! infers, so the first inference after a publication already uses it. Otherwise a
//! model whose stamp (or weights' mtime) changes is reloaded on its next request, and a
//! sub-folder that appears later is loaded on the first request that names it.
//! Inference runs on the blocking pool, one request per model at a time.

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

use crate::config::{CONFIG_FILE, VERSION_FILE};
use crate::error::{Result, RunnerError};
use crate::guidance::Clicks;
use crate::infer::{InferOptions, Latencies};
use crate::interactive::{AutoMask, answer};
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
    pub label: Option<PathBuf>,
    pub label_url: Option<String>,
    pub label_ext: Option<String>,
    pub output: Option<PathBuf>,
    pub result_extension: Option<String>,
    /// The model version the caller's view of the log names: a runner holding an older
    /// one brings it in from its [`ModelSource`] first.
    pub model_version: Option<u32>,
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
    /// The version of the model that made the mask (its folder's stamp), so a saved
    /// label records which model version produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<u32>,
    pub label_names: BTreeMap<String, i64>,
    pub latencies: Latencies,
}

/// What identifies the files a slot loaded: the worker's `.version` stamp, or for a
/// folder without one the weights' modification time.
#[derive(Debug, Clone, PartialEq)]
enum Stamp {
    Version(String),
    Modified(SystemTime),
}

impl Stamp {
    /// The model version a `.version` stamp names (`"<version> <sha256>"`).
    fn version(&self) -> Option<u32> {
        match self {
            Stamp::Version(text) => text.split_whitespace().next()?.parse().ok(),
            Stamp::Modified(_) => None,
        }
    }
}

struct Slot {
    dir: PathBuf,
    loaded: Option<Loaded>,
}

/// A slot's model as loaded from the files `stamp` identifies, with what it keeps
/// between requests.
struct Loaded {
    stamp: Stamp,
    model: Model,
    auto: AutoMask,
}

/// Where request paths may point: images are read below `read`, masks written below
/// `write` (canonical folders).
#[derive(Debug, Clone)]
pub struct DataPaths {
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
}

impl DataPaths {
    /// Reads below any of `read`, writes below any of `write`; every folder must exist.
    pub fn new(read: &[&Path], write: &[&Path]) -> Result<Self> {
        let canonical = |dirs: &[&Path]| {
            dirs.iter()
                .map(|d| d.canonicalize().map_err(|e| RunnerError::io(d, e)))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            read: canonical(read)?,
            write: canonical(write)?,
        })
    }

    /// Reads and writes anywhere below `root`.
    pub fn below(root: &Path) -> Result<Self> {
        Self::new(&[root], &[root])
    }
}

/// Brings a published model version into the model folder (the worker following the
/// log implements it).
#[async_trait::async_trait]
pub trait ModelSource: Send + Sync + 'static {
    /// Writes the current version of model `name` into its folder, if the log has one
    /// at least as new as `version`.
    async fn bring_in(&self, name: &str, version: u32) -> Result<()>;
}

/// Shared server state: the model slots and where request paths may point.
pub struct Runner {
    /// The served models by name; a folder of model folders gains one whenever a new
    /// folder appears in it (a model published to the log it follows).
    models: RwLock<BTreeMap<String, Arc<Mutex<Slot>>>>,
    /// That folder, when the runner serves one (not a single model's own folder).
    model_folders: Option<PathBuf>,
    device: Device,
    paths: DataPaths,
    http: reqwest::Client,
    /// Required as a bearer token on every request, when set.
    secret: Option<String>,
    source: Option<Arc<dyn ModelSource>>,
    /// The last image read from a file, with the file's path, length and mtime.
    last_image: Mutex<Option<(ImageFile, Arc<medlabel_imaging::Volume<f32>>)>>,
}

/// What identifies an image file's content: path, length, modification time.
type ImageFile = (PathBuf, u64, Option<SystemTime>);

/// An image's bytes fetched from an `image_url`, with the name or extension that names
/// its format.
pub struct Fetched {
    bytes: Vec<u8>,
    ext: String,
}

impl Runner {
    /// Finds and loads the models under `model_dir`; `paths` bounds request paths.
    pub fn new(model_dir: &Path, device: Device, paths: DataPaths) -> Result<Self> {
        let runner = Self::open(model_dir, device, paths)?;
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
    pub fn following(model_dir: &Path, device: Device, paths: DataPaths) -> Result<Self> {
        Self::open(model_dir, device, paths)
    }

    /// Requires `secret` as a bearer token on every request.
    pub fn with_secret(mut self, secret: String) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Brings in the model versions requests name from `source`.
    pub fn with_source(mut self, source: Arc<dyn ModelSource>) -> Self {
        self.source = Some(source);
        self
    }

    fn open(model_dir: &Path, device: Device, paths: DataPaths) -> Result<Self> {
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
        Ok(Self {
            models: RwLock::new(models),
            model_folders: (!single).then(|| model_dir.to_path_buf()),
            device,
            paths,
            http: reqwest::Client::new(),
            secret: None,
            source: None,
            last_image: Mutex::new(None),
        })
    }

    /// Makes sure model `name` is at `version` or later before it serves a request
    /// naming that version: a runner following a log brings it in when its folder
    /// holds an older one.
    pub async fn ensure_version(&self, name: &str, version: u32) -> Result<()> {
        let (Some(source), Some(folders)) = (&self.source, &self.model_folders) else {
            return Ok(());
        };
        let on_disk = stamp(&folders.join(name)).ok().and_then(|s| s.version());
        if on_disk.is_some_and(|held| held >= version) {
            return Ok(());
        }
        source.bring_in(name, version).await
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
        if !plain || !Model::weights_file(&dir).is_ok_and(|weights| weights.is_file()) {
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

    /// Downloads an invocation's `image_url` (or `label_url`: `field`), at most
    /// [`MAX_BODY`] bytes.
    pub async fn fetch(&self, field: &str, url: &str, ext: Option<&str>) -> Result<Fetched> {
        let failed = |e: &dyn std::fmt::Display| RunnerError::invalid(format!("{field}: {e}"));
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
    /// with the image and label it fetched when the invocation names their URLs).
    pub fn invoke(
        &self,
        req: &Invocation,
        fetched: Option<Fetched>,
        fetched_label: Option<Fetched>,
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
            (Some(p), None, None) => self
                .image_file(&self.checked_path(p, true).map_err(bad)?)
                .map_err(bad)?,
            (None, Some(b), None) => {
                let bytes = B64
                    .decode(b)
                    .map_err(|e| (StatusCode::BAD_REQUEST, format!("image_b64: {e}")))?;
                Arc::new(
                    crate::io::read_image_bytes(
                        &bytes,
                        req.image_ext.as_deref().unwrap_or(".nii.gz"),
                    )
                    .map_err(bad)?,
                )
            }
            (None, None, Some(fetched)) => {
                Arc::new(crate::io::read_image_bytes(&fetched.bytes, &fetched.ext).map_err(bad)?)
            }
            _ => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "give exactly one of `image`, `image_b64` and `image_url`".into(),
                ));
            }
        };
        self.check_label(req, fetched_label, &image)?;
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
        let Loaded {
            stamp, model, auto, ..
        } = slot
            .current(self.device)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let model_version = stamp.version();
        let clicks = Clicks::from_params(&model.config, &req.params, image.dims)
            .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        let internal = |e: RunnerError| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        // What the image cannot give this model (a 2D model on non-axial slices) is the
        // request's fault, as a bad click is.
        let (mask, mut latencies) =
            answer(model, &image, &clicks, auto, &opts).map_err(|e| match e {
                RunnerError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
                e => internal(e),
            })?;
        let t = std::time::Instant::now();
        // MONAI Label's `result_compress`: NRRD results stay raw unless it asks for gzip.
        let compress = req.params.get("result_compress") == Some(&serde_json::Value::Bool(true));
        let (label, label_b64) = match output {
            Some(path) => {
                let bytes = crate::io::mask_bytes(&mask, &path.to_string_lossy(), compress)
                    .map_err(internal)?;
                std::fs::write(&path, bytes).map_err(|e| internal(RunnerError::io(&path, e)))?;
                (Some(path), None)
            }
            None => {
                let ext = req
                    .result_extension
                    .as_deref()
                    .or_else(|| req.params.get("result_extension").and_then(|v| v.as_str()))
                    .unwrap_or(".nii.gz");
                let bytes = crate::io::mask_bytes(&mask, ext, compress).map_err(bad)?;
                (None, Some(B64.encode(bytes)))
            }
        };
        latencies.write = t.elapsed().as_secs_f64();
        latencies.total += latencies.write;
        Ok(InvocationResult {
            label,
            label_b64,
            params: ResultParams {
                model: name,
                model_version,
                label_names: model.config.label_names(),
                latencies,
            },
        })
    }

    /// The image in file `path`, decoded once while the file stays the same: clicks
    /// on one image come one after another, and decoding a CT costs more than a
    /// click's network pass.
    fn image_file(&self, path: &Path) -> Result<Arc<medlabel_imaging::Volume<f32>>> {
        let meta = std::fs::metadata(path).map_err(|e| RunnerError::io(path, e))?;
        let file = (path.to_path_buf(), meta.len(), meta.modified().ok());
        let mut last = self.last_image.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((held, image)) = last.as_ref()
            && *held == file
        {
            return Ok(image.clone());
        }
        let image = Arc::new(crate::io::read_image(path)?);
        *last = Some((file, image.clone()));
        Ok(image)
    }

    /// Reads the invocation's label, if any, and checks it lies on `image`'s grid.
    fn check_label(
        &self,
        req: &Invocation,
        fetched: Option<Fetched>,
        image: &medlabel_imaging::Volume<f32>,
    ) -> std::result::Result<(), (StatusCode, String)> {
        let bad = |e: RunnerError| (StatusCode::BAD_REQUEST, format!("label: {e}"));
        let label = match (&req.label, fetched) {
            (None, None) => return Ok(()),
            (Some(p), None) => {
                crate::io::read_image(&self.checked_path(p, true).map_err(bad)?).map_err(bad)?
            }
            (None, Some(fetched)) => {
                crate::io::read_image_bytes(&fetched.bytes, &fetched.ext).map_err(bad)?
            }
            (Some(_), Some(_)) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "give at most one of `label` and `label_url`".into(),
                ));
            }
        };
        medlabel_imaging::check_label(&label, &image.grid()).map_err(|e| {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the label does not fit the image: {e}"),
            )
        })
    }

    /// Resolves a request path and checks it lies under one of the read (or, for an
    /// output, write) roots; an output's parent must exist (the file itself need not).
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
        let roots = if must_exist {
            &self.paths.read
        } else {
            &self.paths.write
        };
        if !roots.iter().any(|root| resolved.starts_with(root)) {
            return Err(RunnerError::invalid(format!(
                "{} is outside the folders the runner may {}",
                p.display(),
                if must_exist { "read" } else { "write" }
            )));
        }
        Ok(resolved)
    }
}

/// What identifies the files in model folder `dir` now.
fn stamp(dir: &Path) -> Result<Stamp> {
    if let Ok(text) = std::fs::read_to_string(dir.join(VERSION_FILE)) {
        return Ok(Stamp::Version(text));
    }
    let weights = Model::weights_file(dir)?;
    std::fs::metadata(&weights)
        .and_then(|m| m.modified())
        .map(Stamp::Modified)
        .map_err(|e| RunnerError::io(&weights, e))
}

impl Slot {
    /// The loaded model (its version is the stamp's, when the folder has one), reloaded
    /// first if the folder changed since it was loaded.
    fn current(&mut self, device: Device) -> Result<&mut Loaded> {
        let now = stamp(&self.dir)?;
        if self.loaded.as_ref().is_none_or(|held| held.stamp != now) {
            self.loaded = Some(Loaded {
                model: Model::load(&self.dir, device)?,
                stamp: now,
                auto: AutoMask::default(),
            });
        }
        Ok(self.loaded.as_mut().expect("loaded just above"))
    }
}

/// The axum router for `runner`.
pub fn router(runner: Arc<Runner>) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/invocations", post(invocations))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            runner.clone(),
            require_secret,
        ))
        .with_state(runner)
}

/// Refuses a request without the runner's secret (when it has one) before anything
/// else reads it.
async fn require_secret(
    State(runner): State<Arc<Runner>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(secret) = &runner.secret {
        let sent = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !sent.is_some_and(|sent| same_secret(sent.as_bytes(), secret.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "this runner answers only the server that started it".into(),
            );
        }
    }
    next.run(request).await
}

/// Compares in time independent of where the two first differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ping(State(runner): State<Arc<Runner>>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "models": runner.model_names()}))
}

async fn invocations(State(runner): State<Arc<Runner>>, body: axum::body::Bytes) -> Response {
    let mut req: Invocation = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    if let (Some(name), Some(version)) = (req.model.as_deref(), req.model_version)
        && let Err(e) = runner.ensure_version(name, version).await
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("model {name} version {version}: {e}"),
        );
    }
    let (image_url, label_url) = (req.image_url.take(), req.label_url.take());
    let fetched = match download(&runner, "image_url", image_url, req.image_ext.as_deref()).await {
        Ok(fetched) => fetched,
        Err(response) => return response,
    };
    let fetched_label =
        match download(&runner, "label_url", label_url, req.label_ext.as_deref()).await {
            Ok(fetched) => fetched,
            Err(response) => return response,
        };
    match tokio::task::spawn_blocking(move || runner.invoke(&req, fetched, fetched_label)).await {
        Ok(Ok(result)) => Json(result).into_response(),
        Ok(Err((status, msg))) => error(status, msg),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference task failed: {e}"),
        ),
    }
}

/// Fetches `url` (the invocation's `field`) when given; a failed download is a 400.
async fn download(
    runner: &Runner,
    field: &str,
    url: Option<String>,
    ext: Option<&str>,
) -> std::result::Result<Option<Fetched>, Response> {
    match url {
        Some(url) => runner
            .fetch(field, &url, ext)
            .await
            .map(Some)
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string())),
        None => Ok(None),
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
    serve_on(listener, runner).await
}

/// Serves `router` on a bound listener until the process is stopped.
pub async fn serve_on(listener: tokio::net::TcpListener, runner: Arc<Runner>) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| RunnerError::io("listener", e))?;
    tracing::info!(%addr, models = ?runner.model_names(), "runner serving");
    axum::serve(listener, router(runner))
        .await
        .map_err(|e| RunnerError::io(addr.to_string(), e))
}
