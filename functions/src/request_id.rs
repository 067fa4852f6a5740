//! Request ids: one per request, in every log line, every reply and every write.
//!
//! The id comes from the client's `x-request-id` header when it is usable, otherwise a
//! fresh UUID. It is (1) a field of the tracing span the whole request runs in, (2)
//! echoed in the `x-request-id` reply header, and (3) the idempotency key of the
//! request's writes ([`medlabel_events::datastore::WriteContext::request_id`]), so a
//! client that retries with the same header records nothing twice. Ids are capped
//! below the event store's 128-character limit to leave room for the suffixes of
//! requests that make more than one write.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header carrying the request id, both ways.
pub const HEADER: &str = "x-request-id";

/// Longest client-supplied id accepted; longer or non-printable ones are replaced.
pub const MAX_LEN: usize = 96;

tokio::task_local! {
    static CURRENT: String;
}

/// The request id of the request being served on this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The request's id, as stored in its extensions by [`middleware`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

fn usable(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_LEN && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Assigns the request id, runs the request inside its span and task-local scope, logs
/// the outcome and echoes the id in the reply.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| usable(v))
        .map(str::to_owned)
        .unwrap_or_else(medlabel_events::datastore::new_request_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        // The authenticated caller (`<issuer>#<subject>`), set by `crate::auth`.
        user = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let mut response = CURRENT
        .scope(id.clone(), next.run(request).instrument(span.clone()))
        .await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request served"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}
