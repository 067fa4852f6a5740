//! The dispatcher against the AWS emulator, end to end: events appended by the real
//! DynamoDB event store, the table's own stream records read back through the
//! DynamoDB Streams API (reshaped into the event Lambda would deliver), and a real
//! FIFO queue. Without the emulator these tests fail; they never skip.

use std::collections::HashMap;

use medlabel_dispatcher::{Dispatcher, JobAction, JobMessage};
use medlabel_events::event::{Actor, JobKind, NewEvent, StreamId};
use medlabel_events::id::{ModelName, RunId};
use medlabel_events::store::dynamo::DynamoEventStore;
use medlabel_events::{Event, EventStore, ExpectedVersion, Info};
use medlabel_tests::emulator::{AwsTestEnv, aws, unique_name};
use serde_json::json;

/// The log of one test: what was appended and at which global positions.
struct Log {
    table: String,
    run_a: RunId,
    run_b: RunId,
    /// Global position of each job event, in append order: request A, request B, stop A.
    job_positions: [u64; 3],
}

fn new(event: Event) -> Vec<NewEvent> {
    vec![NewEvent {
        event,
        actor: Actor::admin(),
        timestamp_ms: 1_764_201_600_000,
    }]
}

/// Appends two job requests, a stop and an unrelated event to a fresh table.
async fn seed(env: &AwsTestEnv) -> Log {
    let table = env.fresh_table().await;
    let store = DynamoEventStore::new(env.dynamodb(), table.clone());
    let run_a = RunId::parse(format!("train-{}", uuid::Uuid::new_v4())).unwrap();
    let run_b = RunId::parse(format!("score-{}", uuid::Uuid::new_v4())).unwrap();
    let mut params = Info::new();
    params.insert("max_epochs".into(), json!(2));
    let request_a = store
        .append(
            &StreamId::training(&run_a),
            ExpectedVersion::NoStream,
            new(Event::JobRequested {
                job: run_a.clone(),
                kind: JobKind::Train,
                model: Some(ModelName::parse("segmentation_spleen").unwrap()),
                params,
                labels: vec![],
                labels_blob: None,
                as_of_position: Some(0),
            }),
            "request-a",
        )
        .await
        .unwrap();
    store
        .append(
            &StreamId::datastore(),
            ExpectedVersion::Any,
            new(Event::DatastoreRenamed {
                name: "spleen".into(),
            }),
            "rename",
        )
        .await
        .unwrap();
    let request_b = store
        .append(
            &StreamId::job(&run_b),
            ExpectedVersion::NoStream,
            new(Event::JobRequested {
                job: run_b.clone(),
                kind: JobKind::Scoring,
                model: None,
                params: Info::new(),
                labels: vec![],
                labels_blob: None,
                as_of_position: None,
            }),
            "request-b",
        )
        .await
        .unwrap();
    let stop_a = store
        .append(
            &StreamId::training(&run_a),
            ExpectedVersion::Exact(1),
            new(Event::JobStopRequested { job: run_a.clone() }),
            "stop-a",
        )
        .await
        .unwrap();
    Log {
        table,
        run_a,
        run_b,
        job_positions: [
            request_a.first_position,
            request_b.first_position,
            stop_a.first_position,
        ],
    }
}

