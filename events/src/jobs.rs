//! GPU jobs (training, scoring, batch inference), as events.
//!
//! MONAI Label keeps task records in memory and loses them on restart; here a job is a
//! stream (`train/<run>` or `job/<id>`) and every change to it an event:
//! `JobRequested` → `JobStarted` (a runner's claim, at the job stream's first version, so
//! two runners cannot both claim a job) → `JobLeaseRenewed`* / `JobProgressed`* →
//! `JobFinished`. A training request pins the exact label versions it will train on,
//! as a blob the event names ([`crate::pinned`]); the model a run publishes is a
//! [`crate::models`] event.
//!
//! Every write is a pure decision ([`decide`]) appended at the version it was decided
//! on ([`crate::decision::execute`]):
//! - A request is appended to its kind's stream (`tasks/<kind>`) at that stream's
//!   version, so of several concurrent requests for a kind's one slot (MONAI Label runs
//!   one task of each kind at a time) exactly one is accepted, across processes and
//!   Lambda instances: the others conflict, see it on a caught-up view and are refused.
//! - A runner holds a claimed job only while it renews its lease. A job whose lease
//!   lapsed (its runner was killed, or hangs) is ended as `ERROR` by whoever meets it
//!   next (a request, a stop, a status read, a runner), so training can start again.
//! - Stopping a job ends it at once (`STOPPED`, as MONAI Label's kill does); the runner
//!   sees the job is no longer running and stops its work.

use std::collections::HashMap;
use std::sync::{Arc, RwLockReadGuard};
use std::time::Duration;

use serde_json::{Value, json};

use crate::blob::BlobRef;
use crate::clock::Clock;
use crate::datastore::WriteContext;
use crate::decision::{self, Decision, WriteError};
use crate::event::{Event, Info, JobKind, JobStatus, LabelVersionRef, RecordedEvent, StreamId};
use crate::id::{ModelName, RunId};
use crate::pinned::PinnedLabels;
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
    #[error("gave up after {0} version conflicts; try again")]
    Contended(usize),
    #[error("request id {0:?} was already used for a different write")]
    RequestIdReused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WriteError for JobError {
    fn contended(attempts: usize) -> Self {
        Self::Contended(attempts)
    }
    fn request_id_reused(request_id: &str) -> Self {
        Self::RequestIdReused(request_id.to_owned())
    }
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
    /// The pinned label versions, inline (logs from before they became a blob).
    pub labels: Vec<LabelVersionRef>,
    /// The pinned label versions as a blob ([`crate::pinned::pinned`] reads either).
    pub labels_blob: Option<BlobRef>,
    pub as_of_position: Option<u64>,
    pub status: JobStatus,
    pub requested_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub worker: Option<String>,
    /// Until when the runner holds the job (`None`: no lease, as in logs from before
    /// leases, or not claimed yet).
    pub lease_until_ms: Option<i64>,
    /// A client asked to stop it (`JobStopRequested`, in logs from before stops ended a
    /// job at once).
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

    /// Whether the job is running on a lease that ran out before `now_ms`.
    pub fn lease_lapsed(&self, now_ms: i64) -> bool {
        self.status == JobStatus::Running && self.lease_until_ms.is_some_and(|t| t < now_ms)
    }

    /// The stream this job's events after the request go to.
    pub fn stream(&self) -> StreamId {
        job_stream(self.kind, &self.id)
    }

    /// MONAI Label's task dict: `{id, status, request, start_ts, end_ts?, details}`,
    /// plus medlabel's `result` when the job left more than log lines. `details` are the
    /// job's last lines (MONAI Label's last lines of the task's output); a task stopped
    /// by `DELETE /train/` has no `result`, so Slicer's stop button shows `details[-1]`.
    pub fn to_task_json(&self) -> Value {
        let mut request = self.params.clone();
        if let Some(model) = &self.model {
            request.insert("model".into(), json!(model));
        }
        let mut result = self.result.clone();
        let details = result.remove("details").unwrap_or_else(|| json!([]));
        let mut task = json!({
            "id": self.id,
            "status": self.status,
            "request": request,
            "start_ts": format_ts(self.started_at_ms.unwrap_or(self.requested_at_ms)),
            "details": details,
        });
        if let Some(end) = self.ended_at_ms {
            task["end_ts"] = json!(format_ts(end));
        }
        if !result.is_empty() {
            task["result"] = Value::Object(result);
        }
        task
    }
}

