//! The Datastore conformance suite on the cloud backend: DynamoDB event store and S3
//! blob store on the AWS emulator (`.ci/run` starts it; see `medlabel_tests::emulator`).

use std::sync::Arc;

use medlabel_events::clock::ManualClock;
use medlabel_events::datastore::Datastore;
use medlabel_events::{BlobStore, EventStore};
use medlabel_tests::datastore_contract as contract;
use medlabel_tests::emulator::aws;

/// A fresh table and bucket, and a second handle over the same pair (a second Lambda
/// instance), so tests can check what another instance sees.
async fn stores() -> (Arc<dyn EventStore>, Arc<dyn BlobStore>) {
    let env = aws().await;
    (
        Arc::new(env.event_store().await),
        Arc::new(env.blob_store().await),
    )
}

async fn open((store, blobs): &(Arc<dyn EventStore>, Arc<dyn BlobStore>)) -> Datastore {
    Datastore::open(store.clone(), blobs.clone()).await.unwrap()
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn every_method() {
    let (dir, stores) = (scratch(), stores().await);
    let ds = open(&stores).await;
    contract::every_method(&ds, dir.path()).await;
    contract::rebuild_gives_identical_json(&ds, &open(&stores).await).await;
}

#[tokio::test]
async fn dataset_archive_limits() {
    let (dir, stores) = (scratch(), stores().await);
    contract::dataset_archive_limits(&open(&stores).await, dir.path()).await;
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let (dir, stores) = (scratch(), stores().await);
    contract::bad_input_changes_nothing(&open(&stores).await, dir.path()).await;
}

#[tokio::test]
async fn request_ids_are_idempotent() {
    let (dir, stores) = (scratch(), stores().await);
    contract::request_ids_are_idempotent(&open(&stores).await, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers() {
    let (dir, stores) = (scratch(), stores().await);
    let ds = Arc::new(open(&stores).await);
    contract::concurrent_writers(ds.clone(), dir.path()).await;
    contract::rebuild_gives_identical_json(&ds, &open(&stores).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_reported() {
    let (dir, stores) = (scratch(), stores().await);
    contract::conflicts_are_reported(&open(&stores).await, dir.path()).await;
}

#[tokio::test]
async fn writes_are_visible_across_instances() {
    let (dir, stores) = (scratch(), stores().await);
    let (first, second) = (open(&stores).await, open(&stores).await);
    contract::writes_are_visible_across_instances(&first, &second, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn annotators_never_share_images() {
    let (dir, stores) = (scratch(), stores().await);
    let ds = Arc::new(open(&stores).await);
    // Fewer images than on the embedded backend: every hand-out is two emulator
    // round trips, and the property does not depend on the count.
    contract::annotators_never_share_images(ds.clone(), dir.path(), 120).await;
}

#[tokio::test]
async fn leases_end_and_expire() {
    let (dir, (store, blobs)) = (scratch(), stores().await);
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let ds = Datastore::open_with_clock(store, blobs, clock.clone())
        .await
        .unwrap();
    contract::leases_end_and_expire(&ds, &clock, dir.path()).await;
}

#[tokio::test]
async fn epistemic_follows_scores() {
    let (dir, stores) = (scratch(), stores().await);
    contract::epistemic_follows_scores(&open(&stores).await, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_lifecycle() {
    let (store, blobs) = stores().await;
    medlabel_tests::jobs_contract::lifecycle(store, blobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_concurrent_requests_accept_one() {
    let (store, _) = stores().await;
    medlabel_tests::jobs_contract::concurrent_requests_accept_one(store).await;
}

#[tokio::test]
async fn jobs_leases() {
    let (store, _) = stores().await;
    medlabel_tests::jobs_contract::leases_end_jobs_of_runners_that_went_away(store).await;
}

#[tokio::test]
async fn snapshots_restore_what_a_fold_sees() {
    let (dir, (store, blobs)) = (scratch(), stores().await);
    contract::snapshots_restore_what_a_fold_sees(store, blobs, dir.path()).await;
}
