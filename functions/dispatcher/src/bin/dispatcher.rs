//! Lambda entry point of the stream dispatcher (see the `medlabel_dispatcher` docs).
//!
//! Reads `MEDLABEL_JOB_QUEUE_URL` (a FIFO queue) and the usual AWS SDK environment;
//! `RUST_LOG` or `AWS_LAMBDA_LOG_LEVEL` set the log level.

use aws_lambda_events::dynamodb::Event;
use aws_lambda_events::streams::DynamoDbEventResponse;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use medlabel_dispatcher::Dispatcher;

/// Environment variable naming the job queue's URL.
const QUEUE_URL_VAR: &str = "MEDLABEL_JOB_QUEUE_URL";

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let queue_url = std::env::var(QUEUE_URL_VAR)
        .map_err(|_| format!("{QUEUE_URL_VAR} must name the FIFO job queue's URL"))?;
    let config = aws_config::load_from_env().await;
    let dispatcher = Dispatcher::new(aws_sdk_sqs::Client::new(&config), queue_url)?;
    let dispatcher = &dispatcher;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| async move {
        let outcome = dispatcher.dispatch(&event.payload).await;
        tracing::info!(
            sent = outcome.sent,
            skipped = outcome.skipped,
            failed = outcome.response.batch_item_failures.len(),
            "batch dispatched"
        );
        Ok::<DynamoDbEventResponse, Error>(outcome.response)
    }))
    .await
}
