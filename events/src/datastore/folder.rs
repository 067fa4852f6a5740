//! The studies folder as a projection of the log: the dataset MONAI Label's users keep.
//!
//! In MONAI Label the studies folder *is* the datastore: users copy `labels/final/` into
//! their own training code, back it up, and start MONAI Label on it again. medlabel keeps
//! its truth in the log and the blob store (`.medlabel/`) and projects it back into the
//! folder under MONAI Label's names (design invariant 11):
//! - every image as `<studies>/<id><ext>`, the latest version of every label as
//!   `<studies>/labels/<tag>/<id><ext>`, and `datastore_v2.json` in MONAI Label's format,
//!   so `monailabel start_server --studies` on the same folder sees the same images,
//!   labels and info;
//! - every live session's upload as `.medlabel/sessions/<id>/<its own file name>`, where
//!   MONAI Label keeps a session (in a folder of its own, under the upload's name).
//!
//! A file is a hard link to its blob (a blob kept inside the event database is written
//! out as a file of its own) and appears by an atomic rename, so a reader sees the old
//! file or the new one, never half of one; the blob store keeps its own copy, so deleting
//! or replacing a file in the folder loses nothing. Nothing here is fsynced: the folder
//! is rebuilt from the log at every start.
//!
//! The write path never waits for the folder. [`StudiesFolder::follow`] follows the log
//! after the appends, in order, a batch of events at a time: it folds each event into a
//! [`DatastoreView`] of its own and places or deletes the files whose content the event
//! changed. `datastore_v2.json` is rewritten once the log has been quiet for
//! [`FLUSH_IDLE`], and at least every [`FLUSH_EVERY`] while it is not (MONAI Label
//! rewrites it on every write, which a busy server cannot afford); after it,
//! `.medlabel/studies.position` records the log position the folder reflects. A reply
//! that hands a client a path first waits (bounded) until the folder has applied what the
//! reply read ([`StudiesFolder::settled`]).
//!
//! At start the import runs first (`studies.rs`): what another tool added or changed
//! while medlabel was stopped becomes a new version. It reads the recorded position to
//! tell those files from what this projection left behind when it stopped (a version
//! since replaced, content since removed), which it does not import. Then
//! [`StudiesFolder::rebuild`] makes the folder match the log again: missing or stale
//! files are placed, the leftovers the import found are deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::blob::fs::FolderBlobStore;
use crate::blob::{BlobError, BlobRef, BlobStore, read_to_vec};
use crate::event::{Event, RecordedEvent};
use crate::id::{Extension, ImageId, RunId, Tag};
use crate::projection::CATCH_UP_BATCH;
use crate::store::{EventStore, StoreError};

use super::DatastoreView;

/// How long the log must be quiet before `datastore_v2.json` is rewritten.
pub const FLUSH_IDLE: Duration = Duration::from_millis(20);

/// Longest time `datastore_v2.json` lags behind a busy log.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// Longest time a reply waits for the folder before it hands out a path anyway (a
/// client that finds no file there downloads it, as Slicer does).
pub const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// How long the follower waits for an append before reading the log again anyway.
const WAIT: Duration = Duration::from_secs(5);

/// The file, under `.medlabel/`, holding the log position the folder reflects.
const POSITION_FILE: &str = "studies.position";

/// MONAI Label's metadata file in the studies folder.
pub const DATASTORE_FILE: &str = "datastore_v2.json";

/// Why the folder could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("studies folder I/O error: {0}")]
    Io(#[from] io::Error),
}

/// What the folder shows: the datastore view and the live sessions' files, folded from
/// the log like every other read model.
#[derive(Debug, Clone, Default)]
pub struct FolderState {
    view: DatastoreView,
    sessions: HashMap<RunId, (String, BlobRef)>,
}

impl crate::projection::Projection for FolderState {
    fn position(&self) -> u64 {
        self.view.position
    }

    fn apply(&mut self, event: &RecordedEvent) {
        match &event.event {
            Event::SessionCreated {
                session,
                name,
                blob,
                ..
            } => {
                self.sessions
                    .insert(session.clone(), (name.clone(), blob.clone()));
            }
            Event::SessionRemoved { session } => {
                self.sessions.remove(session);
            }
            _ => {}
        }
        self.view.apply(event);
    }
}

