//! The label versions a training run pins, kept as one blob its `JobRequested` names.
//!
//! A pinned label is about 300 bytes of JSON, so a list inside the event grew past
//! DynamoDB's 400 KB item limit (and SQS's 256 KiB message limit, when the message
//! carried it) at about a thousand final labels. The list is a content-addressed JSON
//! blob instead ([`pin`]): the event stays the same size for any number of labels, a
//! retried request pins the same list to the same blob, and the runner reads it back
//! ([`pinned`]) when it starts the job. Events from before carry the list inline, and
//! [`pinned`] reads those too.

use crate::blob::{BlobError, BlobRef, BlobStore, read_to_vec};
use crate::event::LabelVersionRef;
use crate::id::Extension;
use crate::jobs::JobRecord;

/// Why a pinned list could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("the pinned label list {blob} does not decode: {reason}")]
    Decode { blob: String, reason: String },
}

/// The label versions a training request pins and the log position it read them at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLabels {
    /// The JSON list of [`LabelVersionRef`].
    pub blob: BlobRef,
    pub as_of_position: u64,
}

/// Stores `labels` as one JSON blob; the same list always gives the same blob.
pub async fn pin(
    blobs: &dyn BlobStore,
    labels: &[LabelVersionRef],
    as_of_position: u64,
) -> Result<PinnedLabels, PinnedError> {
    // A list of ids, numbers and blob references always encodes.
    let bytes = serde_json::to_vec(labels).expect("pinned labels encode as JSON");
    let ext = Extension::parse(".json").expect("a valid extension");
    Ok(PinnedLabels {
        blob: blobs.put_bytes(bytes, &ext).await?,
        as_of_position,
    })
}

/// The label versions `job` pinned: read from its blob, or inline in older events.
pub async fn pinned(
    blobs: &dyn BlobStore,
    job: &JobRecord,
) -> Result<Vec<LabelVersionRef>, PinnedError> {
    let Some(blob) = &job.labels_blob else {
        return Ok(job.labels.clone());
    };
    let bytes = read_to_vec(blobs, blob).await?;
    serde_json::from_slice(&bytes).map_err(|err| PinnedError::Decode {
        blob: blob.key(),
        reason: err.to_string(),
    })
}
