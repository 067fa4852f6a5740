//! The state of a cloud deployment, as its two fronts serve it.
//!
//! The same routers run behind two fronts on the same DynamoDB table and S3 bucket:
//! - [`Front::Lambda`]: one function per router behind API Gateway. Request and reply
//!   bodies are capped at 6 MB, so uploads above it are refused (413; presigned uploads
//!   have their own limit) and files above about 4 MB are handed out as redirects.
//! - [`Front::Container`]: `medlabel serve --backend aws`, every router in one
//!   long-running process (ECS Fargate behind a load balancer in the stack), which
//!   takes the routes whose bodies are large: a stock client's 300 MB volume upload,
//!   and downloads by clients that do not follow redirects.
//!
//! Everything else is shared: auth from `MEDLABEL_AUTH_*`, the DICOMweb relay from
//! `MEDLABEL_DICOMWEB_URL`, interactive inference on the SageMaker endpoint
//! `MEDLABEL_RUNNER_ENDPOINT` (without one, inference answers 503), `/logs/` from the
//! CloudWatch log groups in `MEDLABEL_LOG_GROUPS`, and the views restored from the
//! latest snapshot ([`medlabel_events::cold_start`]).

use std::sync::Arc;

use aws_config::SdkConfig;
use medlabel_events::blob::s3::S3BlobStore;
use medlabel_events::clock::{Clock, SystemClock};
use medlabel_events::cold_start;
use medlabel_events::store::dynamo::DynamoEventStore;
use medlabel_events::{BlobStore, EventStore};

use crate::downloads::{Downloads, LAMBDA_MAX_INLINE};
use crate::log_source::LogSource;
use crate::log_source::cloudwatch::CloudWatchTail;
use crate::model_runner::InferenceEndpoint;
use crate::runner::NoRunner;
use crate::state::{AppState, Config, DicomWeb};

/// Lambda's request payload limit: bigger uploads go to the container service, or
/// through presigned URLs.
pub const LAMBDA_MAX_BODY: u64 = 6 * 1024 * 1024;

/// Which front serves the routers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Lambda,
    /// The container service, accepting request bodies up to this many bytes.
    Container {
        max_upload_bytes: u64,
    },
}

/// A deployment's table and bucket.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub table: String,
    pub bucket: String,
}

impl Deployment {
    /// `MEDLABEL_EVENTS_TABLE` and `MEDLABEL_BLOBS_BUCKET`.
    pub fn from_env() -> Result<Self, String> {
        let required = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
        Ok(Self {
            table: required("MEDLABEL_EVENTS_TABLE")?,
            bucket: required("MEDLABEL_BLOBS_BUCKET")?,
        })
    }
}

impl Front {
    /// The settings of the HTTP surface behind this front; auth and the DICOMweb relay
    /// from the environment.
    pub fn config(self) -> Result<Config, String> {
        let (max_upload_bytes, downloads) = match self {
            Front::Lambda => (
                LAMBDA_MAX_BODY,
                Downloads::Redirect {
                    max_inline: LAMBDA_MAX_INLINE,
                },
            ),
            Front::Container { max_upload_bytes } => {
                (max_upload_bytes, Downloads::RedirectFollowers)
            }
        };
        Ok(Config {
            max_upload_bytes,
            downloads,
            dicomweb: std::env::var("MEDLABEL_DICOMWEB_URL")
                .ok()
                .filter(|url| !url.is_empty())
                .map(DicomWeb::with_env_credentials),
            temp_dir: std::env::temp_dir(),
            auth: crate::auth::oidc_from_env()?,
            ..Config::default()
        })
    }
}

/// The state every router of `deployment` shares, with `config` (a [`Front::config`]).
/// `sdk` configures the AWS clients (an `AWS_ENDPOINT_URL` emulator included).
pub async fn state(
    sdk: &SdkConfig,
    deployment: &Deployment,
    config: Config,
) -> Result<AppState, Box<dyn std::error::Error + Send + Sync>> {
    let store = DynamoEventStore::new(aws_sdk_dynamodb::Client::new(sdk), &deployment.table);
    let blobs = S3BlobStore::new(S3BlobStore::client(sdk), &deployment.bucket);
    let store: Arc<dyn EventStore> = Arc::new(store);
    let blobs: Arc<dyn BlobStore> = Arc::new(blobs);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // A start begins at the views' latest snapshot and folds only the events after it.
    let started = cold_start::open(store, blobs, clock).await?;
    let endpoint = std::env::var("MEDLABEL_RUNNER_ENDPOINT")
        .ok()
        .filter(|name| !name.is_empty())
        .map(|name| InferenceEndpoint::SageMaker {
            client: aws_sdk_sagemakerruntime::Client::new(sdk),
            name,
        });
    let logs = CloudWatchTail::new(
        aws_sdk_cloudwatchlogs::Client::new(sdk),
        CloudWatchTail::groups_from_env(),
    );
    Ok(AppState::from_started(started, Arc::new(NoRunner), config)
        .with_model_runner(endpoint)
        .with_logs(LogSource::CloudWatch(logs)))
}
