//! The logs function: the server's recent log lines, as MONAI Label's `/logs/` serves
//! its `app.log` (an HTML viewer by default, plain text with `text=true`), and
//! `/logs/gpu`, the host's `nvidia-smi` report, and `/logs/audit`, who read which
//! patient data ([`crate::audit`]).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/logs/", get(logs))
        .route("/logs/gpu", get(gpu))
        .route("/logs/audit", get(audit))
}

/// Most reads one `/logs/audit` call returns.
const MAX_AUDIT_LIMIT: i64 = 1000;

/// `{"reads": [...], "next": <position>}`: reads recorded after `after`, oldest first.
async fn audit(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let after = query.int("after", 0)?.max(0) as u64;
    let limit = query.int("limit", 100)?.clamp(1, MAX_AUDIT_LIMIT) as usize;
    Ok(axum::Json(crate::audit::list(&state, after, limit).await?))
}

/// How long `nvidia-smi` may take before the request gives up on it.
const NVIDIA_SMI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `nvidia-smi`'s report on the host serving the API, as MONAI Label gives it. The
/// local server and its runner share a host; a Lambda has no GPU, and says so.
async fn gpu() -> Result<Response, ApiError> {
    let unavailable = |why: String| {
        ApiError::Unavailable(format!(
            "no GPU report on this host: {why} (GPU work runs in the runner)"
        ))
    };
    let run = tokio::process::Command::new("nvidia-smi")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(NVIDIA_SMI_TIMEOUT, run)
        .await
        .map_err(|_| unavailable(format!("nvidia-smi took over {NVIDIA_SMI_TIMEOUT:?}")))?
        .map_err(|err| unavailable(format!("nvidia-smi cannot run: {err}")))?;
    if !output.status.success() {
        return Err(unavailable(format!(
            "nvidia-smi failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        output.stdout,
    )
        .into_response())
}

async fn logs(State(state): State<AppState>, query: QueryParams) -> Result<Response, ApiError> {
    let lines = query.int("lines", 300)?;
    let html = query.bool("html", true)?;
    let text = query.bool("text", false)?;
    let refresh = query.int("refresh", 0)?;
    let tail = state.logs.tail(usize::try_from(lines).unwrap_or(0)).await?;
    let body = tail.join("\n");
    if text || !html {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    let escaped = body
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let refresh_tag = if refresh > 0 {
        format!("<meta http-equiv=\"refresh\" content=\"{refresh}\">")
    } else {
        String::new()
    };
    Ok(Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">{refresh_tag}\
         <title>medlabel logs</title></head><body><pre>{escaped}</pre></body></html>"
    ))
    .into_response())
}
