//! GPU jobs (training, scoring, batch inference) and published models, as events.
//!
//! MONAI Label keeps task records in memory and loses them on restart; here a job is a
//! stream (`train/<run>` or `job/<id>`): `JobRequested` → `JobStarted` (a runner's claim:
//! appended at version 1, so two runners cannot both claim a job) → `JobProgressed`* →
//! `JobFinished`. A training request pins the exact label versions it will train on.
//! Published models are streams too (`model/<name>`), so every model version, its metric
//! and the run that produced it stay on record.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLockReadGuard};

use serde_json::{Value, json};

use crate::blob::BlobRef;
use crate::clock::Clock;
use crate::datastore::WriteContext;
use crate::event::{
    Event, Info, JobKind, JobStatus, LabelVersionRef, NewEvent, RecordedEvent, StreamId,
};
use crate::id::{ModelName, RunId};
use crate::projection::{Projected, Projection};
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// Why a job operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// MONAI Label's 429 text, e.g. `++++++++++ Train Task is Already Running`.
    #[error("++++++++++ {} Task is Already Running", kind_title(*.0))]
    AlreadyRunning(JobKind),
    #[error("No {} Tasks Found", kind_title(*.0))]
    NotFound(JobKind),
    #[error("Model File NOT Found for {0}")]
    ModelNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// MONAI Label's capitalised task names.
pub fn kind_title(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Train => "Train",
        JobKind::Scoring => "Scoring",
        JobKind::BatchInfer => "Batch_infer",
    }
}

/// The stream a job lives in.
pub fn job_stream(kind: JobKind, job: &RunId) -> StreamId {
    match kind {
        JobKind::Train => StreamId::training(job),
        JobKind::Scoring | JobKind::BatchInfer => StreamId::job(job),
    }
}

/// A job as the log tells it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub id: RunId,
    pub kind: JobKind,
    pub model: Option<ModelName>,
    pub params: Info,
    pub labels: Vec<LabelVersionRef>,
    pub as_of_position: Option<u64>,
    pub status: JobStatus,
    pub requested_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub worker: Option<String>,
    pub stop_requested: bool,
    /// The latest progress (for training: MONAI Label's `train_stats`).
    pub stats: Info,
    pub result: Info,
    /// The job stream's version.
    pub version: u64,
}

fn format_ts(ms: i64) -> String {
    // MONAI Label's "YYYY-mm-dd HH:MM:SS" (UTC here).
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl JobRecord {
    /// Whether the job still occupies its kind's single slot.
    pub fn is_active(&self) -> bool {
        matches!(self.status, JobStatus::Submitted | JobStatus::Running)
    }

    /// MONAI Label's task dict: `{id, status, request, start_ts, end_ts?, details}`.
    pub fn to_task_json(&self) -> Value {
        let mut request = self.params.clone();
        if let Some(model) = &self.model {
            request.insert("model".into(), json!(model));
        }
        let mut task = json!({
            "id": self.id,
            "status": self.status,
            "request": request,
            "start_ts": format_ts(self.started_at_ms.unwrap_or(self.requested_at_ms)),
            "details": self.result.get("details").cloned().unwrap_or_else(|| json!([])),
        });
        if let Some(end) = self.ended_at_ms {
            task["end_ts"] = json!(format_ts(end));
        }
        if !self.result.is_empty() {
            task["result"] = Value::Object(self.result.clone());
        }
        task
    }
}

/// A model version inference can use.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PublishedModel {
    pub model: ModelName,
    pub version: u32,
    pub weights: BlobRef,
    pub config: BlobRef,
    pub metric: Option<f64>,
    pub training_run: Option<RunId>,
    pub published_at_ms: i64,
}

/// Jobs and models, folded from the log.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobsView {
    position: u64,
    jobs: HashMap<RunId, JobRecord>,
    /// Job ids of each kind in request order.
    order: HashMap<JobKind, Vec<RunId>>,
    models: BTreeMap<ModelName, PublishedModel>,
    model_versions: HashMap<ModelName, (u64, u32)>,
}

impl Projection for JobsView {
    fn position(&self) -> u64 {
        self.position
    }

