//! The blob store port and its adapters: image, label, model and session files.
//!
//! Blobs are content-addressed: the key is the SHA-256 of the bytes plus the file
//! extension (readers such as NIfTI loaders go by the extension), so writing the same
//! file twice stores it once, and a blob is always written before the event that
//! references it (invariant 3). Blobs no event references can be swept.
//!
//! Adapters: [`fs::FolderBlobStore`] (a local folder, its small blobs optionally inside
//! the embedded event database) and, with the `aws` feature, [`s3::S3BlobStore`].

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;

use crate::id::Extension;

pub mod fs;
#[cfg(feature = "aws")]
pub mod s3;

/// A reference to stored bytes, as events carry it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    pub size: u64,
    pub ext: Extension,
}

impl BlobRef {
    /// The storage key: `sha256/<first two hex>/<hex><ext>`.
    pub fn key(&self) -> String {
        format!("sha256/{}/{}{}", &self.sha256[..2], self.sha256, self.ext)
    }

    /// MONAI Label's checksum notation, `SHA256:<hex>`.
    pub fn checksum(&self) -> String {
        format!("SHA256:{}", self.sha256)
    }
}

/// How a presigned download presents the file: its `content-type` and
/// `content-disposition` header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadAs {
    pub content_type: String,
    pub content_disposition: String,
}

/// A streaming reader over a blob's bytes.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("upload {0} not found")]
    UploadNotFound(String),
    /// The client's upload cannot become a blob (parts too small, none sent, …).
    #[error("upload {id} is unusable: {reason}")]
    InvalidUpload { id: String, reason: String },
    #[error("blob is {size} bytes; the limit is {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("blob store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob store backend error: {0}")]
    Backend(String),
}

/// S3's smallest part of a multipart upload, the last part excepted.
pub const MIN_UPLOAD_PART: u64 = 5 * 1024 * 1024;

/// The blob store port.
///
/// Durability: every blob that an acknowledged event references must survive a crash
/// (invariant 5). Blobs are put before the events that reference them, so a put only has
/// to be durable by the time that event's append is acknowledged:
/// - [`s3::S3BlobStore`], and [`fs::FolderBlobStore`] for the blobs it keeps as files, are
///   durable when the put returns;
/// - a [`fs::FolderBlobStore`] opened with [`fs::FolderBlobStore::open_with_inline`] puts
///   small blobs into the embedded event database without an fsync: such a put is
///   durable no later than the next append committed to that same database, whose fsync
///   covers it. A crash before that append may lose the blob, but then no acknowledged
///   event references it.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the file at `path` (streamed, never read whole into memory) and returns
    /// its content address. The file itself is left where it is.
    async fn put_file(&self, path: &Path, ext: &Extension) -> Result<BlobRef, BlobError>;

    /// Stores bytes already in memory (small payloads: configs, generated masks).
    async fn put_bytes(&self, bytes: Vec<u8>, ext: &Extension) -> Result<BlobRef, BlobError>;

    /// Streams a blob's bytes.
    async fn get(&self, blob: &BlobRef) -> Result<BlobReader, BlobError>;

    /// The stored size, or `None` if the blob is absent.
    async fn head(&self, blob: &BlobRef) -> Result<Option<u64>, BlobError>;

    /// Deletes a blob (for the sweeper; absent blobs are not an error).
    async fn delete(&self, blob: &BlobRef) -> Result<(), BlobError>;

    /// Every stored blob, for sweeping the unreferenced ones.
    async fn list(&self) -> Result<Vec<BlobRef>, BlobError>;

    /// The file holding the blob when the store keeps it as a local file; `None` for
    /// remote stores and for blobs kept inside an event database. Readers that get `None`
    /// read the bytes with [`BlobStore::get`], or ask [`BlobStore::local_file`] for a path.
    fn local_path(&self, blob: &BlobRef) -> Option<PathBuf>;

    /// A local file holding the blob, for readers that only take paths (MONAI Label's
    /// `get_image_uri`, the runner's `image`): [`BlobStore::local_path`] when there is one,
    /// else a local store writes a blob it keeps elsewhere out as a file. `None` for
    /// remote stores (see [`BlobStore::presign_get`]) and for absent blobs.
    async fn local_file(&self, blob: &BlobRef) -> Result<Option<PathBuf>, BlobError> {
        Ok(self.local_path(blob))
    }

    /// A time-limited URL to GET the blob directly, where the store supports it. With
    /// `download`, the answer to that GET names the file and its type as a server's
    /// file reply would (S3's `response-content-disposition` and `-type`), so a client
    /// redirected to the URL saves the file under the right name.
    async fn presign_get(
        &self,
        blob: &BlobRef,
        expires_in: Duration,
        download: Option<&DownloadAs>,
    ) -> Result<Option<String>, BlobError>;

    /// A time-limited URL to PUT an upload under a staging id, where supported. The
    /// upload becomes a blob through [`BlobStore::adopt_upload`], which checks it.
    async fn presign_upload(
        &self,
        upload_id: &str,
        expires_in: Duration,
    ) -> Result<Option<String>, BlobError>;

    /// Time-limited URLs to PUT an upload as `parts` parts, the `n`th part to the `n`th
    /// URL, where supported: volumes too big for one PUT, or sent in parallel. Every part
    /// but the last must hold at least [`MIN_UPLOAD_PART`] bytes;
    /// [`BlobStore::complete_upload_parts`] joins them.
    async fn presign_upload_parts(
        &self,
        _upload_id: &str,
        _parts: u16,
        _expires_in: Duration,
    ) -> Result<Option<Vec<String>>, BlobError> {
        Ok(None)
    }

    /// Joins the parts of an upload started with [`BlobStore::presign_upload_parts`]:
    /// `(part number, ETag the part's PUT answered)`, in order. Refused with
    /// [`BlobError::InvalidUpload`] when the store cannot join them (a part under
    /// [`MIN_UPLOAD_PART`] but the last, an unknown part or ETag).
    async fn complete_upload_parts(
        &self,
        upload_id: &str,
        _parts: &[(u16, String)],
    ) -> Result<(), BlobError> {
        Err(BlobError::UploadNotFound(upload_id.to_owned()))
    }

    /// Moves a finished upload to its content address and returns it; refuses uploads
    /// over `max_size`.
    async fn adopt_upload(
        &self,
        upload_id: &str,
        ext: &Extension,
        max_size: u64,
    ) -> Result<BlobRef, BlobError>;
}

/// Reads a whole blob into memory (for small blobs: labels to score, configs).
pub async fn read_to_vec(store: &dyn BlobStore, blob: &BlobRef) -> Result<Vec<u8>, BlobError> {
    use tokio::io::AsyncReadExt;
    let mut reader = store.get(blob).await?;
    let mut bytes = Vec::with_capacity(blob.size as usize);
    reader.read_to_end(&mut bytes).await?;
    Ok(bytes)
}
