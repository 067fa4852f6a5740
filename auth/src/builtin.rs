//! `--auth builtin`: medlabel is its own issuer, for a site without an identity provider.
//!
//! `POST /auth/token` checks the password against the user file ([`crate::users`]) and
//! signs an HS256 JWT with a 256-bit key kept beside it (`<studies>/.medlabel/auth.key`,
//! created on first use, owner-only). The same process verifies what it signed, so a
//! shared secret is all a signature needs; deleting the key file ends every session.
//! Verification reads the user again (a cached, stat-checked file): a removed user's
//! token stops working at once and role changes apply to tokens already handed out.
//!
//! A login for an unknown user verifies the password against a dummy hash made with the
//! same parameters, so it costs what a wrong password costs and the two cannot be told
//! apart by timing.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::TokenReply;
use crate::error::AuthError;
use crate::principal::Principal;
use crate::users::{UserStore, hash_password, verify_password, write_private};

/// `iss` of built-in tokens.
pub const ISSUER: &str = "medlabel";
/// `aud` of built-in tokens.
pub const AUDIENCE: &str = "medlabel";
/// The signing key's file inside `<studies>/.medlabel/`.
pub const KEY_FILE: &str = "auth.key";
/// How long a built-in token lasts: a working day, so Slicer (which logs in once per
/// connection) is not logged out mid-session.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Clock skew tolerated on `exp` and `nbf`; the issuer is this process, so little.
const LEEWAY_S: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
    preferred_username: String,
    roles: Vec<String>,
}

/// The built-in issuer of one studies folder.
pub struct Builtin {
    users: UserStore,
    encoding: EncodingKey,
    decoding: DecodingKey,
    lifetime: Duration,
    dummy_hash: String,
}

impl std::fmt::Debug for Builtin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builtin")
            .field("users", &self.users.path())
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Builtin {
    /// The issuer of the studies folder whose medlabel home is `home`: its users file,
    /// and its signing key (created if missing). Blocks for one password hash.
    pub fn open(home: &Path, lifetime: Duration) -> Result<Self, AuthError> {
        let secret = load_or_create_key(home)?;
        Ok(Self {
            users: UserStore::new(home),
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            lifetime,
            dummy_hash: hash_password("medlabel: no such user")?,
        })
    }

    pub fn users(&self) -> &UserStore {
        &self.users
    }

    /// The password grant: a signed token for `username` if `password` is theirs.
    pub async fn login(
        self: &std::sync::Arc<Self>,
        username: &str,
        password: &str,
    ) -> Result<TokenReply, AuthError> {
        let this = self.clone();
        let (username, password) = (username.to_owned(), password.to_owned());
        // Argon2 is tens of milliseconds of CPU: off the async workers.
        let user = tokio::task::spawn_blocking(move || {
            let user = this.users.find(&username)?;
            let hash = user
                .as_ref()
                .map_or(this.dummy_hash.as_str(), |u| &u.password);
            let matches = verify_password(&password, hash);
            Ok::<_, AuthError>(user.filter(|_| matches))
        })
        .await
        .map_err(|err| AuthError::Internal(err.to_string()))??
        .ok_or(AuthError::BadLogin)?;
        let now = now_s();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: user.subject,
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.lifetime.as_secs(),
            preferred_username: user.name,
            roles: user.roles.iter().map(|r| r.name().to_owned()).collect(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|err| AuthError::Internal(format!("signing a token: {err}")))?;
        Ok(TokenReply::bearer(token, self.lifetime.as_secs()))
    }

    /// The caller a built-in token names, as the user file has them now.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|err| crate::token_error(&err))?
            .claims;
        let user = self
            .users
            .by_subject(&claims.sub)?
            .ok_or_else(|| AuthError::InvalidToken("the user no longer exists".into()))?;
        Ok(Principal {
            issuer: ISSUER.into(),
            subject: user.subject,
            username: user.name,
            email: None,
            name: None,
            roles: user.roles.iter().map(|r| r.name().to_owned()).collect(),
        })
    }
}

fn now_s() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// The 256-bit HS256 key of `home`, created (owner-only) on first use.
fn load_or_create_key(home: &Path) -> Result<Vec<u8>, AuthError> {
    let path = home.join(KEY_FILE);
    let internal = |err: String| AuthError::Internal(format!("{}: {err}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = BASE64
                .decode(text.trim())
                .map_err(|err| internal(err.to_string()))?;
            if key.len() < 32 {
                return Err(internal("the key is shorter than 256 bits".into()));
            }
            Ok(key)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            std::fs::create_dir_all(home).map_err(|err| internal(err.to_string()))?;
            write_private(home, &path, BASE64.encode(key).as_bytes())
                .map_err(|err| internal(err.to_string()))?;
            Ok(key.to_vec())
        }
        Err(err) => Err(internal(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::role::Role;

    #[tokio::test]
    async fn a_login_token_verifies_until_the_user_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Arc::new(Builtin::open(dir.path(), DEFAULT_TOKEN_LIFETIME).unwrap());
        issuer
            .users()
            .add("alice", "pw", &[Role::Annotator])
            .unwrap();
        let reply = issuer.login("alice", "pw").await.unwrap();
        assert_eq!(reply.token_type, "Bearer");
        let alice = issuer.verify(&reply.access_token).unwrap();
        assert_eq!(alice.username, "alice");
        assert_eq!(alice.roles, vec!["monailabel-annotator"]);

        // The key persists: a restarted server accepts the token.
        let again = Builtin::open(dir.path(), DEFAULT_TOKEN_LIFETIME).unwrap();
        assert_eq!(again.verify(&reply.access_token).unwrap(), alice);

        assert_eq!(issuer.login("alice", "PW").await, Err(AuthError::BadLogin));
        assert_eq!(
            issuer.login("mallory", "pw").await,
            Err(AuthError::BadLogin)
        );

        issuer.users().remove("alice").unwrap();
        assert!(matches!(
            issuer.verify(&reply.access_token),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[tokio::test]
    async fn another_folders_token_does_not_verify() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = Arc::new(Builtin::open(a.path(), DEFAULT_TOKEN_LIFETIME).unwrap());
        let second = Builtin::open(b.path(), DEFAULT_TOKEN_LIFETIME).unwrap();
        first.users().add("alice", "pw", &[Role::Admin]).unwrap();
        let token = first.login("alice", "pw").await.unwrap().access_token;
        assert!(matches!(
            second.verify(&token),
            Err(AuthError::InvalidToken(_))
        ));
    }
}
