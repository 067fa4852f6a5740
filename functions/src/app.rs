//! Assembling routers into a service: the behaviour every function shares.
//!
//! [`finish`] wraps any set of routes the same way, so the all-in-one local app and
//! each single-function Lambda answer identically: request ids and logging
//! ([`crate::request_id`]), MONAI Label's `{"detail": "Method Not Allowed"}` 405s (the
//! router sets `Allow`), 307 redirects to the declared trailing-slash spelling, 404
//! `{"detail": "Not Found"}` for everything else, permissive CORS (MONAI Label's
//! default), and, on the routes alone, the role check of [`crate::auth`].

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Router, middleware};
use tower_http::cors::CorsLayer;

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
    finish(routes, state)
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
        .layer(CorsLayer::very_permissive())
        .layer(middleware::from_fn(crate::request_id::middleware))
        .with_state(state)
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
