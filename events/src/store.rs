//! The event store port and its adapters.
//!
//! An [`EventStore`] appends events to one stream at a time under optimistic concurrency
//! (the caller states the version it decided on) and idempotently per request id (a
//! retried request returns the first result and records nothing). Every event also gets
//! a gapless global position, so projections and runners can read "everything after
//! position p" and never miss or reorder a change.
//!
//! Adapters: [`sqlite::SqliteEventStore`] (embedded, the local default) and, with the
//! `aws` feature, [`dynamo::DynamoEventStore`].

use std::ops::{Deref, Range};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::event::{Event, NewEvent, RecordedEvent, StreamId};

#[cfg(feature = "aws")]
pub mod dynamo;
pub mod follow;
pub mod sqlite;

/// Largest encoded event (payload plus envelope) any backend accepts: DynamoDB's item
/// limit is 400 KB, and payloads belong in the blob store anyway.
pub const MAX_EVENT_BYTES: usize = 350 * 1024;

/// Largest total size of one append (DynamoDB caps a transaction at 4 MB; the request
/// record and the head item ride along).
pub const MAX_APPEND_BYTES: usize = 3_900 * 1024;

/// Most events one append may carry (DynamoDB TransactWriteItems takes 100 items; two
/// go to the request record and the global head).
pub const MAX_EVENTS_PER_APPEND: usize = 98;

/// The version a writer expects a stream to be at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version (for blind, commutative writes).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last sequence must be exactly this.
    Exact(u64),
}

impl ExpectedVersion {
    /// The version a decision was made against: `NoStream` for version 0.
    pub fn from_version(version: u64) -> Self {
        if version == 0 {
            Self::NoStream
        } else {
            Self::Exact(version)
        }
    }

    /// Whether a stream at `actual` satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::Exact(v) => actual == v,
        }
    }
}

/// What an append recorded (or, for a replayed request id, had recorded the first time).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Appended {
    pub stream: StreamId,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub first_position: u64,
    pub last_position: u64,
    /// True when the request id had been seen: nothing new was recorded.
    #[serde(default)]
    pub replayed: bool,
}

/// Why an append or read failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer got there first: re-read, decide again, retry.
    #[error("version conflict on stream {stream}: expected {expected:?}, found {actual}")]
    Conflict {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: u64,
    },
    #[error("event of {size} bytes exceeds the {limit}-byte limit; store large payloads as blobs")]
    EventTooLarge { size: usize, limit: usize },
    #[error("an append of {size} bytes exceeds the {limit}-byte limit of one transaction")]
    AppendTooLarge { size: usize, limit: usize },
    #[error("{count} events in one append; at most {limit} are allowed")]
    TooManyEvents { count: usize, limit: usize },
    #[error("an append needs at least one event")]
    EmptyAppend,
    /// The event would be stored in a form no reader could decode: refused, since one
    /// unreadable event in the log would stop every projection that meets it.
    #[error("the event would not read back once stored: {0}")]
    Unreadable(String),
    #[error("request id must be 1 to 128 printable ASCII characters")]
    InvalidRequestId,
    /// A stored record could not be decoded: the log is damaged or from a newer schema.
    #[error("stored event could not be decoded: {0}")]
    Corrupt(String),
    /// The backend failed (I/O, network, throttling after retries).
    #[error("event store backend error: {0}")]
    Backend(String),
}

