//! Snapshots of read models, so that a cold process does not fold the whole log.
//!
//! A Lambda function starts cold often, and every start used to fold every event into
//! its views: 200 images already cost ~200 ms against the emulator. A snapshot is the
//! view itself, encoded (MessagePack, gzip) into a content-addressed blob, and recorded
//! by a [`Event::SnapshotTaken`] event on the view's own stream (`snapshot/<name>`):
//! a cold start reads that stream's last event, then fetches one blob while it reads the
//! events after the snapshot's position (after the snapshot's own event, when that is
//! the next one). Snapshots live in the log and the blob store the system already
//! has; no backend needs anything new.
//!
//! The rules:
//! - The blob is stored before its event (invariant 3), and the event is appended at
//!   the stream version read when loading, so of many cold starts racing to record a
//!   snapshot one wins and the others record nothing.
//! - A snapshot names its encoding ([`FORMAT`]); a process that cannot read it (another
//!   encoding, a blob that is gone, bytes that do not decode, a position that does not
//!   match) folds the log from the start instead. A snapshot only ever saves time.
//! - Views ignore `SnapshotTaken` events, so recording one changes no view.

use std::io::{Read, Write};
use std::sync::Arc;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::blob::{BlobStore, read_to_vec};
use crate::event::{Actor, Event, NewEvent, RecordedEvent, StreamId};
use crate::id::Extension;
use crate::projection::{CATCH_UP_BATCH, Projected, Projection};
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// The encoding this build writes and reads. Bump the number whenever the layout of a
/// snapshotted view (its fields, or their types' fields) changes, so that older
/// snapshots are skipped rather than misread; a unit test pins the layout and fails
/// until it is bumped.
pub const FORMAT: &str = "msgpack+gzip/4";

/// A cold start that folded at least this many events past the latest snapshot records
/// a new one.
pub const SNAPSHOT_AFTER_EVENTS: u64 = 100;

/// A read model that can be saved and restored whole.
pub trait Snapshot: Projection + Serialize + DeserializeOwned {
    /// Names the view's snapshot stream (`snapshot/<NAME>`).
    const NAME: &'static str;
}

/// The latest snapshot of a view as recorded in the log.
#[derive(Debug)]
pub struct Restored<V> {
    pub view: V,
    /// Version of the snapshot stream, the expected version of the next snapshot.
    pub stream_version: u64,
}

fn stream<V: Snapshot>() -> StreamId {
    StreamId::from_stored(format!("snapshot/{}", V::NAME))
}

/// Loads the view's latest snapshot: `Ok(None)` when there is none, the empty view
/// (so the log is folded from the start) when it cannot be used (see the module
/// docs), `Err` only when the store cannot be read.
pub async fn load<V: Snapshot>(
    store: &dyn EventStore,
    blobs: &dyn BlobStore,
) -> Result<Option<Restored<V>>, StoreError> {
    let Some(latest) = store.last_event(&stream::<V>()).await? else {
        return Ok(None);
    };
    // An unusable snapshot restores the empty view: the log is folded from the start,
    // and the next snapshot replaces it.
    let view = restore::<V>(&latest, blobs).await.unwrap_or_default();
    Ok(Some(Restored {
        view,
        stream_version: latest.sequence,
    }))
}

async fn restore<V: Snapshot>(recorded: &RecordedEvent, blobs: &dyn BlobStore) -> Option<V> {
    let Event::SnapshotTaken {
        position,
        format,
        blob,
        ..
    } = &recorded.event
    else {
        return None;
    };
    if format != FORMAT {
        tracing::info!(view = V::NAME, %format, "snapshot in another format: folding the log");
        return None;
    }
    let bytes = match read_to_vec(blobs, blob).await {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::warn!(view = V::NAME, %err, "snapshot blob unreadable: folding the log");
            return None;
        }
    };
    match decode::<V>(&bytes) {
        Some(view) if view.position() == *position => Some(view),
        _ => {
            tracing::warn!(view = V::NAME, "snapshot does not decode: folding the log");
            None
        }
    }
}