/// Where a file's bytes come from when it is placed.
enum Source {
    /// A blob's own file: hard-linked.
    File(PathBuf),
    /// A blob kept in the event database: written out.
    Bytes(Vec<u8>),
}

/// The studies folder kept in step with the log (see the module docs).
pub struct StudiesFolder {
    root: PathBuf,
    home: PathBuf,
    blobs: FolderBlobStore,
    /// The log position the folder's files reflect.
    applied: watch::Sender<u64>,
    /// The log position `datastore_v2.json` reflects.
    written: watch::Sender<u64>,
}

impl StudiesFolder {
    /// The projection into `studies` (made absolute, as MONAI Label's paths are), whose
    /// blobs live in `blobs`; medlabel's own files go to `studies/.medlabel`.
    pub fn open(studies: &Path, blobs: FolderBlobStore) -> io::Result<Self> {
        let root = studies.canonicalize()?;
        let home = root.join(".medlabel");
        for dir in [
            root.join("labels").join(Tag::final_tag().as_str()),
            root.join("labels").join(Tag::original().as_str()),
            home.join("tmp"),
            home.join("sessions"),
        ] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self {
            root,
            home,
            blobs,
            applied: watch::Sender::new(0),
            written: watch::Sender::new(0),
        })
    }

    /// The studies folder, absolute.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// MONAI Label's place of an image: `<studies>/<id><ext>`.
    pub fn image_path(&self, image: &ImageId, ext: &Extension) -> PathBuf {
        self.root.join(format!("{image}{ext}"))
    }

    /// MONAI Label's place of a label: `<studies>/labels/<tag>/<id><ext>`.
    pub fn label_path(&self, image: &ImageId, tag: &Tag, ext: &Extension) -> PathBuf {
        self.root
            .join("labels")
            .join(tag.as_str())
            .join(format!("{image}{ext}"))
    }

    /// A session's folder (MONAI Label's session `path`).
    pub fn session_dir(&self, session: &RunId) -> PathBuf {
        self.home.join("sessions").join(session.as_str())
    }

    /// A session's file (MONAI Label's session `image`): its folder and the upload's
    /// own name, or `image<ext>` when that name is no safe file name.
    pub fn session_file(&self, session: &RunId, name: &str, ext: &Extension) -> PathBuf {
        let safe = !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('.')
            && !name.contains(['/', '\\', '\0']);
        let name = if safe {
            name.to_owned()
        } else {
            format!("image{ext}")
        };
        self.session_dir(session).join(name)
    }

    /// The log position `studies` was last projected at, as recorded there; 0 for a
    /// folder medlabel never projected (or whose record is unreadable), which makes the
    /// import treat every version the log holds as one the folder may still show.
    pub fn projected_position(studies: &Path) -> u64 {
        std::fs::read_to_string(studies.join(".medlabel").join(POSITION_FILE))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the folder reflects the log up to `position`, or [`SETTLE_LIMIT`].
    pub async fn settled(&self, position: u64) {
        let mut applied = self.applied.subscribe();
        let reached = tokio::time::timeout(SETTLE_LIMIT, applied.wait_for(|&p| p >= position));
        if reached.await.is_err() {
            tracing::debug!(
                position,
                "studies folder lags; replying with its path anyway"
            );
        }
    }

    /// Folds the whole log and makes the folder match it: deletes `leftovers` (files the
    /// import found to hold what this projection left behind), places every missing or
    /// stale file, removes the folders of sessions that ended, and writes
    /// `datastore_v2.json`. Returns the state [`StudiesFolder::follow`] continues from.
    pub async fn rebuild(
        &self,
        store: &Arc<dyn EventStore>,
        leftovers: &[PathBuf],
    ) -> Result<FolderState, FolderError> {
        let mut state = FolderState::default();
        loop {
            let batch = store.read_all(state.view.position, CATCH_UP_BATCH).await?;
            for event in &batch {
                crate::projection::Projection::apply(&mut state, event);
            }
            if batch.len() < CATCH_UP_BATCH {
                break;
            }
        }
        let mut expected: BTreeMap<PathBuf, BlobRef> = BTreeMap::new();
        for (image, _) in state.view.images() {
            expected.extend(self.files_of(&state.view, image));
        }
        for (session, (name, blob)) in &state.sessions {
            expected.insert(self.session_file(session, name, &blob.ext), blob.clone());
        }
        let mut changes: BTreeMap<PathBuf, Option<BlobRef>> = leftovers
            .iter()
            .filter(|path| !expected.contains_key(*path))
            .map(|path| (path.clone(), None))
            .collect();
        for (path, blob) in expected {
            if !self.in_sync(&path, &blob).await? {
                changes.insert(path, Some(blob));
            }
        }
        let live: HashSet<&str> = state.sessions.keys().map(RunId::as_str).collect();
        let ended: Vec<PathBuf> = std::fs::read_dir(self.home.join("sessions"))?
            .filter_map(Result::ok)
            .filter(|entry| !live.contains(entry.file_name().to_string_lossy().as_ref()))
            .map(|entry| entry.path())
            .collect();
        let placed = changes.len();
        self.execute(changes, ended).await;
        self.flush(&state.view).await?;
        self.applied.send_replace(state.view.position);
        tracing::info!(
            files = placed,
            position = state.view.position,
            "studies folder rebuilt"
        );
        Ok(state)
    }

    /// Runs [`StudiesFolder::follow`] on a thread of its own, at the lowest scheduling
    /// priority, for the life of the process.
    ///
    /// The follower's work (folding events, placing files, serialising
    /// `datastore_v2.json` for every image) is not urgent, but on the runtime's worker
    /// threads each of its steps would stall the requests queued behind it; on a
    /// thread of its own, niced, the kernel gives the request handlers the cores first
    /// and the folder catches up when they idle (issue #14: the projection must not
    /// cost the write path its speed).
    pub fn follow_in_background(
        self: Arc<Self>,
        store: Arc<dyn EventStore>,
        state: FolderState,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("studies-folder".into())
            .spawn(move || {
                lower_thread_priority();
                runtime.block_on(self.follow(store, state));
            })
    }

    /// Follows the log from `state` (as [`StudiesFolder::rebuild`] left it) for as long
    /// as the task runs. Errors are logged and retried: the folder is a projection, and
    /// the next start rebuilds whatever a failure left out.
    async fn follow(self: Arc<Self>, store: Arc<dyn EventStore>, mut state: FolderState) {
        let mut dirty = false;
        let mut quiet_since = Instant::now();
        let mut flushed_at = Instant::now();
        loop {
            let position = state.view.position;
            let batch = match store.read_all(position, CATCH_UP_BATCH).await {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(error = %err, "studies folder: reading the log failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if dirty && quiet_since.elapsed() >= FLUSH_IDLE {
                    self.flush_logged(&state.view).await;
                    (dirty, flushed_at) = (false, Instant::now());
                }
                let wait = if dirty { FLUSH_IDLE } else { WAIT };
                if let Err(err) = store.wait_for_append(position, wait).await {
                    tracing::warn!(error = %err, "studies folder: waiting for the log failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
            let (changes, ended) = self.apply(&mut state, &batch);
            dirty |= batch.iter().any(|e| changes_datastore(&e.event));
            self.execute(changes, ended).await;
            self.applied.send_replace(state.view.position);
            if !dirty {
                // Nothing `datastore_v2.json` shows changed since it was written.
                self.written.send_replace(state.view.position);
            }
            quiet_since = Instant::now();
            if dirty && flushed_at.elapsed() >= FLUSH_EVERY {
                self.flush_logged(&state.view).await;
                (dirty, flushed_at) = (false, Instant::now());
            }
        }
    }

    /// Folds `batch` into `state` and returns the files whose content changed (the
    /// blob each path must now hold, or `None` to delete it) and the session folders
    /// to remove.
    fn apply(
        &self,
        state: &mut FolderState,
        batch: &[RecordedEvent],
    ) -> (BTreeMap<PathBuf, Option<BlobRef>>, Vec<PathBuf>) {
        let mut changes = BTreeMap::new();
        let mut ended = Vec::new();
        for event in batch {
            let Some(image) = image_of(&event.event) else {
                match &event.event {
                    Event::SessionCreated {
                        session,
                        name,
                        blob,
                        ..
                    } => {
                        let path = self.session_file(session, name, &blob.ext);
                        changes.insert(path, Some(blob.clone()));
                    }
                    Event::SessionRemoved { session } => {
                        if let Some((name, blob)) = state.sessions.get(session) {
                            changes.insert(self.session_file(session, name, &blob.ext), None);
                        }
                        ended.push(self.session_dir(session));
                    }
                    _ => {}
                }
                crate::projection::Projection::apply(state, event);
                continue;
            };
            let before = self.files_of(&state.view, image);
            crate::projection::Projection::apply(state, event);
            let after = self.files_of(&state.view, image);
            for path in before.keys().filter(|path| !after.contains_key(*path)) {
                changes.insert(path.clone(), None);
            }
            for (path, blob) in after {
                if before.get(&path) != Some(&blob) {
                    changes.insert(path, Some(blob));
                }
            }
        }
        (changes, ended)
    }

    /// The files an image puts in the folder: itself and the latest version of each label.
    fn files_of(&self, view: &DatastoreView, image: &ImageId) -> BTreeMap<PathBuf, BlobRef> {
        let Some(record) = view.image(image) else {
            return BTreeMap::new();
        };
        let labels = record.labels.iter().map(|(tag, label)| {
            let latest = label.latest();
            (
                self.label_path(image, tag, &latest.ext),
                latest.blob.clone(),
            )
        });
        std::iter::once((self.image_path(image, &record.ext), record.blob.clone()))
            .chain(labels)
            .collect()
    }

    /// Whether `path` already holds `blob`: the blob's own file (same inode), or for a
    /// blob kept in the event database, the same bytes.
    async fn in_sync(&self, path: &Path, blob: &BlobRef) -> Result<bool, FolderError> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(false);
        };
        if meta.len() != blob.size {
            return Ok(false);
        }
        if let Some(file) = self.blobs.local_path(blob) {
            let Ok(own) = std::fs::metadata(file) else {
                return Ok(false);
            };
            return Ok((own.dev(), own.ino()) == (meta.dev(), meta.ino()));
        }
        let bytes = read_to_vec(&self.blobs, blob).await?;
        Ok(std::fs::read(path).is_ok_and(|content| content == bytes))
    }

    /// Places and deletes files (blocking work, on tokio's blocking pool), then removes
    /// the `ended` session folders. A file that cannot be placed or deleted is logged and
    /// skipped: the others still follow the log, and the next start retries it.
    async fn execute(&self, changes: BTreeMap<PathBuf, Option<BlobRef>>, ended: Vec<PathBuf>) {
        if changes.is_empty() && ended.is_empty() {
            return;
        }
        let mut work = Vec::with_capacity(changes.len());
        for (path, blob) in changes {
            let source = match blob {
                None => None,
                Some(blob) => match self.blobs.local_path(&blob) {
                    Some(file) => Some(Source::File(file)),
                    None => match read_to_vec(&self.blobs, &blob).await {
                        Ok(bytes) => Some(Source::Bytes(bytes)),
                        Err(err) => {
                            tracing::warn!(path = %path.display(), error = %err, "studies folder: blob unreadable");
                            continue;
                        }
                    },
                },
            };
            work.push((path, source));
        }
        let staging = self.home.join("tmp");
        let done = tokio::task::spawn_blocking(move || {
            for (path, source) in work {
                let result = match source {
                    Some(source) => place(&staging, &path, &source),
                    None => remove(&path),
                };
                if let Err(err) = result {
                    tracing::warn!(path = %path.display(), error = %err, "studies folder: file not updated");
                }
            }
            for dir in ended {
                match std::fs::remove_dir_all(&dir) {
                    Err(err) if err.kind() != io::ErrorKind::NotFound => {
                        tracing::warn!(path = %dir.display(), error = %err, "studies folder: session folder not removed");
                    }
                    _ => {}
                }
            }
        })
        .await;
        if let Err(err) = done {
            tracing::warn!(error = %err, "studies folder worker failed");
        }
    }

    /// Writes `datastore_v2.json` (MONAI Label's layout, indented by two as it writes
    /// it), then the position the folder now reflects.
    async fn flush(&self, view: &DatastoreView) -> Result<(), FolderError> {
        let doc = view.to_json();
        let position = view.position;
        let (root, home) = (self.root.clone(), self.home.clone());
        tokio::task::spawn_blocking(move || {
            let staging = home.join("tmp");
            let text = serde_json::to_vec_pretty(&doc).map_err(io::Error::other)?;
            place(&staging, &root.join(DATASTORE_FILE), &Source::Bytes(text))?;
            let mark = Source::Bytes(position.to_string().into_bytes());
            place(&staging, &home.join(POSITION_FILE), &mark)
        })
        .await
        .map_err(|err| io::Error::other(format!("studies folder worker failed: {err}")))??;
        self.written.send_replace(position);
        Ok(())
    }

    async fn flush_logged(&self, view: &DatastoreView) {
        if let Err(err) = self.flush(view).await {
            tracing::warn!(error = %err, "studies folder: writing {DATASTORE_FILE} failed");
        }
    }

    /// Waits (at most [`SETTLE_LIMIT`]) until the files and `datastore_v2.json` reflect
    /// the whole log as it stands now: a clean shutdown leaves the folder complete.
    pub async fn drained(&self, store: &dyn EventStore) -> Result<(), StoreError> {
        let head = store.head().await?;
        let mut written = self.written.subscribe();
        let _ = tokio::time::timeout(SETTLE_LIMIT, written.wait_for(|&p| p >= head)).await;
        Ok(())
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19). Linux applies a nice value
/// to one thread when `setpriority` is given its thread id; failing that, the thread
/// runs at normal priority, which is only slower for the requests, never wrong.
fn lower_thread_priority() {
    // SAFETY: gettid has no preconditions; setpriority only reads its arguments.
    let done = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if done != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "studies folder: could not lower the follower's priority"
        );
    }
}

