//! Router tests: every function's routes on the all-in-one app over an embedded
//! datastore, with requests shaped as MONAI Label's clients send them.

mod common;

use std::io::Read;

use axum::http::StatusCode;
use common::{Harness, Req};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

static CT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| common::ct_volume(1));
static MASK: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| common::label_volume(1, 100));

async fn upload(h: &Harness, query: &str, file_name: &str, bytes: &[u8]) -> common::Reply {
    h.send(
        Req::new("PUT", &format!("/datastore/{query}"))
            .multipart(
                &[("params", r#"{"client_id":"slicer"}"#)],
                &[("file", file_name, bytes)],
            )
            .request(),
    )
    .await
}

async fn save_label(h: &Harness, image: &str, tag: &str, bytes: &[u8]) -> common::Reply {
    h.send(
        Req::new("PUT", &format!("/datastore/label?image={image}&tag={tag}"))
            .multipart(
                &[("params", r#"{"label_info":[{"name":"spleen","idx":1}]}"#)],
                &[("label", "/tmp/x/label_spleen.nii.gz", bytes)],
            )
            .request(),
    )
    .await
}

#[tokio::test]
async fn info_reports_monai_shape_and_datastore_status() {
    let h = Harness::new().await;
    upload(&h, "?image=ct_1", "/home/me/ct_1.nii.gz", CT.as_slice()).await;
    let reply = h.send(Req::new("GET", "/info/").request()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let info = reply.json();
    assert_eq!(info["version"], "0.8.5");
    // No model, only what needs none: the scribbles methods.
    assert_eq!(
        info["models"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["Histogram+GraphCut"]
    );
    assert_eq!(info["models"]["Histogram+GraphCut"]["type"], "scribbles");
    assert_eq!(info["labels"], json!([]));
    assert_eq!(info["trainers"], json!({}));
    assert_eq!(info["datastore"]["total"], 1);
    assert_eq!(info["datastore"]["completed"], 0);
    for strategy in ["first", "last", "random"] {
        assert!(info["strategies"][strategy]["description"].is_string());
    }
    let redirect = h.send(Req::new("GET", "/info?x=1").request()).await;
    assert_eq!(redirect.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(redirect.header("location"), Some("/info/?x=1"));
    let openapi = h
        .send(Req::new("GET", "/openapi.json").request())
        .await
        .json();
    assert!(openapi["paths"]["/datastore/label"]["put"].is_object());
    let docs = h.send(Req::new("GET", "/docs").request()).await;
    assert!(String::from_utf8_lossy(&docs.body).contains("/activelearning/{strategy}"));
}

#[tokio::test]
async fn datastore_round_trip() {
    let h = Harness::new().await;
    // The Python client: PUT /datastore/?image=<id>, full local path as file name.
    let reply = upload(
        &h,
        "?image=spleen_3",
        "/data/in/whatever.nii.gz",
        CT.as_slice(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply);
    assert_eq!(reply.json(), json!({"image": "spleen_3"}));
    // Without an id: the base name minus all suffixes.
    let reply = h
        .send(
            Req::new("PUT", "/datastore/image")
                .multipart(&[], &[("file", "C:\\scans\\a.b.nii.gz", CT.as_slice())])
                .request(),
        )
        .await;
    assert_eq!(reply.json(), json!({"image": "a.b"}));

    let stats = h
        .send(Req::new("GET", "/datastore/").request())
        .await
        .json();
    assert_eq!(stats["total"], 2);
    let all = h
        .send(Req::new("GET", "/datastore/?output=all").request())
        .await
        .json();
    let spleen = &all["objects"]["spleen_3"]["image"];
    assert_eq!(spleen["ext"], ".nii.gz");
    assert_eq!(spleen["info"]["name"], "spleen_3.nii.gz");
    assert_eq!(spleen["info"]["client_id"], "slicer");
    assert_eq!(spleen["info"]["user"], "admin");

    // HEAD with both checksum notations; a wrong one is 404.
    let sha = hex::encode(Sha256::digest(CT.as_slice()));
    for sum in [sha.clone(), format!("SHA256:{sha}"), String::new()] {
        let reply = h
            .send(
                Req::new(
                    "HEAD",
                    &format!("/datastore/image?image=spleen_3&check_sum={sum}"),
                )
                .request(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "check_sum {sum}");
    }
    let reply = h
        .send(
            Req::new(
                "HEAD",
                "/datastore/image?image=spleen_3&check_sum=SHA256:00",
            )
            .request(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let image = h
        .send(Req::new("GET", "/datastore/image?image=spleen_3").request())
        .await;
    assert_eq!(image.body, CT.as_slice());
    assert_eq!(
        image.header("content-disposition"),
        Some("attachment; filename=\"spleen_3.nii.gz\"")
    );
    assert_eq!(
        image.header("content-type"),
        Some("application/octet-stream")
    );

    // Image info: url-encoded form `info`.
    let reply = h
        .send(
            Req::new("PUT", "/datastore/image/info?image=spleen_3")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("info=%7B%22PatientID%22%3A%22p7%22%7D")
                .request(),
        )
        .await;
    assert_eq!((reply.status, reply.json()), (StatusCode::OK, Value::Null));
    let info = h
        .send(Req::new("GET", "/datastore/image/info?image=spleen_3").request())
        .await
        .json();
    assert_eq!(info["PatientID"], "p7");
    assert!(info["path"].as_str().unwrap().ends_with(".nii.gz"));
    let unknown = h
        .send(Req::new("GET", "/datastore/image/info?image=nope").request())
        .await;
    assert_eq!(
        (unknown.status, unknown.json()),
        (StatusCode::OK, json!({}))
    );

    // Labels: empty tag means final.
    let reply = save_label(&h, "spleen_3", "", MASK.as_slice()).await;
    assert_eq!(
        reply.json(),
        json!({"image": "spleen_3", "label": "spleen_3"})
    );
    let exists = h
        .send(Req::new("HEAD", "/datastore/label?image=spleen_3&tag=final").request())
        .await;
    assert_eq!(exists.status, StatusCode::OK);
    let missing = h
        .send(Req::new("HEAD", "/datastore/label?image=a.b&tag=final").request())
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let label = h
        .send(Req::new("GET", "/datastore/label?label=spleen_3&tag=final").request())
        .await;
    assert_eq!(label.body, MASK.as_slice());
    assert_eq!(
        label.header("content-disposition"),
        Some("attachment; filename=\"spleen_3.nii.gz\"")
    );
    let reply = h
        .send(
            Req::new("PUT", "/datastore/updatelabelinfo?label=spleen_3&tag=final")
                .multipart(&[("params", r#"{"reviewed":true}"#)], &[])
                .request(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let label_info = h
        .send(Req::new("GET", "/datastore/label/info?label=spleen_3&tag=final").request())
        .await
        .json();
    assert_eq!(label_info["reviewed"], true);
    assert_eq!(label_info["label_info"][0]["name"], "spleen");

    let train = h
        .send(Req::new("GET", "/datastore/?output=train").request())
        .await
        .json();
    assert_eq!(train.as_array().unwrap().len(), 1);
    let stats = h
        .send(Req::new("GET", "/datastore/").request())
        .await
        .json();
    assert_eq!(stats["completed"], 1);
    assert_eq!(stats["label_tags"]["final"], 1);

    let zip = h
        .send(Req::new("GET", "/datastore/dataset").request())
        .await;
    assert_eq!(zip.status, StatusCode::OK);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip.body.clone())).unwrap();
    let mut label_bytes = Vec::new();
    archive
        .by_name("label/spleen_3.nii.gz")
        .unwrap()
        .read_to_end(&mut label_bytes)
        .unwrap();
    assert_eq!(label_bytes, MASK.as_slice());

    let reply = h
        .send(Req::new("DELETE", "/datastore/label?id=spleen_3&tag=final").request())
        .await;
    assert_eq!(reply.json(), json!({}));
    let reply = h
        .send(Req::new("DELETE", "/datastore/?id=spleen_3").request())
        .await;
    assert_eq!(reply.json(), json!({}));
    let gone = h
        .send(Req::new("GET", "/datastore/image?image=spleen_3").request())
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.detail(), "Image NOT Found or is a directory");
}

#[tokio::test]
async fn sessions_round_trip_and_expire() {
    let h = Harness::new().await;
    let reply = h
        .send(
            Req::new("PUT", "/session/?expiry=120")
                .multipart(
                    &[("client_id", "c1")],
                    &[("files", "/x/ct.nii.gz", CT.as_slice())],
                )
                .request(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let created = reply.json();
    let id = created["session_id"].as_str().unwrap().to_owned();
    assert_eq!(created["session_info"]["expiry"], 120);
    assert_eq!(created["session_info"]["meta"]["client_id"], "c1");

    let got = h
        .send(Req::new("GET", &format!("/session/{id}")).request())
        .await;
    assert_eq!(got.json()["name"], id.as_str());
    let file = h
        .send(Req::new("GET", &format!("/session/{id}?image=true")).request())
        .await;
    assert_eq!(file.body, CT.as_slice());
    assert_eq!(
        file.header("content-disposition"),
        Some("attachment; filename=\"ct.nii.gz\"")
    );

    // Wrong method on the collection, as in MONAI Label.
    let reply = h.send(Req::new("GET", "/session/").request()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), Some("PUT"));
    assert_eq!(reply.json(), json!({"detail": "Method Not Allowed"}));

    h.clock.advance_ms(121_000);
    let expired = h
        .send(Req::new("GET", &format!("/session/{id}")).request())
        .await;
    assert_eq!(expired.status, StatusCode::NOT_FOUND);
    assert_eq!(expired.detail(), format!("Session ({id}) Not Found"));

    let reply = h
        .send(
            Req::new("PUT", "/session/")
                .multipart(&[], &[("files", "b.nii.gz", CT.as_slice())])
                .request(),
        )
        .await;
    let id = reply.json()["session_id"].as_str().unwrap().to_owned();
    let removed = h
        .send(Req::new("DELETE", &format!("/session/{id}")).request())
        .await;
    assert_eq!(removed.json()["name"], id.as_str());
    let again = h
        .send(Req::new("DELETE", &format!("/session/{id}")).request())
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let none = h
        .send(Req::new("PUT", "/session/").multipart(&[], &[]).request())
        .await;
    assert_eq!(none.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(none.json()["detail"][0]["loc"], json!(["body", "files"]));
}

#[tokio::test]
async fn strategies_hand_out_unlabeled_images() {
    let h = Harness::new().await;
    for id in ["b", "a", "c"] {
        upload(&h, &format!("?image={id}"), "x.nii.gz", CT.as_slice()).await;
    }
    let next = |strategy: &'static str, client: &'static str| {
        let app = h.app();
        async move {
            common::send(
                app,
                Req::new("POST", &format!("/activelearning/{strategy}"))
                    .json(json!({"client_id": client}))
                    .request(),
            )
            .await
            .json()
        }
    };
    let release = |image: &'static str, client: &'static str| {
        let app = h.app();
        async move {
            common::send(
                app,
                Req::new(
                    "DELETE",
                    &format!("/activelearning/lease/{image}?client_id={client}"),
                )
                .request(),
            )
            .await
            .json()
        }
    };
    assert_eq!(next("first", "ohif").await["id"], "a");
    let last = next("last", "slicer").await;
    assert_eq!(last["id"], "c");
    assert_eq!(last["strategy"]["last"]["client_id"], "slicer");
    assert_eq!(last["strategy"]["last"]["ts"], 1_750_000_000);
    assert!(last["path"].as_str().unwrap().ends_with(".nii.gz"));
    assert_eq!(last["name"], "c.nii.gz");

    // Handed-out images are leased: the holder gets its image back, nobody else gets it.
    assert_eq!(next("random", "ohif").await["id"], "a");
    assert_eq!(next("first", "third").await["id"], "b");
    assert_eq!(next("first", "fourth").await, json!({}));
    assert_eq!(release("a", "slicer").await, json!({"released": false}));
    assert_eq!(release("a", "ohif").await, json!({"released": true}));
    assert_eq!(next("first", "fourth").await["id"], "a");

    // Once the leases expire, random prefers images it has not served recently: one
    // annotator giving each image back serves all three.
    h.clock.advance_ms(31 * 60 * 1000);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let id = next("random", "solo").await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let image: &'static str = match id.as_str() {
            "a" => "a",
            "b" => "b",
            _ => "c",
        };
        assert_eq!(release(image, "solo").await, json!({"released": true}));
        seen.insert(id);
        h.clock.advance_ms(1000);
    }
    assert_eq!(seen.len(), 3, "random never served some images: {seen:?}");

    // A retry with the same request id records nothing and names the same image.
    let retry = Req::new("POST", "/activelearning/random")
        .header("x-request-id", "retry-1")
        .json(json!({}));
    let first = h.send(retry.request()).await;
    let head = h.head().await;
    let second = h.send(retry.request()).await;
    assert_eq!(h.head().await, head);
    assert_eq!(first.json()["id"], second.json()["id"]);
    assert_eq!(second.header("x-request-id"), Some("retry-1"));

    for id in ["a", "b", "c"] {
        save_label(&h, id, "final", MASK.as_slice()).await;
    }
    assert_eq!(next("first", "ohif").await, json!({}));
    let unknown = h
        .send(Req::new("POST", "/activelearning/nope").request())
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn model_routes_without_models_answer_like_monai_label() {
    let h = Harness::new().await;
    upload(&h, "?image=ct", "ct.nii.gz", CT.as_slice()).await;
    let head = h.head().await;
    let cases: &[(&str, &str, StatusCode)] = &[
        (
            "POST",
            "/infer/segmentation?image=ct",
            StatusCode::NOT_FOUND,
        ),
        ("POST", "/train/segmentation", StatusCode::NOT_FOUND),
        ("GET", "/train/", StatusCode::NOT_FOUND),
        ("GET", "/scoring/", StatusCode::NOT_FOUND),
        ("GET", "/batch/infer", StatusCode::NOT_FOUND),
        ("POST", "/scoring/dice", StatusCode::NOT_FOUND),
        ("POST", "/batch/infer/segmentation", StatusCode::NOT_FOUND),
        ("GET", "/model/segmentation", StatusCode::NOT_FOUND),
        ("GET", "/model/info/segmentation", StatusCode::NOT_FOUND),
        ("GET", "/auth/", StatusCode::NOT_FOUND),
    ];
    for (method, path, status) in cases {
        let reply = h.send(Req::new(method, path).request()).await;
        assert_eq!(reply.status, *status, "{method} {path}");
        assert!(!reply.detail().is_empty(), "{method} {path}: no detail");
    }
    assert_eq!(
        h.send(Req::new("GET", "/train/").request()).await.detail(),
        "No Train Tasks Found"
    );
    for (method, path, body) in [
        ("DELETE", "/train/", Value::Null),
        ("DELETE", "/scoring/", Value::Null),
        ("DELETE", "/batch/infer", Value::Null),
        ("POST", "/train/", json!({})),
        ("POST", "/scoring/", json!({})),
        ("POST", "/reload", json!({})),
    ] {
        let reply = h.send(Req::new(method, path).request()).await;
        assert_eq!(
            (reply.status, reply.json()),
            (StatusCode::OK, body),
            "{method} {path}"
        );
    }
    let redirect = h.send(Req::new("POST", "/train").request()).await;
    assert_eq!(redirect.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(redirect.header("location"), Some("/train/"));
    assert_eq!(h.head().await, head);
}

#[tokio::test]
async fn logs_serve_recent_lines() {
    medlabel_functions::logging::init(false);
    let h = Harness::new().await;
    h.send(
        Req::new("GET", "/info/")
            .header("x-request-id", "log-probe-7")
            .request(),
    )
    .await;
    let text = h
        .send(Req::new("GET", "/logs/?text=true&lines=0").request())
        .await;
    assert_eq!(text.status, StatusCode::OK);
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let body = String::from_utf8_lossy(&text.body);
    assert!(
        body.lines()
            .any(|l| l.contains("log-probe-7") && l.contains("request served")),
        "no line for the request: {body}"
    );
    let html = h.send(Req::new("GET", "/logs/").request()).await;
    assert!(
        html.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
}

#[tokio::test]
async fn every_catalogued_route_is_served() {
    let h = Harness::new().await;
    // Auth routes are deliberately 404 "Not Found" while auth is off.
    for route in medlabel_functions::catalogue::ROUTES
        .iter()
        .filter(|r| r.function != "auth")
    {
        let path = route
            .path
            .replace("{model}", "m")
            .replace("{id}", "s")
            .replace("{strategy}", "first")
            .replace("{method}", "dice");
        let reply = h.send(Req::new(route.method, &path).request()).await;
        assert_ne!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{} {}",
            route.method,
            route.path
        );
        assert_ne!(
            reply.status,
            StatusCode::TEMPORARY_REDIRECT,
            "{} {}",
            route.method,
            route.path
        );
        if reply.status == StatusCode::NOT_FOUND && !reply.body.is_empty() {
            assert_ne!(
                reply.detail(),
                "Not Found",
                "{} {} is not routed",
                route.method,
                route.path
            );
        }
    }
}