/// Jobs, folded from the log.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobsView {
    position: u64,
    jobs: HashMap<RunId, JobRecord>,
    /// Job ids of each kind in request order.
    order: HashMap<JobKind, Vec<RunId>>,
    /// The version of each kind's request stream (`tasks/<kind>`).
    task_versions: HashMap<JobKind, u64>,
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
                labels_blob,
                as_of_position,
            } => {
                // Requests go to the kind's stream; logs from before that hold them in the
                // job's own stream, which then starts at version 1.
                let own_stream = recorded.stream == job_stream(*kind, job);
                if recorded.stream == StreamId::tasks(*kind) {
                    self.task_versions.insert(*kind, recorded.sequence);
                }
                self.order.entry(*kind).or_default().push(job.clone());
                self.jobs.insert(
                    job.clone(),
                    JobRecord {
                        id: job.clone(),
                        kind: *kind,
                        model: model.clone(),
                        params: params.clone(),
                        labels: labels.clone(),
                        labels_blob: labels_blob.clone(),
                        as_of_position: *as_of_position,
                        status: JobStatus::Submitted,
                        requested_at_ms: ts,
                        started_at_ms: None,
                        ended_at_ms: None,
                        worker: None,
                        lease_until_ms: None,
                        stop_requested: false,
                        stats: Info::new(),
                        result: Info::new(),
                        version: if own_stream { recorded.sequence } else { 0 },
                    },
                );
            }
            Event::JobStarted {
                job,
                worker,
                lease_until_ms,
            } => self.update(job, recorded, |record| {
                record.status = JobStatus::Running;
                record.started_at_ms = Some(ts);
                record.worker = Some(worker.clone());
                record.lease_until_ms = *lease_until_ms;
            }),
            Event::JobLeaseRenewed {
                job,
                lease_until_ms,
                ..
            } => self.update(job, recorded, |record| {
                record.lease_until_ms = Some(*lease_until_ms)
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
            // An undecodable event's stream version still counts (see the datastore view).
            Event::Unreadable { .. } => {
                if let Some(kind) = [JobKind::Train, JobKind::Scoring, JobKind::BatchInfer]
                    .into_iter()
                    .find(|kind| recorded.stream == StreamId::tasks(*kind))
                {
                    self.task_versions.insert(kind, recorded.sequence);
                } else if let Some(job) = self
                    .jobs
                    .values_mut()
                    .find(|j| j.stream() == recorded.stream)
                {
                    job.version = recorded.sequence;
                }
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

    /// The latest training stats of each model (`/info/` `train_stats`).
    pub fn train_stats(&self, model: &ModelName) -> Option<&Info> {
        self.all(JobKind::Train)
            .into_iter()
            .rev()
            .find(|j| j.model.as_ref() == Some(model) && !j.stats.is_empty())
            .map(|j| &j.stats)
    }
}

/// Job decisions: pure functions of the view, each returning the events to
/// record on one stream at the version it saw (or nothing, or a refusal).
pub mod decide {
    use super::*;

    fn on_job(job: &JobRecord, event: Event) -> Decision {
        Decision {
            stream: job.stream(),
            expected: ExpectedVersion::from_version(job.version),
            events: vec![event],
        }
    }

    fn finished(job: &JobRecord, status: JobStatus, result: Info) -> Decision {
        on_job(
            job,
            Event::JobFinished {
                job: job.id.clone(),
                status,
                result,
            },
        )
    }

    /// A request for job `job`. Unless `enqueue`, an active job of the same kind
    /// refuses it (MONAI Label's one-at-a-time rule and 429). A job already requested
    /// (a retried request names the same job) records nothing.
    pub fn request(
        view: &JobsView,
        job: &RunId,
        kind: JobKind,
        model: Option<ModelName>,
        params: Info,
        pinned: Option<PinnedLabels>,
        enqueue: bool,
    ) -> Result<Option<Decision>, JobError> {
        if view.job(job).is_some() {
            return Ok(None);
        }
        if !enqueue && view.active(kind).is_some() {
            return Err(JobError::AlreadyRunning(kind));
        }
        let version = view.task_versions.get(&kind).copied().unwrap_or(0);
        Ok(Some(Decision {
            stream: StreamId::tasks(kind),
            expected: ExpectedVersion::from_version(version),
            events: vec![Event::JobRequested {
                job: job.clone(),
                kind,
                model,
                params,
                labels: Vec::new(),
                as_of_position: pinned.as_ref().map(|p| p.as_of_position),
                labels_blob: pinned.map(|p| p.blob),
            }],
        }))
    }

    /// `worker` claims a submitted job until `lease_until_ms`.
    pub fn claim(
        view: &JobsView,
        job: &RunId,
        worker: &str,
        lease_until_ms: i64,
    ) -> Option<Decision> {
        let job = view.job(job).filter(|j| j.status == JobStatus::Submitted)?;
        Some(on_job(
            job,
            Event::JobStarted {
                job: job.id.clone(),
                worker: worker.into(),
                lease_until_ms: Some(lease_until_ms),
            },
        ))
    }

    /// `worker` extends its lease on a job it runs; `None` when the job is no longer
    /// its own running job (stopped, expired, or claimed by another).
    pub fn renew_lease(
        view: &JobsView,
        job: &RunId,
        worker: &str,
        lease_until_ms: i64,
    ) -> Option<Decision> {
        let job = view
            .job(job)
            .filter(|j| j.status == JobStatus::Running && j.worker.as_deref() == Some(worker))?;
        Some(on_job(
            job,
            Event::JobLeaseRenewed {
                job: job.id.clone(),
                worker: worker.into(),
                lease_until_ms,
            },
        ))
    }

    /// Progress of an active job; nothing once it ended.
    pub fn progress(view: &JobsView, job: &RunId, stats: Info) -> Option<Decision> {
        let job = view.job(job).filter(|j| j.is_active())?;
        Some(on_job(
            job,
            Event::JobProgressed {
                job: job.id.clone(),
                stats,
            },
        ))
    }

    /// Ends an active job; nothing when it already ended (stopped or expired meanwhile).
    pub fn finish(
        view: &JobsView,
        job: &RunId,
        status: JobStatus,
        result: Info,
    ) -> Option<Decision> {
        let job = view.job(job).filter(|j| j.is_active())?;
        Some(finished(job, status, result))
    }

    /// Stops the active job of `kind` at once: `STOPPED`, with a line on how far it
    /// got in `details` (MONAI Label's stop answers with the task's last log lines).
    pub fn stop(view: &JobsView, kind: JobKind, now_ms: i64) -> Option<Decision> {
        let job = view.active(kind)?;
        let line = match (&job.worker, job.stats.get("epoch")) {
            (None, _) => "stopped before a runner took it".to_owned(),
            (Some(_), _) if job.lease_lapsed(now_ms) => {
                "stopped; its runner had stopped renewing its lease".to_owned()
            }
            (Some(worker), Some(epoch)) => format!(
                "stopped on {worker} after epoch {epoch} of {}",
                job.stats.get("total_epochs").unwrap_or(&Value::Null)
            ),
            (Some(worker), None) => format!("stopped on {worker} before its first epoch ended"),
        };
        Some(finished(
            job,
            JobStatus::Stopped,
            result_with_detail(job, line),
        ))
    }

    /// Ends a running job whose lease lapsed before `now_ms` as `ERROR`.
    pub fn expire(view: &JobsView, job: &RunId, now_ms: i64) -> Option<Decision> {
        let job = view.job(job).filter(|j| j.lease_lapsed(now_ms))?;
        let line = format!(
            "ended: runner {} stopped renewing its lease (held until {})",
            job.worker.as_deref().unwrap_or("?"),
            format_ts(job.lease_until_ms.unwrap_or_default()),
        );
        Some(finished(
            job,
            JobStatus::Error,
            result_with_detail(job, line),
        ))
    }

    /// Ends a running job of `worker`, a runner known to be gone, as `ERROR`.
    pub fn abandon(view: &JobsView, job: &RunId, worker: &str, why: &str) -> Option<Decision> {
        let job = view
            .job(job)
            .filter(|j| j.status == JobStatus::Running && j.worker.as_deref() == Some(worker))?;
        let line = format!("ended: runner {worker} {why}");
        Some(finished(
            job,
            JobStatus::Error,
            result_with_detail(job, line),
        ))
    }

    fn result_with_detail(job: &JobRecord, line: String) -> Info {
        let mut result = job.result.clone();
        let mut details = match result.remove("details") {
            Some(Value::Array(lines)) => lines,
            _ => Vec::new(),
        };
        details.push(Value::String(line));
        result.insert("details".into(), Value::Array(details));
        result
    }
}

/// The jobs service.
pub struct Jobs {
    clock: Arc<dyn Clock>,
    view: Projected<JobsView>,
}

/// A write context for one step of `ctx`'s request (`<request id>/<step>`), so a
/// request that writes several streams records each once when retried.
fn step(ctx: &WriteContext, step: &str) -> WriteContext {
    WriteContext::new(ctx.actor.clone(), format!("{}/{step}", ctx.request_id))
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

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    async fn execute(
        &self,
        ctx: &WriteContext,
        decide: impl Fn(&JobsView) -> Result<Option<Decision>, JobError>,
    ) -> Result<Option<Decision>, JobError> {
        decision::execute(&self.view, ctx, || self.clock.now_ms(), decide).await
    }

    fn recorded(&self, job: &RunId) -> Result<JobRecord, JobError> {
        // Absent only when the request id had been spent on another write.
        self.view
            .peek()
            .job(job)
            .cloned()
            .ok_or_else(|| JobError::RequestIdReused(job.to_string()))
    }

    /// Asks for a job (a training run with the labels it pins, stored first with
    /// [`crate::pinned::pin`]); unless `enqueue`, an active job of the same kind refuses
    /// it with [`JobError::AlreadyRunning`]. Jobs whose lease lapsed are ended first.
    pub async fn request(
        &self,
        ctx: &WriteContext,
        kind: JobKind,
        model: Option<ModelName>,
        params: Info,
        pinned: Option<PinnedLabels>,
        enqueue: bool,
    ) -> Result<JobRecord, JobError> {
        self.expire_lapsed(ctx).await?;
        // The job id derives from the request id, so a retried request names the same
        // job and records nothing new.
        let job = RunId::parse(
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, ctx.request_id.as_bytes()).to_string(),
        )
        .expect("a UUID is a valid run id");
        self.execute(ctx, |view| {
            decide::request(
                view,
                &job,
                kind,
                model.clone(),
                params.clone(),
                pinned.clone(),
                enqueue,
            )
        })
        .await?;
        self.recorded(&job)
    }

    /// Claims a submitted job for `worker`, holding it for `lease`; `false` if another
    /// runner got it first or it is no longer submitted.
    pub async fn claim(
        &self,
        ctx: &WriteContext,
        job: &JobRecord,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, JobError> {
        let until = self.clock.now_ms() + lease.as_millis() as i64;
        let claimed = self
            .execute(ctx, |view| Ok(decide::claim(view, &job.id, worker, until)))
            .await?
            .is_some();
        // A replayed claim (the runner restarted mid-job) records nothing; it is still
        // this worker's claim only if the log says so.
        Ok(claimed
            || self.view.peek().job(&job.id).is_some_and(|j| {
                j.status == JobStatus::Running && j.worker.as_deref() == Some(worker)
            }))
    }

    /// Extends `worker`'s lease on `job` by `lease` from now; `false` when the job is no
    /// longer its running job (stopped, expired or finished), so the work must stop.
    pub async fn renew_lease(
        &self,
        ctx: &WriteContext,
        job: &RunId,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, JobError> {
        let until = self.clock.now_ms() + lease.as_millis() as i64;
        Ok(self
            .execute(ctx, |view| {
                Ok(decide::renew_lease(view, job, worker, until))
            })
            .await?
            .is_some())
    }

    pub async fn progress(
        &self,
        ctx: &WriteContext,
        job: &JobRecord,
        stats: Info,
    ) -> Result<(), JobError> {
        self.execute(ctx, |view| {
            Ok(decide::progress(view, &job.id, stats.clone()))
        })
        .await
        .map(drop)
    }

    /// Ends `job` with `status`; records nothing when it already ended.
    pub async fn finish(
        &self,
        ctx: &WriteContext,
        job: &JobRecord,
        status: JobStatus,
        result: Info,
    ) -> Result<(), JobError> {
        self.execute(ctx, |view| {
            Ok(decide::finish(view, &job.id, status, result.clone()))
        })
        .await
        .map(drop)
    }

    /// Stops the active job of `kind` at once; returns it as it now stands, or `None`
    /// when nothing was active.
    pub async fn stop(
        &self,
        ctx: &WriteContext,
        kind: JobKind,
    ) -> Result<Option<JobRecord>, JobError> {
        let now = self.clock.now_ms();
        let stopped = self
            .execute(ctx, |view| Ok(decide::stop(view, kind, now)))
            .await?;
        Ok(match stopped {
            Some(Decision { events, .. }) => match events.first() {
                Some(Event::JobFinished { job, .. }) => self.view.peek().job(job).cloned(),
                _ => None,
            },
            None => None,
        })
    }

    /// Ends every running job whose lease lapsed as `ERROR`; returns how many. Costs no
    /// write when none did. Concurrent callers record each ending once.
    pub async fn expire_lapsed(&self, ctx: &WriteContext) -> Result<usize, JobError> {
        let now = self.clock.now_ms();
        let lapsed: Vec<(RunId, i64)> = self
            .view()
            .await?
            .jobs
            .values()
            .filter(|j| j.lease_lapsed(now))
            .map(|j| (j.id.clone(), j.lease_until_ms.unwrap_or_default()))
            .collect();
        for (job, until) in &lapsed {
            let ctx = WriteContext::new(ctx.actor.clone(), format!("expire/{job}/{until}"));
            self.execute(&ctx, |view| Ok(decide::expire(view, job, now)))
                .await?;
        }
        Ok(lapsed.len())
    }

    /// Ends the running jobs of `worker`, a runner known to be gone (`why` says how),
    /// as `ERROR`; returns how many.
    pub async fn abandon(
        &self,
        ctx: &WriteContext,
        worker: &str,
        why: &str,
    ) -> Result<usize, JobError> {
        let held: Vec<RunId> = self
            .view()
            .await?
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Running && j.worker.as_deref() == Some(worker))
            .map(|j| j.id.clone())
            .collect();
        for job in &held {
            self.execute(&step(ctx, &format!("abandon-{job}")), |view| {
                Ok(decide::abandon(view, job, worker, why))
            })
            .await?;
        }
        Ok(held.len())
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
