//! Contract suites every event-store and blob-store backend must pass.
//!
//! Each suite is an async fn over `Arc<dyn EventStore>` or `Arc<dyn BlobStore>` that
//! panics on the first broken promise, so the embedded backends and the AWS ones are held
//! to exactly the same behaviour. Suites touch only streams and blobs they name
//! themselves (random ids), so they pass on a fresh store or a shared one, and may run
//! concurrently with each other on the same store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use medlabel_events::blob::read_to_vec;
use medlabel_events::event::Event;
use medlabel_events::store::follow::follow;
use medlabel_events::store::{MAX_APPEND_BYTES, MAX_EVENT_BYTES, MAX_EVENTS_PER_APPEND};
use medlabel_events::{
    Actor, Appended, BlobError, BlobStore, EventStore, ExpectedVersion, Extension, NewEvent,
    RecordedEvent, StoreError, StreamId,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::Barrier;

/// Writers in the concurrency suites.
pub const WRITERS: usize = 32;

/// Successful appends each writer makes in the concurrency suites.
const APPENDS_PER_WRITER: usize = 4;

/// A stream no other suite (or earlier run against a shared store) uses.
pub fn fresh_stream(label: &str) -> StreamId {
    StreamId::from_stored(format!("contract/{label}/{}", uuid::Uuid::new_v4()))
}

/// A request id no other append uses.
pub fn fresh_request() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A small event whose payload names it, so suites can tell their events apart.
pub fn named(name: impl Into<String>) -> NewEvent {
    NewEvent {
        event: Event::DatastoreRenamed { name: name.into() },
        actor: Actor::admin(),
        timestamp_ms: 1_700_000_000_000,
    }
}

/// The name [`named`] put into a recorded event.
fn name_of(recorded: &RecordedEvent) -> &str {
    match &recorded.event {
        Event::DatastoreRenamed { name } => name,
        other => panic!("unexpected event {other:?} in a contract stream"),
    }
}

/// Appends events named `names` and returns what the store acknowledged.
async fn append_named(
    store: &dyn EventStore,
    stream: &StreamId,
    expected: ExpectedVersion,
    names: &[&str],
) -> Result<Appended, StoreError> {
    let events = names.iter().map(|name| named(*name)).collect();
    store
        .append(stream, expected, events, &fresh_request())
        .await
}

/// Appended events read back whole: payload, envelope, sequences and positions.
pub async fn append_and_read_back(store: Arc<dyn EventStore>) {
    let stream = fresh_stream("read-back");
    assert_eq!(store.stream_version(&stream).await.unwrap(), 0);
    assert!(store.read_stream(&stream, 1).await.unwrap().is_empty());
    assert!(store.last_event(&stream).await.unwrap().is_none());

    let request = fresh_request();
    let first = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![named("a"), named("b"), named("c")],
            &request,
        )
        .await
        .unwrap();
    assert_eq!((first.first_sequence, first.last_sequence), (1, 3));
    assert_eq!(first.last_position - first.first_position, 2);
    assert!(first.first_position >= 1);
    assert!(!first.replayed);
    assert_eq!(first.stream, stream);

    let read = store.read_stream(&stream, 1).await.unwrap();
    assert_eq!(read.len(), 3);
    for (offset, (recorded, name)) in read.iter().zip(["a", "b", "c"]).enumerate() {
        assert_eq!(recorded.stream, stream);
        assert_eq!(recorded.sequence, 1 + offset as u64);
        assert_eq!(recorded.position, first.first_position + offset as u64);
        assert_eq!(recorded.event, named(name).event);
        assert_eq!(recorded.actor, Actor::admin());
        assert_eq!(recorded.timestamp_ms, 1_700_000_000_000);
        assert_eq!(recorded.request_id, request);
        assert_eq!(recorded.event_type, "DatastoreRenamed");
        assert_eq!(
            recorded.schema_version,
            medlabel_events::event::SCHEMA_VERSION
        );
    }

    let second = append_named(&*store, &stream, ExpectedVersion::Exact(3), &["d", "e"])
        .await
        .unwrap();
    assert_eq!((second.first_sequence, second.last_sequence), (4, 5));
    assert!(second.first_position > first.last_position);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 5);
    assert!(store.head().await.unwrap() >= second.last_position);

    let last = store.last_event(&stream).await.unwrap().unwrap();
    assert_eq!((last.sequence, name_of(&last)), (5, "e"));
    assert_eq!(last.position, second.last_position);

    let tail = store.read_stream(&stream, 4).await.unwrap();
    let names: Vec<_> = tail.iter().map(name_of).collect();
    assert_eq!(names, ["d", "e"]);
    assert_eq!(tail[0].sequence, 4);
    assert!(store.read_stream(&stream, 6).await.unwrap().is_empty());
}

