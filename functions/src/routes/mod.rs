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

use std::time::Duration;

use medlabel_events::ImageId;
use medlabel_events::blob::BlobRef;
use medlabel_events::datastore::ImageRecord;
use medlabel_events::event::DataRead;

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

/// The image as a volume: with a DICOMweb datastore, a series not fetched yet is
/// fetched first, and an id not known yet is looked up on the server
/// ([`crate::dicomweb::Studies::volume`]).
pub(crate) async fn image_volume(
    state: &AppState,
    image: &ImageId,
) -> Result<ImageRecord, ApiError> {
    match &state.studies {
        Some(studies) => studies.volume(image).await,
        None => Ok(state.datastore.require_image(image).await?),
    }
}

/// The labels of model `name` (`{name: value}`), or of the first model with labels,
/// as `/info/` lists them: what DICOM SEG segments are named after.
pub(crate) async fn model_labels(
    state: &AppState,
    name: Option<&str>,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let Ok(info) = state.runner.describe().await else {
        return Default::default();
    };
    let labels = |m: &serde_json::Value| m["labels"].as_object().cloned();
    name.and_then(|n| info.models.get(n).and_then(labels))
        .or_else(|| {
            info.models
                .values()
                .filter_map(labels)
                .find(|l| !l.is_empty())
        })
        .map(|l| l.into_iter().collect())
        .unwrap_or_default()
}

/// Where a client reads an image: MONAI Label's `<studies>/<id><ext>` when this server
/// keeps a studies folder (once the folder reflects the view as the reply read it), the
/// series' `RetrieveURL` for a DICOMweb series not fetched yet (Slicer then downloads
/// `/datastore/image`, which fetches it), else [`client_uri`].
pub(crate) async fn image_path(
    state: &AppState,
    ctx: &crate::context::Ctx,
    image: &ImageId,
    record: &ImageRecord,
) -> Result<String, ApiError> {
    if let Some(url) = record
        .info
        .get("RetrieveURL")
        .filter(|_| record.awaits_fetch())
    {
        return Ok(url.as_str().unwrap_or_default().to_owned());
    }
    match &state.studies_folder {
        Some(folder) => {
            folder.settled(state.datastore.position()).await;
            Ok(path_text(&folder.image_path(image, &record.ext)))
        }
        None => {
            let read = DataRead::Image {
                image: image.clone(),
            };
            client_uri(state, ctx, &record.blob, read, "image").await
        }
    }
}

pub(crate) fn path_text(path: &std::path::Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The `client_id` a MONAI Label client put in its params, if it is a string.
pub(crate) fn client_id(params: &medlabel_events::Info) -> Option<&str> {
    params.get("client_id").and_then(|v| v.as_str())
}
