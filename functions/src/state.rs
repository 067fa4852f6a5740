//! Configuration and the state every handler shares.

use std::path::PathBuf;
use std::sync::Arc;

use medlabel_events::blob::BlobStore;
use medlabel_events::clock::{Clock, SystemClock};
use medlabel_events::cold_start::Started;
use medlabel_events::datastore::{Datastore, DatastoreError};
use medlabel_events::jobs::Jobs;
use medlabel_events::models::Models;
use medlabel_events::session::{DEFAULT_MAX_EXPIRY_S, Sessions, SessionsView};
use medlabel_events::store::EventStore;

use crate::downloads::Downloads;
use crate::log_source::LogSource;
use crate::logging::LogBuffer;
use crate::model_runner::{InferenceEndpoint, ModelRunner};
use crate::runner::{NoRunner, Runner};
use crate::strategy::Picker;

/// MONAI Label's default upload ceiling for the local server: 2 GB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 2_000_000_000;

/// The largest object S3 stores (a multipart upload of up to 10,000 parts): the ceiling
/// of presigned uploads, which never pass through a request body.
pub const S3_MAX_OBJECT_BYTES: u64 = 5 << 40;

/// A DICOMweb server that `/proxy/dicom/` relays to (MONAI Label's DICOMweb studies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomWeb {
    /// Base URL; a proxied path is appended to it.
    pub url: String,
    /// HTTP basic credentials, when the server wants them.
    pub credentials: Option<(String, String)>,
}

impl DicomWeb {
    /// The server at `url`, with credentials from `MEDLABEL_DICOMWEB_USERNAME` and
    /// `MEDLABEL_DICOMWEB_PASSWORD` when both are set (secrets stay out of argv).
    pub fn with_env_credentials(url: String) -> Self {
        let credentials = std::env::var("MEDLABEL_DICOMWEB_USERNAME")
            .ok()
            .zip(std::env::var("MEDLABEL_DICOMWEB_PASSWORD").ok());
        Self { url, credentials }
    }
}

/// Settings of the HTTP surface.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body accepted by upload routes; more gets 413.
    pub max_upload_bytes: u64,
    /// Largest object a presigned upload may adopt (`/datastore/upload/...`): its bytes
    /// go to the object store directly, so the request body limit does not apply.
    pub max_presigned_upload_bytes: u64,
    /// How file routes deliver stored files (streamed, or redirected to the store).
    pub downloads: Downloads,
    /// MONAI Label's `MONAI_LABEL_SESSION_EXPIRY` (≤ 60 means 3600).
    pub max_session_expiry_s: u64,
    /// Where uploads are spooled before they reach the blob store.
    pub temp_dir: PathBuf,
    /// Who issues the bearer tokens every route checks (see [`crate::auth`]); `None`:
    /// auth off (every caller is `admin`, `/auth/` is 404, as in MONAI Label).
    pub auth: Option<medlabel_auth::Authenticator>,
    /// App name and description shown by `/info/`.
    pub app_name: String,
    pub app_description: String,
    /// How long an image handed out by active learning stays reserved for its client.
    pub lease: std::time::Duration,
    /// Seeds the `random` strategy, so a run can be reproduced.
    pub strategy_seed: Option<u64>,
    /// A built OHIF viewer served at `/ohif/`; `None`: the route answers 503.
    pub ohif_dir: Option<PathBuf>,
    /// The DICOMweb server behind `/proxy/dicom/`; `None`: the route answers 503.
    pub dicomweb: Option<DicomWeb>,
    /// Web origins allowed to call the API from a browser (CORS). Empty: none, so no
    /// other site's page can read patient data through a visitor's browser.
    pub cors_origins: Vec<String>,
    /// Host names requests must name (`Host` header, port ignored), so a DNS-rebinding
    /// page cannot reach a loopback server through a name of its own. `None`: any.
    pub allowed_hosts: Option<Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_presigned_upload_bytes: S3_MAX_OBJECT_BYTES,
            downloads: Downloads::Stream,
            max_session_expiry_s: DEFAULT_MAX_EXPIRY_S,
            temp_dir: std::env::temp_dir(),
            auth: None,
            app_name: "medlabel".into(),
            app_description: "medlabel: MONAI Label compatible, event-sourced annotation server"
                .into(),
            lease: crate::strategy::DEFAULT_LEASE,
            strategy_seed: None,
            ohif_dir: None,
            dicomweb: None,
            cors_origins: Vec::new(),
            allowed_hosts: None,
        }
    }
}

