//! The AWS backends on the emulator: the contract suites on [`DynamoEventStore`] and
//! [`S3BlobStore`], plus what only they promise: a full batch fits one transaction, a
//! retried request is replayed by any instance, `read_all` crosses GSI buckets and
//! never returns past a gap, large files go up in parts, presigned uploads are adopted
//! under their hash, and prefixes keep stores in one bucket apart.
//!
//! Every test gets its own table or bucket (see `medlabel_tests::emulator`).

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use medlabel_events::blob::s3::{PART_SIZE, S3BlobStore};
use medlabel_events::blob::{DownloadAs, read_to_vec};
use medlabel_events::event::{Event, decode};
use medlabel_events::store::dynamo::DynamoEventStore;
use medlabel_events::store::{MAX_EVENT_BYTES, MAX_EVENTS_PER_APPEND};
use medlabel_events::{
    Appended, BlobError, BlobStore, EventStore, ExpectedVersion, Extension, NewEvent, StoreError,
};
use medlabel_tests::emulator::{self, AwsTestEnv};
use medlabel_tests::store_contract::{
    self as contract, fresh_request, fresh_stream, named, unique_bytes,
};
use sha2::{Digest, Sha256};

macro_rules! event_store_contract {
    ($($suite:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $suite() {
            let env = emulator::aws().await;
            contract::$suite(Arc::new(env.event_store().await)).await;
        }
    )*};
}

macro_rules! blob_store_contract {
    ($($suite:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $suite() {
            let env = emulator::aws().await;
            contract::$suite(Arc::new(env.blob_store().await)).await;
        }
    )*};
}

event_store_contract!(
    append_and_read_back,
    expected_versions,
    idempotent_requests,
    global_order,
    refuses_bad_appends,
    concurrent_writers_one_stream,
    concurrent_writers_many_streams,
    writers_read_their_own_appends,
    follow_sees_old_and_new,
);

blob_store_contract!(blob_round_trip, blob_dedup, blob_streams_large_file);

fn ext(value: &str) -> Extension {
    Extension::parse(value).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One raw item of the event table, as DynamoDB holds it.
async fn raw_item(
    env: &AwsTestEnv,
    table: &str,
    stream: &str,
    sequence: u64,
) -> HashMap<String, AttributeValue> {
    env.dynamodb()
        .get_item()
        .table_name(table)
        .key("stream", AttributeValue::S(stream.into()))
        .key("sequence", AttributeValue::N(sequence.to_string()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap_or_else(|| panic!("no item ({stream}, {sequence})"))
}

fn s_attr<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> &'a str {
    item[name].as_s().unwrap()
}

fn n_attr(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item[name].as_n().unwrap().parse().unwrap()
}

/// The largest batch is one transaction of 100 items (the emulator, like DynamoDB,
/// refuses more), also on a stream that already exists; events that are each small
/// enough but together exceed a transaction are refused before anything is written.
#[tokio::test]
async fn full_batch_is_one_transaction() {
    let env = emulator::aws().await;
    let store = env.event_store().await;
    let stream = fresh_stream("full-batch");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![named("first")],
            &fresh_request(),
        )
        .await
        .unwrap();

    let full = MAX_EVENTS_PER_APPEND as u64;
    let batch = (0..MAX_EVENTS_PER_APPEND)
        .map(|i| named(format!("{i}")))
        .collect();
    let appended = store
        .append(&stream, ExpectedVersion::Exact(1), batch, &fresh_request())
        .await
        .unwrap();
    assert_eq!(
        (appended.first_sequence, appended.last_sequence),
        (2, 1 + full)
    );
    assert_eq!(
        (appended.first_position, appended.last_position),
        (2, 1 + full)
    );
    assert_eq!(store.head().await.unwrap(), 1 + full);
    let all = store.read_all(0, 1000).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=1 + full).collect::<Vec<_>>());

    let big = |i: usize| NewEvent {
        event: Event::DatastoreDescribed {
            description: char::from(b'a' + i as u8)
                .to_string()
                .repeat(MAX_EVENT_BYTES - 2048),
        },
        ..named("big")
    };
    let request = fresh_request();
    let err = store
        .append(
            &stream,
            ExpectedVersion::Any,
            (0..12).map(big).collect(),
            &request,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AppendTooLarge { size, limit } if size > limit && limit < 4_000_000),
        "{err:?}"
    );
    assert_eq!(store.stream_version(&stream).await.unwrap(), 1 + full);
    assert_eq!(store.head().await.unwrap(), 1 + full);

    // One event at the size limit fits DynamoDB's item limit, and the refused request
    // id was never used.
    let single = store
        .append(&stream, ExpectedVersion::Any, vec![big(7)], &request)
        .await
        .unwrap();
    assert!(!single.replayed);
    let read = store
        .read_stream(&stream, single.first_sequence)
        .await
        .unwrap();
    assert_eq!(read[0].event, big(7).event);
}