    fn apply(&mut self, recorded: &RecordedEvent) {
        self.position = recorded.position;
        let ts = recorded.timestamp_ms;
        match &recorded.event {
            Event::JobRequested {
                job,
                kind,
                model,
                params,
                labels,
                as_of_position,
            } => {
                self.order.entry(*kind).or_default().push(job.clone());
                self.jobs.insert(
                    job.clone(),
                    JobRecord {
                        id: job.clone(),
                        kind: *kind,
                        model: model.clone(),
                        params: params.clone(),
                        labels: labels.clone(),
                        as_of_position: *as_of_position,
                        status: JobStatus::Submitted,
                        requested_at_ms: ts,
                        started_at_ms: None,
                        ended_at_ms: None,
                        worker: None,
                        stop_requested: false,
                        stats: Info::new(),
                        result: Info::new(),
                        version: recorded.sequence,
                    },
                );
            }
            Event::JobStarted { job, worker } => self.update(job, recorded, |record| {
                record.status = JobStatus::Running;
                record.started_at_ms = Some(ts);
                record.worker = Some(worker.clone());
            }),
            Event::JobProgressed { job, stats } => {
                self.update(job, recorded, |record| record.stats = stats.clone())
            }
            Event::JobStopRequested { job } => {
                self.update(job, recorded, |record| record.stop_requested = true)
            }
            Event::JobFinished {
                job,
                status,
                result,
            } => self.update(job, recorded, |record| {
                record.status = *status;
                record.ended_at_ms = Some(ts);
                record.result = result.clone();
            }),
            Event::ModelPublished {
                model,
                version,
                weights,
                config,
                metric,
                training_run,
            } => {
                self.model_versions
                    .insert(model.clone(), (recorded.sequence, *version));
                self.models.insert(
                    model.clone(),
                    PublishedModel {
                        model: model.clone(),
                        version: *version,
                        weights: weights.clone(),
                        config: config.clone(),
                        metric: *metric,
                        training_run: training_run.clone(),
                        published_at_ms: ts,
                    },
                );
            }
            Event::ModelDeleted { model } => {
                let last = self.model_versions.get(model).map_or(0, |v| v.1);
                self.model_versions
                    .insert(model.clone(), (recorded.sequence, last));
                self.models.remove(model);
            }
            _ => {}
        }
    }
}

impl JobsView {
    fn update(
        &mut self,
        job: &RunId,
        recorded: &RecordedEvent,
        change: impl FnOnce(&mut JobRecord),
    ) {
        if let Some(record) = self.jobs.get_mut(job) {
            record.version = recorded.sequence;
            change(record);
        }
    }

    pub fn job(&self, id: &RunId) -> Option<&JobRecord> {
        self.jobs.get(id)
    }

    /// Jobs of `kind`, oldest first.
    pub fn all(&self, kind: JobKind) -> Vec<&JobRecord> {
        self.order
            .get(&kind)
            .into_iter()
            .flatten()
            .filter_map(|id| self.jobs.get(id))
            .collect()
    }

    pub fn latest(&self, kind: JobKind) -> Option<&JobRecord> {
        self.all(kind).into_iter().last()
    }

    /// The oldest job of `kind` that is submitted or running.
    pub fn active(&self, kind: JobKind) -> Option<&JobRecord> {
        self.all(kind).into_iter().find(|j| j.is_active())
    }

    /// Every job not yet finished, oldest first (what a runner has to do).
    pub fn pending(&self) -> Vec<&JobRecord> {
        let mut pending: Vec<_> = self.jobs.values().filter(|j| j.is_active()).collect();
        pending.sort_by_key(|j| (j.requested_at_ms, j.id.clone()));
        pending
    }

    pub fn model(&self, name: &ModelName) -> Option<&PublishedModel> {
        self.models.get(name)
    }

    pub fn models(&self) -> impl Iterator<Item = &PublishedModel> {
        self.models.values()
    }

    /// The latest training stats of each model (`/info/` `train_stats`).
    pub fn train_stats(&self, model: &ModelName) -> Option<&Info> {
        self.all(JobKind::Train)
            .into_iter()
            .rev()
            .find(|j| j.model.as_ref() == Some(model) && !j.stats.is_empty())
            .map(|j| &j.stats)
    }
}

/// The jobs service.
pub struct Jobs {
    clock: Arc<dyn Clock>,
    view: Projected<JobsView>,
}