/// `Exact`, `NoStream` and `Any` as documented; a conflict reports the actual version
/// and records nothing.
pub async fn expected_versions(store: Arc<dyn EventStore>) {
    let stream = fresh_stream("versions");
    let conflict = append_named(&*store, &stream, ExpectedVersion::Exact(1), &["x"])
        .await
        .unwrap_err();
    assert_conflict(conflict, &stream, ExpectedVersion::Exact(1), 0);

    append_named(&*store, &stream, ExpectedVersion::NoStream, &["a", "b"])
        .await
        .unwrap();
    let conflict = append_named(&*store, &stream, ExpectedVersion::NoStream, &["x"])
        .await
        .unwrap_err();
    assert_conflict(conflict, &stream, ExpectedVersion::NoStream, 2);
    for stale in [1, 3] {
        let conflict = append_named(&*store, &stream, ExpectedVersion::Exact(stale), &["x"])
            .await
            .unwrap_err();
        assert_conflict(conflict, &stream, ExpectedVersion::Exact(stale), 2);
    }
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);

    let exact = append_named(&*store, &stream, ExpectedVersion::Exact(2), &["c"])
        .await
        .unwrap();
    assert_eq!(exact.last_sequence, 3);
    let any = append_named(&*store, &stream, ExpectedVersion::Any, &["d"])
        .await
        .unwrap();
    assert_eq!(any.last_sequence, 4);
    let blind = fresh_stream("versions-any");
    let any_new = append_named(&*store, &blind, ExpectedVersion::Any, &["a"])
        .await
        .unwrap();
    assert_eq!(any_new.first_sequence, 1);

    let names: Vec<_> = store
        .read_stream(&stream, 1)
        .await
        .unwrap()
        .iter()
        .map(|e| name_of(e).to_owned())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "c", "d"],
        "a refused append left events behind"
    );
}

fn assert_conflict(err: StoreError, stream: &StreamId, expected: ExpectedVersion, actual: u64) {
    match err {
        StoreError::Conflict {
            stream: s,
            expected: e,
            actual: a,
        } => assert_eq!((&s, e, a), (stream, expected, actual)),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// A request id seen before returns the first result, replayed, and records nothing,
/// whatever the arguments; under concurrency exactly one of the racers records.
pub async fn idempotent_requests(store: Arc<dyn EventStore>) {
    let stream = fresh_stream("idempotent");
    let request = fresh_request();
    let first = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![named("once"), named("twice")],
            &request,
        )
        .await
        .unwrap();
    assert!(!first.replayed);

    // A retry with a now-stale expectation, another payload, even another stream.
    let other = fresh_stream("idempotent-other");
    for (target, expected) in [
        (&stream, ExpectedVersion::NoStream),
        (&stream, ExpectedVersion::Exact(7)),
        (&other, ExpectedVersion::Any),
    ] {
        let again = store
            .append(target, expected, vec![named("retry")], &request)
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(
            Appended {
                replayed: false,
                ..again
            },
            first
        );
    }
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);
    assert_eq!(store.stream_version(&other).await.unwrap(), 0);

    let raced = fresh_stream("idempotent-race");
    let request = fresh_request();
    let barrier = Arc::new(Barrier::new(16));
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let (store, raced, request, barrier) = (
                store.clone(),
                raced.clone(),
                request.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(
                        &raced,
                        ExpectedVersion::Any,
                        vec![named(format!("racer {i}"))],
                        &request,
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for racer in racers {
        results.push(racer.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| !r.replayed).count(), 1);
    let recorded = results.iter().find(|r| !r.replayed).unwrap().clone();
    for result in &results {
        assert_eq!(
            Appended {
                replayed: false,
                ..result.clone()
            },
            recorded
        );
    }
    let events = store.read_stream(&raced, 1).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].position, recorded.first_position);
}

