//! Read models kept up to date by folding the log.
//!
//! A [`Projection`] is a pure fold; [`Projected`] holds one in memory and catches it up
//! with `read_all(after its position)` before every read, under a lock so events are
//! applied once and in order. One indexed query when nothing changed keeps that cheap,
//! and it is what makes a write acknowledged by any process visible to the next read
//! in every other (invariant 4). A write made through [`Projected::append`] brings the
//! log's tail back with it, so the writer's next read finds its own write applied.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::Mutex;

use crate::event::{NewEvent, RecordedEvent, StreamId};
use crate::store::{Appended, EventStore, ExpectedVersion, StoreError};

/// Events fetched per catch-up round trip.
const CATCH_UP_BATCH: usize = 1000;

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
    catch_up_lock: Mutex<()>,
}

impl<V: Projection> Projected<V> {
    /// An empty projection; the first read folds the whole log.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            view: RwLock::new(V::default()),
            catch_up_lock: Mutex::new(()),
        }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Applies every event recorded since the view's position.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let _guard = self.catch_up_lock.lock().await;
        loop {
            let after = self.peek().position();
            let batch = self.store.read_all(after, CATCH_UP_BATCH).await?;
            if !batch.is_empty() {
                let mut view = self.view.write().expect("view lock poisoned");
                for event in &batch {
                    if event.position > view.position() {
                        view.apply(event);
                    }
                }
            }
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
        {
            // The tail runs gaplessly from `after`, which the view had reached, so the
            // events past wherever the view is now continue it.
            let mut view = self.view.write().expect("view lock poisoned");
            for event in &tail {
                if event.position > view.position() {
                    view.apply(event);
                }
            }
        }
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
}