/// A projection started from the view's latest snapshot and caught up with the log.
/// When this start folded [`SNAPSHOT_AFTER_EVENTS`] or more events past the snapshot,
/// it records a new one; failing to is logged, not returned (a snapshot only saves time).
pub async fn open_projection<V: Snapshot>(
    store: Arc<dyn EventStore>,
    blobs: &dyn BlobStore,
    now_ms: i64,
) -> Result<Projected<V>, StoreError> {
    let started = std::time::Instant::now();
    let latest = store.last_event(&stream::<V>()).await?;
    let stream_version = latest.as_ref().map_or(0, |event| event.sequence);
    // The snapshot's event names its position, so the events after it are read while
    // its blob is fetched: a cold start waits for one round trip fewer.
    let named = match latest.as_ref().map(|event| &event.event) {
        Some(Event::SnapshotTaken { position, .. }) => *position,
        _ => 0,
    };
    // When nothing came between that position and the snapshot's own event, the start
    // holds the first event after the view already and reads on from there: a start on
    // a log that stayed quiet since the snapshot then reads no events at all.
    let held = match &latest {
        Some(latest) if latest.position == named + 1 => std::slice::from_ref(latest),
        _ => &[],
    };
    let (restored, tail) = tokio::join!(
        async {
            match &latest {
                Some(latest) => restore::<V>(latest, blobs).await,
                None => None,
            }
        },
        store.read_all(named + held.len() as u64, CATCH_UP_BATCH),
    );
    let view = restored.unwrap_or_default();
    let since = view.position();
    let projected = Projected::starting_at(store.clone(), view);
    match tail {
        // The tail continues the restored view; a short one reached the log's end.
        Ok(tail) if since == named => {
            projected.apply_from(held);
            projected.apply_from(&tail);
            if tail.len() == CATCH_UP_BATCH {
                projected.catch_up().await?;
            }
        }
        _ => projected.catch_up().await?,
    }
    tracing::info!(
        view = V::NAME,
        snapshot_position = since,
        folded = projected.peek().position() - since,
        ready_ms = started.elapsed().as_millis(),
        "view restored"
    );
    let (encoded, position) = {
        let view = projected.peek();
        let position = view.position();
        let encoded = (position - since >= SNAPSHOT_AFTER_EVENTS).then(|| encode(&*view));
        (encoded, position)
    };
    if let Some(encoded) = encoded {
        let saved = match encoded {
            Ok(bytes) => save::<V>(&*store, blobs, bytes, position, stream_version, now_ms).await,
            Err(err) => Err(err),
        };
        if let Err(err) = saved {
            tracing::warn!(view = V::NAME, %err, "could not record a snapshot");
        }
    }
    Ok(projected)
}

/// Records `bytes` (a view encoded at `position`) as the latest snapshot, if the
/// snapshot stream is still at `stream_version`. Returns whether this call recorded it.
pub async fn save<V: Snapshot>(
    store: &dyn EventStore,
    blobs: &dyn BlobStore,
    bytes: Vec<u8>,
    position: u64,
    stream_version: u64,
    timestamp_ms: i64,
) -> Result<bool, SnapshotError> {
    let ext = Extension::parse(".msgpack.gz").expect("a valid extension");
    let blob = blobs.put_bytes(bytes, &ext).await?;
    let event = NewEvent {
        event: Event::SnapshotTaken {
            view: V::NAME.into(),
            position,
            format: FORMAT.into(),
            blob,
        },
        actor: Actor::admin(),
        timestamp_ms,
    };
    let request_id = format!("snapshot:{}:{position}", V::NAME);
    match store
        .append(
            &stream::<V>(),
            ExpectedVersion::from_version(stream_version),
            vec![event],
            &request_id,
        )
        .await
    {
        Ok(appended) => Ok(!appended.replayed),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// The view's bytes in [`FORMAT`].
pub fn encode<V: Serialize>(view: &V) -> Result<Vec<u8>, SnapshotError> {
    let packed = rmp_serde::to_vec(view).map_err(|err| SnapshotError::Encode(err.to_string()))?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&packed)
        .and_then(|()| gz.finish())
        .map_err(|err| SnapshotError::Encode(err.to_string()))
}

fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Option<V> {
    let mut packed = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut packed).ok()?;
    rmp_serde::from_slice(&packed).ok()
}

