//! The local-folder blob store.
//!
//! Layout under the root: `sha256/<xx>/<hex><ext>` holds the blobs (the
//! [`BlobRef::key`]), `tmp/` the files being written, `uploads/<id>` uploads waiting to
//! be adopted. A blob only ever appears under its key by an atomic rename of a complete,
//! fsynced file, followed by an fsync of the directory, so a crash leaves either the
//! whole blob or none of it (plus, at worst, an orphan in `tmp/`). Because keys are
//! content addresses, a blob that already exists is never rewritten: the new copy is
//! dropped, and concurrent writers of the same bytes cannot harm each other.
//!
//! [`FolderBlobStore::link_file`] imports a file in place by hard-linking it under its
//! key (an existing MONAI Label studies folder is adopted without copying). Such a blob
//! shares its bytes with the user's file: editing that file in place would change the
//! blob, which is why uploads and generated files are always copied instead.
//!
//! File I/O is blocking, so every operation that touches more than metadata runs on
//! tokio's blocking pool.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tempfile::{NamedTempFile, TempPath};

use crate::blob::{BlobError, BlobReader, BlobRef, BlobStore};
use crate::id::Extension;

/// Bytes hashed (and copied) per read when streaming a file.
const CHUNK: usize = 1 << 20;

/// Longest upload id accepted (a UUID is 36 characters).
const MAX_UPLOAD_ID: usize = 64;

/// A [`BlobStore`] in a local folder.
#[derive(Debug, Clone)]
pub struct FolderBlobStore {
    root: PathBuf,
}

impl FolderBlobStore {
    /// Opens (creating if needed) the store rooted at `root`. Several stores, in one
    /// process or many, may share a root.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        for dir in ["sha256", "tmp", "uploads"] {
            fs::create_dir_all(root.join(dir))?;
        }
        Ok(Self { root })
    }

    /// The folder the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an upload with this id is staged before [`BlobStore::adopt_upload`]: the
    /// local counterpart of [`BlobStore::presign_upload`]'s URL, for the local server to
    /// write request bodies to. `None` if `upload_id` is not 1 to 64 ASCII letters,
    /// digits and dashes (a UUID fits), so no id can reach outside `uploads/`.
    pub fn upload_path(&self, upload_id: &str) -> Option<PathBuf> {
        let valid = !upload_id.is_empty()
            && upload_id.len() <= MAX_UPLOAD_ID
            && upload_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        valid.then(|| self.root.join("uploads").join(upload_id))
    }

    /// Stores the file at `path` under its content address without copying its bytes:
    /// the blob becomes a hard link to the file, which stays where it is. Falls back to a
    /// copy where a link is impossible (another filesystem, no link support).
    ///
    /// The blob then shares storage with the file: whoever edits the file in place
    /// changes the blob. Meant for importing an existing studies folder that medlabel
    /// takes over; use [`BlobStore::put_file`] for anything else.
    pub async fn link_file(&self, path: &Path, ext: &Extension) -> Result<BlobRef, BlobError> {
        let store = self.clone();
        let path = path.to_owned();
        let ext = ext.clone();
        blocking(move || {
            let staged = store.staging_name();
            if fs::hard_link(&path, &staged).is_err() {
                return store.copy_in(&mut File::open(&path)?, &ext);
            }
            let staged = TempPath::try_from_path(staged)?;
            let mut file = File::open(&staged)?;
            let (sha256, size) = hash(&mut file, None, u64::MAX)?;
            // The user's file may never have been flushed to disk.
            file.sync_all()?;
            store.settle(staged, BlobRef { sha256, size, ext })
        })
        .await
    }

    /// A fresh, unused path in `tmp/`.
    fn staging_name(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("link-{}", uuid::Uuid::new_v4()))
    }

    /// Copies `source` into `tmp/` while hashing it, then settles it under its key.
    fn copy_in(&self, source: &mut impl Read, ext: &Extension) -> Result<BlobRef, BlobError> {
        let mut temp = NamedTempFile::new_in(self.root.join("tmp"))?;
        let (sha256, size) = hash(source, Some(temp.as_file_mut()), u64::MAX)?;
        temp.as_file().sync_all()?;
        let blob = BlobRef {
            sha256,
            size,
            ext: ext.clone(),
        };
        self.settle(temp.into_temp_path(), blob)
    }

    /// Moves a complete, fsynced file to `blob`'s key, or drops it if the blob exists.
    fn settle(&self, staged: TempPath, blob: BlobRef) -> Result<BlobRef, BlobError> {
        let dir = self.root.join("sha256").join(&blob.sha256[..2]);
        let target = self.root.join(blob.key());
        // Same address and size: the same bytes are already stored (a different size
        // means a damaged copy, which the rename below replaces). `staged` is deleted
        // on drop.
        if fs::metadata(&target).is_ok_and(|existing| existing.len() == blob.size) {
            return Ok(blob);
        }
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            sync_dir(&self.root.join("sha256"))?;
        }
        staged.persist(&target).map_err(|err| err.error)?;
        sync_dir(&dir)?;
        Ok(blob)
    }

    /// The blob's file path, or `None` for a reference whose digest is not 64 lower-case
    /// hex digits (such a reference names no stored blob and must not reach a path).
    fn path_of(&self, blob: &BlobRef) -> Option<PathBuf> {
        let well_formed = blob.sha256.len() == 64
            && blob
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| self.root.join(blob.key()))
    }

    fn list_blocking(&self) -> Result<Vec<BlobRef>, BlobError> {
        let mut blobs = Vec::new();
        for dir in fs::read_dir(self.root.join("sha256"))? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(dir.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(blob) = name
                    .to_str()
                    .and_then(|name| parse_name(name, entry.metadata().ok()?.len()))
                else {
                    continue;
                };
                // A file in the wrong fan-out folder was not put there by this store.
                if dir.file_name().to_str() == Some(&blob.sha256[..2]) {
                    blobs.push(blob);
                }
            }
        }
        Ok(blobs)
    }
}

