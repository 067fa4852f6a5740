//! Read models kept up to date by folding the log.
//!
//! A [`Projection`] is a pure fold; [`Projected`] holds one in memory and catches it up
//! with `read_all(after its position)` before every read, applying under a write lock
//! only the events past the view's position, so each applies once and in order. That
//! read is what makes a write acknowledged by any process visible to the next read in
//! every other (invariant 4).
//!
//! Concurrent reads share catch-ups: a read needs a catch-up that *began* after the
//! read did, so one catch-up serves every read that arrived before it started, and
//! reads arriving meanwhile wait for the next one (started by one of them). Under load
//! that is one indexed query per round instead of one per request, and no two queries
//! of one view run at once. A write made through [`Projected::append`] brings the log's
//! tail back with it, so the writer's next read finds its own write applied.

use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use tokio::sync::Notify;

use crate::event::{NewEvent, RecordedEvent, StreamId};
use crate::store::{Appended, EventStore, ExpectedVersion, StoreError};

/// Events fetched per catch-up round trip.
pub(crate) const CATCH_UP_BATCH: usize = 1000;

/// A read model that is a pure fold of the log.
pub trait Projection: Default + Send + Sync + 'static {
    /// Global position of the last event applied.
    fn position(&self) -> u64;
    /// Folds one event; events arrive in global order, each once.
    fn apply(&mut self, event: &RecordedEvent);
}

/// A projection held in memory and caught up with the store on demand.
pub struct Projected<V> {
    store: Arc<dyn EventStore>,
    view: RwLock<V>,
    rounds: Mutex<Rounds>,
    round_ended: Notify,
}

fn lock_rounds(rounds: &Mutex<Rounds>) -> MutexGuard<'_, Rounds> {
    rounds.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The catch-up in progress. Ending it, also by being dropped mid-read (a request
/// whose client went away), lets the waiting reads go on: they are served if it
/// succeeded and start the next round otherwise.
struct Round<'a> {
    rounds: &'a Mutex<Rounds>,
    ended: &'a Notify,
    serves: u64,
    succeeded: bool,
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        {
            let mut rounds = lock_rounds(self.rounds);
            rounds.running = false;
            if self.succeeded {
                rounds.served = rounds.served.max(self.serves);
            }
        }
        self.ended.notify_waiters();
    }
}

/// Bookkeeping of shared catch-ups: reads take numbered tickets; a catch-up started
/// when `issued` was n serves every ticket up to n.
#[derive(Default)]
struct Rounds {
    issued: u64,
    served: u64,
    running: bool,
}

