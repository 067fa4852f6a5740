//! The DICOMweb datastore: `medlabel serve --studies http://host/dicom-web` makes the
//! series of a PACS the images and its DICOM SEG series the labels, as MONAI Label's
//! DICOMweb datastore does, while the Datastore stays the one event-sourced service.
//!
//! - **Discovery is recorded like any import.** A poller ([`poll_forever`]) searches
//!   the server by QIDO-RS and records each series of the chosen modalities as an
//!   image (`ImageAdded`, id = SeriesInstanceUID, info = the DICOM fields OHIF and
//!   Slicer read) whose content is a small series reference ([`reference`]); a series
//!   that changed is recorded again, one that left the server is removed. Request ids
//!   derive from the reference, so polls record nothing twice. An id the datastore does
//!   not know yet (OHIF sends the series it shows) is looked up on the spot.
//! - **Series are fetched when first needed** (inference, download, a label, a SEG):
//!   WADO-RS retrieves the instances as stored, `medlabel-dicom` converts them, the
//!   volume is stored as a NIfTI blob and `ImageFetched` makes it the image's content,
//!   with the slice map a SEG needs ([`slices`]). From then on the runner, training and
//!   downloads read the NIfTI like any other image; the instances themselves are not
//!   kept (the PACS keeps them). Concurrent requests for one series share one fetch.
//! - **Labels are DICOM SEG in the PACS, NIfTI here.** A `final` label saved through the
//!   API is written as a SEG (segments named after the label names or the model's
//!   labels) and stored by STOW-RS before its `LabelSaved` is recorded, with the SEG's
//!   SeriesInstanceUID in its info; a SEG that reaches the PACS another way (OHIF's
//!   export) is read onto its image's grid and recorded as that image's `final` label.
//!   Other tags stay local, as in MONAI Label.
//!
//! The event log and blobs live in a local home folder (`--home`, by default
//! `~/.cache/medlabel/dicomweb/<hash of the URL>`), so history, active learning and
//! every route work as with a studies folder.

mod client;
mod fetch;
mod labels;
mod multipart;
mod poller;
mod reference;
mod slices;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use medlabel_events::datastore::{Datastore, WriteContext};
use medlabel_events::{Actor, ImageId};

pub use client::{Client, DicomWebError, describe};
pub use labels::{SegGuard, segments_for};
pub use poller::{PollReport, poll_forever, poll_once};

use crate::state::DicomWeb;

/// The DICOMweb server whose series are the datastore's images.
pub struct Studies {
    client: Client,
    datastore: Arc<Datastore>,
    /// QIDO-RS attribute filter for images (MONAI Label's search filter).
    filter: Vec<(String, String)>,
    /// Where fetched series are converted before they become blobs.
    spool: PathBuf,
    /// One lock per image being fetched: concurrent requests wait for the one fetch.
    fetching: tokio::sync::Mutex<HashMap<ImageId, Arc<tokio::sync::Mutex<()>>>>,
    /// SEG series medlabel is storing and has not recorded yet: not for the poller.
    stowing: Arc<Mutex<HashSet<String>>>,
    /// SEG series the poller could not import, with why (reported once, not retried).
    refused: Mutex<HashMap<String, String>>,
}

impl Studies {
    /// The server `server` as the source of `datastore`'s images matching `filter`.
    pub fn new(
        server: DicomWeb,
        datastore: Arc<Datastore>,
        filter: Vec<(String, String)>,
        spool: PathBuf,
    ) -> Self {
        Self {
            client: Client::new(server),
            datastore,
            filter,
            spool,
            fetching: tokio::sync::Mutex::new(HashMap::new()),
            stowing: Arc::new(Mutex::new(HashSet::new())),
            refused: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// SEG series the poller refused, with the reason.
    pub fn refused(&self) -> HashMap<String, String> {
        self.refused.lock().expect("refused set").clone()
    }

    /// A write by the datastore itself, idempotent per `key`.
    fn write(&self, key: &str) -> WriteContext {
        use sha2::{Digest, Sha256};
        let digest = hex::encode(Sha256::digest(key));
        WriteContext::new(Actor::admin(), format!("dicomweb-{}", &digest[..48]))
    }
}
