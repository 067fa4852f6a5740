//! The event catalogue: every change medlabel records, and the envelope around it.
//!
//! Events are plain data (cqrs-es style): decisions elsewhere return them, projections
//! fold them, stores persist them as JSON. `docs/events.md` is the human-readable
//! catalogue; keep the two in step. A payload change that old readers cannot parse bumps
//! [`SCHEMA_VERSION`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::blob::BlobRef;
use crate::id::{ClientId, Extension, ImageId, ModelName, RunId, Tag, UserName};

/// Version of the payload schema written by this build.
pub const SCHEMA_VERSION: u16 = 1;

/// Free-form metadata as MONAI Label keeps it (`info` objects).
pub type Info = Map<String, Value>;

/// Names one event stream: the unit of optimistic concurrency.
///
/// One stream per aggregate: `datastore` (name, description), `image/<id>` (an image
/// and its labels), `session/<id>`, `model/<name>`, `train/<run>`, `job/<id>`, `audit/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    pub fn datastore() -> Self {
        Self("datastore".into())
    }
    pub fn image(id: &ImageId) -> Self {
        Self(format!("image/{id}"))
    }
    pub fn session(id: &RunId) -> Self {
        Self(format!("session/{id}"))
    }
    pub fn model(name: &ModelName) -> Self {
        Self(format!("model/{name}"))
    }
    pub fn training(run: &RunId) -> Self {
        Self(format!("train/{run}"))
    }
    pub fn job(id: &RunId) -> Self {
        Self(format!("job/{id}"))
    }
    /// The requests for one kind of job (`tasks/train`, `tasks/scoring`,
    /// `tasks/batch_infer`): a request is decided at this stream's version, so of two
    /// concurrent requests for the one slot of a kind exactly one is accepted.
    pub fn tasks(kind: JobKind) -> Self {
        let name = match kind {
            JobKind::Train => "train",
            JobKind::Scoring => "scoring",
            JobKind::BatchInfer => "batch_infer",
        };
        Self(format!("tasks/{name}"))
    }
    pub fn audit(id: &RunId) -> Self {
        Self(format!("audit/{id}"))
    }
    /// Rebuilds a stream id read back from storage.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who caused an event: the authenticated user and the client instance they used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user: UserName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
    /// The authenticated caller as `<issuer>#<subject>`: what owns sessions, leases
    /// and annotator tags. Absent when authentication is off (everyone is `admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl Actor {
    pub fn admin() -> Self {
        Self {
            user: UserName::admin(),
            client_id: None,
            subject: None,
        }
    }

    /// Whether `self` and `other` are the same caller: the same subject when either
    /// was authenticated, else the same user name (auth off).
    pub fn same_caller(&self, other: &Actor) -> bool {
        match (&self.subject, &other.subject) {
            (None, None) => self.user == other.user,
            (a, b) => a == b,
        }
    }
}

/// What patient data a [`Event::DataRead`] handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataRead {
    /// An image file.
    Image { image: ImageId },
    /// One version of a label.
    Label {
        image: ImageId,
        tag: Tag,
        version: u32,
    },
    /// `dataset.zip`: the final-labelled cases as of a log position (`limit` caps them).
    Dataset {
        cases: u64,
        as_of_position: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// An upload session's file.
    Session { session: RunId },
}

/// The kind of asynchronous GPU job a [`Event::JobRequested`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Train,
    Scoring,
    BatchInfer,
}

/// Final state of a job or training run, in MONAI Label's task vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Submitted,
    Running,
    Done,
    Error,
    Stopped,
}

/// One label version a training run used: enough to fetch exactly the same bytes again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelVersionRef {
    pub image: ImageId,
    pub tag: Tag,
    pub version: u32,
    pub image_blob: BlobRef,
    pub label_blob: BlobRef,
}

