//! The event-driven worker: takes GPU jobs from the event log and reports back with
//! events.
//!
//! It follows the log (`read_all` after its position, woken by appends) and, on every
//! change:
//! - materialises each published model into `<models>/<name>/` (`config.json` +
//!   `model.safetensors`, written then renamed), which the `serve` endpoint reloads on
//!   its next request, the way MONAI Label picks up a newly trained model;
//! - claims each submitted job (`JobStarted` at version 1: of several workers exactly one
//!   wins) and runs it: training on exactly the label versions the request pinned,
//!   publishing the best model as the model's next version; epistemic scoring of the
//!   unlabeled images; batch inference saving masks under `label_tag`. Progress and the
//!   result are events; a `JobStopRequested` stops training after the current epoch.
//!
//! The log is the only channel between the functions and this worker, so the same loop
//! serves the local `medlabel` (SQLite) and, fed by SQS messages, the cloud.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use medlabel_events::blob::read_to_vec;
use medlabel_events::datastore::{Datastore, WriteContext};
use medlabel_events::event::{Actor, JobKind, JobStatus};
use medlabel_events::jobs::{JobRecord, Jobs};
use medlabel_events::models::{Models, PublishedModel, folder};
use medlabel_events::pinned::pinned;
use medlabel_events::{BlobStore, Clock, EventStore, Extension, Info, RunId, Tag, UserName};
use serde_json::{Value, json};

use crate::config::{CONFIG_FILE, VERSION_FILE};
use crate::error::{Result, RunnerError};
use crate::infer::{InferOptions, infer_file};
use crate::model::Model;
use crate::train::{TrainRequest, train};
use crate::uncertainty::mc_dropout;

/// How often a running job looks at the log to see whether it still runs (a stop, or
/// an expiry by someone who saw its lease lapse, ends it there).
const STOP_POLL: Duration = Duration::from_secs(1);

/// How long a claim holds a job unless renewed, by default. The worker renews it every
/// third of that while the job runs, so a runner that dies (or hangs) frees the job's
/// slot within one lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// Where the worker keeps its files, and how it runs models.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Published models are materialised here, one folder per model.
    pub models_dir: PathBuf,
    /// Scratch space for training runs and results.
    pub work_dir: PathBuf,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// This worker's name in `JobStarted` events.
    pub name: String,
    /// How long a claim or a renewal holds a job ([`DEFAULT_LEASE`]).
    pub lease: Duration,
}

/// What [`Worker::run_job_once`] did with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobRun {
    /// This worker claimed the job and ran it; it ended with this status.
    Finished(JobStatus),
    /// Another worker claimed it first, or it has already ended or been stopped.
    TakenOrEnded,
    /// The log this worker reads does not show the job (yet: a replica may lag).
    NotInLog,
}

/// The worker over one event store and blob store.
pub struct Worker {
    datastore: Arc<Datastore>,
    jobs: Arc<Jobs>,
    models: Arc<Models>,
    blobs: Arc<dyn BlobStore>,
    config: WorkerConfig,
}

fn store_error(err: impl std::fmt::Display) -> RunnerError {
    RunnerError::invalid(format!("event store: {err}"))
}

impl Worker {
    pub async fn open(
        store: Arc<dyn EventStore>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        config: WorkerConfig,
    ) -> Result<Self> {
        let datastore = Datastore::open_with_clock(store.clone(), blobs.clone(), clock.clone())
            .await
            .map_err(store_error)?;
        Ok(Self {
            datastore: Arc::new(datastore),
            jobs: Arc::new(Jobs::new(store.clone(), clock.clone())),
            models: Arc::new(Models::new(store, clock)),
            blobs,
            config,
        })
    }

    fn actor(&self) -> Actor {
        Actor {
            user: UserName::parse("runner").expect("a valid user name"),
            client_id: None,
            subject: None,
        }
    }

    /// A write context whose request id is derived from the job and step, so a worker
    /// that restarts mid-job records each step once.
    fn ctx(&self, job: &JobRecord, step: &str) -> WriteContext {
        WriteContext::new(self.actor(), format!("{}/{step}", job.id))
    }

