//! MONAI Label's Datastore interface over an event store and a blob store.
//!
//! Writes follow one pattern: catch the view up with the log, decide (a pure function of
//! the view that returns the events to record), append them at the stream version the
//! decision saw, and on a version conflict catch up and decide again. Blobs are stored
//! before the event that names them. Reads catch up first too, so a write acknowledged
//! by any process is visible to every later read (invariant 4).
//!
//! Unlike MONAI Label, `get_labeled_images` / `get_unlabeled_images` honour their
//! `label_tag` and `labels` filters, saving a label again keeps the earlier versions,
//! and no query scans the whole datastore.

mod archive;
pub mod decide;
mod folder;
mod selection;
mod studies;
mod view;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLockReadGuard};
use std::time::Duration;

use serde_json::Value;

pub use archive::write_dataset_archive;
pub use decide::Decision;
pub use folder::{DATASTORE_FILE, FolderError, FolderState, StudiesFolder};
pub use selection::{Lease, SelectionIndex, Strategy};
pub use studies::{ImportReport, export_studies, import_studies};
pub use view::{
    DatastoreView, FetchedSeries, ImageRecord, ImageStreamState, LabelRecord, LabelVersion,
    Quarantined, SERIES_REFERENCE_EXT, Status, label_names, merge,
};

use crate::blob::{BlobError, BlobReader, BlobRef, BlobStore};
use crate::clock::{Clock, SystemClock};
use crate::event::{Actor, Info, RecordedEvent, StreamId};
use crate::id::{Extension, ImageId, InvalidId, Tag};
use crate::projection::Projected;
use crate::store::{EventStore, StoreError};

/// Who is writing, and the request id that makes the write idempotent.
#[derive(Debug, Clone)]
pub struct WriteContext {
    pub actor: Actor,
    /// Unique per client request; a retried request reuses it and records nothing new.
    pub request_id: String,
}

impl WriteContext {
    pub fn new(actor: Actor, request_id: impl Into<String>) -> Self {
        Self {
            actor,
            request_id: request_id.into(),
        }
    }

    /// A context with a fresh request id ([`new_request_id`]).
    pub fn fresh(actor: Actor) -> Self {
        Self::new(actor, new_request_id())
    }
}

/// A fresh request id: a UUIDv7, which sorts by time, so the store's request records
/// (keyed by id) grow at one end of their index instead of dirtying a random page per
/// write.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Why a Datastore operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error("Image NOT Found: {0}")]
    ImageNotFound(String),
    #[error("Label NOT Found: {image} (tag {tag})")]
    LabelNotFound { image: String, tag: String },
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    #[error("{0}")]
    InvalidInput(String),
    #[error("no image has a final label, so there is nothing to archive")]
    NothingToArchive,
    #[error("gave up after {0} version conflicts; try again")]
    Contended(usize),
    /// The request id was already used for a different write: a client bug, since a
    /// retry repeats the same request.
    #[error("request id {0:?} was already used for a different write")]
    RequestIdReused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = DatastoreError> = std::result::Result<T, E>;

impl crate::decision::WriteError for DatastoreError {
    fn contended(attempts: usize) -> Self {
        Self::Contended(attempts)
    }
    fn request_id_reused(request_id: &str) -> Self {
        Self::RequestIdReused(request_id.to_owned())
    }
}

/// The Datastore service: MONAI Label's Datastore methods as a fold of events.
pub struct Datastore {
    store: Arc<dyn EventStore>,
    blobs: Arc<dyn BlobStore>,
    clock: Arc<dyn Clock>,
    view: Projected<DatastoreView>,
}

impl Datastore {
    /// Opens the datastore by folding the whole log.
    pub async fn open(store: Arc<dyn EventStore>, blobs: Arc<dyn BlobStore>) -> Result<Self> {
        Self::open_with_clock(store, blobs, Arc::new(SystemClock)).await
    }

    pub async fn open_with_clock(
        store: Arc<dyn EventStore>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let datastore = Self {
            view: Projected::new(store.clone()),
            store,
            blobs,
            clock,
        };
        datastore.refresh().await?;
        Ok(datastore)
    }

