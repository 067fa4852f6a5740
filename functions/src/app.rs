//! Assembling routers into a service: the behaviour every function shares.
//!
//! [`finish`] wraps any set of routes the same way, so the all-in-one local app and
//! each single-function Lambda answer identically: request ids and logging
//! ([`crate::request_id`]), MONAI Label's `{"detail": "Method Not Allowed"}` 405s (the
//! router sets `Allow`), 307 redirects to the declared trailing-slash spelling, 404
//! `{"detail": "Not Found"}` for everything else, and, on the routes alone, the role
//! check of [`crate::auth`].
//!
//! Browser safety is the local server's own ([`app`]): MONAI Label answers every origin
//! with permissive CORS, so any page an annotator visits could read or delete patient
//! data through their browser; medlabel allows no other origin unless configured
//! ([`crate::Config::cors_origins`]) and, bound to loopback, answers only requests that
//! name it by a loopback host name or its address (a DNS-rebinding page names its own).
//! In the cloud, API Gateway's CORS configuration does the former.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Router, middleware};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::catalogue;
use crate::error::ApiError;
use crate::routes;
use crate::state::AppState;

/// Every function's routes on one router: the local server.
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .merge(routes::info::router())
        .merge(routes::datastore::router())
        .merge(routes::session::router())
        .merge(routes::activelearning::router())
        .merge(routes::infer::router())
        .merge(routes::train::router())
        .merge(routes::auth::router())
        .merge(routes::logs::router());
    let config = state.config.clone();
    let mut app = finish(routes, state);
    if !config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = config
            .cors_origins
            .iter()
            .filter_map(|origin| HeaderValue::from_str(origin).ok())
            .collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([
                    Method::GET,
                    Method::HEAD,
                    Method::POST,
                    Method::PUT,
                    Method::DELETE,
                ])
                .allow_headers(Any)
                .expose_headers([header::CONTENT_DISPOSITION]),
        );
    }
    if config.allowed_hosts.is_some() {
        app = app.layer(middleware::from_fn_with_state(config, check_host));
    }
    app
}

/// Adds the shared fallback and middleware to `routes` and binds the state.
pub fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::middleware,
        ))
        .fallback(fallback)
        .layer(middleware::map_response(method_not_allowed))
        .layer(middleware::from_fn(crate::request_id::middleware))
        .with_state(state)
}

/// Refuses a request whose `Host` names another host than the allowed ones (the port
/// is not compared). A request without `Host` (HTTP/1.0, no browser) passes.
async fn check_host(
    State(config): State<std::sync::Arc<crate::Config>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = config.allowed_hosts.as_deref().unwrap_or_default();
    let host = request
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().map(host_name).unwrap_or_default());
    match host {
        Some(name) if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) => {
            ApiError::Forbidden(format!(
                "this server answers requests for {} only, not for host {name:?}",
                allowed.join(", ")
            ))
            .into_response()
        }
        _ => next.run(request).await,
    }
}

/// The host name of a `Host` header value: `[::1]:8000` → `[::1]`, `a.b:80` → `a.b`.
fn host_name(host: &str) -> &str {
    match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => &host[..colon],
        _ => host,
    }
}

/// No route matched: redirect to the declared spelling, or 404.
async fn fallback(request: Request) -> Response {
    let uri = request.uri();
    match catalogue::slash_redirect(uri.path()) {
        Some(path) => {
            let location = match uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        None => ApiError::NotFound("Not Found".into()).into_response(),
    }
}

/// Gives the router's bare 405 MONAI Label's body, keeping its `Allow` header.
async fn method_not_allowed(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut replaced = ApiError::MethodNotAllowed.into_response();
    if let Some(allow) = allow {
        replaced.headers_mut().insert(header::ALLOW, allow);
    }
    replaced
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_names_drop_the_port() {
        assert_eq!(host_name("127.0.0.1:8000"), "127.0.0.1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("[::1]:8000"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("evil.example:8000"), "evil.example");
    }
}
