//! Who is calling, and under which request id: the [`Ctx`] every handler takes.
//!
//! The caller is the [`Principal`] that [`crate::auth`] verified from the bearer token,
//! or, with authentication off (MONAI Label's default), MONAI Label's `admin`. Nothing
//! a client writes in its params (`client_id`, `user`) decides who it is: with auth on,
//! sessions, leases and annotator tags belong to the principal's issuer and subject,
//! and the request id that makes writes idempotent is made private to the principal
//! ([`Principal::scope_request_id`]), so replaying another user's request id never
//! returns what their request wrote.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use medlabel_auth::Principal;
use medlabel_events::datastore::WriteContext;
use medlabel_events::{Actor, ClientId, UserName};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::request_id::RequestId;

/// The caller and the request id of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    pub user: UserName,
    /// The idempotency key of the request's writes (scoped to the principal).
    pub request_id: String,
    /// The verified caller; `None` with authentication off.
    pub principal: Option<Arc<Principal>>,
}

impl Ctx {
    /// The write context for this request's one write, tagged with the client id the
    /// request carried (MONAI Label clients send `client_id` in their params).
    pub fn write(&self, client_id: Option<&str>) -> WriteContext {
        WriteContext::new(self.actor(client_id), self.request_id.clone())
    }

    /// The write context of a request's second (third, ...) write: a derived request id,
    /// so each write is idempotent on its own.
    pub fn write_step(&self, client_id: Option<&str>, step: &str) -> WriteContext {
        WriteContext::new(self.actor(client_id), format!("{}/{step}", self.request_id))
    }

    pub fn actor(&self, client_id: Option<&str>) -> Actor {
        Actor {
            user: self.user.clone(),
            client_id: client_id.and_then(|c| ClientId::parse(c).ok()),
            subject: self.principal.as_ref().map(|p| p.key()),
        }
    }

    /// Who holds what this request reserves (an active-learning lease): the principal
    /// with auth on; with auth off, where everyone is `admin`, the client instance the
    /// request names (MONAI Label's `client_id`), else the user.
    pub fn holder(&self, client_id: Option<&str>) -> String {
        match (&self.principal, client_id) {
            (Some(principal), _) => principal.key(),
            (None, Some(client)) => client.to_owned(),
            (None, None) => self.user.to_string(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let raw_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let principal = match parts.extensions.get::<Caller>().cloned() {
            // Authentication off: MONAI Label's anonymous admin.
            None => {
                return Ok(Ctx {
                    user: UserName::admin(),
                    request_id: raw_id,
                    principal: None,
                });
            }
            // A public route with authentication on: nobody to act as.
            Some(Caller(None)) => {
                return Err(ApiError::Unauthorized("Not authenticated".into()));
            }
            Some(Caller(Some(principal))) => principal,
        };
        // Built-in names are checked when added; an identity provider's must still be a
        // safe path segment, since an annotator tag is named after it.
        let user = UserName::parse(principal.username.as_str()).map_err(|_| {
            ApiError::Unauthorized(
                "Could not validate credentials: the user name is not usable".into(),
            )
        })?;
        Ok(Ctx {
            user,
            request_id: principal.scope_request_id(&raw_id),
            principal: Some(principal),
        })
    }
}