/// Checks the arguments every backend refuses the same way, before any I/O.
pub fn check_append(events: &[NewEvent], request_id: &str) -> Result<Vec<String>, StoreError> {
    if request_id.is_empty()
        || request_id.len() > 128
        || !request_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(StoreError::InvalidRequestId);
    }
    if events.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    if events.len() > MAX_EVENTS_PER_APPEND {
        return Err(StoreError::TooManyEvents {
            count: events.len(),
            limit: MAX_EVENTS_PER_APPEND,
        });
    }
    let payloads = events
        .iter()
        .map(|e| {
            if let Event::Unreadable { .. } = e.event {
                return Err(StoreError::Unreadable(
                    "a quarantined event is never written again".into(),
                ));
            }
            let payload = crate::event::encode(&e.event)
                .map_err(|err| StoreError::Unreadable(err.to_string()))?;
            // Read back exactly as a reader will, before anything is written (invariant 9).
            crate::event::decode(&payload)
                .map_err(|err| StoreError::Unreadable(err.to_string()))?;
            // The envelope (stream, actor, ids) rides in the same item: leave it room.
            let size = payload.len() + 1024;
            if size > MAX_EVENT_BYTES {
                return Err(StoreError::EventTooLarge {
                    size,
                    limit: MAX_EVENT_BYTES,
                });
            }
            Ok(payload)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let size = payloads.iter().map(|p| p.len() + 1024).sum::<usize>();
    if size > MAX_APPEND_BYTES {
        return Err(StoreError::AppendTooLarge {
            size,
            limit: MAX_APPEND_BYTES,
        });
    }
    Ok(payloads)
}

/// A stretch of the log that [`EventStore::append_and_read`] returns: appends committed
/// together can share one read of it, each seeing its own part, without copies.
#[derive(Debug, Clone)]
pub struct Tail {
    events: Arc<[RecordedEvent]>,
    range: Range<usize>,
}

impl Tail {
    /// At most `limit` of `events` (a gapless run of the log) past position `after`.
    pub fn after(events: Arc<[RecordedEvent]>, after: u64, limit: usize) -> Self {
        let start = events.partition_point(|event| event.position <= after);
        let end = start.saturating_add(limit).min(events.len());
        Self {
            events,
            range: start..end,
        }
    }
}

impl Deref for Tail {
    type Target = [RecordedEvent];

    fn deref(&self) -> &[RecordedEvent] {
        &self.events[self.range.clone()]
    }
}

impl From<Vec<RecordedEvent>> for Tail {
    fn from(events: Vec<RecordedEvent>) -> Self {
        let range = 0..events.len();
        Self {
            events: events.into(),
            range,
        }
    }
}

/// The event store port.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if it is at `expected`, atomically and durably.
    ///
    /// A `request_id` seen before returns the first append's result with `replayed`
    /// set and records nothing, whatever the arguments this time.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        request_id: &str,
    ) -> Result<Appended, StoreError>;

    /// [`EventStore::append`], then up to `limit` events after `after` as
    /// [`EventStore::read_all`] returns them once the append is committed: what a
    /// projection at `after` needs to see its own write. The default makes the two
    /// calls; a store that can read in the same round trip as the write overrides it.
    async fn append_and_read(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        request_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Appended, Tail), StoreError> {
        let appended = self.append(stream, expected, events, request_id).await?;
        let tail = self.read_all(after, limit).await?;
        Ok((appended, tail.into()))
    }

    /// The stream's events with sequence ≥ `from_sequence`, in order.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_sequence: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's current version (0 if it does not exist).
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError>;

    /// The stream's last event, if any (its `sequence` is the stream's version). The
    /// default reads the version, then that event; a store that can fetch it in one
    /// round trip overrides it.
    async fn last_event(&self, stream: &StreamId) -> Result<Option<RecordedEvent>, StoreError> {
        let version = self.stream_version(stream).await?;
        if version == 0 {
            return Ok(None);
        }
        Ok(self.read_stream(stream, version).await?.pop())
    }

    /// Up to `limit` events with global position > `after`, in global order, without
    /// gaps: if position p is returned, every position below p was returned before.
    /// Fewer than `limit` only when no more were visible to this read (it reached the
    /// head, or an index gap did not fill in time), so a reader catching up may stop at
    /// a short batch.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The highest global position recorded so far (0 for an empty store).
    async fn head(&self) -> Result<u64, StoreError>;

    /// Waits until an event after `after` may exist, or `timeout` passes. The default
    /// polls; backends that can be told of appends wake at once.
    async fn wait_for_append(&self, after: u64, timeout: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.head().await? > after {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
