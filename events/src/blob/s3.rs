//! The S3 blob store.
//!
//! Layout under the bucket and an optional key prefix: `sha256/<xx>/<hex><ext>` holds
//! the blobs (the [`BlobRef::key`]), `uploads/<id>` the objects clients PUT through a
//! presigned URL until [`BlobStore::adopt_upload`] checks and moves them.
//!
//! The key is a content address, so it has to be known before the bytes go up: files
//! are hashed first and skipped when the key already exists. Files up to
//! [`PART_SIZE`] are read once into memory and sent from that buffer, so the stored
//! bytes are the hashed bytes. Larger files go up as a multipart upload whose parts are
//! hashed again on the way; if the second digest differs (the file changed meanwhile)
//! the upload is aborted instead of storing bytes under the wrong address.
//!
//! An upload is one presigned PUT, or presigned part PUTs of a multipart upload that the
//! client completes with the parts' ETags, as any S3 client does. An adopted upload is hashed while streamed
//! from S3, then copied server-side (in ranges above S3's 5 GiB CopyObject limit) on the
//! condition that its ETag is still the one hashed: a client re-using its presigned URL
//! during adoption cannot slip other bytes under the address.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::blob::{BlobError, BlobReader, BlobRef, BlobStore, DownloadAs};
use crate::id::Extension;

/// Files above this size go up as a multipart upload in parts of this size.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// S3's limit on one CopyObject.
const MAX_COPY_OBJECT: u64 = 5 * 1024 * 1024 * 1024;

/// Bytes hashed per read when streaming.
const CHUNK: usize = 1 << 20;

/// Longest upload id accepted (a UUID is 36 characters).
const MAX_UPLOAD_ID: usize = 64;

/// A [`BlobStore`] in an S3 bucket, optionally under a key prefix.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    prefix: String,
    /// Largest object one CopyObject may copy; larger ones are copied in ranges this big.
    copy_limit: u64,
}