/// Every change medlabel records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    // --- stream `datastore`
    DatastoreRenamed {
        name: String,
    },
    DatastoreDescribed {
        description: String,
    },

    // --- stream `image/<id>`
    /// An image was uploaded, imported or replaced. `info` is the client's metadata;
    /// replacing an image keeps its labels (they are matched by id, as in MONAI Label).
    ImageAdded {
        image: ImageId,
        ext: Extension,
        blob: BlobRef,
        info: Info,
    },
    /// The DICOM series an image stands for was fetched from its DICOMweb server and
    /// converted: `blob` (a volume, `ext`) becomes the image's content, provided the
    /// image still holds `source`, the series reference it was recorded with (a series
    /// that changed in the PACS since is recorded again and fetched again). `slices`
    /// maps the volume's slices to the series' instances, which a DICOM SEG on it needs.
    ImageFetched {
        image: ImageId,
        source: BlobRef,
        ext: Extension,
        blob: BlobRef,
        slices: BlobRef,
    },
    /// Metadata merged into the image's info (keys in `info` overwrite).
    ImageInfoUpdated {
        image: ImageId,
        info: Info,
    },
    /// The image and all its labels left the datastore. Their blobs stay until swept.
    ImageRemoved {
        image: ImageId,
    },
    /// A label was saved under `tag`; `version` counts from 1 per (image, tag) and
    /// every earlier version stays readable.
    LabelSaved {
        image: ImageId,
        tag: Tag,
        version: u32,
        ext: Extension,
        blob: BlobRef,
        info: Info,
    },
    LabelInfoUpdated {
        image: ImageId,
        tag: Tag,
        info: Info,
    },
    /// The label under `tag` was removed (all its versions leave the current view;
    /// the history keeps them).
    LabelRemoved {
        image: ImageId,
        tag: Tag,
    },
    /// An active-learning strategy handed this image to a client.
    StrategySelected {
        image: ImageId,
        strategy: String,
        client_id: String,
        ts: i64,
    },
    /// The image was handed to `client_id` and is reserved for it until `expires_at_ms`,
    /// a final label is saved, or the client releases it.
    ImageLeased {
        image: ImageId,
        client_id: String,
        expires_at_ms: i64,
    },
    /// The client gave the image back before its lease ran out.
    LeaseReleased {
        image: ImageId,
        client_id: String,
    },
    /// A scoring method's result for this image (`label_tag` set: the result belongs
    /// to that label's info, as `sum` does in MONAI Label).
    ScoreRecorded {
        image: ImageId,
        method: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label_tag: Option<Tag>,
        values: Info,
    },

    // --- stream `session/<id>`
    SessionCreated {
        session: RunId,
        name: String,
        ext: Extension,
        blob: BlobRef,
        meta: Info,
        expiry_s: u64,
    },
    SessionAccessed {
        session: RunId,
    },
    SessionRemoved {
        session: RunId,
    },

    // --- stream `model/<name>`
    /// A model version became the one inference uses: `config` is the runner's JSON
    /// model config, whose `format` says what `weights` holds (safetensors, a PyTorch
    /// state dict or TorchScript; see [`crate::models::folder`]).
    ModelPublished {
        model: ModelName,
        version: u32,
        weights: BlobRef,
        config: BlobRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metric: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        training_run: Option<RunId>,
    },
    ModelDeleted {
        model: ModelName,
    },

    // --- stream `train/<run>` and `job/<id>`
    /// A training run or another GPU job was asked for. For training, `labels_blob`
    /// pins the exact label versions it will use (a JSON list of [`LabelVersionRef`],
    /// see [`crate::pinned`]) and `as_of_position` the log position they were read at.
    /// Logs from before the list became a blob hold it inline in `labels`, which kept
    /// the event under DynamoDB's item limit only up to about a thousand labels.
    JobRequested {
        job: RunId,
        kind: JobKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<ModelName>,
        params: Info,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<LabelVersionRef>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        labels_blob: Option<BlobRef>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        as_of_position: Option<u64>,
    },
    /// A runner claimed the job; it holds it until `lease_until_ms` unless it renews
    /// the lease (absent in logs from before leases: such a claim never lapses).
    JobStarted {
        job: RunId,
        worker: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_until_ms: Option<i64>,
    },
    /// The runner holding the job is alive and extends its lease.
    JobLeaseRenewed {
        job: RunId,
        worker: String,
        lease_until_ms: i64,
    },
    /// Progress of a running job; for training, `stats` uses MONAI Label's
    /// `train_stats` keys (epoch, total_epochs, best_metric, ...).
    JobProgressed {
        job: RunId,
        stats: Info,
    },
    JobStopRequested {
        job: RunId,
    },
    JobFinished {
        job: RunId,
        status: JobStatus,
        #[serde(default)]
        result: Info,
    },
    // --- stream `audit/<id>` (one stream per read: audits never contend)
    /// Patient data left medlabel, to the event's actor: a file was served, or a URL
    /// that reads it without further checks was issued (`url`).
    DataRead {
        read: DataRead,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        url: bool,
    },

    /// A read model `view` as of global `position`, encoded as `format` in `blob`
    /// (`crate::snapshot`): a cold process starts there instead of folding the log.
    /// No view changes on it.
    SnapshotTaken {
        view: String,
        position: u64,
        format: String,
        blob: BlobRef,
    },

    /// Stands in, when read, for a stored event that could not be decoded (damage, or a
    /// payload from before the edge limits): readers apply it as a no-op and go on, and
    /// the datastore view lists it as quarantined. Never written.
    Unreadable {
        reason: String,
    },
}

