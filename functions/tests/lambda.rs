//! The Lambda path answers exactly as the local one: the same requests, fed as API
//! Gateway HTTP API v2 events through `lambda_http`'s adapter, on an identical
//! datastore, give the same status, headers that matter and body.

mod common;

use axum::http::StatusCode;
use common::{Harness, Reply, Req};
use serde_json::json;

const HEADERS: &[&str] = &[
    "content-type",
    "content-disposition",
    "location",
    "allow",
    "x-request-id",
];

/// Replaces each harness's temp dir in bodies (image paths) with a fixed marker.
fn normalise(reply: &Reply, h: &Harness) -> Vec<u8> {
    let root = h.dir.path().to_string_lossy().into_owned();
    String::from_utf8_lossy(&reply.body)
        .replace(&root, "<root>")
        .into_bytes()
}

fn script() -> Vec<Req> {
    let ct = common::ct_volume(1);
    let ct = ct.as_slice();
    let label = common::label_volume(1, 40);
    vec![
        Req::new("GET", "/info/"),
        Req::new("GET", "/info"),
        Req::new("PUT", "/datastore/?image=ct_1").multipart(
            &[("params", r#"{"client_id":"py"}"#)],
            &[("file", "/home/u/ct_1.nii.gz", ct)],
        ),
        Req::new("PUT", "/datastore/label?image=ct_1&tag=final")
            .multipart(&[("params", "{}")], &[("label", "/tmp/l.nii.gz", &label)]),
        Req::new("GET", "/datastore/?output=all"),
        Req::new("GET", "/datastore/image?image=ct_1"),
        Req::new("HEAD", "/datastore/image?image=ct_1"),
        Req::new("GET", "/datastore/label?label=ct_1&tag=final"),
        Req::new("GET", "/datastore/image/info?image=ct_1"),
        Req::new("POST", "/activelearning/first").json(json!({"client_id": "x"})),
        Req::new("GET", "/datastore/image?image=..%2Fx"),
        Req::new("PUT", "/datastore/?image=y")
            .multipart(&[("params", "{bad")], &[("file", "y.nii.gz", ct)]),
        Req::new("GET", "/session/"),
        Req::new("GET", "/session/7c9e6679-7425-40de-944b-e07fc1f90ae7"),
        Req::new("POST", "/infer/seg?image=ct_1"),
        Req::new("GET", "/train/"),
        Req::new("DELETE", "/train/"),
        Req::new("GET", "/auth/"),
        Req::new("GET", "/nowhere"),
        Req::new("DELETE", "/datastore/?id=ct_1"),
        Req::new("GET", "/datastore/"),
    ]
}

#[tokio::test]
async fn lambda_answers_like_the_local_server() {
    let local = Harness::new().await;
    let lambda = Harness::new().await;
    for (n, req) in script().into_iter().enumerate() {
        let req = req.header("x-request-id", &format!("parity-{n}"));
        let a = local.send(req.request()).await;
        let b = lambda.send_lambda(&req).await;
        let what = format!("{} {}?{}", req.method, req.path, req.query);
        assert_eq!(a.status, b.status, "{what}");
        for name in HEADERS {
            assert_eq!(a.header(name), b.header(name), "{what}: header {name}");
        }
        if req.method != "HEAD" {
            assert_eq!(
                normalise(&a, &local),
                normalise(&b, &lambda),
                "{what}: body"
            );
        }
        assert_eq!(
            local.head().await,
            lambda.head().await,
            "{what}: events recorded"
        );
    }
}

#[tokio::test]
async fn a_named_stage_prefix_is_removed() {
    let h = Harness::new().await;
    let reply = common::send_lambda(h.app(), &Req::new("GET", "/info/"), Some("prod"), None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["version"], "0.8.5");
    let redirect =
        common::send_lambda(h.app(), &Req::new("GET", "/info"), Some("prod"), None).await;
    assert_eq!(redirect.status, StatusCode::TEMPORARY_REDIRECT);
}
