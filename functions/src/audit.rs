//! The audit trail of patient data: who was handed which image, label, dataset or
//! session file, and when.
//!
//! With authentication on, every route that serves a patient file, and every reply that
//! hands out a presigned URL to one, first appends a [`Event::DataRead`] naming the
//! caller, the time and what was read. The event is durable before the first byte is
//! served, and a failed append fails the request: an access that could not be recorded
//! does not happen. To keep that off the latency of a download, the append runs
//! concurrently with opening the file (locally one group commit, in the cloud one
//! DynamoDB transaction, overlapping the S3 GET), after the request has been checked,
//! so a refused or malformed request records nothing. Each read is its own stream
//! (`audit/<id>`), so concurrent reads never contend, and its request id is the
//! request's (plus `/audit`), so a retried request is recorded once.
//!
//! With authentication off every caller is the anonymous `admin`, so there is nobody to
//! record and downloads stay read-only, as in MONAI Label.
//!
//! An admin lists the trail with `GET /logs/audit?after=<position>&limit=<n>`
//! ([`list`]); the log is the only copy, read forward from `after`.

use medlabel_events::event::DataRead;
use medlabel_events::{Event, ExpectedVersion, NewEvent, RecordedEvent, RunId, StreamId};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::error::ApiError;
use crate::state::AppState;

/// Records that `ctx`'s caller read `read` (through a URL when `url`); `step` tells
/// apart the reads of one request. Nothing is recorded with authentication off.
pub async fn record(
    state: &AppState,
    ctx: &Ctx,
    read: DataRead,
    url: bool,
    step: &str,
) -> Result<(), ApiError> {
    if ctx.principal.is_none() {
        return Ok(());
    }
    let event = NewEvent {
        event: Event::DataRead { read, url },
        actor: ctx.actor(None),
        timestamp_ms: state.datastore.clock().now_ms(),
    };
    state
        .datastore
        .event_store()
        .append(
            &StreamId::audit(&RunId::random()),
            ExpectedVersion::NoStream,
            vec![event],
            &format!("{}/audit-{step}", ctx.request_id),
        )
        .await?;
    Ok(())
}

/// Most events one listing scans, so that a sparse trail in a long log still answers
/// quickly; `next` tells the caller where to go on.
const SCAN_LIMIT: usize = 20_000;
const PAGE: usize = 1000;

/// Up to `limit` reads recorded after global position `after`, oldest first, and the
/// position to continue from.
pub async fn list(state: &AppState, after: u64, limit: usize) -> Result<Value, ApiError> {
    let store = state.datastore.event_store();
    let (mut position, mut scanned, mut reads) = (after, 0, Vec::new());
    while reads.len() < limit && scanned < SCAN_LIMIT {
        let page = store.read_all(position, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        position = last.position;
        scanned += page.len();
        reads.extend(page.iter().filter_map(entry));
        if page.len() < PAGE {
            break;
        }
    }
    // Stop at the `limit`th read, so the next call starts right after it.
    if reads.len() > limit {
        reads.truncate(limit);
        position = reads[limit - 1]["position"].as_u64().unwrap_or(position);
    }
    Ok(json!({"reads": reads, "next": position}))
}

fn entry(recorded: &RecordedEvent) -> Option<Value> {
    let Event::DataRead { read, url } = &recorded.event else {
        return None;
    };
    Some(json!({
        "position": recorded.position,
        "ts": recorded.timestamp_ms,
        "user": recorded.actor.user,
        "subject": recorded.actor.subject,
        "request_id": recorded.request_id,
        "read": read,
        "url": url,
    }))
}