    /// Runs forever: materialise models, run pending jobs, wait for the next append.
    pub async fn run(&self) -> Result<()> {
        let store = self.datastore.event_store().clone();
        loop {
            self.sync_models().await?;
            self.jobs
                .expire_lapsed(&WriteContext::fresh(self.actor()))
                .await
                .map_err(store_error)?;
            self.run_pending().await?;
            let head = store.head().await.map_err(store_error)?;
            store
                .wait_for_append(head, Duration::from_secs(5))
                .await
                .map_err(store_error)?;
        }
    }

    /// Writes every published model into the models folder; returns how many there are.
    pub async fn sync_models(&self) -> Result<usize> {
        sync_models(&self.models, self.blobs.as_ref(), &self.config.models_dir).await
    }

    /// The name this worker records in `JobStarted` events.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The published models of this worker's log, for a `serve` endpoint beside it.
    pub fn model_source(&self) -> LogModels {
        LogModels::new(
            self.models.clone(),
            self.blobs.clone(),
            self.config.models_dir.clone(),
        )
    }

    /// Claims and runs every submitted job, one at a time.
    pub async fn run_pending(&self) -> Result<()> {
        let pending: Vec<RunId> = self
            .jobs
            .view()
            .await
            .map_err(store_error)?
            .pending()
            .into_iter()
            .filter(|job| job.status == JobStatus::Submitted)
            .map(|job| job.id.clone())
            .collect();
        for job in pending {
            self.run_job_once(&job).await?;
        }
        Ok(())
    }

    /// Claims `job` and runs it to its `JobFinished`, unless the log does not show it
    /// yet or it is no longer `Submitted` (another worker has it, or it ended or was
    /// stopped).
    ///
    /// This is the at-most-once step behind at-least-once delivery: a job message seen
    /// twice, or by two workers, runs the job once.
    pub async fn run_job_once(&self, id: &RunId) -> Result<JobRun> {
        let job = self
            .jobs
            .view()
            .await
            .map_err(store_error)?
            .job(id)
            .cloned();
        let Some(job) = job else {
            return Ok(JobRun::NotInLog);
        };
        if job.status != JobStatus::Submitted
            || !self
                .jobs
                .claim(
                    &self.ctx(&job, "claim"),
                    &job,
                    &self.config.name,
                    self.config.lease,
                )
                .await
                .map_err(store_error)?
        {
            return Ok(JobRun::TakenOrEnded);
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Polled beside the work, never instead of it: the two share the jobs view, and
        // a catch-up one of them began must be able to finish while the other waits.
        let outcome = tokio::select! {
            outcome = self.run_job(&job, &stop) => outcome,
            never = self.hold(&job, &stop) => match never {},
        };
        let (status, result) = match outcome {
            Ok(outcome) => outcome,
            Err(err) => (JobStatus::Error, json!({"details": [err.to_string()]})),
        };
        let result = result.as_object().cloned().unwrap_or_default();
        // The stack counts `ERROR` endings from this line (a CloudWatch metric filter).
        let status_name = serde_json::to_value(status).unwrap_or_default();
        let details = result.get("details").cloned().unwrap_or_default();
        tracing::info!(job = %job.id, kind = ?job.kind, status = %status_name.as_str().unwrap_or("?"), %details, "job finished");
        self.jobs
            .finish(&self.ctx(&job, "finish"), &job, status, result)
            .await
            .map_err(store_error)?;
        Ok(JobRun::Finished(status))
    }

    /// Watches a running job for as long as it runs: renews its lease every third of a
    /// lease, and sets `stop` once the log says it no longer runs here (stopped, or
    /// expired by someone who saw its lease lapse).
    async fn hold(&self, job: &JobRecord, stop: &AtomicBool) -> std::convert::Infallible {
        let mut poll = tokio::time::interval(STOP_POLL);
        let (mut renewed_at, mut renewals) = (tokio::time::Instant::now(), 0u64);
        loop {
            poll.tick().await;
            match self.still_runs(job).await {
                Ok(false) => stop.store(true, Ordering::SeqCst),
                Ok(true) if renewed_at.elapsed() >= self.config.lease / 3 => {
                    renewals += 1;
                    let ctx = self.ctx(job, &format!("lease-{renewals}"));
                    match self
                        .jobs
                        .renew_lease(&ctx, &job.id, &self.config.name, self.config.lease)
                        .await
                    {
                        Ok(true) => renewed_at = tokio::time::Instant::now(),
                        Ok(false) => stop.store(true, Ordering::SeqCst),
                        // A failed renewal (a throttled write) is retried on the next tick.
                        Err(err) => {
                            tracing::warn!(job = %job.id, %err, "could not renew the job's lease")
                        }
                    }
                }
                Ok(true) => {}
                Err(err) => tracing::warn!(job = %job.id, %err, "could not read the job's state"),
            }
        }
    }

    /// Whether `job` is still this worker's running job (not stopped, expired or
    /// finished by someone else).
    async fn still_runs(&self, job: &JobRecord) -> Result<bool> {
        let view = self.jobs.view().await.map_err(store_error)?;
        Ok(view.job(&job.id).is_some_and(|j| {
            j.status == JobStatus::Running
                && !j.stop_requested
                && j.worker.as_deref() == Some(self.config.name.as_str())
        }))
    }

    /// A local file holding a blob: the blob itself in a folder store, else a download,
    /// streamed to disk and renamed into place, once per job (the file is named by the
    /// content's hash, so a volume pinned by many labels is fetched once).
    async fn local_file(&self, blob: &medlabel_events::BlobRef, scratch: &Path) -> Result<PathBuf> {
        if let Some(path) = self.blobs.local_path(blob) {
            return Ok(path);
        }
        let path = scratch.join(format!("{}{}", blob.sha256, blob.ext));
        if path.is_file() {
            return Ok(path);
        }
        let partial = scratch.join(format!(".{}.part", blob.sha256));
        let mut reader = self.blobs.get(blob).await.map_err(store_error)?;
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| RunnerError::io(&partial, e))?;
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(|e| RunnerError::io(&partial, e))?;
        std::fs::rename(&partial, &path).map_err(|e| RunnerError::io(&path, e))?;
        Ok(path)
    }

