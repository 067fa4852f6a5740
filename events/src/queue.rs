//! The job queue's contract: what the stream dispatcher puts on the queue and a GPU
//! runner takes off it.
//!
//! A message is the job event itself plus where it sits in the log (`stream`,
//! `sequence`, global `position`), so a runner can check the job's stream before it
//! starts (a job that already started, finished or was stopped is not run again) and
//! append its own events to that stream under optimistic concurrency. The body is JSON:
//!
//! ```json
//! {"job": "…", "stream": "job/…", "sequence": 1, "position": 42,
//!  "action": "run", "kind": "train", "model": "spleen", "params": {…},
//!  "labels": [{"image": …, "tag": …, "version": …, "image_blob": …, "label_blob": …}],
//!  "as_of_position": 41}
//! ```
//!
//! or, for a stop, `{"job", "stream", "sequence", "position", "action": "stop"}`.
//!
//! On a FIFO queue the message's deduplication id is its event's global position: the
//! one key that names exactly one event, so every replay or retry of a stream record
//! (within SQS's five-minute deduplication window) collapses into the first send. Run
//! messages are grouped per job, so jobs run in parallel; a stop goes to its job's own
//! stop group, because a run message stays in flight for the whole job and would hold
//! back anything queued behind it in the same group.

use crate::Info;
use crate::event::{JobKind, LabelVersionRef, StreamId};
use crate::id::{ModelName, RunId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// SQS's limit on a message group id.
const MAX_GROUP_ID: usize = 128;

/// One queued command for the GPU runners, with the log coordinates of the event that
/// asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job: RunId,
    /// The stream the job event was appended to (`job/<id>` or `train/<run>`).
    pub stream: StreamId,
    /// The event's sequence within `stream`.
    pub sequence: u64,
    /// The event's global position: unique per event, hence the deduplication id.
    pub position: u64,
    #[serde(flatten)]
    pub action: JobAction,
}

/// What the runner is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum JobAction {
    /// Run the job (from [`crate::Event::JobRequested`]).
    Run {
        kind: JobKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<ModelName>,
        params: Info,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<LabelVersionRef>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        as_of_position: Option<u64>,
    },
    /// Stop the job if it runs (from [`crate::Event::JobStopRequested`]).
    Stop,
}

impl JobMessage {
    /// The FIFO deduplication id: the event's global position.
    pub fn deduplication_id(&self) -> String {
        self.position.to_string()
    }

    /// The FIFO message group: one per job for runs, one per job for stops.
    ///
    /// SQS allows at most 128 characters from printable ASCII; a job id that fits is
    /// used as is (readable in the console), any other is replaced by its SHA-256.
    pub fn group_id(&self) -> String {
        let job = self.job.as_str();
        let suffix = match self.action {
            JobAction::Run { .. } => "",
            JobAction::Stop => "#stop",
        };
        let printable = job.bytes().all(|b| b.is_ascii_graphic());
        if printable && job.len() + suffix.len() <= MAX_GROUP_ID {
            format!("{job}{suffix}")
        } else {
            format!(
                "sha256:{}{suffix}",
                hex::encode(Sha256::digest(job.as_bytes()))
            )
        }
    }

    /// The message body.
    pub fn body(&self) -> String {
        // A JobMessage holds only strings, integers, JSON maps and ids: it always encodes.
        serde_json::to_string(self).expect("a job message encodes as JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(job: &str, action: JobAction) -> JobMessage {
        JobMessage {
            job: RunId::parse(job).unwrap(),
            stream: StreamId::from_stored(format!("job/{job}")),
            sequence: 1,
            position: 77,
            action,
        }
    }

    #[test]
    fn run_and_stop_of_one_job_use_different_groups() {
        let run = message(
            "r1",
            JobAction::Run {
                kind: JobKind::Train,
                model: None,
                params: Info::new(),
                labels: vec![],
                as_of_position: None,
            },
        );
        let stop = message("r1", JobAction::Stop);
        assert_eq!(run.group_id(), "r1");
        assert_eq!(stop.group_id(), "r1#stop");
        assert_eq!(run.deduplication_id(), "77");
    }

    #[test]
    fn ids_sqs_would_refuse_are_hashed_into_valid_groups() {
        for job in ["über-run", &"x".repeat(200), "a b"] {
            let group = message(job, JobAction::Stop).group_id();
            assert!(group.len() <= MAX_GROUP_ID, "{group}");
            assert!(group.bytes().all(|b| b.is_ascii_graphic()), "{group}");
            assert!(group.starts_with("sha256:"), "{group}");
        }
        // Distinct jobs keep distinct groups after hashing.
        assert_ne!(
            message("a b", JobAction::Stop).group_id(),
            message("a  b", JobAction::Stop).group_id()
        );
    }

    #[test]
    fn body_round_trips_with_a_flat_action_tag() {
        let stop = message("r2", JobAction::Stop);
        let body: serde_json::Value = serde_json::from_str(&stop.body()).unwrap();
        assert_eq!(body["action"], "stop");
        assert_eq!(body["stream"], "job/r2");
        assert_eq!(body["position"], 77);
        let back: JobMessage = serde_json::from_str(&stop.body()).unwrap();
        assert_eq!(back, stop);
    }
}