/// Why a snapshot could not be recorded (the view itself is unaffected).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("encoding the snapshot: {0}")]
    Encode(String),
    #[error(transparent)]
    Blob(#[from] crate::blob::BlobError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::fs::FolderBlobStore;
    use crate::cold_start::{self, StartViews};
    use crate::datastore::{Datastore, Strategy, WriteContext};
    use crate::id::{ImageId, Tag};
    use crate::store::sqlite::SqliteEventStore;
    use serde_json::json;
    use sha2::Digest;
    use std::time::Duration;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn EventStore>,
        blobs: Arc<dyn BlobStore>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteEventStore::open(dir.path().join("events.db")).unwrap());
        let blobs = Arc::new(FolderBlobStore::open(dir.path().join("blobs")).unwrap());
        Fixture {
            _dir: dir,
            store,
            blobs,
        }
    }

    /// Images, labels, a lease and a score: every index of the view has content.
    async fn fill(datastore: &Datastore, images: usize, seed: usize) {
        let ctx = || WriteContext::fresh(Actor::admin());
        let ext = Extension::parse(".nii.gz").unwrap();
        for i in 0..images {
            let id = ImageId::parse(format!("img{seed}_{i:04}")).unwrap();
            let blob = datastore
                .blob_store()
                .put_bytes(format!("image {seed} {i}").into_bytes(), &ext)
                .await
                .unwrap();
            let mut info = serde_json::Map::new();
            info.insert("n".into(), json!(i));
            datastore
                .add_image_blob(&ctx(), &id, blob, info)
                .await
                .unwrap();
            if i % 3 == 0 {
                let label = datastore
                    .blob_store()
                    .put_bytes(format!("label {seed} {i}").into_bytes(), &ext)
                    .await
                    .unwrap();
                let tag = Tag::parse("final").unwrap();
                datastore
                    .save_label_blob(&ctx(), &id, &tag, label, Default::default())
                    .await
                    .unwrap();
            }
            if i % 5 == 1 {
                let mut values = serde_json::Map::new();
                values.insert("epistemic_entropy".into(), json!(i as f64 / 10.0));
                datastore
                    .record_score(&ctx(), &id, "epistemic", None, values)
                    .await
                    .unwrap();
            }
        }
        let pick = |n: usize| n / 2;
        datastore
            .next_sample(
                &ctx(),
                Strategy::Random,
                "random",
                "annotator",
                Duration::from_secs(600),
                &pick,
            )
            .await
            .unwrap();
    }

    /// A datastore on the fixture's stores, folding the whole log.
    async fn datastore(f: &Fixture) -> Datastore {
        Datastore::open(f.store.clone(), f.blobs.clone())
            .await
            .unwrap()
    }

    async fn full_fold(f: &Fixture) -> StartViews {
        Projected::<StartViews>::new(f.store.clone())
            .read()
            .await
            .unwrap()
            .clone()
    }

    #[tokio::test]
    async fn the_layout_of_snapshotted_views_is_pinned_to_format() {
        // One entry in every map, from a fixed clock: the encoding is deterministic, and
        // it changes when a field of any snapshotted type does.
        let f = fixture();
        let clock = Arc::new(crate::clock::ManualClock::new(1_800_000_000_000));
        let datastore = Datastore::open_with_clock(f.store.clone(), f.blobs.clone(), clock.clone())
            .await
            .unwrap();
        fill(&datastore, 1, 5).await;
        // A job, a model and a session, with fixed request ids (ids derive from them).
        let pinned = |id: &str| WriteContext::new(Actor::admin(), id);
        let model = crate::ModelName::parse("pinned").unwrap();
        let jobs = crate::jobs::Jobs::new(f.store.clone(), clock.clone());
        let job = jobs
            .request(
                &pinned("pin-job"),
                crate::event::JobKind::Train,
                Some(model.clone()),
                Default::default(),
                Some(crate::pinned::pin(f.blobs.as_ref(), &[], 1).await.unwrap()),
                false,
            )
            .await
            .unwrap();
        jobs.claim(
            &pinned("pin-claim"),
            &job,
            "runner",
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
        let json = Extension::parse(".json").unwrap();
        let blob = |bytes: &[u8]| f.blobs.put_bytes(bytes.to_vec(), &json);
        crate::models::Models::new(f.store.clone(), clock.clone())
            .publish(
                &pinned("pin-model"),
                &model,
                blob(b"weights").await.unwrap(),
                blob(b"{}").await.unwrap(),
                Some(0.5),
                Some(job.id.clone()),
            )
            .await
            .unwrap();
        let upload = tempfile::NamedTempFile::new().unwrap();
        crate::session::Sessions::new(f.store.clone(), f.blobs.clone(), clock, 3600)
            .create(
                &pinned("pin-session"),
                upload.path(),
                "ct.nii.gz",
                Default::default(),
                0,
            )
            .await
            .unwrap();
        let views = full_fold(&f).await;
        let digest = sha2::Sha256::digest(rmp_serde::to_vec(&views).unwrap());
        assert_eq!(
            (FORMAT, hex::encode(digest).as_str()),
            (
                "msgpack+gzip/4",
                "c44c8f791c1caaa21ca6d44f39ca9e63407770532e5cec6ffa37427b92d7e68d"
            ),
            "the layout of a snapshotted view changed: bump FORMAT and update this digest"
        );
    }

    #[tokio::test]
    async fn a_start_folds_past_the_first_batch_with_and_without_a_snapshot() {
        let f = fixture();
        let datastore = datastore(&f).await;
        // The view as the start left it, before any read catches it up.
        let open = || async {
            open_projection::<StartViews>(f.store.clone(), &*f.blobs, 1)
                .await
                .unwrap()
                .peek()
                .clone()
        };
        // More events than one catch-up batch, with no snapshot yet, then as many again
        // after the snapshot that start records.
        fill(&datastore, 700, 1).await;
        assert!(datastore.view().await.unwrap().position > CATCH_UP_BATCH as u64);
        // Folded before the start, which records a snapshot event after it.
        let expected = full_fold(&f).await;
        assert_eq!(open().await, expected);
        // Nothing since the snapshot: the start holds the one event after it, its own.
        let expected = full_fold(&f).await;
        assert_eq!(
            load::<StartViews>(&*f.store, &*f.blobs)
                .await
                .unwrap()
                .expect("the first start recorded a snapshot")
                .view
                .position()
                + 1,
            expected.position()
        );
        assert_eq!(open().await, expected);
        fill(&datastore, 700, 2).await;
        let since = load::<StartViews>(&*f.store, &*f.blobs)
            .await
            .unwrap()
            .expect("the first start recorded a snapshot")
            .view
            .position();
        let expected = full_fold(&f).await;
        assert!(expected.position() - since > CATCH_UP_BATCH as u64);
        assert_eq!(open().await, expected);
    }

    #[tokio::test]
    async fn an_unusable_snapshot_falls_back_to_folding_and_racing_savers_record_one() {
        let f = fixture();
        let datastore = datastore(&f).await;
        fill(&datastore, 20, 3).await;
        // A blob that is not a view, recorded as a snapshot at the current position.
        let position = datastore.view().await.unwrap().position;
        assert!(
            save::<StartViews>(&*f.store, &*f.blobs, b"not a view".to_vec(), position, 0, 1)
                .await
                .unwrap()
        );
        let restored = load::<StartViews>(&*f.store, &*f.blobs)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            restored.view.position(),
            0,
            "an undecodable snapshot is not used"
        );
        let opened = cold_start::open(
            f.store.clone(),
            f.blobs.clone(),
            Arc::new(crate::clock::SystemClock),
        )
        .await
        .unwrap();
        let expected = full_fold(&f).await;
        assert_eq!(*opened.datastore.view().await.unwrap(), expected.datastore);
        assert_eq!(*opened.jobs.view().await.unwrap(), expected.jobs);
        assert_eq!(*opened.models.view().await.unwrap(), expected.models);

        // Two savers that read the same stream version: the first records, the second
        // finds the stream moved and records nothing.
        let view = full_fold(&f).await;
        let bytes = encode(&view).unwrap();
        let stream_version = f
            .store
            .stream_version(&stream::<StartViews>())
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            save::<StartViews>(
                &*f.store,
                &*f.blobs,
                bytes.clone(),
                view.position(),
                stream_version,
                2
            ),
            save::<StartViews>(
                &*f.store,
                &*f.blobs,
                bytes.clone(),
                view.position(),
                stream_version,
                3
            ),
        );
        // Same position, same request id: the loser is a replay or a conflict.
        assert_eq!(
            [a.unwrap(), b.unwrap()].iter().filter(|won| **won).count(),
            1
        );
        let latest = load::<StartViews>(&*f.store, &*f.blobs)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(latest.view, view);
    }
}
