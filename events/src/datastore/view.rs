//! The Datastore read model: a pure fold of the log.
//!
//! [`DatastoreView::apply`] is the only way the view changes, so dropping it and
//! replaying every event gives the identical state (invariant 1). Indexes are kept so
//! that each query costs what its answer costs, not what the datastore holds: `status`
//! reads counters, and the unlabeled set of every tag seen so far is maintained
//! incrementally (a tag's set is built once, when the tag first appears).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};

use crate::blob::BlobRef;
use crate::event::{Actor, Event, Info, RecordedEvent, StreamId};
use crate::id::{Extension, ImageId, Tag};

use super::selection::{Lease, SelectionIndex};

/// One saved version of a label.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelVersion {
    pub version: u32,
    pub ext: Extension,
    pub blob: BlobRef,
    /// The info saved with this version (before later info updates).
    pub info: Info,
    pub saved_by: Actor,
    pub saved_at_ms: i64,
    /// Global log position of the `LabelSaved` event: training runs cite it.
    pub position: u64,
}

/// The current label under one tag, with every version saved since it was last removed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelRecord {
    pub versions: Vec<LabelVersion>,
    /// The current info: the latest version's info merged with later updates and scores.
    pub info: Info,
}

impl LabelRecord {
    pub fn latest(&self) -> &LabelVersion {
        self.versions.last().expect("a label record has a version")
    }
}

/// The extension of a series reference: the blob an image from a DICOMweb server holds
/// until its series is fetched (a small JSON document naming the study and series).
pub const SERIES_REFERENCE_EXT: &str = ".dcmweb";

/// An image in the datastore and its labels.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    pub ext: Extension,
    pub blob: BlobRef,
    /// MONAI Label's image info: always `ts` and `name`, plus client metadata,
    /// `strategy` selections and scores.
    pub info: Info,
    pub labels: BTreeMap<Tag, LabelRecord>,
    /// For an image converted from a DICOM series (`ImageFetched`): where it came from.
    #[serde(default)]
    pub fetched: Option<FetchedSeries>,
}

/// What an `ImageFetched` recorded beside the volume.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FetchedSeries {
    /// The series reference the volume was converted from.
    pub source: BlobRef,
    /// The slice-to-instance map of the series.
    pub slices: BlobRef,
}

impl ImageRecord {
    /// The file name MONAI Label shows: `<id><ext>`.
    pub fn file_name(&self, id: &ImageId) -> String {
        format!("{id}{}", self.ext)
    }

    /// Whether the image is a DICOM series not fetched yet: its blob is the series
    /// reference, not a volume, so nothing may read it as one.
    pub fn awaits_fetch(&self) -> bool {
        self.ext.as_str() == SERIES_REFERENCE_EXT
    }

    /// The series reference of an image from a DICOMweb server, fetched or not.
    pub fn series_reference(&self) -> Option<&BlobRef> {
        match &self.fetched {
            Some(fetched) => Some(&fetched.source),
            None => self.awaits_fetch().then_some(&self.blob),
        }
    }
}

/// What the log says about an image stream even after the image is removed: its
/// version (for optimistic concurrency) and the last label version per tag (so
/// versions keep counting up across removals).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageStreamState {
    pub version: u64,
    pub last_label_version: BTreeMap<Tag, u32>,
}

/// A stored event no reader could decode, skipped by the fold (design invariant 9).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    pub position: u64,
    pub stream: String,
    pub event_type: String,
    pub reason: String,
}

/// Counts MONAI Label's `/datastore/?output=stats` reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Status {
    pub total: u64,
    pub completed: u64,
    pub label_tags: BTreeMap<String, u64>,
}

/// The Datastore read model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatastoreView {
    /// Global position of the last event applied.
    pub position: u64,
    pub datastore_version: u64,
    pub name: String,
    pub description: String,
    images: BTreeMap<ImageId, ImageRecord>,
    streams: HashMap<ImageId, ImageStreamState>,
    /// Images that have a label under each tag.
    labeled: HashMap<Tag, BTreeSet<ImageId>>,
    /// Images without a label under each tag seen so far.
    unlabeled: HashMap<Tag, BTreeSet<ImageId>>,
    /// Active-learning indexes over the images without a final label.
    selection: SelectionIndex,
    /// Undecodable events met while folding, by position.
    quarantined: BTreeMap<u64, Quarantined>,
}

