//! The cloud worker: takes job messages off the SQS job queue and runs them against
//! the DynamoDB event log and the S3 blob bucket.
//!
//! The queue only says *which* job to look at ([`JobMessage`], put there by the stream
//! dispatcher); the log stays the truth. For a run message the worker claims the job in
//! the log ([`Worker::run_job_once`]: `JobStarted` at version 1, so of several workers
//! exactly one wins and a redelivered message runs nothing twice), runs it, and only
//! then deletes the message. While a job runs, the message's visibility is extended
//! every half timeout, so SQS hands it to no one else; if this worker dies, the
//! message reappears and the next worker finds the job's stream and decides from it.
//! A stop message needs no work here: the running job polls its stream for the stop
//! request, which is already in the log.
//!
//! A message whose job the log does not show yet (a lagging index) is made visible
//! again after a short delay; a body that is not a job message is left alone, so SQS's
//! redrive policy moves it to the dead-letter queue after its receive limit.

use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::Message;
use medlabel_events::queue::{JobAction, JobMessage};

use crate::error::{Result, RunnerError};
use crate::worker::{JobRun, Worker};

/// How long a received message stays invisible to other workers before a heartbeat
/// extends it.
const VISIBILITY: Duration = Duration::from_secs(120);

/// When a message whose job the log does not show yet is offered again.
const NOT_IN_LOG_RETRY: Duration = Duration::from_secs(5);

/// SQS's longest long poll.
const LONG_POLL: Duration = Duration::from_secs(20);

/// A [`Worker`] fed by the job queue.
pub struct QueueWorker {
    worker: Worker,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handled {
    /// The job ran here (or had already been taken or ended): the message is deleted.
    Done(JobRun),
    /// A stop request: the running job sees it in the log; the message is deleted.
    Stop,
    /// The log does not show the job yet: the message comes back shortly.
    Retry,
    /// Not a job message: left for the dead-letter queue.
    Malformed,
}

fn sqs_error(action: &str, err: impl std::error::Error + 'static) -> RunnerError {
    RunnerError::invalid(format!("job queue: {action}: {}", DisplayErrorContext(err)))
}

impl QueueWorker {
    pub fn new(worker: Worker, sqs: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            worker,
            sqs,
            queue_url: queue_url.into(),
        }
    }

    /// Takes messages one at a time, forever; with `until_empty`, returns what it
    /// handled once a receive finds the queue empty (a batch task, or a test).
    pub async fn run(&self, until_empty: bool) -> Result<Vec<Handled>> {
        let wait = if until_empty {
            Duration::from_secs(1)
        } else {
            LONG_POLL
        };
        let mut handled = Vec::new();
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(1)
                .wait_time_seconds(wait.as_secs() as i32)
                .visibility_timeout(VISIBILITY.as_secs() as i32)
                .send()
                .await
                .map_err(|e| sqs_error("receive", e))?;
            let messages = received.messages.unwrap_or_default();
            if messages.is_empty() && until_empty {
                return Ok(handled);
            }
            for message in messages {
                handled.push(self.handle(&message).await?);
            }
        }
    }

    /// Handles one received message and settles it with the queue.
    pub async fn handle(&self, message: &Message) -> Result<Handled> {
        let receipt = message.receipt_handle().unwrap_or_default();
        let parsed: Option<JobMessage> = message
            .body()
            .and_then(|body| serde_json::from_str(body).ok());
        let Some(job) = parsed else {
            tracing::error!(message_id = ?message.message_id(), "not a job message; left for the dead-letter queue");
            return Ok(Handled::Malformed);
        };
        let handled = match job.action {
            JobAction::Stop => Handled::Stop,
            JobAction::Run => {
                match self
                    .with_heartbeat(receipt, self.worker.run_job_once(&job.job))
                    .await?
                {
                    JobRun::NotInLog => Handled::Retry,
                    run => Handled::Done(run),
                }
            }
        };
        tracing::info!(job = %job.job, position = job.position, outcome = ?handled, "job message handled");
        match handled {
            Handled::Retry => self.set_visibility(receipt, NOT_IN_LOG_RETRY).await?,
            _ => self.delete(receipt).await?,
        }
        Ok(handled)
    }

    /// Runs `work`, extending the message's visibility every half timeout meanwhile.
    async fn with_heartbeat<T>(
        &self,
        receipt: &str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let heartbeat = async {
            loop {
                tokio::time::sleep(VISIBILITY / 2).await;
                if let Err(err) = self.set_visibility(receipt, VISIBILITY).await {
                    // The job goes on: at worst another worker sees the message, finds
                    // the job claimed in the log, and deletes it.
                    tracing::warn!(error = %err, "visibility heartbeat failed");
                }
            }
        };
        tokio::select! {
            outcome = work => outcome,
            never = heartbeat => never,
        }
    }

    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> Result<()> {
        self.sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(timeout.as_secs() as i32)
            .send()
            .await
            .map_err(|e| sqs_error("change visibility", e))?;
        Ok(())
    }

    async fn delete(&self, receipt: &str) -> Result<()> {
        self.sqs
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| sqs_error("delete", e))?;
        Ok(())
    }
}
