//! Configuration and the state every handler shares.

use std::path::PathBuf;
use std::sync::Arc;

use medlabel_events::blob::BlobStore;
use medlabel_events::clock::{Clock, SystemClock};
use medlabel_events::cold_start::Started;
use medlabel_events::datastore::{Datastore, DatastoreError, StudiesFolder};
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

/// A DICOMweb server: the one `/proxy/dicom/` relays to, and with `--studies URL` the
/// datastore's images and labels ([`crate::dicomweb`]).
#[derive(Clone, PartialEq, Eq)]
pub struct DicomWeb {
    /// Base URL without credentials; a DICOMweb path is appended to it.
    pub url: String,
    pub credentials: Option<Credentials>,
    /// Path segments put between the base URL and a QIDO-RS, WADO-RS or STOW-RS path
    /// (MONAI Label's `MONAI_LABEL_{QIDO,WADO,STOW}_PREFIX`); empty: none.
    pub qido_prefix: String,
    pub wado_prefix: String,
    pub stow_prefix: String,
}

/// How medlabel authenticates to the DICOMweb server.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { username: String, password: String },
    Bearer(String),
}

/// Never prints the secrets: a `DicomWeb` may end up in a log line.
impl std::fmt::Debug for DicomWeb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credentials = match &self.credentials {
            None => "none",
            Some(Credentials::Basic { .. }) => "basic",
            Some(Credentials::Bearer(_)) => "bearer",
        };
        f.debug_struct("DicomWeb")
            .field("url", &self.url)
            .field("credentials", &credentials)
            .field("qido_prefix", &self.qido_prefix)
            .field("wado_prefix", &self.wado_prefix)
            .field("stow_prefix", &self.stow_prefix)
            .finish()
    }
}

impl DicomWeb {
    /// The server at `url`, without credentials or prefixes. Credentials written into
    /// the URL (`http://user:password@host/`) are taken out of it, so no error message
    /// or log line that names the server shows them.
    pub fn new(url: &str) -> Self {
        let (url, credentials) = split_userinfo(url);
        Self {
            url: url.trim_end_matches('/').to_owned(),
            credentials,
            qido_prefix: String::new(),
            wado_prefix: String::new(),
            stow_prefix: String::new(),
        }
    }

    /// The server at `url`, authenticated from the environment (secrets stay out of
    /// argv): `MEDLABEL_DICOMWEB_TOKEN` (a bearer token), else
    /// `MEDLABEL_DICOMWEB_USERNAME` and `MEDLABEL_DICOMWEB_PASSWORD` (basic).
    pub fn with_env_credentials(url: impl AsRef<str>) -> Self {
        let mut server = Self::new(url.as_ref());
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        if let Some(token) = var("MEDLABEL_DICOMWEB_TOKEN") {
            server.credentials = Some(Credentials::Bearer(token));
        } else if let (Some(username), Some(password)) = (
            var("MEDLABEL_DICOMWEB_USERNAME"),
            var("MEDLABEL_DICOMWEB_PASSWORD"),
        ) {
            server.credentials = Some(Credentials::Basic { username, password });
        }
        server
    }

    /// `{url}/{prefix}/{path}` for the operation `op` (`qido`, `wado`, `stow`; anything
    /// else: no prefix). As in MONAI Label, a QIDO path to `metadata` (older OHIF
    /// builds ask so) goes to the WADO prefix.
    pub fn url_for(&self, op: &str, path: &str) -> String {
        let prefix = match op {
            "qido" if path.ends_with("metadata") => &self.wado_prefix,
            "qido" => &self.qido_prefix,
            "wado" => &self.wado_prefix,
            "stow" => &self.stow_prefix,
            _ => "",
        };
        let prefix = prefix.trim_matches('/');
        let path = path.trim_start_matches('/');
        if prefix.is_empty() {
            format!("{}/{path}", self.url)
        } else {
            format!("{}/{prefix}/{path}", self.url)
        }
    }

    /// Adds the credentials to a request.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            None => request,
            Some(Credentials::Basic { username, password }) => {
                request.basic_auth(username, Some(password))
            }
            Some(Credentials::Bearer(token)) => request.bearer_auth(token),
        }
    }
}

/// `http://user:pass@host/x` → (`http://host/x`, basic credentials).
fn split_userinfo(url: &str) -> (String, Option<Credentials>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let userinfo = &rest[..at];
    let decode = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (username, password) = match userinfo.split_once(':') {
        Some((u, p)) => (decode(u), decode(p)),
        None => (decode(userinfo), String::new()),
    };
    (
        format!("{scheme}://{}", &rest[at + 1..]),
        Some(Credentials::Basic { username, password }),
    )
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
    /// Imports bundles and TorchScript uploads (`PUT /model/{name}`) with the runner
    /// binary; `None` (no runner here, as on Lambda): only safetensors uploads.
    pub importer: Option<crate::model_import::ModelImporter>,
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
            importer: None,
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
    /// The DICOMweb server whose series are the images (`--studies URL`); `None` for a
    /// studies folder.
    pub studies: Option<Arc<crate::dicomweb::Studies>>,
    /// The local server's studies folder, kept as a projection of the log: replies give
    /// clients paths in it, as MONAI Label does. `None` (the cloud, DICOMweb): presigned
    /// URLs.
    pub studies_folder: Option<Arc<StudiesFolder>>,
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
            studies: None,
            studies_folder: None,
        }
    }

    /// Reads `/logs/` from `logs` instead of this process's own lines.
    pub fn with_logs(mut self, logs: LogSource) -> Self {
        self.logs = logs;
        self
    }

    /// Makes `studies` the source of the images and labels ([`crate::dicomweb`]).
    pub fn with_studies(mut self, studies: Arc<crate::dicomweb::Studies>) -> Self {
        self.studies = Some(studies);
        self
    }

    /// Replies hand out paths in `folder` (which a task keeps in step with the log).
    pub fn with_studies_folder(mut self, folder: Arc<StudiesFolder>) -> Self {
        self.studies_folder = Some(folder);
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