impl Default for DatastoreView {
    fn default() -> Self {
        Self {
            position: 0,
            datastore_version: 0,
            name: "new-dataset".into(),
            description: "New Dataset".into(),
            images: BTreeMap::new(),
            streams: HashMap::new(),
            labeled: HashMap::new(),
            unlabeled: HashMap::new(),
            selection: SelectionIndex::default(),
            quarantined: BTreeMap::new(),
        }
    }
}

fn seconds(ms: i64) -> Value {
    json!(ms.div_euclid(1000))
}

impl crate::projection::Projection for DatastoreView {
    fn position(&self) -> u64 {
        self.position
    }

    fn apply(&mut self, event: &RecordedEvent) {
        DatastoreView::apply(self, event);
    }
}

impl DatastoreView {
    /// Folds one recorded event into the view. Events of other aggregates (sessions,
    /// models, jobs) are skipped; events must arrive in global order.
    pub fn apply(&mut self, recorded: &RecordedEvent) {
        debug_assert!(
            recorded.position > self.position,
            "events applied out of order"
        );
        self.position = recorded.position;
        let ts = recorded.timestamp_ms;
        match &recorded.event {
            Event::DatastoreRenamed { name } => {
                self.name = name.clone();
                self.datastore_version = recorded.sequence;
            }
            Event::DatastoreDescribed { description } => {
                self.description = description.clone();
                self.datastore_version = recorded.sequence;
            }
            Event::ImageAdded {
                image,
                ext,
                blob,
                info,
            } => {
                self.bump(image, recorded.sequence);
                let mut info = info.clone();
                info.entry("ts").or_insert_with(|| seconds(ts));
                info.insert("name".into(), json!(format!("{image}{ext}")));
                let labels = self
                    .images
                    .remove(image)
                    .map(|old| old.labels)
                    .unwrap_or_default();
                if labels.is_empty() {
                    for (tag, set) in &mut self.unlabeled {
                        if !self.labeled.get(tag).is_some_and(|l| l.contains(image)) {
                            set.insert(image.clone());
                        }
                    }
                }
                if !labels.contains_key(&Tag::final_tag()) {
                    self.selection.insert(image, &info);
                }
                self.images.insert(
                    image.clone(),
                    ImageRecord {
                        ext: ext.clone(),
                        blob: blob.clone(),
                        info,
                        labels,
                        fetched: None,
                    },
                );
            }
            Event::ImageFetched {
                image,
                source,
                ext,
                blob,
                slices,
            } => {
                self.bump(image, recorded.sequence);
                if let Some(record) = self.images.get_mut(image)
                    && &record.blob == source
                {
                    record.ext = ext.clone();
                    record.blob = blob.clone();
                    record
                        .info
                        .insert("name".into(), json!(format!("{image}{ext}")));
                    record.fetched = Some(FetchedSeries {
                        source: source.clone(),
                        slices: slices.clone(),
                    });
                }
            }
            Event::ImageInfoUpdated { image, info } => {
                self.bump(image, recorded.sequence);
                if let Some(record) = self.images.get_mut(image) {
                    merge(&mut record.info, info);
                }
            }
            Event::ImageRemoved { image } => {
                self.bump(image, recorded.sequence);
                if let Some(record) = self.images.remove(image) {
                    for tag in record.labels.keys() {
                        if let Some(set) = self.labeled.get_mut(tag) {
                            set.remove(image);
                        }
                    }
                }
                for set in self.unlabeled.values_mut() {
                    set.remove(image);
                }
                self.selection.remove(image);
            }
            Event::LabelSaved {
                image,
                tag,
                version,
                ext,
                blob,
                info,
            } => {
                let state = self.bump(image, recorded.sequence);
                state.last_label_version.insert(tag.clone(), *version);
                let Some(record) = self.images.get_mut(image) else {
                    return;
                };
                let mut label_info = info.clone();
                label_info.entry("ts").or_insert_with(|| seconds(ts));
                label_info.insert("name".into(), json!(format!("{image}{ext}")));
                let saved = LabelVersion {
                    version: *version,
                    ext: ext.clone(),
                    blob: blob.clone(),
                    info: label_info.clone(),
                    saved_by: recorded.actor.clone(),
                    saved_at_ms: ts,
                    position: recorded.position,
                };
                match record.labels.get_mut(tag) {
                    Some(label) => {
                        label.versions.push(saved);
                        label.info = label_info;
                    }
                    None => {
                        record.labels.insert(
                            tag.clone(),
                            LabelRecord {
                                versions: vec![saved],
                                info: label_info,
                            },
                        );
                    }
                }
                self.mark_labeled(image, tag);
                if tag == &Tag::final_tag() {
                    self.selection.remove(image);
                }
            }
            Event::LabelInfoUpdated { image, tag, info } => {
                self.bump(image, recorded.sequence);
                if let Some(label) = self
                    .images
                    .get_mut(image)
                    .and_then(|r| r.labels.get_mut(tag))
                {
                    merge(&mut label.info, info);
                }
            }
            Event::LabelRemoved { image, tag } => {
                self.bump(image, recorded.sequence);
                let removed = self
                    .images
                    .get_mut(image)
                    .and_then(|r| r.labels.remove(tag));
                if removed.is_some() {
                    if let Some(set) = self.labeled.get_mut(tag) {
                        set.remove(image);
                    }
                    if let Some(set) = self.unlabeled.get_mut(tag) {
                        set.insert(image.clone());
                    }
                    if tag == &Tag::final_tag() {
                        self.selection.insert(image, &self.images[image].info);
                    }
                }
            }
            Event::StrategySelected {
                image,
                strategy,
                client_id,
                ts,
            } => {
                self.bump(image, recorded.sequence);
                if let Some(record) = self.images.get_mut(image) {
                    let strategies = record.info.entry("strategy").or_insert_with(|| json!({}));
                    if !strategies.is_object() {
                        *strategies = json!({});
                    }
                    strategies[strategy.as_str()] = json!({"ts": ts, "client_id": client_id});
                }
                self.selection.served(image, *ts);
            }
            Event::ImageLeased {
                image,
                client_id,
                expires_at_ms,
            } => {
                self.bump(image, recorded.sequence);
                self.selection.set_lease(
                    image,
                    Lease {
                        client_id: client_id.clone(),
                        expires_at_ms: *expires_at_ms,
                    },
                );
            }
            Event::LeaseReleased { image, client_id } => {
                self.bump(image, recorded.sequence);
                self.selection.release(image, client_id);
            }
            Event::ScoreRecorded {
                image,
                label_tag,
                values,
                ..
            } => {
                self.bump(image, recorded.sequence);
                let Some(record) = self.images.get_mut(image) else {
                    return;
                };
                match label_tag {
                    Some(tag) => {
                        if let Some(label) = record.labels.get_mut(tag) {
                            merge(&mut label.info, values);
                        }
                    }
                    None => {
                        merge(&mut record.info, values);
                        if let Some(score) = values.get("epistemic_entropy").and_then(Value::as_f64)
                        {
                            self.selection.set_entropy(image, score);
                        }
                    }
                }
            }
            Event::SessionCreated { .. }
            | Event::SessionAccessed { .. }
            | Event::SessionRemoved { .. }
            | Event::ModelPublished { .. }
            | Event::ModelDeleted { .. }
            | Event::JobRequested { .. }
            | Event::JobStarted { .. }
            | Event::JobLeaseRenewed { .. }
            | Event::JobProgressed { .. }
            | Event::JobStopRequested { .. }
            | Event::JobFinished { .. }
            | Event::DataRead { .. }
            | Event::SnapshotTaken { .. } => {}
            Event::Unreadable { reason } => {
                // Its stream's version still counts: the next write there is decided at
                // the version after it, not at one the store has gone past for good.
                let stream = recorded.stream.as_str();
                if stream == StreamId::datastore().as_str() {
                    self.datastore_version = recorded.sequence;
                } else if let Some(image) = stream
                    .strip_prefix("image/")
                    .and_then(|id| ImageId::parse(id).ok())
                {
                    self.bump(&image, recorded.sequence);
                }
                self.quarantined.insert(
                    recorded.position,
                    Quarantined {
                        position: recorded.position,
                        stream: recorded.stream.to_string(),
                        event_type: recorded.event_type.clone(),
                        reason: reason.clone(),
                    },
                );
            }
        }
    }

