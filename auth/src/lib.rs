//! Authentication and MONAI Label's roles for medlabel.
//!
//! MONAI Label (with `MONAI_LABEL_AUTH_ENABLE`) takes a bearer JWT on every route, reads
//! the caller's roles from it and lets each route ask for one of four [`Role`]s; its
//! `/auth/token` relays a password grant to Keycloak, which is how 3D Slicer logs in.
//! This crate is that, transport-free except for rendering its [`AuthError`]s:
//!
//! - [`Authenticator::Builtin`] ([`builtin`]): medlabel issues and verifies its own
//!   tokens for users kept with the studies folder ([`users`], Argon2id hashes), for a
//!   site without an identity provider;
//! - [`Authenticator::Oidc`] ([`oidc`]): tokens from any OpenID Connect issuer, verified
//!   against its published keys; the password grant is relayed to it.
//!
//! Either way a verified token becomes a [`Principal`] (issuer, subject, name, roles);
//! the HTTP layer (medlabel-functions) asks [`Principal::has`] for the [`Access`] each
//! route declares and makes ownership and idempotency keys from [`Principal::key`].
//! With auth off there is no authenticator at all and every caller is MONAI Label's
//! `admin`.

pub mod builtin;
pub mod error;
pub mod oidc;
pub mod principal;
pub mod role;
pub mod users;

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

pub use builtin::Builtin;
pub use error::AuthError;
pub use oidc::{Oidc, OidcConfig};
pub use principal::Principal;
pub use role::{Access, Role};

/// What `POST /auth/token` answers: MONAI Label's `Token` (plus the lifetime, which its
/// clients ignore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenReply {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
}

impl TokenReply {
    pub fn bearer(access_token: String, expires_in: u64) -> Self {
        Self {
            access_token,
            token_type: "Bearer".into(),
            expires_in,
        }
    }
}

/// Who issues the tokens medlabel accepts.
#[derive(Debug, Clone)]
pub enum Authenticator {
    Builtin(Arc<Builtin>),
    Oidc(Arc<Oidc>),
}

impl Authenticator {
    /// The caller a bearer token names.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        match self {
            Authenticator::Builtin(builtin) => builtin.verify(token),
            Authenticator::Oidc(oidc) => oidc.verify(token).await,
        }
    }

    /// MONAI Label's password grant.
    pub async fn login(&self, username: &str, password: &str) -> Result<TokenReply, AuthError> {
        match self {
            Authenticator::Builtin(builtin) => builtin.login(username, password).await,
            Authenticator::Oidc(oidc) => oidc.login(username, password).await,
        }
    }

    /// `GET /auth/`: MONAI Label's `{"enabled", "client_id", "realm"}`.
    pub fn settings(&self) -> Value {
        match self {
            Authenticator::Builtin(_) => json!({
                "enabled": true,
                "client_id": builtin::AUDIENCE,
                "realm": builtin::ISSUER,
            }),
            Authenticator::Oidc(oidc) => json!({
                "enabled": true,
                "client_id": oidc.config().client_id,
                "realm": oidc.config().issuer,
            }),
        }
    }

    /// Verifies `authorization` (an `Authorization` header's value, if any) and checks
    /// it grants `access`; `None` for a public route.
    pub async fn authorize(
        &self,
        access: Access,
        authorization: Option<&str>,
    ) -> Result<Option<Principal>, AuthError> {
        if access == Access::Public {
            return Ok(None);
        }
        let token = bearer(authorization.ok_or(AuthError::NotAuthenticated)?)?;
        let principal = self.verify(token).await?;
        if let Access::Role(role) = access
            && !principal.has(role)
        {
            return Err(AuthError::Forbidden(role));
        }
        Ok(Some(principal))
    }
}

/// The token of a `Bearer <token>` header (the scheme is case-insensitive, RFC 6750).
fn bearer(authorization: &str) -> Result<&str, AuthError> {
    let (scheme, token) = authorization
        .split_once(' ')
        .ok_or(AuthError::NotAuthenticated)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::NotAuthenticated);
    }
    Ok(token)
}

/// A verification failure in words a person configuring a client can act on.
pub(crate) fn token_error(err: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    let why = match err.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet".to_owned(),
        ErrorKind::InvalidSignature => "the signature does not match".to_owned(),
        ErrorKind::InvalidIssuer => "the token is from another issuer".to_owned(),
        ErrorKind::InvalidAudience => "the token is for another audience".to_owned(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's {claim} claim is malformed"),
        _ => "the token is malformed".to_owned(),
    };
    AuthError::InvalidToken(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_tokens_are_taken() {
        assert_eq!(bearer("Bearer abc"), Ok("abc"));
        assert_eq!(bearer("bearer abc"), Ok("abc"));
        assert_eq!(bearer("Basic abc"), Err(AuthError::NotAuthenticated));
        assert_eq!(bearer("Bearer "), Err(AuthError::NotAuthenticated));
        assert_eq!(bearer("abc"), Err(AuthError::NotAuthenticated));
    }
}
