//! The Datastore conformance suite on the embedded backend: SQLite event store and
//! folder blob store in a temporary directory.

use std::path::Path;
use std::sync::Arc;

use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::clock::ManualClock;
use medlabel_events::datastore::Datastore;
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_tests::datastore_contract as contract;

async fn open(dir: &Path) -> Datastore {
    let store = SqliteEventStore::open(dir.join("events.db")).unwrap();
    let blobs = FolderBlobStore::open_with_inline(dir.join("blobs"), &store).unwrap();
    Datastore::open(Arc::new(store), Arc::new(blobs))
        .await
        .unwrap()
}

#[tokio::test]
async fn every_method() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(dir.path()).await;
    contract::every_method(&ds, dir.path()).await;
    contract::rebuild_gives_identical_json(&ds, &open(dir.path()).await).await;
}

#[tokio::test]
async fn dataset_archive_limits() {
    let dir = tempfile::tempdir().unwrap();
    contract::dataset_archive_limits(&open(dir.path()).await, dir.path()).await;
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    contract::bad_input_changes_nothing(&open(dir.path()).await, dir.path()).await;
}

#[tokio::test]
async fn request_ids_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    contract::request_ids_are_idempotent(&open(dir.path()).await, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Arc::new(open(dir.path()).await);
    contract::concurrent_writers(ds.clone(), dir.path()).await;
    contract::rebuild_gives_identical_json(&ds, &open(dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    contract::conflicts_are_reported(&open(dir.path()).await, dir.path()).await;
}

/// Two Datastore instances over one SQLite file (as two processes would share it):
/// a write through one is visible to the next read through the other.
#[tokio::test]
async fn writes_are_visible_across_instances() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).await;
    let second = open(dir.path()).await;
    contract::writes_are_visible_across_instances(&first, &second, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn annotators_never_share_images() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Arc::new(open(dir.path()).await);
    contract::annotators_never_share_images(ds.clone(), dir.path(), 1000).await;
    contract::rebuild_gives_identical_json(&ds, &open(dir.path()).await).await;
}

#[tokio::test]
async fn leases_end_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let blobs = FolderBlobStore::open_with_inline(dir.path().join("blobs"), &store).unwrap();
    let ds = Datastore::open_with_clock(Arc::new(store), Arc::new(blobs), clock.clone())
        .await
        .unwrap();
    contract::leases_end_and_expire(&ds, &clock, dir.path()).await;
}

#[tokio::test]
async fn epistemic_follows_scores() {
    let dir = tempfile::tempdir().unwrap();
    contract::epistemic_follows_scores(&open(dir.path()).await, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let blobs = FolderBlobStore::open_with_inline(dir.path().join("blobs"), &store).unwrap();
    medlabel_tests::jobs_contract::lifecycle(Arc::new(store), Arc::new(blobs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_concurrent_requests_accept_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    medlabel_tests::jobs_contract::concurrent_requests_accept_one(Arc::new(store)).await;
}

#[tokio::test]
async fn jobs_leases() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    medlabel_tests::jobs_contract::leases_end_jobs_of_runners_that_went_away(Arc::new(store)).await;
}

/// The same seed gives the same hand-out order on a fresh datastore; another seed does not.
#[tokio::test]
async fn seeded_random_is_reproducible() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let first = contract::random_order(&open(a.path()).await, a.path(), 40, 42).await;
    let again = contract::random_order(&open(b.path()).await, b.path(), 40, 42).await;
    let other = contract::random_order(&open(c.path()).await, c.path(), 40, 43).await;
    assert_eq!(first, again);
    assert_ne!(first, other);
    let distinct: std::collections::BTreeSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), 40, "every image once before any repeats");
}

#[tokio::test]
async fn snapshots_restore_what_a_fold_sees() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path().join("events.db")).unwrap());
    let blobs =
        Arc::new(FolderBlobStore::open_with_inline(dir.path().join("blobs"), &store).unwrap());
    contract::snapshots_restore_what_a_fold_sees(store, blobs, dir.path()).await;
}
