//! One step of the crash test's writer, shared by the `append_loop` child and the test
//! that kills it: put a small blob, then append an event that references it.
//!
//! The blob's bytes follow from the request id, so after a kill the test can tell for
//! every recorded event whether its blob survived intact.

use medlabel_events::blob::read_to_vec;
use medlabel_events::{
    Actor, Appended, BlobStore, Event, EventStore, ExpectedVersion, Extension, ImageId, Info,
    NewEvent, RecordedEvent, StreamId,
};

/// The stream every step appends to.
pub fn stream() -> StreamId {
    StreamId::from_stored("crash".into())
}

/// The blob of the step with this request id: 0.1 to 1.3 KB, so it lives inline in the
/// event database, and different for every request id.
pub fn blob_bytes(request_id: &str) -> Vec<u8> {
    let repeats = 16 + request_id.bytes().map(usize::from).sum::<usize>() % 200;
    format!("{request_id};").repeat(repeats).into_bytes()
}

/// Puts the step's blob, then appends one event referencing it at `expected`.
pub async fn put_and_append(
    store: &dyn EventStore,
    blobs: &dyn BlobStore,
    expected: ExpectedVersion,
    request_id: &str,
) -> anyhow::Result<Appended> {
    let ext = Extension::parse(".nii.gz")?;
    let blob = blobs.put_bytes(blob_bytes(request_id), &ext).await?;
    let event = NewEvent {
        event: Event::ImageAdded {
            image: ImageId::parse(format!("crash_{request_id}"))?,
            ext,
            blob,
            info: Info::new(),
        },
        actor: Actor::admin(),
        timestamp_ms: 1_700_000_000_000,
    };
    Ok(store
        .append(&stream(), expected, vec![event], request_id)
        .await?)
}

/// Panics unless `recorded` references a blob that reads back as its step's bytes.
pub async fn assert_blob_intact(blobs: &dyn BlobStore, recorded: &RecordedEvent) {
    let Event::ImageAdded { blob, .. } = &recorded.event else {
        panic!("unexpected event {:?} in the crash stream", recorded.event);
    };
    let bytes = read_to_vec(blobs, blob).await.unwrap_or_else(|err| {
        panic!(
            "blob of acknowledged request {} unreadable: {err}",
            recorded.request_id
        )
    });
    assert!(
        bytes == blob_bytes(&recorded.request_id),
        "blob of request {} damaged",
        recorded.request_id
    );
}