/// Receives and deletes until the queue answers empty.
async fn drain(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<JobMessage> {
    let mut messages = Vec::new();
    loop {
        let received = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let batch = received.messages.unwrap_or_default();
        if batch.is_empty() {
            return messages;
        }
        for message in batch {
            messages.push(serde_json::from_str(message.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_replayed_stream_batch_enqueues_each_job_once() {
    let env = aws().await;
    let sqs = env.sqs();
    let log = seed(&env).await;
    let batch = env.stream_batch(&log.table).await;
    let queue_url = env.fresh_fifo_queue().await;
    let dispatcher = Dispatcher::new(sqs.clone(), &queue_url).unwrap();

    // The first delivery and two replays (a Lambda retry, a re-read after a crash).
    for _ in 0..3 {
        let outcome = dispatcher.dispatch(&batch).await;
        assert!(
            outcome.response.batch_item_failures.is_empty(),
            "{outcome:?}"
        );
        assert_eq!(outcome.sent, 3);
        assert_eq!(outcome.skipped, batch.records.len() - 3);
    }

    let mut messages = drain(&sqs, &queue_url).await;
    messages.sort_by_key(|m| m.position);
    let by_position: HashMap<u64, &JobMessage> = messages.iter().map(|m| (m.position, m)).collect();
    assert_eq!(messages.len(), 3, "duplicates or losses: {messages:#?}");

    let [request_a, request_b, stop_a] = log.job_positions;
    let a = by_position[&request_a];
    assert_eq!(a.job, log.run_a);
    assert_eq!(a.stream, StreamId::training(&log.run_a));
    assert_eq!(a.sequence, 1);
    assert_eq!(a.action, JobAction::Run);
    let b = by_position[&request_b];
    assert_eq!(b.job, log.run_b);
    assert_eq!(b.stream, StreamId::job(&log.run_b));
    assert_eq!(b.action, JobAction::Run);
    let stop = by_position[&stop_a];
    assert_eq!((stop.job.clone(), stop.sequence), (log.run_a.clone(), 2));
    assert_eq!(stop.action, JobAction::Stop);
}

#[tokio::test]
async fn a_failed_send_is_reported_and_nothing_after_it_is_sent() {
    let env = aws().await;
    let sqs = env.sqs();
    let log = seed(&env).await;
    let batch = env.stream_batch(&log.table).await;

    let missing = format!("{}/123456789012/{}.fifo", env.endpoint, unique_name("gone"));
    let outcome = Dispatcher::new(sqs.clone(), missing)
        .unwrap()
        .dispatch(&batch)
        .await;
    let first_job = batch
        .records
        .iter()
        .position(|r| medlabel_dispatcher::job_message(r).unwrap().is_some())
        .expect("the batch holds job records");
    let failures: Vec<_> = outcome
        .response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(
        failures,
        vec![batch.records[first_job].change.sequence_number.clone()]
    );
    assert_eq!((outcome.sent, outcome.skipped), (0, first_job));

    // Lambda resumes from the failed record: against a working queue every job arrives.
    let queue_url = env.fresh_fifo_queue().await;
    let mut resumed = batch.clone();
    resumed.records.drain(..first_job);
    let outcome = Dispatcher::new(sqs.clone(), &queue_url)
        .unwrap()
        .dispatch(&resumed)
        .await;
    assert!(outcome.response.batch_item_failures.is_empty());
    let mut positions: Vec<u64> = drain(&sqs, &queue_url)
        .await
        .iter()
        .map(|m| m.position)
        .collect();
    positions.sort_unstable();
    assert_eq!(positions, log.job_positions.to_vec());
}

/// A training request pinning 5,000 final labels: the list is one blob in the bucket,
/// the event a fixed few hundred bytes in its DynamoDB item (inline, 5,000 labels are
/// ~1.5 MB, past the 400 KB item limit), the queue message a few hundred bytes (SQS
/// takes 256 KiB), and the runner reads all 5,000 back from the blob.
#[tokio::test]
async fn a_training_request_pinning_5000_labels_stays_small_on_table_and_queue() {
    use medlabel_events::event::LabelVersionRef;
    use medlabel_events::id::{Extension, ImageId, Tag};
    use medlabel_events::jobs::Jobs;
    use medlabel_events::pinned::{pin, pinned};
    use medlabel_events::{BlobRef, SystemClock, datastore::WriteContext};
    use std::sync::Arc;

    let env = aws().await;
    let blobs = env.blob_store().await;
    let table = env.fresh_table().await;
    let store = Arc::new(DynamoEventStore::new(env.dynamodb(), table.clone()));
    let blob = |n: usize, ext: &str| BlobRef {
        sha256: format!("{n:064x}"),
        size: 30_000_000,
        ext: Extension::parse(ext).unwrap(),
    };
    let labels: Vec<LabelVersionRef> = (0..5_000)
        .map(|n| LabelVersionRef {
            image: ImageId::parse(format!("case_{n:05}")).unwrap(),
            tag: Tag::final_tag(),
            version: 1 + (n as u32 % 3),
            image_blob: blob(n, ".nii.gz"),
            label_blob: blob(n + 1_000_000, ".nii.gz"),
        })
        .collect();
    let inline = serde_json::to_vec(&labels).unwrap().len();
    assert!(inline > 400 << 10, "inline the list is {inline} bytes");

    let pins = pin(&blobs, &labels, 41).await.unwrap();
    let jobs = Jobs::new(store.clone(), Arc::new(SystemClock));
    let job = jobs
        .request(
            &WriteContext::fresh(Actor::admin()),
            JobKind::Train,
            Some(ModelName::parse("segmentation_spleen").unwrap()),
            Info::new(),
            Some(pins),
            false,
        )
        .await
        .unwrap();
    assert_eq!(pinned(&blobs, &job).await.unwrap(), labels);

    let batch = env.stream_batch(&table).await;
    let record = batch
        .records
        .iter()
        .find(|r| matches!(medlabel_dispatcher::job_message(r), Ok(Some(_))))
        .expect("the request's stream record");
    let payload = match record.change.new_image.get("payload") {
        Some(serde_dynamo::AttributeValue::S(text)) => text.len(),
        other => panic!("no payload in the item: {other:?}"),
    };
    assert!(payload < 2_000, "the event is {payload} bytes");
    let queue_url = env.fresh_fifo_queue().await;
    let outcome = Dispatcher::new(env.sqs(), &queue_url)
        .unwrap()
        .dispatch(&batch)
        .await;
    assert_eq!(outcome.sent, 1, "{outcome:?}");
    let messages = drain(&env.sqs(), &queue_url).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].job, job.id);
    assert!(messages[0].body().len() < 300, "{}", messages[0].body());
}
