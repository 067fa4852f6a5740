//! `--auth oidc`: tokens from an OpenID Connect issuer (Keycloak, Cognito, Entra ID).
//!
//! The issuer's discovery document (`<issuer>/.well-known/openid-configuration`) names
//! its key set and its token endpoint; both are fetched on first use, not at start, so
//! a server (or a Lambda instance) starts while the identity provider is briefly away.
//!
//! Verification is local: the token's `kid` picks a key from the cached key set; a `kid`
//! not in the cache fetches the set again (a rotated key), at most once per
//! [`OidcConfig::jwks_refresh_interval`] and once for all requests waiting on it, so a
//! stream of made-up `kid`s cannot turn medlabel into a load on the identity provider.
//! Only asymmetric algorithms are accepted, and only the ones the key is for, so a
//! public key cannot be used as an HMAC secret; `none` does not parse. `iss` must be the
//! configured issuer, `aud` must name the configured audience, and `exp` must be in the
//! future (MONAI Label checks no audience; medlabel does, since a token minted for any
//! other client of the realm would otherwise open its data).
//!
//! `POST /auth/token` relays MONAI Label's password grant to the token endpoint with the
//! configured client id (and secret, for a confidential client), so 3D Slicer's login
//! dialog works as it does against MONAI Label + Keycloak; medlabel stores no passwords.
//! The token the issuer returns is verified before it is handed on, so a realm that does
//! not put the audience in its tokens fails at login with a reason, not at every call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::TokenReply;
use crate::error::AuthError;
use crate::principal::Principal;

/// Keycloak's (and MONAI Label's) place for realm roles.
pub const DEFAULT_ROLES_CLAIM: &str = "realm_access.roles";

/// The shortest time between two key-set fetches caused by unknown `kid`s.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Clock skew tolerated on `exp` and `nbf` between the issuer and medlabel.
const LEEWAY_S: u64 = 30;

/// How long a request to the identity provider may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Signature algorithms accepted from an identity provider: asymmetric only.
const ACCEPTED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// How medlabel trusts an OIDC issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer URL exactly as tokens carry it in `iss` (a Keycloak realm URL).
    pub issuer: String,
    /// The value `aud` must contain (the client id medlabel is registered as).
    pub audience: String,
    /// The client the password grant is made for (MONAI Label's `client_id`).
    pub client_id: String,
    /// The secret of a confidential client, sent with the password grant.
    pub client_secret: Option<String>,
    /// Dot-separated path of the roles array in the token's claims.
    pub roles_claim: String,
    pub jwks_refresh_interval: Duration,
}

impl OidcConfig {
    /// Settings for `issuer` and `audience` with the defaults: the audience as client
    /// id, roles at Keycloak's `realm_access.roles`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        Self {
            issuer: issuer.into(),
            client_id: audience.clone(),
            audience,
            client_secret: None,
            roles_claim: DEFAULT_ROLES_CLAIM.into(),
            jwks_refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    token_endpoint: Option<String>,
}

/// A public key of the issuer and the algorithms it may verify.
struct Key {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The key set as last fetched.
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, std::sync::Arc<Key>>,
    fetched: Option<Instant>,
}