impl Event {
    /// The event's type name as stored beside the payload (`"LabelSaved"`).
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::DatastoreRenamed { .. } => "DatastoreRenamed",
            Event::DatastoreDescribed { .. } => "DatastoreDescribed",
            Event::ImageAdded { .. } => "ImageAdded",
            Event::ImageFetched { .. } => "ImageFetched",
            Event::ImageInfoUpdated { .. } => "ImageInfoUpdated",
            Event::ImageRemoved { .. } => "ImageRemoved",
            Event::LabelSaved { .. } => "LabelSaved",
            Event::LabelInfoUpdated { .. } => "LabelInfoUpdated",
            Event::LabelRemoved { .. } => "LabelRemoved",
            Event::StrategySelected { .. } => "StrategySelected",
            Event::ImageLeased { .. } => "ImageLeased",
            Event::LeaseReleased { .. } => "LeaseReleased",
            Event::ScoreRecorded { .. } => "ScoreRecorded",
            Event::SessionCreated { .. } => "SessionCreated",
            Event::SessionAccessed { .. } => "SessionAccessed",
            Event::SessionRemoved { .. } => "SessionRemoved",
            Event::ModelPublished { .. } => "ModelPublished",
            Event::ModelDeleted { .. } => "ModelDeleted",
            Event::JobRequested { .. } => "JobRequested",
            Event::JobStarted { .. } => "JobStarted",
            Event::JobLeaseRenewed { .. } => "JobLeaseRenewed",
            Event::JobProgressed { .. } => "JobProgressed",
            Event::JobStopRequested { .. } => "JobStopRequested",
            Event::JobFinished { .. } => "JobFinished",
            Event::DataRead { .. } => "DataRead",
            Event::SnapshotTaken { .. } => "SnapshotTaken",
            Event::Unreadable { .. } => "Unreadable",
        }
    }
}

/// An event about to be appended: the payload plus who caused it and when.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event: Event,
    pub actor: Actor,
    /// Milliseconds since the Unix epoch, set by the caller's clock.
    pub timestamp_ms: i64,
}

/// An event as the store recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub stream: StreamId,
    /// 1-based position within the stream; the stream's version after this event.
    pub sequence: u64,
    /// Position in the store's global order (gapless, 1-based).
    pub position: u64,
    pub timestamp_ms: i64,
    pub actor: Actor,
    pub request_id: String,
    pub event_type: String,
    pub schema_version: u16,
    pub event: Event,
}

/// Encodes an event payload for storage: the `{"type":..,"data":..}` JSON.
pub fn encode(event: &Event) -> Result<String, serde_json::Error> {
    serde_json::to_string(event)
}

/// Decodes a stored payload written by [`encode`].
pub fn decode(payload: &str) -> Result<Event, serde_json::Error> {
    serde_json::from_str(payload)
}

/// Decodes a stored event's payload and actor, or quarantines the event: a store's
/// reader calls this so that one undecodable record never halts a projection (design
/// invariant 9). The stand-in is [`Event::Unreadable`] by the `admin` actor, logged
/// with its position.
pub fn decode_or_quarantine(
    position: u64,
    stream: &str,
    payload: &str,
    actor: &str,
) -> (Event, Actor) {
    let decoded = decode(payload)
        .map_err(|err| format!("payload: {err}"))
        .and_then(|event| {
            serde_json::from_str(actor)
                .map(|actor| (event, actor))
                .map_err(|err| format!("actor: {err}"))
        });
    decoded.unwrap_or_else(|reason| {
        tracing::error!(position, stream, %reason, "quarantined an event that cannot be decoded");
        (Event::Unreadable { reason }, Actor::admin())
    })
}
