//! The one error every authentication step returns, in MONAI Label's shapes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::role::Role;

/// Why a request was not let through, or a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 401: no bearer token (MONAI Label's words).
    #[error("Not authenticated")]
    NotAuthenticated,
    /// 401: a token that does not verify; the reason helps the person who configured
    /// the client or the identity provider, and tells an attacker nothing new.
    #[error("Could not validate credentials: {0}")]
    InvalidToken(String),
    /// 401: wrong password or unknown user, deliberately one answer.
    #[error("Incorrect username or password")]
    BadLogin,
    /// 403: the caller lacks the role the route needs (MONAI Label's words).
    #[error("Role \"{0}\" is required to perform this action")]
    Forbidden(Role),
    /// 502: the identity provider failed or could not be reached.
    #[error("identity provider: {0}")]
    Upstream(String),
    /// 500: the user file or the signing key could not be read or written.
    #[error("{0}")]
    Internal(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::NotAuthenticated | AuthError::InvalidToken(_) | AuthError::BadLogin => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::Upstream(_) => StatusCode::BAD_GATEWAY,
            AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "authentication failed");
        } else {
            tracing::info!(status = status.as_u16(), error = %self, "request refused");
        }
        let mut response =
            (status, axum::Json(json!({"detail": self.to_string()}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