impl S3BlobStore {
    /// A store over `bucket`. Build the client with [`S3BlobStore::client`] so that
    /// emulators get path-style addressing.
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: String::new(),
            copy_limit: MAX_COPY_OBJECT,
        }
    }

    /// Copies objects above `bytes` in ranges of `bytes` (S3 allows 5 GiB per
    /// CopyObject; S3-compatible stores may allow less).
    pub fn with_copy_limit(mut self, bytes: u64) -> Self {
        self.copy_limit = bytes.max(crate::blob::MIN_UPLOAD_PART);
        self
    }

    /// Keeps every key under `prefix` (a `/` is added if missing), so one bucket can
    /// hold several deployments.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = match prefix {
            "" => String::new(),
            p if p.ends_with('/') => p.to_owned(),
            p => format!("{p}/"),
        };
        self
    }

    /// An S3 client for `config`; path-style addressing when an endpoint URL is set,
    /// since emulators serve no per-bucket host names.
    pub fn client(config: &SdkConfig) -> Client {
        let builder = aws_sdk_s3::config::Builder::from(config);
        let builder = if config.endpoint_url().is_some() {
            builder.force_path_style(true)
        } else {
            builder
        };
        Client::from_conf(builder.build())
    }

    /// Creates `bucket` (tests and local setups; deployments create it from the template).
    pub async fn create_bucket(client: &Client, bucket: &str) -> Result<(), BlobError> {
        client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn blob_key(&self, blob: &BlobRef) -> String {
        format!("{}{}", self.prefix, blob.key())
    }

    /// The staging key of an upload; `UploadNotFound` for an id that is not 1 to 64
    /// ASCII letters, digits and dashes, since no such upload can exist.
    fn upload_key(&self, upload_id: &str) -> Result<String, BlobError> {
        let valid = !upload_id.is_empty()
            && upload_id.len() <= MAX_UPLOAD_ID
            && upload_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(BlobError::UploadNotFound(upload_id.to_owned()));
        }
        Ok(format!("{}uploads/{upload_id}", self.prefix))
    }

    async fn exists(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(SdkError::ServiceError(err)) if err.err().is_not_found() => Ok(None),
            Err(err) => Err(backend(err)),
        }
    }

    /// Stores in-memory bytes under their address unless already there.
    async fn put_hashed(&self, blob: BlobRef, bytes: Vec<u8>) -> Result<BlobRef, BlobError> {
        let key = self.blob_key(&blob);
        if self.exists(&key).await?.is_none() {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(backend)?;
        }
        Ok(blob)
    }

    /// Uploads the file at `path` in parts to `key`, re-hashing each part, and completes
    /// the upload only if the file still hashes to `expected`.
    async fn put_multipart(
        &self,
        path: &Path,
        key: &str,
        expected: &BlobRef,
    ) -> Result<(), BlobError> {
        let upload_id = self.start_multipart(key).await?;
        let result = self.upload_parts(path, key, &upload_id, expected).await;
        if result.is_err() {
            // Best effort: a failed abort leaves parts that a bucket lifecycle rule for
            // incomplete uploads removes; the original error matters more.
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(err) = abort {
                tracing::warn!(key, error = %DisplayErrorContext(err), "aborting a multipart upload failed");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        path: &Path,
        key: &str,
        upload_id: &str,
        expected: &BlobRef,
    ) -> Result<(), BlobError> {
        let mut file = tokio::fs::File::open(path).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut parts = Vec::new();
        loop {
            let mut part = Vec::with_capacity(PART_SIZE);
            (&mut file)
                .take(PART_SIZE as u64)
                .read_to_end(&mut part)
                .await?;
            if part.is_empty() {
                break;
            }
            hasher.update(&part);
            size += part.len() as u64;
            let number = parts.len() as i32 + 1;
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(backend)?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag)
                    .build(),
            );
        }
        if size != expected.size || hex::encode(hasher.finalize()) != expected.sha256 {
            return Err(BlobError::Backend(format!(
                "{} changed while it was being uploaded",
                path.display()
            )));
        }
        self.complete_multipart(key, upload_id, parts)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Copies `source` to `dest` server-side, provided `source` still has `etag`: one
    /// CopyObject up to S3's 5 GiB copy limit, a multipart copy in ranges above it.
    async fn copy_within(
        &self,
        source: &str,
        dest: &str,
        size: u64,
        etag: Option<String>,
    ) -> Result<(), BlobError> {
        let copy_source = percent_encode(&format!("{}/{source}", self.bucket));
        if size <= self.copy_limit {
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .key(dest)
                .copy_source(copy_source)
                .set_copy_source_if_match(etag)
                .send()
                .await
                .map_err(backend)?;
            return Ok(());
        }
        let copy_id = &self.start_multipart(dest).await?;
        let mut parts = Vec::new();
        let mut start = 0;
        while start < size {
            let end = (start + self.copy_limit).min(size) - 1;
            let number = parts.len() as i32 + 1;
            let copied = self
                .client
                .upload_part_copy()
                .bucket(&self.bucket)
                .key(dest)
                .upload_id(copy_id)
                .part_number(number)
                .copy_source(&copy_source)
                .copy_source_range(format!("bytes={start}-{end}"))
                .set_copy_source_if_match(etag.clone())
                .send()
                .await
                .map_err(backend)?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(
                        copied
                            .copy_part_result()
                            .and_then(|r| r.e_tag())
                            .map(str::to_owned),
                    )
                    .build(),
            );
            start = end + 1;
        }
        self.complete_multipart(dest, copy_id, parts)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Starts a multipart upload to `key`; S3's id for it.
    async fn start_multipart(&self, key: &str) -> Result<String, BlobError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(backend)?;
        created
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| BlobError::Backend("CreateMultipartUpload returned no upload id".into()))
    }

    /// Joins `parts` of the multipart upload `upload_id` into the object `key`.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<(), SdkError<CompleteMultipartUploadError, HttpResponse>> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(drop)
    }

    async fn delete_key(&self, key: &str) -> Result<(), BlobError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Parses a listed key back into the blob it holds; `None` for foreign objects.
    fn parse_key(&self, key: &str, size: i64) -> Option<BlobRef> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("sha256/")?;
        let (fan, name) = rest.split_once('/')?;
        let sha256 = name.get(..64)?;
        let hex_ok = sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok || sha256.get(..2) != Some(fan) {
            return None;
        }
        let ext = Extension::parse(&name[64..]).ok()?;
        Some(BlobRef {
            sha256: sha256.to_owned(),
            size: u64::try_from(size).ok()?,
            ext,
        })
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put_file(&self, path: &Path, ext: &Extension) -> Result<BlobRef, BlobError> {
        let mut file = tokio::fs::File::open(path).await?;
        let mut head = Vec::with_capacity(PART_SIZE + 1);
        (&mut file)
            .take(PART_SIZE as u64 + 1)
            .read_to_end(&mut head)
            .await?;
        if head.len() <= PART_SIZE {
            let blob = blob_of(&head, ext);
            return self.put_hashed(blob, head).await;
        }
        let mut hasher = Sha256::new();
        hasher.update(&head);
        drop(head);
        let rest = hash_stream(&mut file, &mut hasher, u64::MAX).await?;
        let blob = BlobRef {
            sha256: hex::encode(hasher.finalize()),
            size: (PART_SIZE as u64 + 1) + rest,
            ext: ext.clone(),
        };
        let key = self.blob_key(&blob);
        if self.exists(&key).await?.is_none() {
            self.put_multipart(path, &key, &blob).await?;
        }
        Ok(blob)
    }

    async fn put_bytes(&self, bytes: Vec<u8>, ext: &Extension) -> Result<BlobRef, BlobError> {
        let blob = blob_of(&bytes, ext);
        self.put_hashed(blob, bytes).await
    }

    async fn get(&self, blob: &BlobRef) -> Result<BlobReader, BlobError> {
        let key = self.blob_key(blob);
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(object) => Ok(Box::pin(object.body.into_async_read())),
            Err(SdkError::ServiceError(err)) if err.err().is_no_such_key() => {
                Err(BlobError::NotFound(key))
            }
            Err(err) => Err(backend(err)),
        }
    }

    async fn head(&self, blob: &BlobRef) -> Result<Option<u64>, BlobError> {
        self.exists(&self.blob_key(blob)).await
    }

    async fn delete(&self, blob: &BlobRef) -> Result<(), BlobError> {
        self.delete_key(&self.blob_key(blob)).await
    }

    async fn list(&self) -> Result<Vec<BlobRef>, BlobError> {
        let prefix = format!("{}sha256/", self.prefix);
        let mut blobs = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(backend)?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                match self.parse_key(key, object.size().unwrap_or(0)) {
                    Some(blob) => blobs.push(blob),
                    // Not ours to sweep: leave it out rather than fail the sweep.
                    None => tracing::warn!(key, "object under sha256/ is not a blob key"),
                }
            }
            token = page.next_continuation_token;
            if token.is_none() {
                return Ok(blobs);
            }
        }
    }

    fn local_path(&self, _blob: &BlobRef) -> Option<PathBuf> {
        None
    }

    async fn presign_get(
        &self,
        blob: &BlobRef,
        expires_in: Duration,
        download: Option<&DownloadAs>,
    ) -> Result<Option<String>, BlobError> {
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.blob_key(blob))
            .set_response_content_type(download.map(|d| d.content_type.clone()))
            .set_response_content_disposition(download.map(|d| d.content_disposition.clone()))
            .presigned(presigning(expires_in)?)
            .await
            .map_err(backend)?;
        Ok(Some(request.uri().to_owned()))
    }

    async fn presign_upload(
        &self,
        upload_id: &str,
        expires_in: Duration,
    ) -> Result<Option<String>, BlobError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.upload_key(upload_id)?)
            .presigned(presigning(expires_in)?)
            .await
            .map_err(backend)?;
        Ok(Some(request.uri().to_owned()))
    }

    async fn presign_upload_parts(
        &self,
        upload_id: &str,
        parts: u16,
        expires_in: Duration,
    ) -> Result<Option<Vec<String>>, BlobError> {
        let key = self.upload_key(upload_id)?;
        let s3_upload = &self.start_multipart(&key).await?;
        let mut urls = Vec::with_capacity(usize::from(parts));
        for number in 1..=i32::from(parts) {
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(&key)
                .upload_id(s3_upload)
                .part_number(number)
                .presigned(presigning(expires_in)?)
                .await
                .map_err(backend)?;
            urls.push(request.uri().to_owned());
        }
        Ok(Some(urls))
    }

    async fn complete_upload_parts(
        &self,
        upload_id: &str,
        parts: &[(u16, String)],
    ) -> Result<(), BlobError> {
        let key = self.upload_key(upload_id)?;
        let pending = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(&key)
            .send()
            .await
            .map_err(backend)?;
        let s3_upload = pending
            .uploads()
            .iter()
            .find(|u| u.key() == Some(key.as_str()))
            .and_then(|u| u.upload_id())
            .ok_or_else(|| BlobError::UploadNotFound(upload_id.to_owned()))?;
        let invalid = |reason: String| BlobError::InvalidUpload {
            id: upload_id.to_owned(),
            reason,
        };
        if parts.is_empty() {
            return Err(invalid("name the parts sent, with their ETags".into()));
        }
        let completed = parts
            .iter()
            .map(|(number, etag)| {
                CompletedPart::builder()
                    .part_number(i32::from(*number))
                    .e_tag(etag)
                    .build()
            })
            .collect();
        self.complete_multipart(&key, s3_upload, completed)
            .await
            .map_err(|err| match err {
                // Parts under 5 MiB but the last, unknown parts or ETags, a wrong order:
                // the client's mistake, in S3's words.
                SdkError::ServiceError(service) => invalid(
                    service
                        .err()
                        .message()
                        .unwrap_or("S3 refused to join the parts")
                        .to_owned(),
                ),
                other => backend(other),
            })?;
        Ok(())
    }

    async fn adopt_upload(
        &self,
        upload_id: &str,
        ext: &Extension,
        max_size: u64,
    ) -> Result<BlobRef, BlobError> {
        let staged = self.upload_key(upload_id)?;
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&staged)
            .send()
            .await
        {
            Ok(object) => object,
            Err(SdkError::ServiceError(err)) if err.err().is_no_such_key() => {
                return Err(BlobError::UploadNotFound(upload_id.to_owned()));
            }
            Err(err) => return Err(backend(err)),
        };
        let declared = object.content_length().unwrap_or(0).max(0) as u64;
        let etag = object.e_tag().map(str::to_owned);
        let mut hasher = Sha256::new();
        let size = if declared > max_size {
            declared
        } else {
            hash_stream(
                &mut object.body.into_async_read(),
                &mut hasher,
                max_size + 1,
            )
            .await?
        };
        if size > max_size {
            self.delete_key(&staged).await?;
            return Err(BlobError::TooLarge {
                size,
                limit: max_size,
            });
        }
        let blob = BlobRef {
            sha256: hex::encode(hasher.finalize()),
            size,
            ext: ext.clone(),
        };
        let key = self.blob_key(&blob);
        if self.exists(&key).await?.is_none() {
            self.copy_within(&staged, &key, size, etag).await?;
        }
        self.delete_key(&staged).await?;
        Ok(blob)
    }
}

fn blob_of(bytes: &[u8], ext: &Extension) -> BlobRef {
    BlobRef {
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
        ext: ext.clone(),
    }
}

/// Feeds up to `limit` bytes of `reader` to `hasher` and returns how many it read.
async fn hash_stream<R: AsyncRead + Unpin>(
    reader: &mut R,
    hasher: &mut Sha256,
    limit: u64,
) -> Result<u64, BlobError> {
    let mut buffer = vec![0; CHUNK];
    let mut size = 0u64;
    while size < limit {
        let want = (limit - size).min(CHUNK as u64) as usize;
        let read = reader.read(&mut buffer[..want]).await?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok(size)
}

fn presigning(expires_in: Duration) -> Result<PresigningConfig, BlobError> {
    PresigningConfig::expires_in(expires_in).map_err(backend)
}

/// Percent-encodes a `CopySource` (`bucket/key`), keeping `/` and unreserved bytes.
fn percent_encode(source: &str) -> String {
    let mut encoded = String::with_capacity(source.len());
    for byte in source.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn backend(err: impl std::error::Error) -> BlobError {
    BlobError::Backend(DisplayErrorContext(err).to_string())
}
