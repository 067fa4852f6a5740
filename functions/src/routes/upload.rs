//! Uploads that bypass the API's body limit (API Gateway takes 10 MB, Lambda 6 MB):
//! medlabel's addition to MONAI Label's API.
//!
//! 1. `POST /datastore/upload` → `{"upload_id", "url", "expires_in"}`: a presigned PUT URL
//!    for a staging object (object stores only; the local server streams multipart
//!    uploads of any size to disk instead, so it answers 404). For volumes over S3's
//!    5 GB single-PUT limit, or to send in parallel, `POST /datastore/upload?parts=N`
//!    answers `{"upload_id", "parts": [{"part_number", "url"}…], "min_part_size",
//!    "expires_in"}` instead.
//! 2. The client PUTs the file's bytes to `url`, or its consecutive pieces to the part
//!    URLs (every piece but the last at least `min_part_size` bytes) and then joins them:
//!    `POST /datastore/upload/{upload_id}/complete` with
//!    `{"parts": [{"part_number", "etag"}…]}`, the `ETag` each part's PUT answered.
//! 3. `POST /datastore/upload/{upload_id}/image?image=<id>&ext=.nii.gz` (or
//!    `/label?image=<id>&tag=<tag>&ext=...`) with optional JSON params confirms it: the
//!    object is hashed as it streams, checked against its own size limit
//!    ([`crate::Config::max_presigned_upload_bytes`], S3's 5 TiB by default: the bytes
//!    never pass through a request body), read whole like any upload
//!    ([`crate::volumes`]), moved to its content address, and only then is the image or
//!    label event recorded.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use medlabel_events::Extension;
use medlabel_events::blob::MIN_UPLOAD_PART;
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::error::{ApiError, FieldError};
use crate::extract::{QueryParams, Segment, json_body};
use crate::routes::client_id;
use crate::state::AppState;
use crate::volumes::{check_image, check_label, spooled};

/// S3's most parts per multipart upload.
const MAX_PARTS: u16 = 10_000;

/// How long a presigned upload URL stays valid.
const UPLOAD_URL_TTL: Duration = Duration::from_secs(3600);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/datastore/upload", post(start_upload))
        .route("/datastore/upload/{upload}/complete", post(complete_parts))
        .route("/datastore/upload/{upload}/image", post(confirm_image))
        .route("/datastore/upload/{upload}/label", post(confirm_label))
}

async fn start_upload(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let parts = match query.get("parts") {
        None => None,
        Some(raw) => Some(
            raw.parse::<u16>()
                .ok()
                .filter(|n| (1..=MAX_PARTS).contains(n))
                .ok_or_else(|| {
                    ApiError::field(FieldError::new(
                        "value_error",
                        "query",
                        "parts",
                        format!("parts must be a whole number from 1 to {MAX_PARTS}"),
                        json!(raw),
                    ))
                })?,
        ),
    };
    let upload_id = uuid::Uuid::new_v4().to_string();
    let blobs = state.datastore.blob_store();
    let no_object_store = || {
        ApiError::NotFound(
            "presigned uploads need an object store; upload with PUT /datastore/image".into(),
        )
    };
    let mut reply = json!({"upload_id": upload_id, "expires_in": UPLOAD_URL_TTL.as_secs()});
    match parts {
        None => {
            let url = blobs
                .presign_upload(&upload_id, UPLOAD_URL_TTL)
                .await?
                .ok_or_else(no_object_store)?;
            reply["url"] = json!(url);
        }
        Some(parts) => {
            let urls = blobs
                .presign_upload_parts(&upload_id, parts, UPLOAD_URL_TTL)
                .await?
                .ok_or_else(no_object_store)?;
            reply["parts"] = urls
                .into_iter()
                .enumerate()
                .map(|(n, url)| json!({"part_number": n + 1, "url": url}))
                .collect();
            reply["min_part_size"] = json!(MIN_UPLOAD_PART);
        }
    }
    Ok(Json(reply))
}

/// Joins the parts of a multipart upload from the ETags the client collected.
async fn complete_parts(
    State(state): State<AppState>,
    upload: Segment,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(body).await?;
    let invalid = |msg: &str| {
        ApiError::field(FieldError::new(
            "value_error",
            "body",
            "parts",
            msg,
            body.get("parts").cloned().unwrap_or(Value::Null),
        ))
    };
    let parts = body
        .get("parts")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("parts must be a list of {part_number, etag}"))?
        .iter()
        .map(|part| {
            let number = part["part_number"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| (1..=MAX_PARTS).contains(n));
            let etag = part["etag"].as_str().filter(|e| !e.is_empty());
            number
                .zip(etag)
                .map(|(n, e)| (n, e.to_owned()))
                .ok_or_else(|| invalid("every part needs a part_number (1 to 10000) and an etag"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    state
        .datastore
        .blob_store()
        .complete_upload_parts(&upload.0, &parts)
        .await?;
    Ok(Json(json!({"upload_id": upload.0, "parts": parts.len()})))
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
        .adopt_upload(&upload.0, &ext, state.config.max_presigned_upload_bytes)
        .await?;
    // Checked before any event names it; a refused blob is left for the sweep.
    let file = spooled(&state, &blob).await?;
    check_image(&file, &ext, "upload", &upload.0).await?;
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
    let record = state.datastore.image(&image).await?;
    let blobs = state.datastore.blob_store();
    let mut blob = blobs
        .adopt_upload(&upload.0, &ext, state.config.max_presigned_upload_bytes)
        .await?;
    // Checked before any event names it; a refused blob is left for the sweep.
    let file = spooled(&state, &blob).await?;
    let checked = check_label(&state, (&image, &record), &file, &ext, "upload", &upload.0).await?;
    if let Some((converted, ext)) = &checked.converted {
        blob = blobs.put_file(converted, ext).await?;
    }
    let write = ctx.write(client_id(&info));
    let saved = state
        .datastore
        .save_label_blob(&write, &image, &tag, blob, info)
        .await?;
    Ok(Json(
        json!({"image": image, "label": image, "version": saved.version}),
    ))
}
