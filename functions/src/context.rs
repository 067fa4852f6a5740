//! Who is calling, and under which request id: the [`Ctx`] every handler takes.
//!
//! Authentication happens in front of the functions: on AWS, API Gateway's JWT
//! authorizer validates the bearer token and hands its claims to the Lambda in the
//! request context, where [`Ctx`] reads `preferred_username` (falling back to `sub`).
//! That context exists only on requests the Lambda adapter built, so a client of the
//! local server cannot forge it. Without an authorizer (auth off, MONAI Label's
//! default) every caller is `admin`, as in MONAI Label.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use lambda_http::request::RequestContext;
use medlabel_events::datastore::WriteContext;
use medlabel_events::{Actor, ClientId, UserName};

use crate::error::ApiError;
use crate::request_id::RequestId;

/// The caller and the request id of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    pub user: UserName,
    pub request_id: String,
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
        }
    }
}

/// The user API Gateway's JWT authorizer vouched for, if the request came that way.
fn authorized_user(parts: &Parts) -> Result<Option<UserName>, ApiError> {
    let Some(RequestContext::ApiGatewayV2(context)) = parts.extensions.get::<RequestContext>()
    else {
        return Ok(None);
    };
    let Some(claims) = context
        .authorizer
        .as_ref()
        .and_then(|a| a.jwt.as_ref())
        .map(|jwt| &jwt.claims)
    else {
        return Ok(None);
    };
    let name = claims
        .get("preferred_username")
        .or_else(|| claims.get("sub"))
        .ok_or_else(|| ApiError::Unauthorized("Could not validate credentials".into()))?;
    UserName::parse(name.as_str())
        .map(Some)
        .map_err(|_| ApiError::Unauthorized("Could not validate credentials".into()))
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let user = authorized_user(parts)?.unwrap_or_else(UserName::admin);
        Ok(Ctx { user, request_id })
    }
}