    /// Runs a claimed job until it ends or `stop` is set (then it ends early).
    async fn run_job(&self, job: &JobRecord, stop: &Arc<AtomicBool>) -> Result<(JobStatus, Value)> {
        let model = job
            .model
            .as_ref()
            .ok_or_else(|| RunnerError::invalid("the job names no model"))?;
        let published = self
            .models
            .current(model)
            .await
            .map_err(|e| RunnerError::invalid(format!("model {model}: {e}")))?;
        let model_dir =
            materialise(self.blobs.as_ref(), &self.config.models_dir, &published).await?;
        let scratch = self.config.work_dir.join(job.id.as_str());
        std::fs::create_dir_all(&scratch).map_err(|e| RunnerError::io(&scratch, e))?;
        let outcome = match job.kind {
            JobKind::Train => {
                self.train(job, &published, &model_dir, &scratch, stop)
                    .await
            }
            JobKind::Scoring => {
                self.score_epistemic(job, &published, &model_dir, stop)
                    .await
            }
            JobKind::BatchInfer => self.batch_infer(job, &model_dir, &scratch, stop).await,
        };
        // Scratch holds copies only; the results are blobs and events by now.
        let _ = std::fs::remove_dir_all(&scratch);
        outcome
    }

    async fn train(
        &self,
        job: &JobRecord,
        published: &PublishedModel,
        model_dir: &Path,
        scratch: &Path,
        stop: &Arc<AtomicBool>,
    ) -> Result<(JobStatus, Value)> {
        let labels = pinned(self.blobs.as_ref(), job)
            .await
            .map_err(store_error)?;
        let mut datalist = Vec::with_capacity(labels.len());
        for pinned in &labels {
            datalist.push((
                self.local_file(&pinned.image_blob, scratch).await?,
                self.local_file(&pinned.label_blob, scratch).await?,
            ));
        }
        if datalist.len() < 2 {
            return Err(RunnerError::invalid(format!(
                "training needs at least 2 images with a final label; the request pinned {}",
                datalist.len()
            )));
        }
        let request = train_request(&job.params, model_dir, &self.config.device);
        let out = scratch.join("run");
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
        let training = {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || {
                train(
                    &request,
                    &datalist,
                    &out,
                    |stats| {
                        let _ = progress_tx.send(serde_json::to_value(stats).unwrap_or_default());
                    },
                    &stop,
                )
            })
        };
        tokio::pin!(training);
        let outcome = loop {
            tokio::select! {
                done = &mut training => break done.map_err(|e| RunnerError::invalid(e.to_string()))??,
                Some(stats) = progress_rx.recv() => self.record_progress(job, stats).await?,
            }
        };
        while let Ok(stats) = progress_rx.try_recv() {
            self.record_progress(job, stats).await?;
        }
        let stats = serde_json::to_value(&outcome.stats).unwrap_or_default();
        let best = stats["best_metric"].as_f64();
        // Publish only a model that validated better than the one it started from.
        let improves = best.is_some_and(|b| published.metric.is_none_or(|m| b > m));
        let mut result = json!({"train_stats": stats, "published": Value::Null});
        if improves {
            // Fine-tuned TorchScript stays TorchScript; native networks save safetensors.
            let weights_file = Model::weights_file(&outcome.model_dir)?;
            let suffix = weights_file
                .extension()
                .and_then(|e| e.to_str())
                .map(|e| format!(".{e}"))
                .unwrap_or_default();
            let weights = self
                .blobs
                .put_file(&weights_file, &ext(&suffix))
                .await
                .map_err(store_error)?;
            let config = self
                .blobs
                .put_file(&outcome.model_dir.join(CONFIG_FILE), &ext(".json"))
                .await
                .map_err(store_error)?;
            let model = self
                .models
                .publish(
                    &self.ctx(job, "publish"),
                    &published.model,
                    weights,
                    config,
                    best,
                    Some(job.id.clone()),
                )
                .await
                .map_err(store_error)?;
            result["published"] = json!({"model": model.model, "version": model.version});
            // A new model makes the stored uncertainty stale: queue epistemic re-scoring.
            let rescore = json!({"method": "epistemic"})
                .as_object()
                .cloned()
                .unwrap_or_default();
            self.jobs
                .request(
                    &self.ctx(job, "rescore"),
                    JobKind::Scoring,
                    Some(model.model.clone()),
                    rescore,
                    None,
                    true,
                )
                .await
                .map_err(store_error)?;
        }
        let status = if outcome.stopped {
            JobStatus::Stopped
        } else {
            JobStatus::Done
        };
        Ok((status, result))
    }

    /// One epoch's `train_stats` as a `JobProgressed` event (once per epoch).
    async fn record_progress(&self, job: &JobRecord, stats: Value) -> Result<()> {
        let epoch = stats["epoch"].as_u64().unwrap_or(0);
        let stats = stats.as_object().cloned().unwrap_or_default();
        self.jobs
            .progress(&self.ctx(job, &format!("epoch-{epoch}")), job, stats)
            .await
            .map_err(store_error)
    }

    async fn score_epistemic(
        &self,
        job: &JobRecord,
        published: &PublishedModel,
        model_dir: &Path,
        stop: &AtomicBool,
    ) -> Result<(JobStatus, Value)> {
        let passes = job
            .params
            .get("simulation_size")
            .and_then(Value::as_u64)
            .unwrap_or(5) as usize;
        let images = self
            .datastore
            .get_unlabeled_images(&Tag::final_tag(), &[])
            .await
            .map_err(store_error)?;
        let device = crate::parse_device(&self.config.device)?;
        // libtorch modules are not Sync: one blocking task at a time holds the model.
        let model = Arc::new(std::sync::Mutex::new(Model::load(model_dir, device)?));
        let mut scores = Info::new();
        for (n, image) in images.iter().enumerate() {
            if stop.load(Ordering::SeqCst) {
                return Ok((JobStatus::Stopped, json!({"scores": scores})));
            }
            let record = self.datastore.image(image).await.map_err(store_error)?;
            // A DICOMweb series not fetched yet has no volume to score.
            if record.awaits_fetch() {
                continue;
            }
            let scratch = self.config.work_dir.join(job.id.as_str());
            let path = self.local_file(&record.blob, &scratch).await?;
            let model = model.clone();
            let score = tokio::task::spawn_blocking(move || {
                let volume = crate::io::read_image(&path)?;
                let model = model
                    .lock()
                    .map_err(|_| RunnerError::invalid("model lock poisoned"))?;
                mc_dropout(&model, &volume, passes, 0.25, n as i64)
            })
            .await
            .map_err(|e| RunnerError::invalid(e.to_string()))??;
            let values = json!({
                "epistemic_entropy": score.entropy,
                "epistemic_variance": score.variance,
                "epistemic_ts": published.version,
            });
            let values = values.as_object().cloned().unwrap_or_default();
            self.datastore
                .record_score(
                    &self.ctx(job, &format!("score-{image}")),
                    image,
                    "epistemic",
                    None,
                    values,
                )
                .await
                .map_err(store_error)?;
            scores.insert(image.to_string(), json!(score.entropy));
        }
        Ok((JobStatus::Done, json!({"scores": scores})))
    }

    async fn batch_infer(
        &self,
        job: &JobRecord,
        model_dir: &Path,
        scratch: &Path,
        stop: &AtomicBool,
    ) -> Result<(JobStatus, Value)> {
        let which = job
            .params
            .get("images")
            .and_then(Value::as_str)
            .unwrap_or("all");
        let tag = job
            .params
            .get("label_tag")
            .and_then(Value::as_str)
            .and_then(|t| Tag::parse(t).ok())
            .unwrap_or_else(Tag::original);
        let mut images = match which {
            "labeled" => {
                self.datastore
                    .get_labeled_images(&Tag::final_tag(), &[])
                    .await
            }
            "unlabeled" => {
                self.datastore
                    .get_unlabeled_images(&Tag::final_tag(), &[])
                    .await
            }
            _ => self.datastore.list_images().await,
        }
        .map_err(store_error)?;
        if let Some(limit) = job
            .params
            .get("max_batch_size")
            .and_then(Value::as_u64)
            .filter(|n| *n > 0)
        {
            images.truncate(limit as usize);
        }
        let device = crate::parse_device(&self.config.device)?;
        let model = Arc::new(std::sync::Mutex::new(Model::load(model_dir, device)?));
        let mut results = Info::new();
        for image in &images {
            if stop.load(Ordering::SeqCst) {
                return Ok((JobStatus::Stopped, json!({"results": results})));
            }
            let record = self.datastore.image(image).await.map_err(store_error)?;
            // A DICOMweb series not fetched yet has no volume to infer on.
            if record.awaits_fetch() {
                continue;
            }
            let input = self.local_file(&record.blob, scratch).await?;
            let output = scratch.join(format!("{image}.nii.gz"));
            let (model, out) = (model.clone(), output.clone());
            let latencies = tokio::task::spawn_blocking(move || {
                let model = model
                    .lock()
                    .map_err(|_| RunnerError::invalid("model lock poisoned"))?;
                infer_file(&model, &input, &out, &InferOptions::default())
            })
            .await
            .map_err(|e| RunnerError::invalid(e.to_string()))??;
            let info = json!({"model": job.model, "params": {"latencies": latencies}});
            let saved = self
                .datastore
                .save_label(
                    &self.ctx(job, &format!("label-{image}")),
                    image,
                    &tag,
                    &output,
                    &ext(".nii.gz"),
                    info.as_object().cloned().unwrap_or_default(),
                )
                .await
                .map_err(store_error)?;
            results.insert(
                image.to_string(),
                json!({"label": image, "tag": tag, "version": saved.version}),
            );
        }
        Ok((JobStatus::Done, json!({"results": results})))
    }
}