/// Parses a stored blob's file name, `<64 hex><ext>`; `None` for anything else.
fn parse_name(name: &str, size: u64) -> Option<BlobRef> {
    let (digest, ext) = name.split_at_checked(64)?;
    if !digest
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some(BlobRef {
        sha256: digest.to_owned(),
        size,
        ext: Extension::parse(ext).ok()?,
    })
}

/// Streams `source` through SHA-256 (and into `copy`, if given); fails with
/// [`BlobError::TooLarge`] once more than `limit` bytes were read.
fn hash(
    source: &mut impl Read,
    mut copy: Option<&mut File>,
    limit: u64,
) -> Result<(String, u64), BlobError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        };
        size += read as u64;
        if size > limit {
            return Err(BlobError::TooLarge { size, limit });
        }
        hasher.update(&buffer[..read]);
        if let Some(copy) = copy.as_mut() {
            copy.write_all(&buffer[..read])?;
        }
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Makes a directory's entries (a rename, a new file) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| BlobError::Backend(format!("blob worker failed: {err}")))?
}

#[async_trait]
impl BlobStore for FolderBlobStore {
    async fn put_file(&self, path: &Path, ext: &Extension) -> Result<BlobRef, BlobError> {
        let store = self.clone();
        let path = path.to_owned();
        let ext = ext.clone();
        blocking(move || store.copy_in(&mut File::open(&path)?, &ext)).await
    }

    async fn put_bytes(&self, bytes: Vec<u8>, ext: &Extension) -> Result<BlobRef, BlobError> {
        let store = self.clone();
        let ext = ext.clone();
        blocking(move || store.copy_in(&mut bytes.as_slice(), &ext)).await
    }

    async fn get(&self, blob: &BlobRef) -> Result<BlobReader, BlobError> {
        let path = self
            .path_of(blob)
            .ok_or_else(|| BlobError::NotFound(blob.sha256.clone()))?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Box::pin(file)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(blob.key()))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn head(&self, blob: &BlobRef) -> Result<Option<u64>, BlobError> {
        let Some(path) = self.path_of(blob) else {
            return Ok(None);
        };
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn delete(&self, blob: &BlobRef) -> Result<(), BlobError> {
        let Some(path) = self.path_of(blob) else {
            return Ok(());
        };
        match tokio::fs::remove_file(&path).await {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }

    async fn list(&self) -> Result<Vec<BlobRef>, BlobError> {
        let store = self.clone();
        blocking(move || store.list_blocking()).await
    }

    fn local_path(&self, blob: &BlobRef) -> Option<PathBuf> {
        self.path_of(blob)
    }

    async fn presign_get(
        &self,
        _blob: &BlobRef,
        _expires_in: Duration,
    ) -> Result<Option<String>, BlobError> {
        Ok(None)
    }

    async fn presign_upload(
        &self,
        _upload_id: &str,
        _expires_in: Duration,
    ) -> Result<Option<String>, BlobError> {
        Ok(None)
    }

    async fn adopt_upload(
        &self,
        upload_id: &str,
        ext: &Extension,
        max_size: u64,
    ) -> Result<BlobRef, BlobError> {
        let path = self
            .upload_path(upload_id)
            .ok_or_else(|| BlobError::UploadNotFound(upload_id.to_owned()))?;
        let store = self.clone();
        let upload_id = upload_id.to_owned();
        let ext = ext.clone();
        blocking(move || {
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Err(BlobError::UploadNotFound(upload_id));
                }
                Err(err) => return Err(err.into()),
            };
            // From here the upload is ours: whatever happens, it leaves `uploads/`.
            let staged = TempPath::try_from_path(path)?;
            let declared = file.metadata()?.len();
            if declared > max_size {
                return Err(BlobError::TooLarge {
                    size: declared,
                    limit: max_size,
                });
            }
            let (sha256, size) = hash(&mut file, None, max_size)?;
            // The uploader need not have flushed it; the blob must be durable.
            file.sync_all()?;
            store.settle(staged, BlobRef { sha256, size, ext })
        })
        .await
    }
}
