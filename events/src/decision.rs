//! The one write path every aggregate shares: decide, append at the decided version,
//! re-decide on a conflict.
//!
//! A service (datastore, jobs, models, sessions) holds its read model in a
//! [`Projected`] view and writes only through [`execute`]: a pure function of the view
//! returns a [`Decision`] (the events, their stream and the stream version the decision
//! saw), the events are appended at that version, and a conflict means another writer
//! got there first, so the view catches up and the function decides again. The store's
//! per-request idempotency makes a retried request record nothing twice.

use crate::datastore::WriteContext;
use crate::event::{Event, NewEvent, StreamId};
use crate::projection::{Projected, Projection};
use crate::store::{ExpectedVersion, StoreError};

/// How many times a write re-decides after losing a version race before giving up.
pub const MAX_CONFLICT_RETRIES: usize = 64;

/// Events to append to one stream, valid only if the stream is still at `expected`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<Event>,
}

/// What a service's error type must say about a write that could not be recorded.
pub trait WriteError: From<StoreError> {
    /// The write kept losing version races (`attempts` of them).
    fn contended(attempts: usize) -> Self;
    /// The request id had already recorded a different write.
    fn request_id_reused(request_id: &str) -> Self;
}

/// Decides against `view` and appends, re-deciding on version conflicts; returns the
/// decision recorded, or `None` when the decision was to record nothing.
///
/// The first decision uses the view as it stands, without a catch-up: it already holds
/// every write this process made, and one decided on a view that missed another
/// process's write appends at a stream version that is no longer current, so it
/// conflicts and is decided again on a caught-up view. Only a refusal or a no-op is not
/// guarded that way, so neither is believed until a caught-up view decides it too.
pub async fn execute<V, E, F>(
    view: &Projected<V>,
    ctx: &WriteContext,
    now_ms: impl Fn() -> i64,
    decide: F,
) -> Result<Option<Decision>, E>
where
    V: Projection,
    E: WriteError,
    F: Fn(&V) -> Result<Option<Decision>, E>,
{
    let mut caught_up = false;
    for _ in 0..MAX_CONFLICT_RETRIES {
        let decided = if caught_up {
            decide(&*view.read().await?)
        } else {
            decide(&view.peek())
        };
        let decision = match decided {
            Ok(Some(decision)) => decision,
            _ if !caught_up => {
                caught_up = true;
                continue;
            }
            Ok(None) => return Ok(None),
            Err(err) => return Err(err),
        };
        let timestamp_ms = now_ms();
        let events = decision
            .events
            .iter()
            .cloned()
            .map(|event| NewEvent {
                event,
                actor: ctx.actor.clone(),
                timestamp_ms,
            })
            .collect();
        match view
            .append(&decision.stream, decision.expected, events, &ctx.request_id)
            .await
        {
            Ok(appended) if appended.replayed && appended.stream != decision.stream => {
                return Err(E::request_id_reused(&ctx.request_id));
            }
            Ok(_) => return Ok(Some(decision)),
            Err(StoreError::Conflict { .. }) => caught_up = true,
            Err(err) => return Err(err.into()),
        }
    }
    Err(E::contended(MAX_CONFLICT_RETRIES))
}