/// The models published in a log, written on demand into a folder a `serve` endpoint
/// reads ([`crate::serve::ModelSource`]).
pub struct LogModels {
    models: Arc<Models>,
    blobs: Arc<dyn BlobStore>,
    models_dir: PathBuf,
}

impl LogModels {
    pub fn new(models: Arc<Models>, blobs: Arc<dyn BlobStore>, models_dir: PathBuf) -> Self {
        Self {
            models,
            blobs,
            models_dir,
        }
    }

    /// Writes every published model into the folder; returns how many there are.
    pub async fn sync(&self) -> Result<usize> {
        sync_models(&self.models, self.blobs.as_ref(), &self.models_dir).await
    }
}

#[async_trait::async_trait]
impl crate::serve::ModelSource for LogModels {
    async fn bring_in(&self, name: &str, version: u32) -> Result<()> {
        let published = self
            .models
            .view()
            .await
            .map_err(store_error)?
            .models()
            .find(|m| m.model.as_str() == name)
            .cloned();
        match published {
            Some(model) if model.version >= version => {
                materialise(self.blobs.as_ref(), &self.models_dir, &model).await?;
                Ok(())
            }
            _ => Err(RunnerError::invalid(format!(
                "the log has no version {version} of model {name}"
            ))),
        }
    }
}