    fn bump(&mut self, image: &ImageId, sequence: u64) -> &mut ImageStreamState {
        let state = self.streams.entry(image.clone()).or_default();
        state.version = sequence;
        state
    }

    fn mark_labeled(&mut self, image: &ImageId, tag: &Tag) {
        self.labeled
            .entry(tag.clone())
            .or_default()
            .insert(image.clone());
        match self.unlabeled.get_mut(tag) {
            Some(set) => {
                set.remove(image);
            }
            None => {
                // First label under this tag: build its unlabeled index once.
                let set = self
                    .images
                    .keys()
                    .filter(|id| !self.labeled[tag].contains(*id))
                    .cloned()
                    .collect();
                self.unlabeled.insert(tag.clone(), set);
            }
        }
    }

    pub fn image(&self, id: &ImageId) -> Option<&ImageRecord> {
        self.images.get(id)
    }

    pub fn label(&self, id: &ImageId, tag: &Tag) -> Option<&LabelRecord> {
        self.images.get(id).and_then(|r| r.labels.get(tag))
    }

    /// The image stream's state (version and label versions), also after removal.
    pub fn stream_state(&self, id: &ImageId) -> ImageStreamState {
        self.streams.get(id).cloned().unwrap_or_default()
    }

    /// All image ids, sorted.
    pub fn image_ids(&self) -> impl DoubleEndedIterator<Item = &ImageId> + ExactSizeIterator {
        self.images.keys()
    }

