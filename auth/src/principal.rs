//! Who a verified token says the caller is.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::role::Role;

/// An authenticated caller: the claims medlabel uses from a verified token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The token's `iss`: the built-in issuer or the OIDC issuer URL.
    pub issuer: String,
    /// The token's `sub`: stable for the user within the issuer.
    pub subject: String,
    /// MONAI Label's `username` (`preferred_username`, else `username`, `email`, `sub`).
    pub username: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// Role names as the token carries them; `/auth/token/valid` reports them all, as
    /// MONAI Label does, and only MONAI Label's four count for access.
    pub roles: Vec<String>,
}

impl Principal {
    /// Whether one of the caller's roles implies `required`.
    pub fn has(&self, required: Role) -> bool {
        self.roles
            .iter()
            .filter_map(|name| Role::parse(name))
            .any(|role| role.implies(required))
    }

    /// The owner identity of sessions, leases and annotator tags: issuer and subject,
    /// never a name the client chose.
    pub fn key(&self) -> String {
        format!("{}#{}", self.issuer, self.subject)
    }

    /// A client-chosen request id made private to this caller, so that replaying
    /// another user's request id (the idempotency key of writes) never finds their
    /// write. Short ids keep their text after a digest of [`Principal::key`], so events
    /// can still be matched with log lines; long ones are digested too, so that the
    /// result stays within the event store's 128 bytes with room for step suffixes.
    pub fn scope_request_id(&self, request_id: &str) -> String {
        let owner = &hex::encode(Sha256::digest(self.key().as_bytes()))[..16];
        if request_id.len() <= 64 {
            format!("{owner}.{request_id}")
        } else {
            let digest = hex::encode(Sha256::digest(request_id.as_bytes()));
            format!("{owner}.{}", &digest[..32])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(roles: &[&str]) -> Principal {
        Principal {
            issuer: "https://idp.example/realms/x".into(),
            subject: "2b1f".into(),
            username: "alice".into(),
            email: None,
            name: None,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn access_follows_the_highest_role() {
        let admin = alice(&["offline_access", "monailabel-admin"]);
        assert!(Role::ALL.into_iter().all(|r| admin.has(r)));
        let annotator = alice(&["monailabel-annotator"]);
        assert!(annotator.has(Role::User) && annotator.has(Role::Annotator));
        assert!(!annotator.has(Role::Admin));
        assert!(!alice(&["offline_access"]).has(Role::User));
    }

    #[test]
    fn request_ids_are_private_to_their_caller() {
        let a = alice(&[]);
        let mut b = alice(&[]);
        b.subject = "9c3e".into();
        assert_ne!(a.scope_request_id("r1"), b.scope_request_id("r1"));
        assert_eq!(a.scope_request_id("r1"), a.scope_request_id("r1"));
        assert!(a.scope_request_id("r1").ends_with(".r1"));
        let long = "x".repeat(96);
        assert!(a.scope_request_id(&long).len() <= 64);
        assert_ne!(a.scope_request_id(&long), b.scope_request_id(&long));
    }
}