/// Writes every model published in `models` into `models_dir`, one folder per model,
/// and returns how many there are. A `serve` endpoint reading that folder picks each up
/// on its next request: a new folder by its name, a new version by its `.version` stamp.
pub async fn sync_models(
    models: &Models,
    blobs: &dyn BlobStore,
    models_dir: &Path,
) -> Result<usize> {
    let models: Vec<PublishedModel> = models
        .view()
        .await
        .map_err(store_error)?
        .models()
        .cloned()
        .collect();
    for model in &models {
        materialise(blobs, models_dir, model).await?;
    }
    Ok(models.len())
}

/// Writes a published model's files into `<models_dir>/<name>/` unless they are there.
async fn materialise(
    blobs: &dyn BlobStore,
    models_dir: &Path,
    model: &PublishedModel,
) -> Result<PathBuf> {
    // One writer at a time: the worker's sync and a request bringing a version in may
    // materialise the same model together, through the same staging names.
    static WRITING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _writing = WRITING.lock().await;
    let dir = models_dir.join(model.model.as_str());
    let marker = dir.join(VERSION_FILE);
    let stamp = format!("{} {}", model.version, model.weights.sha256);
    if std::fs::read_to_string(&marker).is_ok_and(|s| s == stamp) {
        return Ok(dir);
    }
    let config = read_to_vec(blobs, &model.config)
        .await
        .map_err(store_error)?;
    let weights_name = folder::weights_file_of(&config).map_err(RunnerError::invalid)?;
    std::fs::create_dir_all(&dir).map_err(|e| RunnerError::io(&dir, e))?;
    // The config first: a server picks a folder up only once its weights are there too.
    for (blob, name) in [(&model.config, CONFIG_FILE), (&model.weights, weights_name)] {
        let bytes = if name == CONFIG_FILE {
            config.clone()
        } else {
            read_to_vec(blobs, blob).await.map_err(store_error)?
        };
        let staged = dir.join(format!(".{name}.tmp"));
        std::fs::write(&staged, bytes).map_err(|e| RunnerError::io(&staged, e))?;
        std::fs::rename(&staged, dir.join(name)).map_err(|e| RunnerError::io(&dir, e))?;
    }
    std::fs::write(&marker, stamp).map_err(|e| RunnerError::io(&marker, e))?;
    tracing::info!(model = %model.model, version = model.version, "model materialised");
    Ok(dir)
}