impl Jobs {
    pub fn new(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            view: Projected::new(store),
            clock,
        }
    }

    /// Jobs over `view`, a view restored elsewhere (`crate::cold_start`) that its first
    /// read catches up with the log.
    pub fn starting_at(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>, view: JobsView) -> Self {
        Self {
            view: Projected::starting_at(store, view),
            clock,
        }
    }

    /// The jobs view, caught up with the log.
    pub async fn view(&self) -> Result<RwLockReadGuard<'_, JobsView>, JobError> {
        Ok(self.view.read().await?)
    }

    async fn append(
        &self,
        ctx: &WriteContext,
        stream: &StreamId,
        expected: ExpectedVersion,
        event: Event,
    ) -> Result<(), JobError> {
        let event = NewEvent {
            event,
            actor: ctx.actor.clone(),
            timestamp_ms: self.clock.now_ms(),
        };
        self.view
            .append(stream, expected, vec![event], &ctx.request_id)
            .await?;
        Ok(())
    }

    /// Asks for a job. Unless `enqueue`, a job of the same kind still active refuses it
    /// (MONAI Label's one-at-a-time rule and 429).
    #[allow(clippy::too_many_arguments)]
    pub async fn request(
        &self,
        ctx: &WriteContext,
        kind: JobKind,
        model: Option<ModelName>,
        params: Info,
        labels: Vec<LabelVersionRef>,
        as_of_position: Option<u64>,
        enqueue: bool,
    ) -> Result<JobRecord, JobError> {
        if !enqueue && self.view().await?.active(kind).is_some() {
            return Err(JobError::AlreadyRunning(kind));
        }
        // The job id derives from the request id, so a retried request names the same
        // job and the store's idempotency records it once.
        let job = RunId::parse(
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, ctx.request_id.as_bytes()).to_string(),
        )
        .expect("a UUID is a valid run id");
        let event = Event::JobRequested {
            job: job.clone(),
            kind,
            model,
            params,
            labels,
            as_of_position,
        };
        self.append(ctx, &job_stream(kind, &job), ExpectedVersion::Any, event)
            .await?;
        Ok(self.view.peek().job(&job).cloned().expect("just recorded"))
    }

    /// Claims a submitted job for `worker`; `false` if another runner got it first or
    /// it is no longer submitted.
    pub async fn claim(
        &self,
        ctx: &WriteContext,
        job: &JobRecord,
        worker: &str,
    ) -> Result<bool, JobError> {
        if job.status != JobStatus::Submitted {
            return Ok(false);
        }
        let event = Event::JobStarted {
            job: job.id.clone(),
            worker: worker.into(),
        };
        match self
            .append(
                ctx,
                &job_stream(job.kind, &job.id),
                ExpectedVersion::Exact(job.version),
                event,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(JobError::Store(StoreError::Conflict { .. })) => Ok(false),
            Err(err) => Err(err),
        }
    }

    pub async fn progress(
        &self,
        ctx: &WriteContext,
        job: &JobRecord,
        stats: Info,
    ) -> Result<(), JobError> {
        let event = Event::JobProgressed {
            job: job.id.clone(),
            stats,
        };
        self.append(
            ctx,
            &job_stream(job.kind, &job.id),
            ExpectedVersion::Any,
            event,
        )
        .await
    }

    pub async fn finish(
        &self,
        ctx: &WriteContext,
        job: &JobRecord,
        status: JobStatus,
        result: Info,
    ) -> Result<(), JobError> {
        let event = Event::JobFinished {
            job: job.id.clone(),
            status,
            result,
        };
        self.append(
            ctx,
            &job_stream(job.kind, &job.id),
            ExpectedVersion::Any,
            event,
        )
        .await
    }

    /// Asks the active job of `kind` to stop; a job no runner has claimed yet stops at
    /// once. Returns the job as it now stands, or `None` when nothing was active.
    pub async fn stop(
        &self,
        ctx: &WriteContext,
        kind: JobKind,
    ) -> Result<Option<JobRecord>, JobError> {
        let Some(job) = self.view().await?.active(kind).cloned() else {
            return Ok(None);
        };
        let stream = job_stream(kind, &job.id);
        let event = if job.status == JobStatus::Submitted {
            Event::JobFinished {
                job: job.id.clone(),
                status: JobStatus::Stopped,
                result: Info::new(),
            }
        } else {
            Event::JobStopRequested {
                job: job.id.clone(),
            }
        };
        self.append(ctx, &stream, ExpectedVersion::Any, event)
            .await?;
        Ok(self.view.peek().job(&job.id).cloned())
    }

    /// Makes `weights` + `config` the model inference uses, as the next version.
    pub async fn publish_model(
        &self,
        ctx: &WriteContext,
        model: &ModelName,
        weights: BlobRef,
        config: BlobRef,
        metric: Option<f64>,
        training_run: Option<RunId>,
    ) -> Result<PublishedModel, JobError> {
        let (stream_version, last) = self
            .view()
            .await?
            .model_versions
            .get(model)
            .copied()
            .unwrap_or((0, 0));
        let event = Event::ModelPublished {
            model: model.clone(),
            version: last + 1,
            weights,
            config,
            metric,
            training_run,
        };
        self.append(
            ctx,
            &StreamId::model(model),
            ExpectedVersion::from_version(stream_version),
            event,
        )
        .await?;
        // Absent only when the request id was already spent on another model's publication.
        self.view
            .peek()
            .model(model)
            .cloned()
            .ok_or_else(|| JobError::ModelNotFound(model.to_string()))
    }

    /// Withdraws a model (MONAI Label's `DELETE /model/{m}`).
    pub async fn delete_model(
        &self,
        ctx: &WriteContext,
        model: &ModelName,
    ) -> Result<(), JobError> {
        if self.view().await?.model(model).is_none() {
            return Err(JobError::ModelNotFound(model.to_string()));
        }
        let event = Event::ModelDeleted {
            model: model.clone(),
        };
        self.append(ctx, &StreamId::model(model), ExpectedVersion::Any, event)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps_like_monai_label() {
        assert_eq!(format_ts(0), "1970-01-01 00:00:00");
        assert_eq!(format_ts(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_ts(951_782_400_000), "2000-02-29 00:00:00");
    }
}
