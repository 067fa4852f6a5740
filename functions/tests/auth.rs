//! Authentication and MONAI Label's roles, end to end through the routers: the role of
//! every route for every role (built-in users and a real OIDC issuer, through the local
//! router and the Lambda adapter), bad tokens and logins, ownership of sessions,
//! leases, annotator tags and request ids, and the audit trail of patient data.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::oidc::Issuer;
use common::{Harness, Reply, Req};
use medlabel_auth::{Access, Authenticator, Builtin, Oidc, Role};
use medlabel_functions::Config;
use medlabel_functions::catalogue::ROUTES;
use serde_json::{Value, json};

static CT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| common::ct_volume(1));

/// A harness whose routes check tokens of `auth`.
async fn harness(auth: Authenticator) -> Harness {
    Harness::with_config(Config {
        max_upload_bytes: 1 << 20,
        auth: Some(auth),
        ..Config::default()
    })
    .await
}

/// Built-in users, one per role, named after it (`user`, `annotator`, ...), password
/// `pw-<name>`; plus the folder holding them.
fn builtin() -> (tempfile::TempDir, Arc<Builtin>) {
    let home = tempfile::tempdir().unwrap();
    let builtin = Builtin::open(home.path(), Duration::from_secs(3600)).unwrap();
    for role in Role::ALL {
        let name = short(role);
        builtin
            .users()
            .add(name, &format!("pw-{name}"), &[role])
            .unwrap();
    }
    (home, Arc::new(builtin))
}

fn short(role: Role) -> &'static str {
    role.name().trim_start_matches("monailabel-")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `POST /auth/token` as the Python client sends it.
