//! Running a function's router on AWS Lambda behind an API Gateway HTTP API.
//!
//! [`lambda_service`] is the exact path a Lambda request takes to the router (the
//! tests drive it with API Gateway v2 events): the event's body becomes an axum body,
//! and the stage prefix API Gateway puts in front of named stages (`/prod/info/`) is
//! removed, so routes match as they do locally. [`lambda_main`] (feature `aws`) is the
//! whole binary: JSON logs, state on DynamoDB + S3 from the environment, serve.

use std::convert::Infallible;

use axum::Router;
use axum::http::Uri;
use axum::response::Response;
use lambda_http::request::RequestContext;
use tower::{Service, ServiceExt, service_fn};

/// Removes a named stage's prefix from the request path.
fn strip_stage(request: &mut lambda_http::Request) {
    let Some(RequestContext::ApiGatewayV2(context)) = request.extensions().get::<RequestContext>()
    else {
        return;
    };
    let Some(stage) = context.stage.as_deref().filter(|s| *s != "$default") else {
        return;
    };
    let prefix = format!("/{stage}");
    let path = request.uri().path();
    let rest = match path.strip_prefix(&prefix) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => return,
    };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(value) = path_and_query.parse() {
        parts.path_and_query = Some(value);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

/// The service `lambda_http::run` drives: Lambda requests in, router replies out.
pub fn lambda_service(
    router: Router,
) -> impl Service<lambda_http::Request, Response = Response, Error = Infallible, Future: Send> + Clone
{
    service_fn(move |mut request: lambda_http::Request| {
        let router = router.clone();
        async move {
            strip_stage(&mut request);
            let (parts, body) = request.into_parts();
            let body = match body {
                lambda_http::Body::Text(text) => axum::body::Body::from(text),
                lambda_http::Body::Binary(bytes) => axum::body::Body::from(bytes),
                _ => axum::body::Body::empty(),
            };
            router
                .oneshot(axum::http::Request::from_parts(parts, body))
                .await
        }
    })
}

#[cfg(feature = "aws")]
pub use aws::{lambda_main, state_from_env};

#[cfg(feature = "aws")]
mod aws {
    use std::sync::Arc;

    use axum::Router;
    use medlabel_events::blob::s3::S3BlobStore;
    use medlabel_events::clock::{Clock, SystemClock};
    use medlabel_events::cold_start;
    use medlabel_events::store::dynamo::DynamoEventStore;
    use medlabel_events::{BlobStore, EventStore};

    use crate::app::finish;
    use crate::model_runner::InferenceEndpoint;
    use crate::runner::NoRunner;
    use crate::state::{AppState, Config, DicomWeb};

    /// Lambda's request payload limit: bigger uploads must use presigned URLs.
    const LAMBDA_MAX_BODY: u64 = 6 * 1024 * 1024;

    fn required(name: &str) -> Result<String, lambda_http::Error> {
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set").into())
    }

    /// State on DynamoDB (`MEDLABEL_EVENTS_TABLE`) and S3 (`MEDLABEL_BLOBS_BUCKET`);
    /// `AWS_ENDPOINT_URL` (an emulator) is honoured by the SDK configuration. Interactive
    /// inference runs on the SageMaker endpoint `MEDLABEL_RUNNER_ENDPOINT` names. Auth is
    /// on when `MEDLABEL_AUTH_ISSUER` is set ([`crate::auth::oidc_from_env`]);
    /// `/proxy/dicom/` relays to `MEDLABEL_DICOMWEB_URL` (basic auth from
    /// `MEDLABEL_DICOMWEB_USERNAME`/`_PASSWORD`).
    pub async fn state_from_env() -> Result<AppState, lambda_http::Error> {
        let table = required("MEDLABEL_EVENTS_TABLE")?;
        let bucket = required("MEDLABEL_BLOBS_BUCKET")?;
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let store = DynamoEventStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
        let blobs = S3BlobStore::new(S3BlobStore::client(&sdk), bucket);
        let auth = crate::auth::oidc_from_env()?;
        let dicomweb = std::env::var("MEDLABEL_DICOMWEB_URL")
            .ok()
            .map(DicomWeb::with_env_credentials);
        let config = Config {
            max_upload_bytes: LAMBDA_MAX_BODY,
            dicomweb,
            temp_dir: std::env::temp_dir(),
            auth,
            ..Config::default()
        };
        let store: Arc<dyn EventStore> = Arc::new(store);
        let blobs: Arc<dyn BlobStore> = Arc::new(blobs);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // A cold start begins at the views' latest snapshot and folds only the events
        // after it (events/src/cold_start.rs).
        let started = cold_start::open(store, blobs, clock).await?;
        let endpoint = std::env::var("MEDLABEL_RUNNER_ENDPOINT")
            .ok()
            .filter(|name| !name.is_empty())
            .map(|name| InferenceEndpoint::SageMaker {
                client: aws_sdk_sagemakerruntime::Client::new(&sdk),
                name,
            });
        Ok(AppState::from_started(started, Arc::new(NoRunner), config).with_model_runner(endpoint))
    }

    /// The whole Lambda binary of one function: `router` is that function's routes.
    pub async fn lambda_main(router: fn() -> Router<AppState>) -> Result<(), lambda_http::Error> {
        crate::logging::init(crate::logging::on_lambda());
        let state = state_from_env().await?;
        lambda_http::run(super::lambda_service(finish(router(), state))).await
    }
}