/// What handlers share: the datastore, the sessions, the runner and the settings.
#[derive(Clone)]
pub struct AppState {
    pub datastore: Arc<Datastore>,
    pub sessions: Arc<Sessions>,
    pub jobs: Arc<Jobs>,
    pub models: Arc<Models>,
    pub runner: Arc<dyn Runner>,
    pub config: Arc<Config>,
    /// Where `/logs/` reads recent lines.
    pub logs: LogSource,
    /// Randomness and lease length for active learning.
    pub picker: Arc<Picker>,
}

impl AppState {
    /// Opens the datastore over `store` and `blobs` (folding the log) with no runner.
    pub async fn open(
        store: Arc<dyn EventStore>,
        blobs: Arc<dyn BlobStore>,
        config: Config,
    ) -> Result<Self, DatastoreError> {
        Self::open_with(
            store,
            blobs,
            Arc::new(SystemClock),
            Arc::new(NoRunner),
            config,
        )
        .await
    }

    pub async fn open_with(
        store: Arc<dyn EventStore>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        runner: Arc<dyn Runner>,
        config: Config,
    ) -> Result<Self, DatastoreError> {
        let datastore = Datastore::open_with_clock(store, blobs, clock).await?;
        Ok(Self::from_datastore(datastore, runner, config))
    }

    /// The state around an opened datastore; the other services share its stores and
    /// clock and fold the log on their first read.
    pub fn from_datastore(datastore: Datastore, runner: Arc<dyn Runner>, config: Config) -> Self {
        let (store, clock) = (datastore.event_store().clone(), datastore.clock().clone());
        let started = Started {
            jobs: Jobs::new(store.clone(), clock.clone()),
            models: Models::new(store, clock),
            sessions: SessionsView::default(),
            datastore,
        };
        Self::from_started(started, runner, config)
    }

    /// The state around services opened together (a cold start's restored views).
    pub fn from_started(started: Started, runner: Arc<dyn Runner>, config: Config) -> Self {
        let datastore = started.datastore;
        let sessions = Sessions::starting_at(
            datastore.event_store().clone(),
            datastore.blob_store().clone(),
            datastore.clock().clone(),
            config.max_session_expiry_s,
            started.sessions,
        );
        Self {
            datastore: Arc::new(datastore),
            sessions: Arc::new(sessions),
            jobs: Arc::new(started.jobs),
            models: Arc::new(started.models),
            runner,
            picker: Arc::new(Picker::new(config.strategy_seed, config.lease)),
            config: Arc::new(config),
            logs: LogSource::Process(LogBuffer::global().clone()),
        }
    }

    /// Reads `/logs/` from `logs` instead of this process's own lines.
    pub fn with_logs(mut self, logs: LogSource) -> Self {
        self.logs = logs;
        self
    }

    /// Replaces the runner with the event-driven [`ModelRunner`]: models from the log,
    /// jobs as events, interactive inference at `endpoint`.
    pub fn with_model_runner(mut self, endpoint: Option<InferenceEndpoint>) -> Self {
        self.runner = Arc::new(ModelRunner::new(
            self.datastore.clone(),
            self.jobs.clone(),
            self.models.clone(),
            endpoint,
            self.config.temp_dir.clone(),
        ));
        self
    }
}