/// An OIDC issuer medlabel trusts.
pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    discovery: tokio::sync::OnceCell<Discovery>,
    keys: std::sync::RwLock<KeySet>,
    /// Held while the key set is fetched, so waiting requests share one fetch.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(UPSTREAM_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client without custom TLS settings builds");
        Self {
            config,
            http,
            discovery: tokio::sync::OnceCell::new(),
            keys: std::sync::RwLock::new(KeySet::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Fetches the discovery document and the key set now (a server's start-up check).
    pub async fn prefetch(&self) -> Result<(), AuthError> {
        let _fetching = self.fetching.lock().await;
        self.fetch_keys().await
    }

    /// The caller a token names, if the issuer signed it for this audience.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |why: &str| AuthError::InvalidToken(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|err| crate::token_error(&err))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(invalid(&format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("the token names no signing key (kid)"))?;
        let key = match self.key(kid) {
            Some(key) => key,
            None => {
                self.refresh_for(kid).await?;
                self.key(kid)
                    .ok_or_else(|| invalid("the token's signing key is not the issuer's"))?
            }
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(invalid(&format!(
                "algorithm {:?} does not match the signing key",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|err| crate::token_error(&err))?
            .claims;
        self.principal(&claims)
    }

    /// MONAI Label's password grant, relayed to the issuer's token endpoint.
    pub async fn login(&self, username: &str, password: &str) -> Result<TokenReply, AuthError> {
        let endpoint = self
            .discovery()
            .await?
            .token_endpoint
            .clone()
            .ok_or_else(|| AuthError::Upstream("the issuer has no token endpoint".into()))?;
        let mut form = vec![
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
            ("client_id", self.config.client_id.as_str()),
            ("scope", "openid"),
        ];
        if let Some(secret) = &self.config.client_secret {
            form.push(("client_secret", secret));
        }
        let response = self
            .http
            .post(&endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|err| AuthError::Upstream(format!("token endpoint: {err}")))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        // RFC 6749 §5.2: wrong credentials are `invalid_grant`, a 400 (401 by some).
        if status == reqwest::StatusCode::BAD_REQUEST || status == reqwest::StatusCode::UNAUTHORIZED
        {
            if body["error"] == "invalid_grant" {
                return Err(AuthError::BadLogin);
            }
            return Err(AuthError::Upstream(format!(
                "token endpoint refused the grant: {}",
                body["error_description"]
                    .as_str()
                    .or(body["error"].as_str())
                    .unwrap_or("no reason given")
            )));
        }
        if !status.is_success() {
            return Err(AuthError::Upstream(format!(
                "token endpoint answered {status}"
            )));
        }
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| AuthError::Upstream("the token endpoint sent no access_token".into()))?;
        self.verify(token).await?;
        Ok(TokenReply::bearer(
            token.to_owned(),
            body["expires_in"].as_u64().unwrap_or(0),
        ))
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let subject = text("sub")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::InvalidToken("the token has no subject".into()))?;
        let username = text("preferred_username")
            .or_else(|| text("username"))
            .or_else(|| text("email"))
            .unwrap_or_else(|| subject.clone());
        Ok(Principal {
            issuer: self.config.issuer.clone(),
            subject,
            username,
            email: text("email"),
            name: text("name"),
            roles: roles_at(claims, &self.config.roles_claim),
        })
    }

    fn key(&self, kid: &str) -> Option<std::sync::Arc<Key>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .get(kid)
            .cloned()
    }

    /// Fetches the key set again for an unknown `kid`, unless another request just did
    /// or the last fetch is more recent than the refresh interval.
    async fn refresh_for(&self, kid: &str) -> Result<(), AuthError> {
        let _fetching = self.fetching.lock().await;
        let recent = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            if keys.keys.contains_key(kid) {
                return Ok(());
            }
            keys.fetched
                .is_some_and(|at| at.elapsed() < self.config.jwks_refresh_interval)
        };
        if recent {
            return Ok(());
        }
        self.fetch_keys().await.map_err(|err| {
            tracing::warn!(error = %err, "fetching the issuer's keys failed");
            AuthError::InvalidToken("the issuer's keys could not be fetched".into())
        })
    }

    async fn fetch_keys(&self) -> Result<(), AuthError> {
        let uri = self.discovery().await?.jwks_uri.clone();
        let set: Value = self.get_json(&uri).await?;
        let mut keys = HashMap::new();
        for raw in set["keys"].as_array().into_iter().flatten() {
            // One key medlabel cannot use (an encryption key, an unknown type) must not
            // stop it from using the others.
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                continue;
            };
            if let Some((kid, key)) = usable(&jwk) {
                keys.insert(kid, std::sync::Arc::new(key));
            }
        }
        tracing::info!(keys = keys.len(), "fetched the issuer's signing keys");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = KeySet {
            keys,
            fetched: Some(Instant::now()),
        };
        Ok(())
    }

    async fn discovery(&self) -> Result<&Discovery, AuthError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let discovery: Discovery = self.get_json(&url).await?;
                // OIDC Discovery §4.3: the document must name the issuer it came from.
                if discovery.issuer != self.config.issuer {
                    return Err(AuthError::Upstream(format!(
                        "the discovery document names issuer {:?}, not {:?}",
                        discovery.issuer, self.config.issuer
                    )));
                }
                Ok(discovery)
            })
            .await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, AuthError> {
        let upstream = |err: reqwest::Error| AuthError::Upstream(format!("{url}: {err}"));
        self.http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(upstream)?
            .json()
            .await
            .map_err(upstream)
    }
}

/// A signing key of the set, with its id and the algorithms it may verify.
fn usable(jwk: &Jwk) -> Option<(String, Key)> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let kid = jwk.common.key_id.clone()?;
    let key = DecodingKey::from_jwk(jwk).ok()?;
    // The key's own `alg` when it names one, else every accepted one of its family.
    let candidates = match jwk.common.key_algorithm {
        Some(named) => vec![signing_algorithm(named)?],
        None => ACCEPTED.to_vec(),
    };
    let algorithms: Vec<Algorithm> = candidates
        .into_iter()
        .filter(|alg| ACCEPTED.contains(alg) && alg.family() == key.family())
        .collect();
    (!algorithms.is_empty()).then_some((kid, Key { key, algorithms }))
}

fn signing_algorithm(named: KeyAlgorithm) -> Option<Algorithm> {
    named.to_string().parse().ok()
}

/// The role names at the dot-separated `path` of `claims` (`[]` if absent).
fn roles_at(claims: &Map<String, Value>, path: &str) -> Vec<String> {
    let mut at = path.split('.');
    let first = at.next().and_then(|name| claims.get(name));
    let found = at.fold(first, |value, name| value.and_then(|v| v.get(name)));
    found
        .and_then(Value::as_array)
        .map(|roles| {
            roles
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_are_read_at_the_configured_path() {
        let claims = json!({
            "realm_access": {"roles": ["monailabel-user", "offline_access"]},
            "cognito:groups": ["monailabel-admin"],
            "roles": "not-a-list",
        });
        let claims = claims.as_object().unwrap();
        assert_eq!(
            roles_at(claims, "realm_access.roles"),
            ["monailabel-user", "offline_access"]
        );
        assert_eq!(roles_at(claims, "cognito:groups"), ["monailabel-admin"]);
        assert!(roles_at(claims, "roles").is_empty());
        assert!(roles_at(claims, "resource_access.x.roles").is_empty());
    }

    #[test]
    fn symmetric_and_encryption_keys_are_not_used() {
        let hmac: Jwk =
            serde_json::from_value(json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"})).unwrap();
        assert!(usable(&hmac).is_none());
        let rsa = json!({"kty": "RSA", "kid": "r", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"});
        let signing: Jwk = serde_json::from_value(rsa.clone()).unwrap();
        let (kid, key) = usable(&signing).unwrap();
        assert_eq!(kid, "r");
        assert!(key.algorithms.contains(&Algorithm::RS256));
        assert!(!key.algorithms.contains(&Algorithm::ES256));
        let mut enc = rsa;
        enc["use"] = json!("enc");
        let encryption: Jwk = serde_json::from_value(enc).unwrap();
        assert!(usable(&encryption).is_none());
    }
}