impl<V: Projection> Projected<V> {
    /// An empty projection; the first read folds the whole log.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            view: RwLock::new(V::default()),
            rounds: Mutex::new(Rounds::default()),
            round_ended: Notify::new(),
        }
    }

    /// A projection that starts from `view` (a snapshot) instead of the empty view.
    pub fn starting_at(store: Arc<dyn EventStore>, view: V) -> Self {
        Self {
            view: RwLock::new(view),
            ..Self::new(store)
        }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Applies every event recorded since this call began (and perhaps more).
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let ticket = {
            let mut rounds = lock_rounds(&self.rounds);
            rounds.issued += 1;
            rounds.issued
        };
        loop {
            // Registered before looking, so a round ending in between still wakes us.
            let mut ended = pin!(self.round_ended.notified());
            ended.as_mut().enable();
            let serves = {
                let mut rounds = lock_rounds(&self.rounds);
                if rounds.served >= ticket {
                    return Ok(());
                }
                if rounds.running {
                    None
                } else {
                    rounds.running = true;
                    Some(rounds.issued)
                }
            };
            let Some(serves) = serves else {
                ended.await;
                continue;
            };
            let mut round = Round {
                rounds: &self.rounds,
                ended: &self.round_ended,
                serves,
                succeeded: false,
            };
            let result = self.read_to_head().await;
            round.succeeded = result.is_ok();
            return result;
        }
    }

    /// Applies `events`, a gapless run of the log that starts at or before the view's
    /// position: those past wherever the view is now continue it, the rest it has.
    pub(crate) fn apply_from(&self, events: &[RecordedEvent]) {
        if events.is_empty() {
            return;
        }
        let mut view = self.view.write().expect("view lock poisoned");
        for event in events {
            if event.position > view.position() {
                view.apply(event);
            }
        }
    }

    /// Reads and applies the log from the view's position until a short batch.
    async fn read_to_head(&self) -> Result<(), StoreError> {
        loop {
            let after = self.peek().position();
            let batch = self.store.read_all(after, CATCH_UP_BATCH).await?;
            self.apply_from(&batch);
            // A short batch ends where the store's log ended for this read: asking again
            // would cost a round trip to learn that (see `EventStore::read_all`).
            if batch.len() < CATCH_UP_BATCH {
                return Ok(());
            }
        }
    }

    /// Appends through the store and applies the log up to (at least) that append,
    /// using the tail the store reads in the same round trip.
    pub async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        request_id: &str,
    ) -> Result<Appended, StoreError> {
        let after = self.peek().position();
        let (appended, tail) = self
            .store
            .append_and_read(stream, expected, events, request_id, after, CATCH_UP_BATCH)
            .await?;
        self.apply_from(&tail);
        // A tail cut at the limit, or short of the append (a store whose log can show a
        // gap for a moment), is finished by reading on.
        if tail.len() >= CATCH_UP_BATCH || self.peek().position() < appended.last_position {
            self.catch_up().await?;
        }
        Ok(appended)
    }

    /// The view, caught up with the log.
    pub async fn read(&self) -> Result<RwLockReadGuard<'_, V>, StoreError> {
        self.catch_up().await?;
        Ok(self.peek())
    }

    /// The view as it is, without catching up.
    pub fn peek(&self) -> RwLockReadGuard<'_, V> {
        self.view.read().expect("view lock poisoned")
    }

    /// The view as it is, taken out of the projection.
    pub fn into_view(self) -> V {
        self.view.into_inner().expect("view lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, Event};
    use crate::store::sqlite::SqliteEventStore;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Counts events; enough to see what a catch-up applied.
    #[derive(Default)]
    struct Count {
        position: u64,
        events: usize,
    }

    impl Projection for Count {
        fn position(&self) -> u64 {
            self.position
        }
        fn apply(&mut self, event: &RecordedEvent) {
            self.position = event.position;
            self.events += 1;
        }
    }

    /// The real SQLite store, with its `read_all` calls counted and slowed down so that
    /// concurrent reads overlap.
    struct Counted {
        inner: SqliteEventStore,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl EventStore for Counted {
        async fn append(
            &self,
            stream: &StreamId,
            expected: ExpectedVersion,
            events: Vec<NewEvent>,
            request_id: &str,
        ) -> Result<Appended, StoreError> {
            self.inner
                .append(stream, expected, events, request_id)
                .await
        }
        async fn read_stream(
            &self,
            stream: &StreamId,
            from: u64,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.inner.read_stream(stream, from).await
        }
        async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
            self.inner.stream_version(stream).await
        }
        async fn read_all(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.inner.read_all(after, limit).await
        }
        async fn head(&self) -> Result<u64, StoreError> {
            self.inner.head().await
        }
    }

    fn renamed(name: &str) -> Vec<NewEvent> {
        vec![NewEvent {
            event: Event::DatastoreRenamed { name: name.into() },
            actor: Actor::admin(),
            timestamp_ms: 1,
        }]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reads_share_catch_ups_and_each_sees_earlier_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let counted = Arc::new(Counted {
            inner: SqliteEventStore::open(&path).unwrap(),
            reads: AtomicUsize::new(0),
        });
        let projected = Arc::new(Projected::<Count>::new(counted.clone()));
        // Another handle on the file writes, as another process would.
        let other = SqliteEventStore::open(&path).unwrap();
        let stream = StreamId::from_stored("test/rounds".to_owned());
        for round in 0..3u64 {
            other
                .append(
                    &stream,
                    ExpectedVersion::Exact(round),
                    renamed("x"),
                    &format!("r{round}"),
                )
                .await
                .unwrap();
            let before = counted.reads.load(Ordering::SeqCst);
            let readers: Vec<_> = (0..16)
                .map(|_| {
                    let projected = projected.clone();
                    tokio::spawn(async move { projected.read().await.unwrap().events })
                })
                .collect();
            for reader in readers {
                // Every read began after the write, so every read sees it.
                assert_eq!(reader.await.unwrap(), round as usize + 1);
            }
            let reads = counted.reads.load(Ordering::SeqCst) - before;
            assert!(
                reads <= 4,
                "16 overlapping reads made {reads} catch-up reads"
            );
        }
    }

    #[tokio::test]
    async fn a_catch_up_dropped_mid_read_does_not_stall_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let counted = Arc::new(Counted {
            inner: SqliteEventStore::open(dir.path().join("events.db")).unwrap(),
            reads: AtomicUsize::new(0),
        });
        let projected = Projected::<Count>::new(counted.clone());
        // Dropped while its read sleeps, as a request whose client hung up.
        let abandoned = tokio::time::timeout(Duration::from_millis(5), projected.catch_up()).await;
        assert!(abandoned.is_err());
        let stream = StreamId::from_stored("test/dropped".to_owned());
        counted
            .append(&stream, ExpectedVersion::NoStream, renamed("y"), "d1")
            .await
            .unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), projected.read()).await;
        assert_eq!(
            read.expect("a later read must not wait forever")
                .unwrap()
                .events,
            1
        );
    }
}
