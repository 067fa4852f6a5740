//! Following the global log: every event after a position, then each new one as it
//! is appended, for projections and runners.
//!
//! Built only on [`EventStore::read_all`] and [`EventStore::wait_for_append`], so it
//! works on every backend and inherits their gapless-order guarantee: a follower sees
//! each event exactly once, in global order, and resumes exactly where it stopped when
//! restarted from the last position it processed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use crate::event::RecordedEvent;
use crate::store::{EventStore, StoreError};

/// Events fetched per [`EventStore::read_all`] call.
const PAGE: usize = 256;

/// How long one wait for new events lasts before the store is read again anyway.
const WAIT: Duration = Duration::from_secs(5);

/// Every event with global position > `after`, in order, and then every later one as
/// it is appended; the stream never ends on its own.
///
/// A store error is yielded once and ends the stream: resume with `follow(store, p)`,
/// `p` being the position of the last event handled.
pub fn follow(
    store: Arc<dyn EventStore>,
    after: u64,
) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'static {
    let state = Some((store, after, VecDeque::new()));
    futures::stream::unfold(state, |state| async move {
        let (store, mut after, mut buffered) = state?;
        loop {
            if let Some(event) = buffered.pop_front() {
                return Some((Ok(event), Some((store, after, buffered))));
            }
            let page = match store.read_all(after, PAGE).await {
                Ok(page) => page,
                Err(err) => return Some((Err(err), None)),
            };
            match page.last() {
                Some(last) => {
                    after = last.position;
                    buffered.extend(page);
                }
                None => {
                    if let Err(err) = store.wait_for_append(after, WAIT).await {
                        return Some((Err(err), None));
                    }
                }
            }
        }
    })
}