    /// The datastore over `view`, a view restored elsewhere (`crate::cold_start`) that
    /// its first read catches up with the log.
    pub fn starting_at(
        store: Arc<dyn EventStore>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        view: DatastoreView,
    ) -> Self {
        Self {
            view: Projected::starting_at(store.clone(), view),
            store,
            blobs,
            clock,
        }
    }

    pub fn event_store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn blob_store(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Applies every event recorded since the view's position (MONAI Label's `refresh`).
    pub async fn refresh(&self) -> Result<()> {
        Ok(self.view.catch_up().await?)
    }

    /// The log position the view has reached (what the last read or write saw),
    /// without catching up.
    pub fn position(&self) -> u64 {
        self.view.peek().position
    }

    /// A consistent snapshot of the view, caught up with the log.
    pub async fn view(&self) -> Result<RwLockReadGuard<'_, DatastoreView>> {
        Ok(self.view.read().await?)
    }

    /// Decides against the view and appends, re-deciding on version conflicts
    /// ([`crate::decision::execute`]). Returns the decision recorded (`None` when it
    /// recorded nothing).
    pub async fn execute<F>(&self, ctx: &WriteContext, decide: F) -> Result<Option<Decision>>
    where
        F: Fn(&DatastoreView) -> Result<Option<Decision>>,
    {
        crate::decision::execute(&self.view, ctx, || self.clock.now_ms(), decide).await
    }

    // ----- datastore metadata

    pub async fn name(&self) -> Result<String> {
        Ok(self.view().await?.name.clone())
    }

    pub async fn set_name(&self, ctx: &WriteContext, name: &str) -> Result<()> {
        self.execute(ctx, |_| Ok(Some(decide::rename(name))))
            .await
            .map(drop)
    }

    pub async fn description(&self) -> Result<String> {
        Ok(self.view().await?.description.clone())
    }

    pub async fn set_description(&self, ctx: &WriteContext, description: &str) -> Result<()> {
        self.execute(ctx, |_| Ok(Some(decide::describe(description))))
            .await
            .map(drop)
    }

    // ----- images

    /// Stores `file` and records it as image `image` (replacing an image of that id).
    /// `info` is the client's metadata; the user is added as MONAI Label does.
    pub async fn add_image(
        &self,
        ctx: &WriteContext,
        image: &ImageId,
        file: &Path,
        ext: &Extension,
        info: Info,
    ) -> Result<ImageId> {
        let blob = self.blobs.put_file(file, ext).await?;
        self.add_image_blob(ctx, image, blob, info).await
    }

    /// Records an already stored blob as image `image` (for presigned uploads and
    /// imports, whose bytes reached the blob store another way).
    pub async fn add_image_blob(
        &self,
        ctx: &WriteContext,
        image: &ImageId,
        blob: BlobRef,
        mut info: Info,
    ) -> Result<ImageId> {
        info.entry("user")
            .or_insert_with(|| Value::String(ctx.actor.user.to_string()));
        self.execute(ctx, |view| {
            Ok(Some(decide::add_image(
                view,
                image,
                blob.clone(),
                info.clone(),
            )))
        })
        .await?;
        Ok(image.clone())
    }

    /// Records that `image`'s DICOM series, recorded as the series reference `source`,
    /// was fetched and converted into the stored volume `blob`, with the slice map
    /// `slices` (see [`crate::event::Event::ImageFetched`]). Returns the image as it
    /// stands after: converted by this call or an earlier one, or recorded anew with a
    /// changed series meanwhile (then it still awaits its fetch).
    pub async fn record_fetched(
        &self,
        ctx: &WriteContext,
        image: &ImageId,
        source: &BlobRef,
        blob: BlobRef,
        slices: BlobRef,
    ) -> Result<ImageRecord> {
        self.execute(ctx, |view| {
            decide::fetched(view, image, source, blob.clone(), slices.clone())
        })
        .await?;
        self.image(image).await
    }

    /// Removes the image and its labels from the current view (the log keeps them).
    pub async fn remove_image(&self, ctx: &WriteContext, image: &ImageId) -> Result<()> {
        self.execute(ctx, |view| decide::remove_image(view, image).map(Some))
            .await
            .map(drop)
    }

    /// The image, refusing an unknown one. The view as it stands vouches for a known
    /// image; only an unknown one needs a catch-up to be sure (another process may have
    /// added it).
    pub async fn require_image(&self, image: &ImageId) -> Result<ImageRecord> {
        let known = self.view.peek().image(image).cloned();
        match known {
            Some(record) => Ok(record),
            None => self.image(image).await,
        }
    }

    pub async fn image(&self, image: &ImageId) -> Result<ImageRecord> {
        self.view()
            .await?
            .image(image)
            .cloned()
            .ok_or_else(|| DatastoreError::ImageNotFound(image.to_string()))
    }

    /// Streams the image's bytes, with its record (for the file name and size).
    pub async fn get_image(&self, image: &ImageId) -> Result<(ImageRecord, BlobReader)> {
        let record = self.image(image).await?;
        let reader = self.blobs.get(&record.blob).await?;
        Ok((record, reader))
    }

    /// Image info with `path` as MONAI Label returns it, or `None` for an unknown id.
    pub async fn get_image_info(&self, image: &ImageId) -> Result<Option<Info>> {
        let Some(record) = self.view().await?.image(image).cloned() else {
            return Ok(None);
        };
        let mut info = record.info.clone();
        info.insert(
            "path".into(),
            Value::String(self.blob_uri(&record.blob).await?),
        );
        Ok(Some(info))
    }

    /// A URI the image can be read from: a local path for folder stores, otherwise a
    /// presigned URL.
    pub async fn get_image_uri(&self, image: &ImageId) -> Result<String> {
        let record = self.image(image).await?;
        self.blob_uri(&record.blob).await
    }

    async fn blob_uri(&self, blob: &BlobRef) -> Result<String> {
        if let Some(path) = self.blobs.local_file(blob).await? {
            return Ok(path.to_string_lossy().into_owned());
        }
        match self
            .blobs
            .presign_get(blob, Duration::from_secs(3600), None)
            .await?
        {
            Some(url) => Ok(url),
            None => Ok(blob.key()),
        }
    }

    pub async fn update_image_info(
        &self,
        ctx: &WriteContext,
        image: &ImageId,
        mut info: Info,
    ) -> Result<()> {
        info.entry("user")
            .or_insert_with(|| Value::String(ctx.actor.user.to_string()));
        self.execute(ctx, |view| {
            decide::update_image_info(view, image, &info).map(Some)
        })
        .await
        .map(drop)
    }

    /// All image ids, sorted.
    pub async fn list_images(&self) -> Result<Vec<ImageId>> {
        Ok(self.view().await?.image_ids().cloned().collect())
    }

    // ----- labels

    /// Stores `file` as a new version of the label of `image` under `tag`.
    pub async fn save_label(
        &self,
        ctx: &WriteContext,
        image: &ImageId,
        tag: &Tag,
        file: &Path,
        ext: &Extension,
        info: Info,
    ) -> Result<LabelVersion> {
        // Refuse before storing anything (the decision checks again).
        self.require_image(image).await?;
        let blob = self.blobs.put_file(file, ext).await?;
        self.save_label_blob(ctx, image, tag, blob, info).await
    }

    /// Records an already stored blob as a new label version.
    pub async fn save_label_blob(
        &self,
        ctx: &WriteContext,
        image: &ImageId,
        tag: &Tag,
        blob: BlobRef,
        info: Info,
    ) -> Result<LabelVersion> {
        self.execute(ctx, |view| {
            decide::save_label(view, image, tag, blob.clone(), info.clone()).map(Some)
        })
        .await?;
        // A replayed request id recorded nothing new: report the version it made then,
        // which is the one holding this blob. `execute` caught the view up past the
        // append (or its first recording), so the view as it stands holds it.
        let view = self.view.peek();
        view.label(image, tag)
            .and_then(|label| {
                label
                    .versions
                    .iter()
                    .rev()
                    .find(|v| v.blob == blob)
                    .cloned()
            })
            .ok_or_else(|| DatastoreError::RequestIdReused(ctx.request_id.clone()))
    }

    /// Removes the label under `tag`; `false` when there was none (not an error, as in
    /// MONAI Label).
    pub async fn remove_label(
        &self,
        ctx: &WriteContext,
        image: &ImageId,
        tag: &Tag,
    ) -> Result<bool> {
        Ok(self
            .execute(ctx, |view| Ok(decide::remove_label(view, image, tag)))
            .await?
            .is_some())
    }

    pub async fn label(&self, image: &ImageId, tag: &Tag) -> Result<LabelRecord> {
        self.view()
            .await?
            .label(image, tag)
            .cloned()
            .ok_or_else(|| DatastoreError::LabelNotFound {
                image: image.to_string(),
                tag: tag.to_string(),
            })
    }

    /// Streams the latest version of a label, with its record.
    pub async fn get_label(&self, image: &ImageId, tag: &Tag) -> Result<(LabelRecord, BlobReader)> {
        let record = self.label(image, tag).await?;
        let reader = self.blobs.get(&record.latest().blob).await?;
        Ok((record, reader))
    }

    /// Streams one saved version of a label (older versions stay readable).
    pub async fn get_label_version(
        &self,
        image: &ImageId,
        tag: &Tag,
        version: u32,
    ) -> Result<(LabelVersion, BlobReader)> {
        let record = self.label(image, tag).await?;
        let saved = record
            .versions
            .iter()
            .find(|v| v.version == version)
            .cloned()
            .ok_or_else(|| DatastoreError::LabelNotFound {
                image: image.to_string(),
                tag: format!("{tag} version {version}"),
            })?;
        let reader = self.blobs.get(&saved.blob).await?;
        Ok((saved, reader))
    }

    pub async fn get_label_uri(&self, image: &ImageId, tag: &Tag) -> Result<String> {
        let record = self.label(image, tag).await?;
        self.blob_uri(&record.latest().blob).await
    }

    /// Label info, or `None` when there is no such label.
    pub async fn get_label_info(&self, image: &ImageId, tag: &Tag) -> Result<Option<Info>> {
        Ok(self
            .view()
            .await?
            .label(image, tag)
            .map(|label| label.info.clone()))
    }

    pub async fn update_label_info(
        &self,
        ctx: &WriteContext,
        image: &ImageId,
        tag: &Tag,
        info: Info,
    ) -> Result<()> {
        self.execute(ctx, |view| {
            decide::update_label_info(view, image, tag, &info).map(Some)
        })
        .await
        .map(drop)
    }

    /// The label id of `image` under `tag` (label ids equal image ids), if it exists.
    pub async fn get_label_by_image_id(
        &self,
        image: &ImageId,
        tag: &Tag,
    ) -> Result<Option<ImageId>> {
        Ok(self.view().await?.label(image, tag).map(|_| image.clone()))
    }

    /// `{tag: label id}` for every label of `image`.
    pub async fn get_labels_by_image_id(&self, image: &ImageId) -> Result<Vec<(Tag, ImageId)>> {
        Ok(self
            .view()
            .await?
            .image(image)
            .map(|record| {
                record
                    .labels
                    .keys()
                    .map(|tag| (tag.clone(), image.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn get_labeled_images(&self, tag: &Tag, labels: &[String]) -> Result<Vec<ImageId>> {
        Ok(self.view().await?.labeled_images(tag, labels))
    }

    pub async fn get_unlabeled_images(&self, tag: &Tag, labels: &[String]) -> Result<Vec<ImageId>> {
        Ok(self.view().await?.unlabeled_images(tag, labels))
    }

    /// Every event of an image's stream: who changed which label, when.
    pub async fn history(&self, image: &ImageId) -> Result<Vec<RecordedEvent>> {
        Ok(self.store.read_stream(&StreamId::image(image), 1).await?)
    }

    /// Hands the next image to `client_id` with `strategy` and leases it to that client
    /// for `lease` (see [`Strategy`]); `None` when nothing is left for this client.
    /// `random(n)` must return an index below `n`. The [`Handout`] describes the image
    /// as the view stood when it was handed out, so the reply costs no further read.
    pub async fn next_sample(
        &self,
        ctx: &WriteContext,
        strategy: Strategy,
        strategy_name: &str,
        client_id: &str,
        lease: Duration,
        random: &(dyn Fn(usize) -> usize + Sync),
    ) -> Result<Option<Handout>> {
        let lease_ms = lease.as_millis() as i64;
        {
            // The client asking again while its lease is fresh gets the image back
            // without a write: a polling client costs one read.
            let view = self.view().await?;
            let now = self.clock.now_ms();
            let selection = view.selection();
            if let Some(image) = selection.held_by(client_id, now) {
                let fresh = selection
                    .lease(image)
                    .is_some_and(|l| l.expires_at_ms - now > lease_ms / 2);
                if fresh {
                    return Handout::from_view(&view, image, now).map(Some);
                }
            }
        }
        let decision = self
            .execute(ctx, |view| {
                let now = self.clock.now_ms();
                Ok(decide::hand_out(
                    view,
                    strategy,
                    strategy_name,
                    client_id,
                    now,
                    lease_ms,
                    random,
                ))
            })
            .await?;
        let Some(crate::event::Event::StrategySelected { image, .. }) =
            decision.as_ref().and_then(|d| d.events.first())
        else {
            return Ok(None);
        };
        // `execute` brought the view past its own append.
        Handout::from_view(&self.view.peek(), image, self.clock.now_ms()).map(Some)
    }

    /// Ends `client_id`'s lease on `image`; `false` when it held none.
    pub async fn release_lease(
        &self,
        ctx: &WriteContext,
        image: &ImageId,
        client_id: &str,
    ) -> Result<bool> {
        Ok(self
            .execute(ctx, |view| Ok(decide::release(view, image, client_id)))
            .await?
            .is_some())
    }

    /// Records a scoring method's result for an image, or for its label under
    /// `label_tag`; the values merge into that info.
    pub async fn record_score(
        &self,
        ctx: &WriteContext,
        image: &ImageId,
        method: &str,
        label_tag: Option<&Tag>,
        values: Info,
    ) -> Result<()> {
        self.execute(ctx, |view| {
            decide::score(view, image, method, label_tag, &values).map(Some)
        })
        .await
        .map(drop)
    }

    // ----- whole-datastore views

    pub async fn status(&self) -> Result<Status> {
        Ok(self.view().await?.status())
    }

    /// MONAI Label's `datastore_v2.json` document.
    pub async fn json(&self) -> Result<Value> {
        Ok(self.view().await?.to_json())
    }

    /// `[{"image": uri, "label": uri}]` for every image with a label under `tag`
    /// (MONAI Label's `datalist`, used for training).
    pub async fn datalist(&self, tag: &Tag) -> Result<Vec<(String, String)>> {
        let pairs: Vec<(BlobRef, BlobRef)> = {
            let view = self.view().await?;
            view.labeled_images(tag, &[])
                .iter()
                .filter_map(|id| {
                    let record = view.image(id)?;
                    let label = record.labels.get(tag)?;
                    Some((record.blob.clone(), label.latest().blob.clone()))
                })
                .collect()
        };
        let mut list = Vec::with_capacity(pairs.len());
        for (image, label) in pairs {
            list.push((self.blob_uri(&image).await?, self.blob_uri(&label).await?));
        }
        Ok(list)
    }

    /// Writes `dataset.zip` (final-labelled cases, `limit_cases` applying when
    /// `1 <= n < total`) into `dir` and returns its path.
    pub async fn get_dataset_archive(
        &self,
        dir: &Path,
        limit_cases: Option<usize>,
    ) -> Result<PathBuf> {
        write_dataset_archive(self, dir, limit_cases).await
    }
}

/// An image [`Datastore::next_sample`] handed out, as the view stood at that moment.
#[derive(Debug, Clone)]
pub struct Handout {
    pub image: ImageId,
    pub record: ImageRecord,
    /// Seconds since the image was handed out before this time (MONAI Label's weight).
    pub weight: i64,
}

impl Handout {
    fn from_view(view: &DatastoreView, image: &ImageId, now_ms: i64) -> Result<Self> {
        let record = view
            .image(image)
            .cloned()
            .ok_or_else(|| DatastoreError::ImageNotFound(image.to_string()))?;
        Ok(Self {
            image: image.clone(),
            record,
            weight: view.selection().weight(image, now_ms),
        })
    }
}