fn ext(value: &str) -> Extension {
    Extension::parse(value).expect("a valid extension")
}

/// The training request: the published model fine-tuned (or, with MONAI Label's
/// `pretrained: false`, its network trained from fresh weights), with MONAI Label's
/// request keys (`max_epochs`, `val_split`, `train_batch_size`, ...) applied over the
/// defaults.
fn train_request(params: &Info, model_dir: &Path, device: &str) -> TrainRequest {
    let number = |key: &str| params.get(key).and_then(Value::as_f64);
    let mut request = TrainRequest {
        pretrained: Some(model_dir.to_path_buf()),
        from_scratch: params.get("pretrained").and_then(Value::as_bool) == Some(false),
        device: device.to_owned(),
        ..TrainRequest::default()
    };
    if let Some(batch) = number("train_batch_size") {
        request.train_batch_size = batch.max(1.0) as usize;
    }
    // MONAI Label's -1 (and any value under 1) means no early stop.
    if let Some(patience) = number("early_stop_patience") {
        request.early_stop_patience = patience.max(0.0) as usize;
    }
    if let Some(epochs) = number("max_epochs") {
        request.max_epochs = epochs.max(1.0) as usize;
    }
    if let Some(split) = number("val_split") {
        request.val_split = split.clamp(0.0, 0.9);
    }
    if let Some(lr) = number("learning_rate").or_else(|| number("lr")) {
        request.learning_rate = lr;
    }
    if let Some(interval) = number("val_interval") {
        request.val_interval = interval.max(1.0) as usize;
    }
    if let Some(seed) = number("seed") {
        request.seed = seed as u64;
    }
    request
}

