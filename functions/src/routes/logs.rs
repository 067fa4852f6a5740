//! The logs function: the server's recent log lines, as MONAI Label's `/logs/` serves
//! its `app.log` (an HTML viewer by default, plain text with `text=true`).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/logs/", get(logs))
}

async fn logs(State(state): State<AppState>, query: QueryParams) -> Result<Response, ApiError> {
    let lines = query.int("lines", 300)?;
    let html = query.bool("html", true)?;
    let text = query.bool("text", false)?;
    let refresh = query.int("refresh", 0)?;
    let tail = state.logs.tail(usize::try_from(lines).unwrap_or(0));
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
