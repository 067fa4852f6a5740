//! Sends the job messages of one stream batch to the FIFO job queue.
//!
//! Records are handled in stream order. The first record that cannot be dispatched (a
//! failed send, or a job record that does not decode) is reported as the batch's only
//! item failure and nothing after it is sent: Lambda then checkpoints before that
//! record and redelivers it and everything after it, so a stop never overtakes its run
//! and no record is skipped. Redelivered records that were already sent are harmless:
//! the queue's deduplication id is the event's global position (see [`medlabel_events::queue`]).

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use aws_sdk_sqs::error::DisplayErrorContext;

use crate::record::{RecordError, job_message};
use medlabel_events::queue::JobMessage;

/// Why the dispatcher cannot be set up or a record was not dispatched.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("the job queue must be a FIFO queue (its URL ends in .fifo), got {0:?}")]
    NotFifo(String),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("sending job {job} (position {position}) to the queue failed: {reason}")]
    Send {
        job: String,
        position: u64,
        reason: String,
    },
}

/// Turns stream batches into job messages on one FIFO queue.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

/// What one batch did: the response Lambda wants, and counts for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    /// Empty when every record was handled; otherwise the first failed record.
    pub response: DynamoDbEventResponse,
    /// Job messages sent (a duplicate SQS dropped still counts: the send succeeded).
    pub sent: usize,
    /// Records that called for no job.
    pub skipped: usize,
}

impl Dispatcher {
    /// A dispatcher sending to `queue_url`, which must name a FIFO queue: only FIFO
    /// deduplication makes replays of a stream batch idempotent.
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
    ) -> Result<Self, DispatchError> {
        let queue_url = queue_url.into();
        if !queue_url.ends_with(".fifo") {
            return Err(DispatchError::NotFifo(queue_url));
        }
        Ok(Self { sqs, queue_url })
    }

    /// Dispatches a batch; never fails as a whole, so Lambda always gets the partial
    /// batch response and retries only from the first failed record.
    pub async fn dispatch(&self, batch: &Event) -> BatchOutcome {
        let mut outcome = BatchOutcome {
            response: DynamoDbEventResponse::default(),
            sent: 0,
            skipped: 0,
        };
        for record in &batch.records {
            match self.dispatch_record(record).await {
                Ok(true) => outcome.sent += 1,
                Ok(false) => outcome.skipped += 1,
                Err(err) => {
                    tracing::error!(
                        event_id = %record.event_id,
                        sequence_number = ?record.change.sequence_number,
                        error = %err,
                        "record not dispatched; the batch resumes from it"
                    );
                    let mut failure = DynamoDbBatchItemFailure::default();
                    failure.item_identifier = record.change.sequence_number.clone();
                    outcome.response.batch_item_failures.push(failure);
                    break;
                }
            }
        }
        outcome
    }

    /// Sends the record's job message; `Ok(false)` when it calls for none.
    async fn dispatch_record(&self, record: &EventRecord) -> Result<bool, DispatchError> {
        let Some(message) = job_message(record)? else {
            return Ok(false);
        };
        self.send(&message).await?;
        tracing::info!(job = %message.job, position = message.position, "job message sent");
        Ok(true)
    }

    async fn send(&self, message: &JobMessage) -> Result<(), DispatchError> {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(message.body())
            .message_group_id(message.group_id())
            .message_deduplication_id(message.deduplication_id())
            .send()
            .await
            .map_err(|err| DispatchError::Send {
                job: message.job.to_string(),
                position: message.position,
                reason: DisplayErrorContext(err).to_string(),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_sqs::config::{BehaviorVersion, Region};

    use super::*;

    #[test]
    fn only_a_fifo_queue_is_accepted() {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .build();
        let sqs = aws_sdk_sqs::Client::from_conf(config);
        let standard = "https://sqs.us-east-1.amazonaws.com/123456789012/medlabel-jobs";
        assert!(matches!(
            Dispatcher::new(sqs.clone(), standard),
            Err(DispatchError::NotFifo(url)) if url == standard
        ));
        assert!(Dispatcher::new(sqs, format!("{standard}.fifo")).is_ok());
    }
}