#[cfg(test)]
mod tests {
    use medlabel_events::ModelName;
    use medlabel_events::blob::fs::FolderBlobStore;

    use super::*;

    fn params(value: Value) -> Info {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn monai_label_train_keys_reach_the_request() {
        let dir = Path::new("/models/segmentation");
        let request = train_request(
            &params(json!({"pretrained": false, "train_batch_size": 4, "early_stop_patience": 3})),
            dir,
            "cpu",
        );
        assert!(request.from_scratch);
        assert_eq!(request.train_batch_size, 4);
        assert_eq!(request.early_stop_patience, 3);
        assert_eq!(request.pretrained.as_deref(), Some(dir));

        // MONAI Label's defaults: fine-tune, and -1 turns early stopping off.
        let request = train_request(
            &params(json!({"pretrained": true, "early_stop_patience": -1})),
            dir,
            "cpu",
        );
        assert!(!request.from_scratch);
        assert_eq!(request.early_stop_patience, 0);
        assert_eq!(request.train_batch_size, 1);
    }

    #[tokio::test]
    async fn a_published_torchscript_model_lands_under_the_name_its_config_gives() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = FolderBlobStore::open(tmp.path().join("blobs")).unwrap();
        let ext = |e: &str| Extension::parse(e).unwrap();
        let config = blobs
            .put_bytes(br#"{"format": "torchscript"}"#.to_vec(), &ext(".json"))
            .await
            .unwrap();
        let weights = blobs
            .put_bytes(b"torchscript archive".to_vec(), &ext(".ts"))
            .await
            .unwrap();
        let model = PublishedModel {
            model: ModelName::parse("imported").unwrap(),
            version: 2,
            weights: weights.clone(),
            config,
            metric: None,
            training_run: None,
            published_at_ms: 0,
        };
        let models_dir = tmp.path().join("models");
        let dir = materialise(&blobs, &models_dir, &model).await.unwrap();
        assert_eq!(
            std::fs::read(dir.join(folder::TORCHSCRIPT_FILE)).unwrap(),
            b"torchscript archive"
        );
        assert!(!dir.join(folder::SAFETENSORS_FILE).exists());
        assert_eq!(
            std::fs::read_to_string(dir.join(VERSION_FILE)).unwrap(),
            format!("2 {}", weights.sha256)
        );

        // A config naming no known format is refused before anything is written.
        let bad = PublishedModel {
            model: ModelName::parse("odd").unwrap(),
            config: blobs
                .put_bytes(br#"{"format": "onnx"}"#.to_vec(), &ext(".json"))
                .await
                .unwrap(),
            ..model
        };
        let err = materialise(&blobs, &models_dir, &bad).await.unwrap_err();
        assert!(err.to_string().contains("onnx"), "{err}");
        assert!(!models_dir.join("odd").exists());
    }
}