/// The image whose files an event may change.
fn image_of(event: &Event) -> Option<&ImageId> {
    match event {
        Event::ImageAdded { image, .. }
        | Event::ImageRemoved { image }
        | Event::LabelSaved { image, .. }
        | Event::LabelRemoved { image, .. } => Some(image),
        _ => None,
    }
}

/// Whether an event changes what `datastore_v2.json` holds.
fn changes_datastore(event: &Event) -> bool {
    matches!(
        event,
        Event::DatastoreRenamed { .. }
            | Event::DatastoreDescribed { .. }
            | Event::ImageAdded { .. }
            | Event::ImageInfoUpdated { .. }
            | Event::ImageRemoved { .. }
            | Event::LabelSaved { .. }
            | Event::LabelInfoUpdated { .. }
            | Event::LabelRemoved { .. }
            | Event::StrategySelected { .. }
            | Event::ScoreRecorded { .. }
    )
}

/// Puts `source` at `path` by a rename from `staging` (same file system: `.medlabel/`
/// lies inside the studies folder), creating the parent folder when needed.
fn place(staging: &Path, path: &Path, source: &Source) -> io::Result<()> {
    let staged = staging.join(format!("place-{}", uuid::Uuid::new_v4()));
    match source {
        Source::File(file) => {
            if std::fs::hard_link(file, &staged).is_err() {
                std::fs::copy(file, &staged)?;
            }
        }
        Source::Bytes(bytes) => std::fs::write(&staged, bytes)?,
    }
    let renamed = match std::fs::rename(&staged, path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            match path.parent() {
                Some(parent) => std::fs::create_dir_all(parent)?,
                None => return Err(err),
            }
            std::fs::rename(&staged, path)
        }
        other => other,
    };
    if renamed.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    renamed
}

fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}