/// A client retries after losing the response and lands on another instance (another
/// Lambda) after the stream moved on: it gets the first result, replayed, nothing is
/// recorded twice, and the table holds the documented items.
#[tokio::test]
async fn retried_request_is_replayed_by_another_instance() {
    let env = emulator::aws().await;
    let table = env.fresh_table().await;
    let first = DynamoEventStore::new(env.dynamodb(), &table);
    let second = DynamoEventStore::new(env.dynamodb(), &table);
    let stream = fresh_stream("retry");
    let request = fresh_request();

    let original = first
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![named("a"), named("b")],
            &request,
        )
        .await
        .unwrap();
    second
        .append(
            &stream,
            ExpectedVersion::Exact(2),
            vec![named("c")],
            &fresh_request(),
        )
        .await
        .unwrap();
    let retried = second
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![named("a"), named("b")],
            &request,
        )
        .await
        .unwrap();
    assert!(retried.replayed);
    assert_eq!(
        Appended {
            replayed: false,
            ..retried
        },
        original
    );
    assert_eq!(first.stream_version(&stream).await.unwrap(), 3);
    assert_eq!(first.read_all(0, 100).await.unwrap().len(), 3);

    let record = raw_item(&env, &table, &format!("$request#{request}"), 0).await;
    let stored: Appended = serde_json::from_str(s_attr(&record, "result")).unwrap();
    assert_eq!(stored, original);
    assert_eq!(
        n_attr(&raw_item(&env, &table, "$head", 0).await, "position"),
        3
    );
    let event = raw_item(&env, &table, stream.as_str(), 2).await;
    assert_eq!(n_attr(&event, "position"), 2);
    assert_eq!(s_attr(&event, "pos_bucket"), "b#0");
    assert_eq!(s_attr(&event, "request_id"), request);
    assert_eq!(s_attr(&event, "event_type"), "DatastoreRenamed");
    assert_eq!(decode(s_attr(&event, "payload")).unwrap(), named("b").event);
}

/// With ten positions per bucket, `read_all` pages across bucket boundaries; when a
/// position the head vouches for is missing from the index (as on a lagging GSI), it
/// waits and then returns only the contiguous prefix.
#[tokio::test]
async fn read_all_crosses_buckets_and_stops_at_gaps() {
    let env = emulator::aws().await;
    let table = env.fresh_table().await;
    let store = DynamoEventStore::new(env.dynamodb(), &table)
        .with_bucket_size(NonZeroU64::new(10).unwrap());
    let stream = fresh_stream("buckets");
    for round in 0..7u64 {
        let batch = (0..5).map(|i| named(format!("{round}.{i}"))).collect();
        store
            .append(
                &stream,
                ExpectedVersion::from_version(round * 5),
                batch,
                &fresh_request(),
            )
            .await
            .unwrap();
    }
    let positions = |events: &[medlabel_events::RecordedEvent]| -> Vec<u64> {
        events.iter().map(|e| e.position).collect()
    };
    assert_eq!(
        positions(&store.read_all(0, 100).await.unwrap()),
        (1..=35).collect::<Vec<_>>()
    );
    assert_eq!(
        positions(&store.read_all(8, 5).await.unwrap()),
        [9, 10, 11, 12, 13]
    );
    assert_eq!(positions(&store.read_all(19, 1).await.unwrap()), [20]);
    assert!(store.read_all(35, 10).await.unwrap().is_empty());
    assert_eq!(
        s_attr(
            &raw_item(&env, &table, stream.as_str(), 9).await,
            "pos_bucket"
        ),
        "b#0"
    );
    assert_eq!(
        s_attr(
            &raw_item(&env, &table, stream.as_str(), 10).await,
            "pos_bucket"
        ),
        "b#1"
    );

    env.dynamodb()
        .delete_item()
        .table_name(&table)
        .key("stream", AttributeValue::S(stream.as_str().into()))
        .key("sequence", AttributeValue::N("15".into()))
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    let prefix = store.read_all(0, 100).await.unwrap();
    assert_eq!(positions(&prefix), (1..=14).collect::<Vec<_>>());
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "returned without waiting for the index"
    );
    assert_eq!(
        positions(&store.read_all(15, 100).await.unwrap()),
        (16..=35).collect::<Vec<_>>()
    );
}

