//! The embedded backends: the contract suites on [`SqliteEventStore`] and
//! [`FolderBlobStore`] (files only, and with small blobs inline in an event database),
//! plus what only they promise (several handles on one file, a reopened file, staged
//! uploads, in-place import by hard link).

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::blob::read_to_vec;
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_events::{BlobError, BlobStore, EventStore, ExpectedVersion, Extension, StoreError};
use medlabel_tests::store_contract::{self as contract, fresh_request, fresh_stream, named};
use tempfile::TempDir;

fn sqlite() -> (TempDir, Arc<dyn EventStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    (dir, Arc::new(store))
}

fn folder() -> (TempDir, Arc<dyn BlobStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = FolderBlobStore::open(dir.path().join("blobs")).unwrap();
    (dir, Arc::new(store))
}

macro_rules! event_store_contract {
    ($($suite:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $suite() {
            let (_dir, store) = sqlite();
            contract::$suite(store).await;
        }
    )*};
}

/// A folder store with its small blobs in the event database beside it, as the local
/// server opens it.
fn folder_with_inline() -> (TempDir, Arc<dyn BlobStore>) {
    let dir = tempfile::tempdir().unwrap();
    let events = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let store = FolderBlobStore::open_with_inline(dir.path().join("blobs"), &events).unwrap();
    (dir, Arc::new(store))
}

/// The blob suites on the store that `$open` makes, in a module of that name.
macro_rules! blob_store_contract {
    ($open:ident: $($suite:ident),* $(,)?) => {
        mod $open {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $suite() {
                    let (_dir, store) = super::$open();
                    contract::$suite(store).await;
                }
            )*
        }
    };
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

blob_store_contract!(folder: blob_round_trip, blob_dedup, blob_streams_large_file);
blob_store_contract!(folder_with_inline: blob_round_trip, blob_dedup, blob_streams_large_file);

/// Two handles on one file, as two processes would hold, interleave into one gapless
/// order and see each other's writes, conflicts included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_share_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let left: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&path).unwrap());
    let right: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&path).unwrap());

    let shared = fresh_stream("shared");
    let handles = [left.clone(), right.clone()];
    for round in 0..20u64 {
        let handle = &handles[round as usize % 2];
        let appended = handle
            .append(
                &shared,
                ExpectedVersion::from_version(round),
                vec![named("x")],
                &fresh_request(),
            )
            .await
            .unwrap();
        assert_eq!(appended.last_sequence, round + 1);
    }
    let stale = left
        .append(
            &shared,
            ExpectedVersion::Exact(19),
            vec![named("late")],
            &fresh_request(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale, StoreError::Conflict { actual: 20, .. }),
        "{stale:?}"
    );

    // Concurrent writers on both handles, each on its own stream.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = handles[i % 2].clone();
            tokio::spawn(async move {
                let stream = fresh_stream("per-task");
                for version in 0..10 {
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
    for task in tasks {
        task.await.unwrap();
    }

    let from_left = left.read_all(0, 1000).await.unwrap();
    let from_right = right.read_all(0, 1000).await.unwrap();
    assert_eq!(from_left, from_right);
    assert_eq!(from_left.len(), 20 + 80);
    assert!(
        from_left
            .iter()
            .enumerate()
            .all(|(i, e)| e.position == i as u64 + 1)
    );
    assert_eq!(left.head().await.unwrap(), 100);

    // A replay is recognised whichever handle recorded the request.
    let request = fresh_request();
    let first = left
        .append(&shared, ExpectedVersion::Any, vec![named("z")], &request)
        .await
        .unwrap();
    let again = right
        .append(&shared, ExpectedVersion::Any, vec![named("z")], &request)
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.first_position, first.first_position);

    // A waiter on one handle notices the other handle's append (by polling the file).
    let head = right.head().await.unwrap();
    let waiter = {
        let right = right.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            right
                .wait_for_append(head, Duration::from_secs(10))
                .await
                .unwrap();
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    left.append(
        &shared,
        ExpectedVersion::Any,
        vec![named("wake")],
        &fresh_request(),
    )
    .await
    .unwrap();
    assert!(waiter.await.unwrap() < Duration::from_secs(5));
}

/// A waiter on the appending handle wakes without waiting out its timeout; with
/// nothing appended it returns after the timeout.
#[tokio::test]
async fn wait_for_append_wakes_and_times_out() {
    let (_dir, store) = sqlite();
    let started = Instant::now();
    store
        .wait_for_append(0, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));

    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            store
                .wait_for_append(0, Duration::from_secs(30))
                .await
                .unwrap();
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    store
        .append(
            &fresh_stream("wake"),
            ExpectedVersion::Any,
            vec![named("a")],
            &fresh_request(),
        )
        .await
        .unwrap();
    assert!(waiter.await.unwrap() < Duration::from_secs(5));
}

/// Closing and reopening the file keeps events, versions and request records.
#[tokio::test]
async fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let stream = fresh_stream("durable");
    let request = fresh_request();
    let (first, before) = {
        let store = SqliteEventStore::open(&path).unwrap();
        let first = store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![named("a"), named("b")],
                &request,
            )
            .await
            .unwrap();
        store
            .append(
                &fresh_stream("other"),
                ExpectedVersion::Any,
                vec![named("c")],
                &fresh_request(),
            )
            .await
            .unwrap();
        (first, store.read_all(0, 100).await.unwrap())
    };

    let store = SqliteEventStore::open(&path).unwrap();
    assert_eq!(store.read_all(0, 100).await.unwrap(), before);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);
    assert_eq!(store.head().await.unwrap(), 3);
    let again = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![named("a")],
            &request,
        )
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.last_position, first.last_position);
    let next = store
        .append(
            &stream,
            ExpectedVersion::Exact(2),
            vec![named("d")],
            &fresh_request(),
        )
        .await
        .unwrap();
    assert_eq!((next.last_sequence, next.last_position), (3, 4));
}