/// `read_all` pages through one gapless global order in which every stream's events
/// keep their own order; `limit` is respected.
pub async fn global_order(store: Arc<dyn EventStore>) {
    let streams = [
        fresh_stream("order-a"),
        fresh_stream("order-b"),
        fresh_stream("order-c"),
    ];
    let mut acked = Vec::new();
    for round in 0..12usize {
        let stream = &streams[round % 3];
        let names: Vec<String> = (0..1 + round % 4).map(|i| format!("{round}.{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let appended = append_named(&*store, stream, ExpectedVersion::Any, &names)
            .await
            .unwrap();
        acked.push((
            appended,
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ));
    }

    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 7).await.unwrap();
        assert!(
            page.len() <= 7,
            "read_all returned {} events for limit 7",
            page.len()
        );
        let Some(last) = page.last() else { break };
        after = last.position;
        all.extend(page);
    }
    for (index, event) in all.iter().enumerate() {
        assert_eq!(
            event.position,
            index as u64 + 1,
            "global order has a gap or a repeat"
        );
    }
    let by_position: BTreeMap<u64, &RecordedEvent> = all.iter().map(|e| (e.position, e)).collect();
    for (appended, names) in &acked {
        for (offset, name) in names.iter().enumerate() {
            let event = by_position[&(appended.first_position + offset as u64)];
            assert_eq!(event.stream, appended.stream);
            assert_eq!(event.sequence, appended.first_sequence + offset as u64);
            assert_eq!(name_of(event), name);
        }
    }
    assert!(store.head().await.unwrap() >= acked.last().unwrap().0.last_position);
    assert!(store.read_all(0, 0).await.unwrap().is_empty());

    let middle = acked[5].0.first_position;
    let from_middle = store.read_all(middle - 1, 3).await.unwrap();
    let positions: Vec<_> = from_middle.iter().map(|e| e.position).collect();
    assert_eq!(positions, [middle, middle + 1, middle + 2]);
}

/// Oversized events, oversized and empty batches and bad request ids are refused
/// before anything is written (the request id stays unused).
pub async fn refuses_bad_appends(store: Arc<dyn EventStore>) {
    let stream = fresh_stream("refused");
    let request = fresh_request();
    let huge = NewEvent {
        event: Event::DatastoreDescribed {
            description: "x".repeat(MAX_EVENT_BYTES),
        },
        ..named("huge")
    };
    let err = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![named("ok"), huge],
            &request,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::EventTooLarge { size, limit } if size > limit && limit == MAX_EVENT_BYTES),
        "{err:?}"
    );

    // Each event fits, but together they exceed what one transaction carries.
    let big = |i: usize| NewEvent {
        event: Event::DatastoreDescribed {
            description: char::from(b'a' + i as u8)
                .to_string()
                .repeat(MAX_EVENT_BYTES - 2048),
        },
        ..named("big")
    };
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
        matches!(err, StoreError::AppendTooLarge { size, limit } if size > limit && limit == MAX_APPEND_BYTES),
        "{err:?}"
    );

    let many = (0..=MAX_EVENTS_PER_APPEND)
        .map(|i| named(format!("{i}")))
        .collect();
    let err = store
        .append(&stream, ExpectedVersion::Any, many, &request)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooManyEvents { count, limit } if count == MAX_EVENTS_PER_APPEND + 1 && limit == MAX_EVENTS_PER_APPEND),
        "{err:?}"
    );

    let err = store
        .append(&stream, ExpectedVersion::Any, Vec::new(), &request)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EmptyAppend), "{err:?}");

    for bad in [String::new(), "has space".into(), "x".repeat(129)] {
        let err = store
            .append(&stream, ExpectedVersion::Any, vec![named("a")], &bad)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidRequestId),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(store.stream_version(&stream).await.unwrap(), 0);

    // The full batch limit itself is fine, and the refused request id was never used.
    let full = (0..MAX_EVENTS_PER_APPEND)
        .map(|i| named(format!("{i}")))
        .collect();
    let appended = store
        .append(&stream, ExpectedVersion::NoStream, full, &request)
        .await
        .unwrap();
    assert!(!appended.replayed);
    assert_eq!(appended.last_sequence, MAX_EVENTS_PER_APPEND as u64);
}

