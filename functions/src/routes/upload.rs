//! Uploads that bypass the API's body limit (API Gateway takes 10 MB, Lambda 6 MB):
//! medlabel's addition to MONAI Label's API.
//!
//! 1. `POST /datastore/upload` → `{"upload_id", "url", "expires_in"}`: a presigned PUT URL
//!    for a staging object (object stores only; the local server streams multipart
//!    uploads of any size to disk instead, so it answers 404).
//! 2. The client PUTs the file's bytes to `url`.
//! 3. `POST /datastore/upload/{upload_id}/image?image=<id>&ext=.nii.gz` (or
//!    `/label?image=<id>&tag=<tag>&ext=...`) with optional JSON params confirms it: the
//!    object is hashed as it streams, checked against the size limit, moved to its
//!    content address, and only then is the image or label event recorded.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use medlabel_events::Extension;
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::error::{ApiError, FieldError};
use crate::extract::{QueryParams, Segment, json_body};
use crate::routes::client_id;
use crate::state::AppState;

/// How long a presigned upload URL stays valid.
const UPLOAD_URL_TTL: Duration = Duration::from_secs(3600);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/datastore/upload", post(start_upload))
        .route("/datastore/upload/{upload}/image", post(confirm_image))
        .route("/datastore/upload/{upload}/label", post(confirm_label))
}

async fn start_upload(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let upload_id = uuid::Uuid::new_v4().to_string();
    let url = state
        .datastore
        .blob_store()
        .presign_upload(&upload_id, UPLOAD_URL_TTL)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(
                "presigned uploads need an object store; upload with PUT /datastore/image".into(),
            )
        })?;
    Ok(Json(json!({
        "upload_id": upload_id,
        "url": url,
        "expires_in": UPLOAD_URL_TTL.as_secs(),
    })))
}

fn extension(query: &QueryParams) -> Result<Extension, ApiError> {
    let raw = query.get("ext").unwrap_or(".nii.gz");
    Extension::parse(raw).map_err(|err| {
        ApiError::field(FieldError::new(
            "value_error",
            "query",
            "ext",
            err.to_string(),
            json!(raw),
        ))
    })
}

async fn confirm_image(
    State(state): State<AppState>,
    ctx: Ctx,
    upload: Segment,
    query: QueryParams,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let image = query.image_id("image")?;
    let ext = extension(&query)?;
    let info = json_body(body).await?;
    let blob = state
        .datastore
        .blob_store()
        .adopt_upload(&upload.0, &ext, state.config.max_upload_bytes)
        .await?;
    let write = ctx.write(client_id(&info));
    state
        .datastore
        .add_image_blob(&write, &image, blob, info)
        .await?;
    Ok(Json(json!({"image": image})))
}

async fn confirm_label(
    State(state): State<AppState>,
    ctx: Ctx,
    upload: Segment,
    query: QueryParams,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let image = query.image_id("image")?;
    let tag = query.tag("tag")?;
    let ext = extension(&query)?;
    let info = json_body(body).await?;
    // Refuse an unknown image before touching the upload.
    state.datastore.image(&image).await?;
    let blob = state
        .datastore
        .blob_store()
        .adopt_upload(&upload.0, &ext, state.config.max_upload_bytes)
        .await?;
    let write = ctx.write(client_id(&info));
    let saved = state
        .datastore
        .save_label_blob(&write, &image, &tag, blob, info)
        .await?;
    Ok(Json(
        json!({"image": image, "label": image, "version": saved.version}),
    ))
}
