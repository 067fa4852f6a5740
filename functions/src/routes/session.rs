//! The session function: `PUT /session/`, `GET`/`DELETE /session/{id}`.
//!
//! Sessions are events (see [`medlabel_events::session`]); this module only translates
//! MONAI Label's wire shapes. Expired sessions are removed on access and by
//! [`sweep_forever`] (the local server) or the sweep that precedes each create
//! (Lambda, where nothing runs between requests).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use medlabel_events::event::DataRead;
use medlabel_events::id::split_file_name;
use medlabel_events::session::{Session, Sessions};
use medlabel_events::{Extension, Info};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::error::{ApiError, FieldError};
use crate::extract::{QueryParams, Segment};
use crate::multipart::read_upload;
use crate::routes::{client_uri, path_text};
use crate::state::AppState;
use crate::volumes::check_image;

/// How often the local server sweeps expired sessions (MONAI Label: every 5 minutes).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/session/", put(create))
        .route("/session/{id}", get(get_session).delete(remove))
}

/// MONAI Label's `SessionInfo` JSON. With a studies folder, `path` is the session's
/// folder and `image` the upload in it under its own name, as MONAI Label keeps them
/// (once the folder has caught up with the log); in the cloud both are a presigned URL.
async fn session_json(state: &AppState, ctx: &Ctx, session: &Session) -> Result<Value, ApiError> {
    let (path, image) = match &state.studies_folder {
        Some(folder) => {
            folder
                .settled(state.datastore.event_store().head().await?)
                .await;
            let file = folder.session_file(&session.id, &session.file_name, &session.ext);
            (
                path_text(&folder.session_dir(&session.id)),
                path_text(&file),
            )
        }
        None => {
            let read = DataRead::Session {
                session: session.id.clone(),
            };
            let uri = client_uri(state, ctx, &session.blob, read, "session").await?;
            (uri.clone(), uri)
        }
    };
    Ok(json!({
        "name": session.id,
        "path": path,
        "image": image,
        "meta": session.meta,
        "create_ts": session.created_ms.div_euclid(1000),
        "last_access_ts": session.last_access_ms.div_euclid(1000),
        "expiry": session.expiry_s,
    }))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    if query.bool("uncompress", false)? {
        return Err(ApiError::field(FieldError::new(
            "value_error",
            "query",
            "uncompress",
            "Value error, uncompressing archives into a session is not supported",
            json!(true),
        )));
    }
    let expiry = query.int("expiry", 0)?;
    let form = read_upload(&state.config, &headers, body, &["files"]).await?;
    let upload = form.required_file("files")?;
    if form.files.len() > 1 {
        return Err(ApiError::field(FieldError::new(
            "value_error",
            "body",
            "files",
            "Value error, a session holds one file; multi-file series are not supported",
            json!(form.files.len()),
        )));
    }
    let base = upload
        .file_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let ext = split_file_name(base)
        .map(|(_, ext)| ext)
        .unwrap_or_else(|_| Extension::parse("").expect("empty extension is valid"));
    check_image(&upload.path, &ext, "files", &upload.file_name).await?;
    if let Err(err) = state.sessions.sweep().await {
        tracing::warn!(error = %err, "session sweep failed");
    }
    let meta: Info = form
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let write = ctx.write(form.text("client_id"));
    let session = state
        .sessions
        .create(&write, &upload.path, &upload.file_name, meta, expiry)
        .await?;
    Ok(Json(json!({
        "session_id": session.id,
        "session_info": session_json(&state, &ctx, &session).await?,
    })))
}

async fn get_session(
    State(state): State<AppState>,
    ctx: Ctx,
    id: Segment,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (update_ts, want_image) = (query.bool("update_ts", false)?, query.bool("image", false)?);
    let id = id.run_id().map_err(|_| not_found(&id.0))?;
    let session = if update_ts {
        state.sessions.touch(&ctx.write(None), &id).await?
    } else {
        state.sessions.get(&id, &ctx.actor(None)).await?
    };
    if want_image {
        let read = DataRead::Session {
            session: session.id.clone(),
        };
        return crate::downloads::blob_reply(
            &state,
            &ctx,
            &headers,
            &session.file_name,
            &session.blob,
            Some(read),
            "session-file",
        )
        .await;
    }
    Ok(Json(session_json(&state, &ctx, &session).await?).into_response())
}

/// An id that cannot exist answers like an unknown one (nothing to probe).
fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "Session ({}) Not Found",
        id.chars().take(64).collect::<String>()
    ))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    id: Segment,
) -> Result<Json<Value>, ApiError> {
    let id = id.run_id().map_err(|_| not_found(&id.0))?;
    let session = state.sessions.remove(&ctx.write(None), &id).await?;
    Ok(Json(session_json(&state, &ctx, &session).await?))
}

/// Sweeps expired sessions every [`SWEEP_INTERVAL`] until the task is dropped.
pub async fn sweep_forever(sessions: Arc<Sessions>) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        ticks.tick().await;
        match sessions.sweep().await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(count = removed.len(), "expired sessions removed")
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "session sweep failed"),
        }
    }
}