/// A file that is not an event store is refused with an error, not a panic.
#[tokio::test]
async fn refuses_a_foreign_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-sqlite.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    assert!(matches!(
        SqliteEventStore::open(&path),
        Err(StoreError::Backend(_))
    ));
}

fn ext(value: &str) -> Extension {
    Extension::parse(value).unwrap()
}

/// Uploads staged under `uploads/` are adopted by content, with ids checked and the
/// size limit enforced (an oversized upload is discarded).
#[tokio::test]
async fn uploads_are_adopted_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = FolderBlobStore::open(dir.path()).unwrap();
    for bad in ["", "../escape", "a/b", "dot.ted", &"x".repeat(65)] {
        assert!(store.upload_path(bad).is_none(), "{bad:?} accepted");
        assert!(matches!(
            store.adopt_upload(bad, &ext(".nii"), 1 << 20).await,
            Err(BlobError::UploadNotFound(_))
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    assert!(matches!(
        store.adopt_upload(&id, &ext(".nii"), 1 << 20).await,
        Err(BlobError::UploadNotFound(_))
    ));

    let bytes = contract::unique_bytes(5000);
    let staged = store.upload_path(&id).unwrap();
    std::fs::write(&staged, &bytes).unwrap();
    let blob = store.adopt_upload(&id, &ext(".nii"), 5000).await.unwrap();
    assert_eq!(blob.size, 5000);
    assert!(!staged.exists());
    assert_eq!(read_to_vec(&store, &blob).await.unwrap(), bytes);
    assert_eq!(
        store.local_path(&blob).unwrap(),
        dir.path().join(blob.key())
    );

    let big = uuid::Uuid::new_v4().to_string();
    let staged = store.upload_path(&big).unwrap();
    std::fs::write(&staged, contract::unique_bytes(5001)).unwrap();
    assert!(matches!(
        store.adopt_upload(&big, &ext(".nii"), 5000).await,
        Err(BlobError::TooLarge {
            size: 5001,
            limit: 5000
        })
    ));
    assert!(!staged.exists(), "an oversized upload must be discarded");
    assert_eq!(store.list().await.unwrap(), vec![blob]);
}

/// In-place import: the blob is the user's file (same inode), which stays put.
#[tokio::test]
async fn link_file_imports_without_copying() {
    let dir = tempfile::tempdir().unwrap();
    let store = FolderBlobStore::open(dir.path().join("blobs")).unwrap();
    let studies = dir.path().join("studies");
    std::fs::create_dir(&studies).unwrap();
    let image = studies.join("spleen_3.nii.gz");
    let bytes = contract::unique_bytes(3 << 20);
    std::fs::write(&image, &bytes).unwrap();

    let blob = store.link_file(&image, &ext(".nii.gz")).await.unwrap();
    assert_eq!(blob.size, bytes.len() as u64);
    let stored = store.local_path(&blob).unwrap();
    assert_eq!(
        std::fs::metadata(&stored).unwrap().ino(),
        std::fs::metadata(&image).unwrap().ino()
    );
    assert_eq!(std::fs::read(&image).unwrap(), bytes);
    assert_eq!(read_to_vec(&store, &blob).await.unwrap(), bytes);
    assert!(
        std::fs::read_dir(dir.path().join("blobs/tmp"))
            .unwrap()
            .next()
            .is_none()
    );

    // Importing again, or putting the same bytes, keeps the one blob.
    assert_eq!(
        store.link_file(&image, &ext(".nii.gz")).await.unwrap(),
        blob
    );
    assert_eq!(store.put_bytes(bytes, &ext(".nii.gz")).await.unwrap(), blob);
    assert_eq!(store.list().await.unwrap(), vec![blob.clone()]);

    // Deleting the blob leaves the user's file alone.
    store.delete(&blob).await.unwrap();
    assert!(image.exists());
    assert!(
        store
            .link_file(&dir.path().join("missing.nii"), &ext(".nii"))
            .await
            .is_err()
    );
}

/// References that cannot name a stored blob never reach a path.
#[tokio::test]
async fn malformed_references_are_absent() {
    let (_dir, store) = folder();
    let bogus = medlabel_events::BlobRef {
        sha256: "../../etc/passwd".into(),
        size: 1,
        ext: ext(""),
    };
    assert!(store.local_path(&bogus).is_none());
    assert_eq!(store.head(&bogus).await.unwrap(), None);
    assert!(matches!(
        store.get(&bogus).await,
        Err(BlobError::NotFound(_))
    ));
    store.delete(&bogus).await.unwrap();
    let short = medlabel_events::BlobRef {
        sha256: "a".into(),
        ..bogus
    };
    assert!(store.local_path(&short).is_none());
}

/// Under steady appends the WAL still starts over (it would otherwise grow for as long
/// as the load lasts: a passive checkpoint never finds a moment without a commit), and
/// checkpoints copy the log into the database file, off the appends' path.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_stays_bounded_under_steady_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&path).unwrap());
    let wal = dir.path().join("events.db-wal");
    let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let database_before = size(&path);
    // ~2 KB per event: 6,000 of them write far more WAL than the restart threshold.
    let name = "x".repeat(2048);
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let name = name.clone();
            tokio::spawn(async move {
                for _ in 0..750 {
                    let stream = fresh_stream("steady");
                    store
                        .append(
                            &stream,
                            ExpectedVersion::NoStream,
                            vec![named(&*name)],
                            &fresh_request(),
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut largest_wal = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        largest_wal = largest_wal.max(size(&wal));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // Unbounded, the WAL would hold all ~120 MB written; bounded, it is a few checkpoint
    // pauses' worth.
    assert!(
        largest_wal < 48 << 20,
        "the WAL grew to {largest_wal} bytes under steady appends"
    );
    assert!(
        size(&path) > database_before + (4 << 20),
        "checkpoints copied the log into the database file"
    );
    assert_eq!(store.head().await.unwrap(), 6000);
}
