//! Authentication at the edge: one middleware in front of every function's routes.
//!
//! [`crate::app::finish`] puts [`middleware`] on the routes of every router it assembles,
//! so the local all-in-one server and each Lambda check the same thing in the same
//! place. The route the router matched (its declared pattern, not the raw path) and the
//! method pick the [`Access`] the catalogue ([`crate::catalogue::access`]) declares; the
//! bearer token is verified by the configured [`Authenticator`] (medlabel-auth), and the
//! verified [`Principal`] goes to the handlers in the request's extensions, where
//! [`crate::context::Ctx`] finds it. Refusals happen before any handler runs, so they
//! record nothing.
//!
//! On Lambda the functions verify the token themselves, the same way, although API
//! Gateway's JWT authorizer checked it first: a route deployed without the authorizer,
//! or a claim the authorizer flattened into a string (API Gateway passes claims as
//! strings, so Keycloak's `realm_access.roles` arrives mangled), must not open data.
//! Without a valid token a function answers 401 whatever the request context says.
//!
//! With authentication off ([`crate::state::Config::auth`] is `None`) nothing is checked
//! and every caller is MONAI Label's `admin`.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use medlabel_auth::{Access, Authenticator, OidcConfig, Principal};

use crate::catalogue;
use crate::state::AppState;

/// The verified caller of a request, in its extensions whenever authentication is on:
/// `None` on a public route, so that a handler there cannot act as `admin`.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Arc<Principal>>);

/// Checks the caller against the route's [`Access`]; 401 or 403 in MONAI Label's shape.
pub async fn middleware(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = state.config.auth.as_ref() else {
        return next.run(request).await;
    };
    // Outside a matched route (never, as a route layer) ask for the most.
    let access = matched.map_or(Access::Role(medlabel_auth::Role::Admin), |m| {
        catalogue::access(request.method().as_str(), m.as_str())
    });
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.authorize(access, authorization).await {
        Ok(principal) => {
            if let Some(principal) = &principal {
                tracing::Span::current().record("user", principal.key());
            }
            request
                .extensions_mut()
                .insert(Caller(principal.map(Arc::new)));
            next.run(request).await
        }
        Err(err) => err.into_response(),
    }
}

/// The environment variables a Lambda function reads its authentication from.
pub const ENV_ISSUER: &str = "MEDLABEL_AUTH_ISSUER";
pub const ENV_AUDIENCE: &str = "MEDLABEL_AUTH_AUDIENCE";
pub const ENV_CLIENT_ID: &str = "MEDLABEL_AUTH_CLIENT_ID";
pub const ENV_CLIENT_SECRET: &str = "MEDLABEL_AUTH_CLIENT_SECRET";
pub const ENV_ROLES_CLAIM: &str = "MEDLABEL_AUTH_ROLES_CLAIM";

/// OIDC settings from the environment: `None` when no issuer is set (auth off), an
/// error when an issuer is set without an audience, so a half-configured function
/// refuses to start rather than serve open.
pub fn oidc_from_env() -> Result<Option<Authenticator>, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(issuer) = var(ENV_ISSUER) else {
        return Ok(None);
    };
    let audience = var(ENV_AUDIENCE)
        .ok_or_else(|| format!("{ENV_ISSUER} is set but {ENV_AUDIENCE} is not"))?;
    let mut config = OidcConfig::new(issuer, audience);
    if let Some(client_id) = var(ENV_CLIENT_ID) {
        config.client_id = client_id;
    }
    config.client_secret = var(ENV_CLIENT_SECRET);
    if let Some(path) = var(ENV_ROLES_CLAIM) {
        config.roles_claim = path;
    }
    Ok(Some(Authenticator::Oidc(Arc::new(
        medlabel_auth::Oidc::new(config),
    ))))
}
