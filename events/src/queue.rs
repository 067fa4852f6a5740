//! The job queue's contract: what the stream dispatcher puts on the queue and a GPU
//! runner takes off it.
//!
//! A message names the job and where its event sits in the log (`stream`, `sequence`,
//! global `position`), and nothing else: the log is the truth, so the runner reads the
//! job (its params and pinned labels) from there, checks it before it starts (a job
//! that already started, finished or was stopped is not run again), and appends its
//! own events to that stream under optimistic concurrency. A message is therefore
//! a few hundred bytes whatever the job, far below SQS's 256 KiB. The body is JSON:
//!
//! ```json
//! {"job": "…", "stream": "tasks/train", "sequence": 3, "position": 42, "action": "run"}
//! ```
//!
//! or `"action": "stop"`. Messages from before carried the request's params and
//! labels too; those fields are ignored.
//!
//! On a FIFO queue the message's deduplication id is its event's global position: the
//! one key that names exactly one event, so every replay or retry of a stream record
//! (within SQS's five-minute deduplication window) collapses into the first send. Run
//! messages are grouped per job, so jobs run in parallel; a stop goes to its job's own
//! stop group, because a run message stays in flight for the whole job and would hold
//! back anything queued behind it in the same group.

use crate::event::StreamId;
use crate::id::RunId;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum JobAction {
    /// Run the job (from [`crate::Event::JobRequested`]).
    Run,
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
            JobAction::Run => "",
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
        let run = message("r1", JobAction::Run);
        let stop = message("r1", JobAction::Stop);
        assert_eq!(run.group_id(), "r1");
        assert_eq!(stop.group_id(), "r1#stop");
        assert_eq!(run.deduplication_id(), "77");
    }

    #[test]
    fn a_run_message_names_the_job_and_its_position_only() {
        let run = message("r1", JobAction::Run);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&run.body()).unwrap(),
            serde_json::json!({"job": "r1", "stream": "job/r1", "sequence": 1,
                               "position": 77, "action": "run"})
        );
        // A message from before, with the request's params and labels, still reads.
        let old = r#"{"job":"r1","stream":"job/r1","sequence":1,"position":77,"action":"run",
            "kind":"train","model":"spleen","params":{"max_epochs":3},
            "labels":[{"image":"a"}],"as_of_position":41}"#;
        assert_eq!(serde_json::from_str::<JobMessage>(old).unwrap(), run);
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