    pub fn images(&self) -> impl Iterator<Item = (&ImageId, &ImageRecord)> {
        self.images.iter()
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Images with a label under `tag`, sorted, optionally only those whose label names
    /// include every name in `labels`.
    pub fn labeled_images(&self, tag: &Tag, labels: &[String]) -> Vec<ImageId> {
        self.labeled
            .get(tag)
            .into_iter()
            .flatten()
            .filter(|id| labels.is_empty() || self.label_has_names(id, tag, labels))
            .cloned()
            .collect()
    }

    /// Images without a label under `tag`, sorted; with `labels`, also the images whose
    /// label lacks one of those names.
    pub fn unlabeled_images(&self, tag: &Tag, labels: &[String]) -> Vec<ImageId> {
        let mut ids: Vec<ImageId> = match self.unlabeled.get(tag) {
            Some(set) => set.iter().cloned().collect(),
            None => self.images.keys().cloned().collect(),
        };
        if !labels.is_empty() {
            ids.extend(
                self.labeled
                    .get(tag)
                    .into_iter()
                    .flatten()
                    .filter(|id| !self.label_has_names(id, tag, labels))
                    .cloned(),
            );
            ids.sort();
        }
        ids
    }

    /// The events this fold could not decode and skipped, by position.
    pub fn quarantined(&self) -> impl ExactSizeIterator<Item = &Quarantined> {
        self.quarantined.values()
    }

    /// The active-learning indexes (images without a final label).
    pub fn selection(&self) -> &SelectionIndex {
        &self.selection
    }

    fn label_has_names(&self, id: &ImageId, tag: &Tag, names: &[String]) -> bool {
        let Some(label) = self.label(id, tag) else {
            return false;
        };
        let present = label_names(&label.info);
        names.iter().all(|n| present.contains(n))
    }

    /// O(number of tags).
    pub fn status(&self) -> Status {
        let label_tags = self
            .labeled
            .iter()
            .filter(|(_, set)| !set.is_empty())
            .map(|(tag, set)| (tag.to_string(), set.len() as u64))
            .collect::<BTreeMap<_, _>>();
        Status {
            total: self.images.len() as u64,
            completed: self
                .labeled
                .get(&Tag::final_tag())
                .map_or(0, |s| s.len() as u64),
            label_tags,
        }
    }

    /// MONAI Label's `datastore_v2.json` document.
    pub fn to_json(&self) -> Value {
        let objects: serde_json::Map<String, Value> = self
            .images
            .iter()
            .map(|(id, record)| {
                let labels: serde_json::Map<String, Value> = record
                    .labels
                    .iter()
                    .map(|(tag, label)| {
                        (
                            tag.to_string(),
                            json!({"ext": label.latest().ext, "info": label.info}),
                        )
                    })
                    .collect();
                (
                    id.to_string(),
                    json!({
                        "image": {"ext": record.ext, "info": record.info},
                        "labels": labels,
                    }),
                )
            })
            .collect();
        json!({
            "name": self.name,
            "description": self.description,
            "images_dir": ".",
            "labels_dir": "labels",
            "objects": objects,
        })
    }
}

/// The label names a label's info declares: MONAI Label's `label_info: [{name, idx}]`
/// and the inference writer's `label_names` (a `{name: idx}` map or a list).
pub fn label_names(info: &Info) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Some(Value::Array(items)) = info.get("label_info") {
        names.extend(
            items
                .iter()
                .filter_map(|item| item.get("name").and_then(Value::as_str))
                .map(str::to_owned),
        );
    }
    match info.get("label_names") {
        Some(Value::Object(map)) => names.extend(map.keys().cloned()),
        Some(Value::Array(items)) => {
            names.extend(items.iter().filter_map(Value::as_str).map(str::to_owned))
        }
        _ => {}
    }
    names
}

/// Merges `update` into `info`, keys in `update` winning.
pub fn merge(info: &mut Info, update: &Info) {
    for (key, value) in update {
        info.insert(key.clone(), value.clone());
    }
}