/// Single-event appends in a row: each lands at the next sequence and position. Prints
/// the append latency the emulator gives (three reads and one transaction each).
#[tokio::test]
async fn sequential_appends_and_their_latency() {
    let env = emulator::aws().await;
    let store = env.event_store().await;
    let stream = fresh_stream("latency");
    let mut latencies = Vec::new();
    for version in 0..50u64 {
        let started = Instant::now();
        let appended = store
            .append(
                &stream,
                ExpectedVersion::from_version(version),
                vec![named("x")],
                &fresh_request(),
            )
            .await
            .unwrap();
        latencies.push(started.elapsed());
        assert_eq!(
            (appended.last_sequence, appended.last_position),
            (version + 1, version + 1)
        );
    }
    latencies.sort();
    eprintln!(
        "append latency on the emulator: p50 {:?}, p95 {:?}, max {:?}",
        latencies[25], latencies[47], latencies[49]
    );
}

async fn put_file_bytes(store: &S3BlobStore, dir: &Path, bytes: &[u8]) -> medlabel_events::BlobRef {
    let path = dir.join(format!("{}.nii.gz", bytes.len()));
    std::fs::write(&path, bytes).unwrap();
    store.put_file(&path, &ext(".nii.gz")).await.unwrap()
}

/// A file of exactly one part goes up in one PUT, a larger one as a multipart upload
/// (its ETag counts the parts); both come back byte-identical, and storing the larger
/// again keeps one blob.
#[tokio::test]
async fn multipart_upload_round_trips() {
    let env = emulator::aws().await;
    let bucket = env.fresh_bucket().await;
    let store = S3BlobStore::new(env.s3(), &bucket);
    let dir = tempfile::tempdir().unwrap();
    for (len, parts) in [(PART_SIZE, None), (2 * PART_SIZE + 12_345, Some(3))] {
        let bytes = unique_bytes(len);
        let blob = put_file_bytes(&store, dir.path(), &bytes).await;
        assert_eq!(
            (blob.sha256.as_str(), blob.size),
            (sha256_hex(&bytes).as_str(), len as u64)
        );
        assert_eq!(read_to_vec(&store, &blob).await.unwrap(), bytes);
        let head = env
            .s3()
            .head_object()
            .bucket(&bucket)
            .key(blob.key())
            .send()
            .await
            .unwrap();
        let etag = head.e_tag().unwrap().trim_matches('"').to_owned();
        match parts {
            Some(parts) => assert!(etag.ends_with(&format!("-{parts}")), "ETag {etag}"),
            None => assert!(!etag.contains('-'), "ETag {etag}"),
        }
        assert_eq!(put_file_bytes(&store, dir.path(), &bytes).await, blob);
    }
    assert_eq!(store.list().await.unwrap().len(), 2);
}