/// [`WRITERS`] tasks race on one stream, each deciding against the version it read and
/// retrying on conflict: conflicts surface as [`StoreError::Conflict`], no update is
/// lost, and every acknowledged append reads back where it was acknowledged.
pub async fn concurrent_writers_one_stream(store: Arc<dyn EventStore>) {
    let stream = fresh_stream("contended");
    let barrier = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut acks = Vec::new();
                let mut conflicts = 0usize;
                // Everyone decides against the empty stream at once: exactly one wins.
                barrier.wait().await;
                let opening = append_named(
                    &*store,
                    &stream,
                    ExpectedVersion::NoStream,
                    &[&format!("{writer}.0")],
                )
                .await;
                let opened = opening.is_ok();
                let mut next = match opening {
                    Ok(appended) => {
                        acks.push((appended.last_sequence, format!("{writer}.0")));
                        1
                    }
                    Err(err) => {
                        assert_conflict(err, &stream, ExpectedVersion::NoStream, 1);
                        conflicts += 1;
                        0
                    }
                };
                // Nobody moves on until every opening attempt is decided.
                barrier.wait().await;
                while next < APPENDS_PER_WRITER {
                    let version = store.stream_version(&stream).await.unwrap();
                    let name = format!("{writer}.{next}");
                    let expected = ExpectedVersion::from_version(version);
                    match append_named(&*store, &stream, expected, &[&name]).await {
                        Ok(appended) => {
                            assert_eq!(appended.last_sequence, version + 1);
                            acks.push((appended.last_sequence, name));
                            next += 1;
                        }
                        Err(StoreError::Conflict {
                            actual,
                            expected: e,
                            ..
                        }) => {
                            assert_eq!(e, expected);
                            assert!(actual > version, "conflict went back in time");
                            conflicts += 1;
                        }
                        Err(other) => panic!("writer {writer}: {other:?}"),
                    }
                }
                (acks, conflicts, opened)
            })
        })
        .collect();

    let mut acks = BTreeMap::new();
    let mut conflicts = 0;
    let mut openers = 0;
    for writer in writers {
        let (writer_acks, writer_conflicts, opened) = writer.await.unwrap();
        conflicts += writer_conflicts;
        openers += usize::from(opened);
        for (sequence, name) in writer_acks {
            assert!(
                acks.insert(sequence, name).is_none(),
                "sequence {sequence} acknowledged twice"
            );
        }
    }
    assert_eq!(openers, 1, "NoStream must admit exactly one of the racers");
    assert!(
        conflicts >= WRITERS - 1,
        "only {conflicts} conflicts were reported"
    );

    let total = WRITERS * APPENDS_PER_WRITER;
    assert_eq!(store.stream_version(&stream).await.unwrap(), total as u64);
    let events = store.read_stream(&stream, 1).await.unwrap();
    assert_eq!(events.len(), total);
    let mut names = BTreeSet::new();
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.sequence, index as u64 + 1);
        assert_eq!(
            acks.get(&event.sequence).map(String::as_str),
            Some(name_of(event))
        );
        assert!(
            names.insert(name_of(event).to_owned()),
            "{} recorded twice",
            name_of(event)
        );
    }
}

/// [`WRITERS`] tasks on separate streams never conflict and all land.
pub async fn concurrent_writers_many_streams(store: Arc<dyn EventStore>) {
    let barrier = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                let stream = fresh_stream(&format!("writer-{writer}"));
                barrier.wait().await;
                let mut acks = Vec::new();
                for version in 0..APPENDS_PER_WRITER as u64 {
                    let expected = ExpectedVersion::from_version(version);
                    acks.push(
                        append_named(&*store, &stream, expected, &["e"])
                            .await
                            .unwrap(),
                    );
                }
                (stream, acks)
            })
        })
        .collect();
    let mut positions = BTreeSet::new();
    for writer in writers {
        let (stream, acks) = writer.await.unwrap();
        let events = store.read_stream(&stream, 1).await.unwrap();
        assert_eq!(events.len(), APPENDS_PER_WRITER);
        for (ack, event) in acks.iter().zip(&events) {
            assert_eq!(
                (ack.last_sequence, ack.last_position),
                (event.sequence, event.position)
            );
            assert!(
                positions.insert(event.position),
                "position {} reused",
                event.position
            );
        }
    }
}

