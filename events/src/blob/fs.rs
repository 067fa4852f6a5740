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
//! A store opened with [`FolderBlobStore::open_with_inline`] keeps small blobs (at most
//! [`INLINE_MAX_BYTES`]) inside the embedded event database instead, where they cost no
//! fsync of their own: the fsync of the next append to that database, the one recording
//! the event that references the blob, makes the blob durable too. A file blob costs
//! two fsyncs (file and folder) on top of the append's, which was most of a
//! `save_label`. `get`, `head`, `delete` and `list` see both kinds;
//! [`BlobStore::local_path`] has no path for an inline blob, and
//! [`BlobStore::local_file`] writes one out as an ordinary file blob for readers that
//! need a path.
//!
//! File and SQLite I/O is blocking, so every operation that touches more than metadata
//! runs on tokio's blocking pool.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tempfile::{NamedTempFile, TempPath};

use crate::blob::{BlobError, BlobReader, BlobRef, BlobStore, DownloadAs};
use crate::id::Extension;
use crate::store::StoreError;
use crate::store::sqlite::SqliteEventStore;

/// Largest blob that a store opened with [`FolderBlobStore::open_with_inline`] keeps in
/// the event database; larger blobs are files.
///
/// Below about 100 KiB SQLite reads a blob faster than the file system opens and reads a
/// file (sqlite.org, "Internal Versus External BLOBs", 4 KiB pages), and label masks,
/// configs and session images of a few slices fit; 3D images (megabytes) stay files. The
/// bound also caps what one put adds to the WAL (33 pages) and what a read of an inline
/// blob holds in memory.
pub const INLINE_MAX_BYTES: u64 = 128 << 10;

/// Bytes hashed (and copied) per read when streaming a file.
const CHUNK: usize = 1 << 20;

/// Longest upload id accepted (a UUID is 36 characters).
const MAX_UPLOAD_ID: usize = 64;

/// A [`BlobStore`] in a local folder, optionally with its small blobs in the embedded
/// event database.
#[derive(Debug, Clone)]
pub struct FolderBlobStore {
    root: PathBuf,
    /// Where blobs of at most [`INLINE_MAX_BYTES`] are put instead of files, if anywhere.
    inline: Option<SqliteEventStore>,
}

