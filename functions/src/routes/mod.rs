//! One axum `Router` per function, each deployable as its own Lambda.
//!
//! Every router is `Router<AppState>` without fallback or middleware; [`crate::app::finish`]
//! adds those (request ids, MONAI Label's 404/405/307 behaviour, CORS), for the local
//! all-in-one app and for each Lambda alike, so both answer identically.

pub mod activelearning;
pub mod auth;
pub mod datastore;
pub mod infer;
pub mod info;
pub mod logs;
pub mod session;
pub mod train;
pub mod upload;
pub mod viewer;
pub mod wsi;

use medlabel_events::blob::BlobRef;
use std::time::Duration;

use crate::error::ApiError;
use crate::state::AppState;

/// Where a runner or client can read a blob: a local path for folder stores, a
/// presigned URL for object stores (MONAI Label's `get_image_uri`).
pub(crate) async fn blob_uri(state: &AppState, blob: &BlobRef) -> Result<String, ApiError> {
    let blobs = state.datastore.blob_store();
    if let Some(path) = blobs.local_file(blob).await? {
        return Ok(path.to_string_lossy().into_owned());
    }
    Ok(blobs
        .presign_get(blob, Duration::from_secs(3600), None)
        .await?
        .unwrap_or_else(|| blob.key()))
}

/// [`blob_uri`] for a reply to a client: a presigned URL reads patient data without any
/// further check, so handing one out is a read, recorded first ([`crate::audit`]).
pub(crate) async fn client_uri(
    state: &AppState,
    ctx: &crate::context::Ctx,
    blob: &BlobRef,
    read: medlabel_events::event::DataRead,
    step: &str,
) -> Result<String, ApiError> {
    let blobs = state.datastore.blob_store();
    if let Some(path) = blobs.local_file(blob).await? {
        return Ok(path.to_string_lossy().into_owned());
    }
    match blobs
        .presign_get(blob, Duration::from_secs(3600), None)
        .await?
    {
        Some(url) => {
            crate::audit::record(state, ctx, read, true, step).await?;
            Ok(url)
        }
        None => Ok(blob.key()),
    }
}

/// The `client_id` a MONAI Label client put in its params, if it is a string.
pub(crate) fn client_id(params: &medlabel_events::Info) -> Option<&str> {
    params.get("client_id").and_then(|v| v.as_str())
}