/// `append_and_read` brings back the log after `after` with the caller's own append
/// in it, also when many writers commit together; `limit` cuts the tail.
pub async fn writers_read_their_own_appends(store: Arc<dyn EventStore>) {
    let barrier = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                let stream = fresh_stream(&format!("own-{writer}"));
                barrier.wait().await;
                let after = store.head().await.unwrap();
                let events = vec![
                    named(format!("own-{writer}-a")),
                    named(format!("own-{writer}-b")),
                ];
                let (appended, tail) = store
                    .append_and_read(
                        &stream,
                        ExpectedVersion::NoStream,
                        events,
                        &fresh_request(),
                        after,
                        100_000,
                    )
                    .await
                    .unwrap();
                (after, appended, tail)
            })
        })
        .collect();
    for writer in writers {
        let (after, appended, tail) = writer.await.unwrap();
        let positions: Vec<u64> = tail.iter().map(|e| e.position).collect();
        let gapless: Vec<u64> = (after + 1..=after + tail.len() as u64).collect();
        assert_eq!(positions, gapless, "the tail runs gaplessly from `after`");
        let own: Vec<&RecordedEvent> = tail
            .iter()
            .filter(|e| e.stream == appended.stream)
            .collect();
        assert_eq!(own.len(), 2, "the writer's own append is in its tail");
        assert_eq!(
            (own[0].position, own[1].position),
            (appended.first_position, appended.last_position)
        );
        // The tail is what `read_all` returns from the same place.
        let again = store.read_all(after, tail.len()).await.unwrap();
        assert_eq!(again, tail[..]);
    }

    // A reader far behind and one at the head, committing together, each get their own
    // stretch of the log.
    let head = store.head().await.unwrap();
    let first = store.read_all(0, 1).await.unwrap();
    let (behind_stream, current_stream) = (fresh_stream("own-behind"), fresh_stream("own-current"));
    let (behind_request, current_request) = (fresh_request(), fresh_request());
    let (behind, current) = tokio::join!(
        store.append_and_read(
            &behind_stream,
            ExpectedVersion::NoStream,
            vec![named("behind")],
            &behind_request,
            0,
            1,
        ),
        store.append_and_read(
            &current_stream,
            ExpectedVersion::NoStream,
            vec![named("current")],
            &current_request,
            head,
            10_000,
        ),
    );
    assert_eq!(behind.unwrap().1[..], first[..]);
    let (appended, tail) = current.unwrap();
    assert_eq!(tail.first().map(|e| e.position), Some(head + 1));
    assert!(tail.iter().any(|e| e.position == appended.last_position));

    let stream = fresh_stream("own-limit");
    let after = store.head().await.unwrap();
    let events = vec![named("x"), named("y"), named("z")];
    let (appended, tail) = store
        .append_and_read(
            &stream,
            ExpectedVersion::NoStream,
            events,
            &fresh_request(),
            after,
            2,
        )
        .await
        .unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0].position, after + 1);
    assert!(appended.last_position > after);
}

/// [`follow`] yields the events already there, then wakes for new ones.
pub async fn follow_sees_old_and_new(store: Arc<dyn EventStore>) {
    let stream = fresh_stream("follow");
    let start = store.head().await.unwrap();
    append_named(&*store, &stream, ExpectedVersion::NoStream, &["0", "1"])
        .await
        .unwrap();

    let ours = stream.clone();
    let mut followed = Box::pin(
        follow(store.clone(), start)
            .map(Result::unwrap)
            .filter(move |e| std::future::ready(e.stream == ours)),
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(next_within(&mut followed).await);
    }
    append_named(&*store, &stream, ExpectedVersion::Exact(2), &["2"])
        .await
        .unwrap();
    seen.push(next_within(&mut followed).await);
    append_named(&*store, &stream, ExpectedVersion::Exact(3), &["3", "4"])
        .await
        .unwrap();
    for _ in 0..2 {
        seen.push(next_within(&mut followed).await);
    }
    let names: Vec<_> = seen.iter().map(name_of).collect();
    assert_eq!(names, ["0", "1", "2", "3", "4"]);
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
}