impl FolderBlobStore {
    /// Opens (creating if needed) the store rooted at `root`, every blob a file. Several
    /// stores, in one process or many, may share a root.
    ///
    /// Use [`FolderBlobStore::open_with_inline`] beside an event database: this store
    /// does not see blobs that such a store put in the database.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        for dir in ["sha256", "tmp", "uploads"] {
            fs::create_dir_all(root.join(dir))?;
        }
        Ok(Self { root, inline: None })
    }

    /// Opens the store rooted at `root` with blobs of at most [`INLINE_MAX_BYTES`] kept
    /// in `events`' database: the embedded backend's pair, the way the local server and
    /// runner open it. Every store and runner sharing that database must open its blob
    /// store this way, or it will not find the small blobs.
    ///
    /// A small blob put here is durable no later than the next append that `events` (or
    /// any other handle on its file) commits, instead of when the put returns; a blob is
    /// always put before the event that references it, so every blob an acknowledged
    /// event references is durable.
    pub fn open_with_inline(
        root: impl Into<PathBuf>,
        events: &SqliteEventStore,
    ) -> Result<Self, BlobError> {
        Ok(Self {
            inline: Some(events.clone()),
            ..Self::open(root)?
        })
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

    /// Stores bytes already in memory: in the event database when they are small enough
    /// and the store has one, else as a file.
    fn store_bytes(&self, bytes: &[u8], ext: &Extension) -> Result<BlobRef, BlobError> {
        let size = bytes.len() as u64;
        let Some(events) = self.inline.as_ref().filter(|_| size <= INLINE_MAX_BYTES) else {
            return self.copy_in(&mut &bytes[..], ext);
        };
        let blob = BlobRef {
            sha256: hex::encode(Sha256::digest(bytes)),
            size,
            ext: ext.clone(),
        };
        events
            .put_blob(&inline_name(&blob), bytes)
            .map_err(backend)?;
        Ok(blob)
    }

    /// Reads `file` whole when it may go into the event database; otherwise `None`, with
    /// the file still at its start for streaming.
    fn read_if_small(&self, file: &mut File) -> Result<Option<Vec<u8>>, BlobError> {
        if self.inline.is_none() || file.metadata()?.len() > INLINE_MAX_BYTES {
            return Ok(None);
        }
        // The file may have grown since its size was read: one byte past the bound tells.
        let mut bytes = Vec::new();
        Read::by_ref(file)
            .take(INLINE_MAX_BYTES + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > INLINE_MAX_BYTES {
            file.rewind()?;
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// The event database and row name where `blob` would live inline; `None` when the
    /// store has no database, the blob is too big for it, or the reference is malformed.
    fn inline_slot(&self, blob: &BlobRef) -> Option<(SqliteEventStore, String)> {
        let events = self.inline.as_ref()?;
        (blob.size <= INLINE_MAX_BYTES && well_formed(blob))
            .then(|| (events.clone(), inline_name(blob)))
    }

    /// The blob's bytes if it lives in the event database (it may still be a file when
    /// this is `None`: imported by link, or stored before the store had a database).
    async fn inline_bytes(&self, blob: &BlobRef) -> Result<Option<Vec<u8>>, BlobError> {
        let Some((events, name)) = self.inline_slot(blob) else {
            return Ok(None);
        };
        blocking(move || events.blob(&name).map_err(backend)).await
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
        well_formed(blob).then(|| self.root.join(blob.key()))
    }

    /// Every blob: the files, then the inline blobs that are not also files.
    fn list_blocking(&self) -> Result<Vec<BlobRef>, BlobError> {
        let mut blobs = self.list_files()?;
        if let Some(events) = &self.inline {
            let files: HashSet<BlobRef> = blobs.iter().cloned().collect();
            let inline = events.blob_sizes().map_err(backend)?;
            blobs.extend(
                inline
                    .into_iter()
                    .filter_map(|(name, size)| parse_name(&name, size))
                    .filter(|blob| !files.contains(blob)),
            );
        }
        Ok(blobs)
    }

    fn list_files(&self) -> Result<Vec<BlobRef>, BlobError> {
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

/// Whether the reference's digest is 64 lower-case hex digits: anything else names no
/// stored blob and must reach neither a path nor a query.
fn well_formed(blob: &BlobRef) -> bool {
    blob.sha256.len() == 64
        && blob
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An inline blob's row name: its file name, `<64 hex><ext>`, so [`parse_name`] reads both.
fn inline_name(blob: &BlobRef) -> String {
    format!("{}{}", blob.sha256, blob.ext)
}

fn backend(err: StoreError) -> BlobError {
    BlobError::Backend(format!("event database: {err}"))
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
        blocking(move || {
            let mut file = File::open(&path)?;
            match store.read_if_small(&mut file)? {
                Some(bytes) => store.store_bytes(&bytes, &ext),
                None => store.copy_in(&mut file, &ext),
            }
        })
        .await
    }

    async fn put_bytes(&self, bytes: Vec<u8>, ext: &Extension) -> Result<BlobRef, BlobError> {
        let store = self.clone();
        let ext = ext.clone();
        blocking(move || store.store_bytes(&bytes, &ext)).await
    }

    async fn get(&self, blob: &BlobRef) -> Result<BlobReader, BlobError> {
        if let Some(bytes) = self.inline_bytes(blob).await? {
            return Ok(Box::pin(io::Cursor::new(bytes)));
        }
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
        if let Some((events, name)) = self.inline_slot(blob)
            && let Some(size) = blocking(move || events.blob_size(&name).map_err(backend)).await?
        {
            return Ok(Some(size));
        }
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
        // A small blob may be both inline and a file (see `local_file`): delete both.
        if let Some((events, name)) = self.inline_slot(blob) {
            blocking(move || events.delete_blob(&name).map_err(backend)).await?;
        }
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
        let path = self.path_of(blob)?;
        // A small blob may live in the event database, with no file to point at.
        if self.inline_slot(blob).is_some() && !path.is_file() {
            return None;
        }
        Some(path)
    }

    async fn local_file(&self, blob: &BlobRef) -> Result<Option<PathBuf>, BlobError> {
        if let Some(path) = self.local_path(blob) {
            return Ok(Some(path));
        }
        // An inline blob: write it out as an ordinary (fsynced) file blob, which later
        // calls find; `get` keeps reading the inline copy, `delete` removes both.
        let Some(bytes) = self.inline_bytes(blob).await? else {
            return Ok(None);
        };
        let store = self.clone();
        let ext = blob.ext.clone();
        blocking(move || store.copy_in(&mut bytes.as_slice(), &ext)).await?;
        Ok(self.path_of(blob))
    }

    async fn presign_get(
        &self,
        _blob: &BlobRef,
        _expires_in: Duration,
        _download: Option<&DownloadAs>,
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
            if let Some(bytes) = store.read_if_small(&mut file)? {
                let size = bytes.len() as u64;
                if size > max_size {
                    return Err(BlobError::TooLarge {
                        size,
                        limit: max_size,
                    });
                }
                // `staged` is deleted on drop: the bytes go into the event database.
                return store.store_bytes(&bytes, &ext);
            }
            let (sha256, size) = hash(&mut file, None, max_size)?;
            // The uploader need not have flushed it; the blob must be durable.
            file.sync_all()?;
            store.settle(staged, BlobRef { sha256, size, ext })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::read_to_vec;

    fn ext() -> Extension {
        Extension::parse(".nii.gz").unwrap()
    }

    /// Bytes that differ from run to run, so no two tests share a blob.
    fn bytes(len: usize) -> Vec<u8> {
        let seed = uuid::Uuid::new_v4();
        seed.as_bytes().iter().copied().cycle().take(len).collect()
    }

    /// A blob at the bound goes into the event database: no file, readable through a
    /// second handle on the same database (as another process would read it), listed,
    /// and written out as a file for readers that need a path.
    #[tokio::test]
    async fn small_blobs_live_in_the_event_database() {
        let dir = tempfile::tempdir().unwrap();
        let events = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
        let store = FolderBlobStore::open_with_inline(dir.path().join("blobs"), &events).unwrap();
        let content = bytes(INLINE_MAX_BYTES as usize);
        let upload = dir.path().join("label.nii.gz");
        fs::write(&upload, &content).unwrap();

        let blob = store.put_file(&upload, &ext()).await.unwrap();
        assert_eq!(
            store.put_bytes(content.clone(), &ext()).await.unwrap(),
            blob
        );
        let file = dir.path().join("blobs").join(blob.key());
        assert!(!file.exists());
        assert_eq!(store.local_path(&blob), None);
        assert_eq!(store.head(&blob).await.unwrap(), Some(INLINE_MAX_BYTES));
        assert_eq!(store.list().await.unwrap(), vec![blob.clone()]);

        let other = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
        let other = FolderBlobStore::open_with_inline(dir.path().join("blobs"), &other).unwrap();
        assert_eq!(read_to_vec(&other, &blob).await.unwrap(), content);

        assert_eq!(store.local_file(&blob).await.unwrap(), Some(file.clone()));
        assert_eq!(fs::read(&file).unwrap(), content);
        assert_eq!(store.local_path(&blob), Some(file.clone()));
        assert_eq!(store.list().await.unwrap(), vec![blob.clone()]);

        store.delete(&blob).await.unwrap();
        assert!(!file.exists());
        assert_eq!(store.head(&blob).await.unwrap(), None);
        assert!(matches!(
            store.get(&blob).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(store.list().await.unwrap().is_empty());
    }

    /// One byte past the bound, a blob is a file, whether put from a file, from memory
    /// or as an upload.
    #[tokio::test]
    async fn large_blobs_are_files() {
        let dir = tempfile::tempdir().unwrap();
        let events = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
        let store = FolderBlobStore::open_with_inline(dir.path().join("blobs"), &events).unwrap();
        let content = bytes(INLINE_MAX_BYTES as usize + 1);
        let source = dir.path().join("image.nii.gz");
        fs::write(&source, &content).unwrap();

        let blob = store.put_file(&source, &ext()).await.unwrap();
        let file = dir.path().join("blobs").join(blob.key());
        assert_eq!(fs::read(&file).unwrap(), content);
        assert_eq!(store.local_path(&blob), Some(file));
        assert_eq!(
            store.put_bytes(content.clone(), &ext()).await.unwrap(),
            blob
        );
        assert_eq!(read_to_vec(&store, &blob).await.unwrap(), content);

        let upload = uuid::Uuid::new_v4().to_string();
        fs::write(store.upload_path(&upload).unwrap(), &content).unwrap();
        let limit = INLINE_MAX_BYTES * 2;
        assert_eq!(
            store.adopt_upload(&upload, &ext(), limit).await.unwrap(),
            blob
        );
        assert!(events.blob_sizes().unwrap().is_empty());
    }
}