async fn login(h: &Harness, username: &str, password: &str) -> Reply {
    let form = format!("username={username}&password={password}&grant_type=password");
    h.send(
        Req::new("POST", "/auth/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .request(),
    )
    .await
}

async fn token(h: &Harness, username: &str) -> String {
    let reply = login(h, username, &format!("pw-{username}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    assert_eq!(reply.json()["token_type"], "Bearer");
    reply.json()["access_token"].as_str().unwrap().to_owned()
}

/// A request path for a declared route pattern.
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| match segment {
            "{model}" => "segmentation",
            "{strategy}" => "random",
            "{method}" => "dice",
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every catalogued route × no token and each role's token: 401 without a token, 403
/// with a role below the route's, and neither with a role that implies it (the handler
/// then answers whatever the minimal request deserves: 200, 404, 422...).
async fn role_matrix(h: &Harness, tokens: &[(Role, String)], lambda: bool) {
    let callers = std::iter::once(None).chain(tokens.iter().map(Some));
    let mut checked = 0;
    for caller in callers {
        for route in ROUTES {
            let mut req = Req::new(route.method, &concrete(route.path));
            if route.payload == medlabel_functions::catalogue::Payload::Json {
                req = req.json(json!({}));
            }
            if let Some((_, token)) = caller {
                req = req.header("authorization", &bearer(token));
            }
            let reply = if lambda {
                h.send_lambda(&req).await
            } else {
                h.send(req.request()).await
            };
            let what = format!(
                "{} {} as {:?} (lambda: {lambda}): {} {}",
                route.method,
                route.path,
                caller.map(|(role, _)| role.name()),
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            let refused =
                reply.status == StatusCode::UNAUTHORIZED || reply.status == StatusCode::FORBIDDEN;
            match (route.access, caller) {
                (Access::Public, _) => assert!(!refused, "{what}"),
                (_, None) => {
                    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
                    assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{what}");
                    if route.method != "HEAD" {
                        assert_eq!(reply.detail(), "Not authenticated", "{what}");
                    }
                }
                (Access::Authenticated, Some(_)) => assert!(!refused, "{what}"),
                (Access::Role(required), Some((role, _))) if role.implies(required) => {
                    assert!(!refused, "{what}")
                }
                (Access::Role(required), Some(_)) => {
                    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{what}");
                    if route.method != "HEAD" {
                        assert_eq!(
                            reply.detail(),
                            format!("Role \"{required}\" is required to perform this action"),
                            "{what}"
                        );
                    }
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * (tokens.len() + 1));
}

#[tokio::test]
async fn every_route_asks_for_monai_labels_role_with_builtin_users() {
    let (_home, issuer) = builtin();
    let h = harness(Authenticator::Builtin(issuer)).await;
    let mut tokens = Vec::new();
    for role in Role::ALL {
        tokens.push((role, token(&h, short(role)).await));
    }
    role_matrix(&h, &tokens, false).await;
    role_matrix(&h, &tokens, true).await;
}

#[tokio::test]
async fn every_route_asks_for_monai_labels_role_with_an_oidc_issuer() {
    let users: Vec<(&str, &str, Vec<&str>)> = Role::ALL
        .iter()
        .map(|r| (short(*r), "pw", vec![r.name(), "offline_access"]))
        .collect();
    let users: Vec<(&str, &str, &[&str])> = users
        .iter()
        .map(|(n, p, r)| (*n, *p, r.as_slice()))
        .collect();
    let mut issuer = Issuer::start(&users);
    let h = harness(Authenticator::Oidc(Arc::new(Oidc::new(issuer.config())))).await;
    let tokens: Vec<(Role, String)> = Role::ALL
        .iter()
        .map(|r| (*r, issuer.token(short(*r), json!({}))))
        .collect();
    role_matrix(&h, &tokens, false).await;
    role_matrix(&h, &tokens, true).await;
}

#[tokio::test]
async fn lambda_functions_fail_closed_without_a_token_of_their_own() {
    let (_home, issuer) = builtin();
    let h = harness(Authenticator::Builtin(issuer)).await;
    // API Gateway's claims alone (an authorizer that vouched for someone, a route
    // deployed without one) open nothing: the function checks the token itself.
    let claims_only = common::send_lambda(
        h.app(),
        &Req::new("GET", "/info/"),
        Some("prod"),
        Some("admin"),
    )
    .await;
    assert_eq!(claims_only.status, StatusCode::UNAUTHORIZED);
    let admin = token(&h, "admin").await;
    let with_token = common::send_lambda(
        h.app(),
        &Req::new("GET", "/info/").header("authorization", &bearer(&admin)),
        Some("prod"),
        None,
    )
    .await;
    assert_eq!(with_token.status, StatusCode::OK);
}

#[tokio::test]
async fn auth_routes_report_and_log_in_with_builtin_users() {
    let (_home, issuer) = builtin();
    let h = harness(Authenticator::Builtin(issuer)).await;
    let settings = h.send(Req::new("GET", "/auth/").request()).await;
    assert_eq!(settings.json()["enabled"], true);
    let annotator = token(&h, "annotator").await;
    let valid = h
        .send(
            Req::new("GET", "/auth/token/valid")
                .header("authorization", &bearer(&annotator))
                .request(),
        )
        .await;
    assert_eq!(valid.status, StatusCode::OK);
    assert_eq!(valid.json()["username"], "annotator");
    assert_eq!(valid.json()["roles"], json!(["monailabel-annotator"]));

    let head = h.head().await;
    for (user, password) in [("annotator", "wrong"), ("nobody", "pw-annotator")] {
        let refused = login(&h, user, password).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{user}");
        assert_eq!(refused.detail(), "Incorrect username or password");
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    }
    let missing = h
        .send(
            Req::new("POST", "/auth/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("username=annotator")
                .request(),
        )
        .await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(h.head().await, head, "a refused login recorded something");
}

/// A wrong password and an unknown user cost the same: both verify an Argon2id hash.
/// Each is timed by its fastest of several interleaved tries, which other work on the
/// machine can only slow down, never speed up.
#[tokio::test]
async fn a_wrong_user_cannot_be_told_from_a_wrong_password_by_timing() {
    let (_home, issuer) = builtin();
    let h = harness(Authenticator::Builtin(issuer)).await;
    let (mut wrong_password, mut unknown_user) = (Duration::MAX, Duration::MAX);
    for _ in 0..9 {
        let started = Instant::now();
        assert_eq!(
            login(&h, "admin", "nope").await.status,
            StatusCode::UNAUTHORIZED
        );
        wrong_password = wrong_password.min(started.elapsed());
        let started = Instant::now();
        assert_eq!(
            login(&h, "ghost", "nope").await.status,
            StatusCode::UNAUTHORIZED
        );
        unknown_user = unknown_user.min(started.elapsed());
    }
    let ratio = wrong_password.as_secs_f64() / unknown_user.as_secs_f64();
    // Skipping the hash for an unknown user would make it hundreds of times faster.
    assert!(
        (0.5..2.0).contains(&ratio),
        "wrong password {wrong_password:?}, unknown user {unknown_user:?}"
    );
    assert!(
        unknown_user > Duration::from_millis(2),
        "no hash was verified: {unknown_user:?}"
    );
}

fn b64(value: &Value) -> String {
    B64URL.encode(value.to_string())
}

#[tokio::test]
async fn bad_tokens_from_an_oidc_issuer_get_401_and_record_nothing() {
    let mut issuer = Issuer::start(&[("alice", "pw", &["monailabel-admin"])]);
    let h = harness(Authenticator::Oidc(Arc::new(Oidc::new(issuer.config())))).await;
    let write = |token: &str| {
        Req::new("PUT", "/session/")
            .multipart(&[], &[("files", "ct.nii.gz", CT.as_slice())])
            .header("authorization", &bearer(token))
    };
    let good = issuer.token("alice", json!({}));
    assert_eq!(h.send(write(&good).request()).await.status, StatusCode::OK);
    let head = h.head().await;

    // Another issuer process (its own keys) claiming to be ours.
    let mut impostor = Issuer::start(&[("alice", "pw", &["monailabel-admin"])]);
    let foreign = impostor.token("alice", json!({"iss": issuer.url}));
    // The good token with its claims changed and the signature kept.
    let parts: Vec<&str> = good.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("sub-mallory");
    let forged = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    let cases = [
        (
            issuer.token("alice", json!({"expires_in": -3600})),
            "the token has expired",
        ),
        (
            issuer.token("alice", json!({"aud": "another-client"})),
            "the token is for another audience",
        ),
        (
            issuer.token("alice", json!({"iss": "http://127.0.0.1:9/realms/other"})),
            "the token is from another issuer",
        ),
        (
            issuer.token("alice", json!({"no_kid": true})),
            "the token names no signing key (kid)",
        ),
        (foreign, "the token's signing key is not the issuer's"),
        (forged, "the signature does not match"),
        (unsigned, "the token is malformed"),
        ("not.a.jwt".to_owned(), "the token is malformed"),
    ];
    for (token, why) in cases {
        let reply = h.send(write(&token).request()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{why}");
        assert_eq!(
            reply.detail(),
            format!("Could not validate credentials: {why}")
        );
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    let basic = h
        .send(
            Req::new("GET", "/info/")
                .header("authorization", "Basic YWxpY2U6cHc=")
                .request(),
        )
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.head().await, head, "a refused request recorded something");
}

#[tokio::test]
async fn a_rotated_oidc_key_is_fetched_on_its_first_token() {
    let mut issuer = Issuer::start(&[("alice", "pw", &["monailabel-user"])]);
    let h = harness(Authenticator::Oidc(Arc::new(Oidc::new(issuer.config())))).await;
    let info = |token: &str| {
        Req::new("GET", "/info/")
            .header("authorization", &bearer(token))
            .request()
    };
    let before = issuer.token("alice", json!({}));
    assert_eq!(h.send(info(&before)).await.status, StatusCode::OK);
    let kid = issuer.rotate();
    // Unknown keys refetch the set at most once per second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = issuer.token("alice", json!({}));
    let header: Value =
        serde_json::from_slice(&B64URL.decode(after.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["kid"], kid.as_str());
    assert_eq!(h.send(info(&after)).await.status, StatusCode::OK);
    // The old key is still published, so its tokens still verify.
    assert_eq!(h.send(info(&before)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_password_grant_is_relayed_to_the_oidc_issuer() {
    let issuer = Issuer::start(&[("alice", "s3cret", &["monailabel-annotator"])]);
    let h = harness(Authenticator::Oidc(Arc::new(Oidc::new(issuer.config())))).await;
    let settings = h.send(Req::new("GET", "/auth/").request()).await;
    assert_eq!(
        settings.json(),
        json!({"enabled": true, "client_id": common::oidc::AUDIENCE, "realm": issuer.url})
    );
    let ok = login(&h, "alice", "s3cret").await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.json());
    let token = ok.json()["access_token"].as_str().unwrap().to_owned();
    let valid = h
        .send(
            Req::new("GET", "/auth/token/valid")
                .header("authorization", &bearer(&token))
                .request(),
        )
        .await;
    assert_eq!(valid.json()["username"], "alice");
    assert_eq!(valid.json()["email"], "alice@example.org");
    assert_eq!(valid.json()["roles"], json!(["monailabel-annotator"]));
    for (user, password) in [("alice", "wrong"), ("nobody", "s3cret")] {
        let refused = login(&h, user, password).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{user}");
        assert_eq!(refused.detail(), "Incorrect username or password");
    }
}

async fn upload_as(h: &Harness, token: &str, image: &str) {
    let reply = h
        .send(
            Req::new("PUT", &format!("/datastore/?image={image}"))
                .multipart(&[], &[("file", "ct.nii.gz", CT.as_slice())])
                .header("authorization", &bearer(token))
                .request(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

async fn save_label_as(h: &Harness, token: &str, query: &str, params: Value) -> Reply {
    h.send(
        Req::new("PUT", &format!("/datastore/label?{query}"))
            .multipart(
                &[("params", &params.to_string())],
                &[("label", "seg.nii.gz", &common::label_volume(1, 30))],
            )
            .header("authorization", &bearer(token))
            .request(),
    )
    .await
}

#[tokio::test]
async fn sessions_leases_and_annotator_tags_belong_to_the_authenticated_user() {
    let (_home, issuer) = builtin();
    issuer
        .users()
        .add("alice", "pw-alice", &[Role::Annotator])
        .unwrap();
    issuer
        .users()
        .add("bob", "pw-bob", &[Role::Annotator])
        .unwrap();
    let h = harness(Authenticator::Builtin(issuer)).await;
    let (alice, bob) = (token(&h, "alice").await, token(&h, "bob").await);
    let auth = |req: Req, token: &str| req.header("authorization", &bearer(token)).request();

    // Sessions: bob can neither read nor remove alice's, even with the same request id.
    let create = || {
        Req::new("PUT", "/session/")
            .multipart(
                &[("client_id", "shared")],
                &[("files", "ct.nii.gz", CT.as_slice())],
            )
            .header("x-request-id", "same-request")
    };
    let made = h.send(auth(create(), &alice)).await;
    assert_eq!(made.status, StatusCode::OK);
    let id = made.json()["session_id"].as_str().unwrap().to_owned();
    let replayed = h.send(auth(create(), &bob)).await;
    assert_eq!(replayed.status, StatusCode::OK);
    assert_ne!(
        replayed.json()["session_id"],
        id.as_str(),
        "bob got alice's session"
    );
    let head = h.head().await;
    let get = || Req::new("GET", &format!("/session/{id}"));
    assert_eq!(
        h.send(auth(get(), &bob)).await.status,
        StatusCode::NOT_FOUND
    );
    let delete = Req::new("DELETE", &format!("/session/{id}"));
    assert_eq!(
        h.send(auth(delete, &bob)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(h.head().await, head);
    assert_eq!(h.send(auth(get(), &alice)).await.status, StatusCode::OK);

    // Leases: the same client_id does not make bob alice's client.
    for image in ["a", "b"] {
        upload_as(&h, &alice, image).await;
    }
    let next = |token: &str| {
        h.send(auth(
            Req::new("POST", "/activelearning/first").json(json!({"client_id": "shared"})),
            token,
        ))
    };
    let to_alice = next(&alice).await.json()["id"].clone();
    let to_bob = next(&bob).await.json()["id"].clone();
    assert_ne!(to_alice, to_bob, "one lease handed to two users");
    assert_eq!(next(&alice).await.json()["id"], to_alice);
    let release = Req::new(
        "DELETE",
        &format!(
            "/activelearning/lease/{}?client_id=shared",
            to_alice.as_str().unwrap()
        ),
    );
    assert_eq!(h.send(auth(release, &bob)).await.json()["released"], false);

    // Annotator tags: named after the user, and nobody else's to write.
    let mine = save_label_as(&h, &alice, "image=a", json!({"annotator_tag": true})).await;
    assert_eq!(mine.status, StatusCode::OK);
    let tags = h
        .send(auth(Req::new("GET", "/datastore/?output=all"), &alice))
        .await;
    assert!(tags.json()["objects"]["a"]["labels"]["alice"].is_object());
    let head = h.head().await;
    let theirs = save_label_as(&h, &bob, "image=a&tag=alice", json!({})).await;
    assert_eq!(theirs.status, StatusCode::FORBIDDEN);
    assert_eq!(
        theirs.detail(),
        "Label tag \"alice\" belongs to another annotator"
    );
    assert_eq!(h.head().await, head);
    let own = save_label_as(&h, &bob, "image=a", json!({"annotator_tag": true})).await;
    assert_eq!(own.status, StatusCode::OK);
    let again = save_label_as(&h, &alice, "image=a&tag=alice", json!({})).await;
    assert_eq!(again.status, StatusCode::OK);
}

#[tokio::test]
async fn reads_of_patient_data_are_audited_and_listed_for_admins() {
    let (_home, issuer) = builtin();
    let h = harness(Authenticator::Builtin(issuer)).await;
    let (admin, annotator, user) = (
        token(&h, "admin").await,
        token(&h, "annotator").await,
        token(&h, "user").await,
    );
    let get = |path: &str, token: &str| {
        Req::new("GET", path)
            .header("authorization", &bearer(token))
            .request()
    };
    upload_as(&h, &annotator, "spleen_1").await;
    let saved = save_label_as(&h, &annotator, "image=spleen_1&tag=final", json!({})).await;
    assert_eq!(saved.status, StatusCode::OK);

    let head = h.head().await;
    let missing = h.send(get("/datastore/image?image=nothing", &user)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(h.head().await, head, "a failed read was recorded");

    let image = h.send(get("/datastore/image?image=spleen_1", &user)).await;
    assert_eq!(image.status, StatusCode::OK);
    assert_eq!(image.body, CT.as_slice());
    let label = h
        .send(get("/datastore/label?label=spleen_1&tag=final", &user))
        .await;
    assert_eq!(label.status, StatusCode::OK);
    let dataset = h.send(get("/datastore/dataset", &annotator)).await;
    assert_eq!(dataset.status, StatusCode::OK);
    assert_eq!(h.head().await, head + 3, "one event per read");

    assert_eq!(
        h.send(get("/logs/audit", &annotator)).await.status,
        StatusCode::FORBIDDEN
    );
    let trail = h
        .send(get(&format!("/logs/audit?after={head}"), &admin))
        .await;
    assert_eq!(trail.status, StatusCode::OK);
    let reads = trail.json()["reads"].as_array().unwrap().clone();
    let seen: Vec<(Value, Value)> = reads
        .iter()
        .map(|r| (r["user"].clone(), r["read"]["kind"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (json!("user"), json!("image")),
            (json!("user"), json!("label")),
            (json!("annotator"), json!("dataset")),
        ]
    );
    assert_eq!(reads[1]["read"]["version"], 1);
    assert_eq!(reads[2]["read"]["cases"], 1);
    assert!(
        reads[0]["subject"]
            .as_str()
            .unwrap()
            .starts_with("medlabel#")
    );
    // Paging: one at a time, `next` continues after the last one returned.
    let first = h
        .send(get(&format!("/logs/audit?after={head}&limit=1"), &admin))
        .await
        .json();
    assert_eq!(first["reads"].as_array().unwrap().len(), 1);
    let rest = h
        .send(get(&format!("/logs/audit?after={}", first["next"]), &admin))
        .await
        .json();
    assert_eq!(rest["reads"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn with_auth_off_every_caller_is_admin_and_reads_record_nothing() {
    let h = Harness::new().await;
    assert_eq!(
        h.send(Req::new("GET", "/auth/").request()).await.status,
        StatusCode::NOT_FOUND
    );
    let upload = h
        .send(
            Req::new("PUT", "/datastore/?image=ct")
                .multipart(&[], &[("file", "ct.nii.gz", CT.as_slice())])
                .request(),
        )
        .await;
    assert_eq!(upload.status, StatusCode::OK);
    let head = h.head().await;
    let image = h
        .send(Req::new("GET", "/datastore/image?image=ct").request())
        .await;
    assert_eq!(image.status, StatusCode::OK);
    let delete = h
        .send(Req::new("DELETE", "/datastore/image?id=ct").request())
        .await;
    assert_eq!(delete.status, StatusCode::OK);
    assert_eq!(h.head().await, head + 1, "the read was recorded");
}