async fn next_within(
    followed: &mut (impl futures::Stream<Item = RecordedEvent> + Unpin),
) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(20), followed.next())
        .await
        .expect("follow did not deliver an appended event within 20 s")
        .expect("follow ended")
}

/// Bytes that differ per call (a fresh UUID seeds them), `len` long.
pub fn unique_bytes(len: usize) -> Vec<u8> {
    let mut state = uuid::Uuid::new_v4().as_u128() as u64 | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        // xorshift64: cheap, and incompressible enough to defeat any accidental sharing.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn ext(value: &str) -> Extension {
    Extension::parse(value).unwrap()
}

/// put/get/head/list/delete of one blob, and the answers for an absent one.
pub async fn blob_round_trip(store: Arc<dyn BlobStore>) {
    let bytes = unique_bytes(10_000);
    let blob = store
        .put_bytes(bytes.clone(), &ext(".nii.gz"))
        .await
        .unwrap();
    assert_eq!(blob.sha256, sha256_hex(&bytes));
    assert_eq!(blob.size, bytes.len() as u64);
    assert_eq!(
        blob.key(),
        format!("sha256/{}/{}.nii.gz", &blob.sha256[..2], blob.sha256)
    );

    assert_eq!(store.head(&blob).await.unwrap(), Some(bytes.len() as u64));
    assert_eq!(read_to_vec(&*store, &blob).await.unwrap(), bytes);
    assert!(store.list().await.unwrap().contains(&blob));

    store.delete(&blob).await.unwrap();
    assert_eq!(store.head(&blob).await.unwrap(), None);
    assert!(matches!(
        store.get(&blob).await,
        Err(BlobError::NotFound(_))
    ));
    assert!(!store.list().await.unwrap().contains(&blob));
    store.delete(&blob).await.unwrap();
}

/// The same content stored twice, from memory or a file, is one blob; another
/// extension is another blob.
pub async fn blob_dedup(store: Arc<dyn BlobStore>) {
    let bytes = unique_bytes(4096);
    let first = store.put_bytes(bytes.clone(), &ext(".nrrd")).await.unwrap();
    let second = store.put_bytes(bytes.clone(), &ext(".nrrd")).await.unwrap();
    assert_eq!(first, second);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("same.nrrd");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(store.put_file(&path, &ext(".nrrd")).await.unwrap(), first);
    assert_eq!(read_to_vec(&*store, &first).await.unwrap(), bytes);

    let listed = store.list().await.unwrap();
    assert_eq!(listed.iter().filter(|b| **b == first).count(), 1);

    let other_ext = store.put_bytes(bytes, &ext(".seg.nrrd")).await.unwrap();
    assert_eq!(other_ext.sha256, first.sha256);
    assert_ne!(other_ext.key(), first.key());
    let listed = store.list().await.unwrap();
    assert!(listed.contains(&first) && listed.contains(&other_ext));
}

/// A multi-megabyte file goes in from disk and comes back out as a stream, intact.
pub async fn blob_streams_large_file(store: Arc<dyn BlobStore>) {
    let bytes = unique_bytes(24 << 20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("volume.nii.gz");
    std::fs::write(&path, &bytes).unwrap();
    let expected = sha256_hex(&bytes);
    drop(bytes);

    let blob = store.put_file(&path, &ext(".nii.gz")).await.unwrap();
    assert_eq!(
        (blob.sha256.as_str(), blob.size),
        (expected.as_str(), 24 << 20)
    );
    assert!(
        path.exists(),
        "put_file must leave the source file in place"
    );

    let mut reader = store.get(&blob).await.unwrap();
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut size = 0u64;
    loop {
        let read = reader.read(&mut chunk).await.unwrap();
        if read == 0 {
            break;
        }
        size += read as u64;
        hasher.update(&chunk[..read]);
    }
    assert_eq!(
        (hex::encode(hasher.finalize()), size),
        (expected, blob.size)
    );
    store.delete(&blob).await.unwrap();
}