/// A client PUTs to a presigned URL; adoption hashes the upload, moves it under its
/// address and removes the staging object. Oversized uploads are refused and removed,
/// unusable ids refused, and a presigned GET serves the blob.
#[tokio::test]
async fn presigned_upload_is_adopted_under_its_hash() {
    let env = emulator::aws().await;
    let bucket = env.fresh_bucket().await;
    let store = S3BlobStore::new(env.s3(), &bucket);
    let http = reqwest::Client::new();
    let upload = |id: String, bytes: Vec<u8>| {
        let (store, http) = (&store, &http);
        async move {
            let url = store
                .presign_upload(&id, Duration::from_secs(600))
                .await
                .unwrap()
                .expect("S3 presigns uploads");
            let response = http.put(&url).body(bytes).send().await.unwrap();
            assert!(
                response.status().is_success(),
                "PUT {url}: {}",
                response.status()
            );
            id
        }
    };

    let bytes = unique_bytes(3 << 20);
    let id = upload(uuid::Uuid::new_v4().to_string(), bytes.clone()).await;
    let blob = store
        .adopt_upload(&id, &ext(".nii.gz"), 4 << 20)
        .await
        .unwrap();
    assert_eq!(
        (blob.sha256.as_str(), blob.size),
        (sha256_hex(&bytes).as_str(), bytes.len() as u64)
    );
    assert_eq!(read_to_vec(&store, &blob).await.unwrap(), bytes);
    assert!(matches!(
        store.adopt_upload(&id, &ext(".nii.gz"), 4 << 20).await,
        Err(BlobError::UploadNotFound(_))
    ));
    assert_eq!(store.list().await.unwrap(), std::slice::from_ref(&blob));

    let url = store
        .presign_get(&blob, Duration::from_secs(60), None)
        .await
        .unwrap()
        .unwrap();
    let served = http.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(served.as_ref(), bytes.as_slice());
    // A download URL names the file as a server's file reply would.
    let download = DownloadAs {
        content_type: "application/octet-stream".into(),
        content_disposition: "attachment; filename=\"spleen_3.nii.gz\"".into(),
    };
    let url = store
        .presign_get(&blob, Duration::from_secs(60), Some(&download))
        .await
        .unwrap()
        .unwrap();
    let served = http.get(&url).send().await.unwrap();
    assert_eq!(
        served.headers()["content-disposition"],
        download.content_disposition.as_str()
    );
    assert_eq!(served.headers()["content-type"], "application/octet-stream");
    assert_eq!(served.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let id = upload("too-large".into(), unique_bytes(2 << 20)).await;
    let err = store
        .adopt_upload(&id, &ext(".nii"), 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobError::TooLarge { size, limit } if size > limit && limit == 1 << 20),
        "{err:?}"
    );
    assert!(matches!(
        store.adopt_upload(&id, &ext(".nii"), 4 << 20).await,
        Err(BlobError::UploadNotFound(_))
    ));
    assert_eq!(store.list().await.unwrap(), [blob]);

    for bad in [
        String::new(),
        "../x".into(),
        "a/b".into(),
        "with space".into(),
        "x".repeat(65),
    ] {
        assert!(
            matches!(
                store.presign_upload(&bad, Duration::from_secs(60)).await,
                Err(BlobError::UploadNotFound(_))
            ),
            "{bad:?}"
        );
        assert!(
            matches!(
                store.adopt_upload(&bad, &ext(".nii"), 1 << 20).await,
                Err(BlobError::UploadNotFound(_))
            ),
            "{bad:?}"
        );
    }
}

/// Stores under different prefixes share a bucket without seeing each other's blobs.
#[tokio::test]
async fn prefixes_keep_stores_apart() {
    let env = emulator::aws().await;
    let bucket = env.fresh_bucket().await;
    let tenant = S3BlobStore::new(env.s3(), &bucket).with_prefix("tenant-a");
    let plain = S3BlobStore::new(env.s3(), &bucket);
    let blob = tenant
        .put_bytes(unique_bytes(1000), &ext(".json"))
        .await
        .unwrap();

    let key = format!("tenant-a/{}", blob.key());
    env.s3()
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(tenant.list().await.unwrap(), std::slice::from_ref(&blob));
    assert_eq!(plain.head(&blob).await.unwrap(), None);
    assert!(plain.list().await.unwrap().is_empty());
}

/// Two independent instances (two Lambdas, each with its own append lock and head
/// hint) interleave into one gapless order: a stale hint is corrected by the cancelled
/// transaction, and concurrent writers on both never reuse or skip a position.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn independent_instances_share_one_gapless_order() {
    let env = emulator::aws().await;
    let table = env.fresh_table().await;
    let left = Arc::new(DynamoEventStore::new(env.dynamodb(), &table));
    let right = Arc::new(DynamoEventStore::new(env.dynamodb(), &table));
    let stream = fresh_stream("instances");
    for (version, store) in [&left, &right, &left, &right].into_iter().enumerate() {
        let appended = store
            .append(
                &stream,
                ExpectedVersion::from_version(version as u64),
                vec![named("x")],
                &fresh_request(),
            )
            .await
            .unwrap();
        assert_eq!(appended.last_position, version as u64 + 1);
    }

    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let store = if writer % 2 == 0 {
                left.clone()
            } else {
                right.clone()
            };
            tokio::spawn(async move {
                let stream = fresh_stream(&format!("instances-{writer}"));
                for version in 0..4 {
                    store
                        .append(
                            &stream,
                            ExpectedVersion::from_version(version),
                            vec![named("y")],
                            &fresh_request(),
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let all = left.read_all(0, 1000).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=4 + 16 * 4).collect::<Vec<_>>());
    assert_eq!(right.head().await.unwrap(), 4 + 16 * 4);
}
