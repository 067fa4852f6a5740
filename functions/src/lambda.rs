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
    use axum::Router;

    use crate::app::finish;
    use crate::cloud::{self, Deployment, Front};
    use crate::state::AppState;

    /// The production state of a function: DynamoDB (`MEDLABEL_EVENTS_TABLE`) and S3
    /// (`MEDLABEL_BLOBS_BUCKET`) behind [`Front::Lambda`]'s limits, the rest from the
    /// environment as [`crate::cloud`] describes; `AWS_ENDPOINT_URL` (an emulator) is
    /// honoured by the SDK configuration.
    pub async fn state_from_env() -> Result<AppState, lambda_http::Error> {
        let deployment = Deployment::from_env()?;
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        cloud::state(&sdk, &deployment, Front::Lambda.config()?).await
    }

    /// The whole Lambda binary of one function: `router` is that function's routes.
    pub async fn lambda_main(router: fn() -> Router<AppState>) -> Result<(), lambda_http::Error> {
        crate::logging::init(crate::logging::on_lambda());
        let state = state_from_env().await?;
        lambda_http::run(super::lambda_service(finish(router(), state))).await
    }
}
