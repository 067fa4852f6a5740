//! The runner port: everything that needs a model (inference, training, scoring).
//!
//! The functions never link libtorch (design invariant 7). Whatever runs models sits
//! behind this trait: the GPU runner's HTTP contract (`GET /ping`, `POST /invocations`)
//! for interactive inference, and its job queue for training, scoring and batch
//! inference. The trait is deliberately small: one call to describe what is available,
//! one to infer, and start / status / stop for the three asynchronous task kinds that
//! MONAI Label runs one at a time per kind.
//!
//! [`NoRunner`] is the default: it has no models, so `/info/` lists none and model
//! routes answer 404 with a `detail`, as a MONAI Label app without models would (minus
//! MONAI Label's bare 500s).

use std::collections::BTreeMap;

use async_trait::async_trait;
use medlabel_events::Info;
use medlabel_events::datastore::WriteContext;
use medlabel_events::event::JobKind;
use medlabel_events::jobs::kind_title;
use serde_json::Value;
use tempfile::TempPath;

/// What a runner offers, in `/info/`'s vocabulary. Each value is the JSON MONAI Label
/// shows for that entry (e.g. a model's `{"type","labels","dimension","description","config"}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunnerInfo {
    pub models: BTreeMap<String, Value>,
    pub trainers: BTreeMap<String, Value>,
    pub scoring: BTreeMap<String, Value>,
    /// `train_stats` per model: the latest training statistics (may be `{}`).
    pub train_stats: BTreeMap<String, Value>,
}

/// One inference call.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub model: String,
    /// Where the runner reads the image: a local path or a presigned URL.
    pub image: String,
    /// MONAI Label's request dict: `model`, `image` and the client's params, merged flat.
    pub params: Info,
    /// An optional label or scribbles file sent with the request, as a readable URI.
    pub label: Option<String>,
}

/// What inference produced.
#[derive(Debug)]
pub struct InferResult {
    /// The result mask, a temporary file the caller replies with and then drops.
    pub file: Option<TempPath>,
    /// The file name to reply with (its extension says the format, e.g. `.nii.gz`).
    pub file_name: String,
    /// MONAI Label's result JSON (`label_names`, `latencies`, ...).
    pub params: Info,
}

/// Which tasks a status query asks about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// Every task since start-up rather than the latest.
    pub all: bool,
    /// Only the running task (404 when none runs).
    pub check_if_running: bool,
}

/// Why a runner call failed; the HTTP layer maps each to its status.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("Model '{0}' NOT Found")]
    UnknownModel(String),
    #[error("Method '{0}' NOT Found")]
    UnknownMethod(String),
    #[error("++++++++++ {} Task is Already Running", kind_title(*.0))]
    AlreadyRunning(JobKind),
    #[error("No {} Tasks Found", kind_title(*.0))]
    NoTasks(JobKind),
    #[error("No {} Tasks are currently Running", kind_title(*.0))]
    NotRunning(JobKind),
    /// The runner refused what the request sent (a `label` off the image's grid).
    #[error("{0}")]
    LabelRejected(String),
    #[error("runner failed: {0}")]
    Failed(String),
    /// No runner can take the request now (none configured, or it is restarting).
    #[error("{0}")]
    Unavailable(String),
}

/// The runner port.
#[async_trait]
pub trait Runner: Send + Sync + 'static {
    /// Models, trainers and scoring methods available now, with their latest train stats.
    async fn describe(&self) -> Result<RunnerInfo, RunnerError>;

    /// Runs inference synchronously (a click in Slicer waits for it).
    async fn infer(&self, request: InferRequest) -> Result<InferResult, RunnerError>;

    /// Starts (or queues) a task of `kind` for the model or method `name` and returns
    /// MONAI Label's task dict `{"id","status","request","start_ts",...}`; with
    /// `run_sync` in `params`, a scoring method that runs at once answers with its
    /// result instead, as MONAI Label's synchronous run does.
    /// `ctx` makes the request idempotent: a retried request starts nothing new.
    async fn start(
        &self,
        ctx: &WriteContext,
        kind: JobKind,
        name: &str,
        params: Info,
    ) -> Result<Value, RunnerError>;

    /// The latest task of `kind` (an array with [`TaskQuery::all`]).
    async fn status(&self, kind: JobKind, query: TaskQuery) -> Result<Value, RunnerError>;

    /// Stops the running task of `kind`, returning it, or `None` if nothing ran.
    async fn stop(&self, ctx: &WriteContext, kind: JobKind) -> Result<Option<Value>, RunnerError>;
}

/// The runner of an app without models.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRunner;

#[async_trait]
impl Runner for NoRunner {
    async fn describe(&self) -> Result<RunnerInfo, RunnerError> {
        Ok(RunnerInfo::default())
    }

    async fn infer(&self, request: InferRequest) -> Result<InferResult, RunnerError> {
        Err(RunnerError::UnknownModel(request.model))
    }

    async fn start(
        &self,
        _: &WriteContext,
        kind: JobKind,
        name: &str,
        _: Info,
    ) -> Result<Value, RunnerError> {
        Err(match kind {
            JobKind::Scoring => RunnerError::UnknownMethod(name.to_owned()),
            JobKind::Train | JobKind::BatchInfer => RunnerError::UnknownModel(name.to_owned()),
        })
    }

    async fn status(&self, kind: JobKind, _: TaskQuery) -> Result<Value, RunnerError> {
        Err(RunnerError::NoTasks(kind))
    }

    async fn stop(&self, _: &WriteContext, _: JobKind) -> Result<Option<Value>, RunnerError> {
        Ok(None)
    }
}
