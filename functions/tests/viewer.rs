//! The viewer's routes: a built OHIF folder served at `/ohif/`, DICOMweb relayed to a
//! real HTTP server on loopback (standing in for Orthanc), and `/logs/gpu`; without
//! configuration each answers 503 naming what is missing.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::any;
use common::{Harness, Req};
use medlabel_functions::state::{Config, Credentials, DicomWeb};

/// What the stand-in DICOMweb server saw of one request.
#[derive(Debug, Clone, Default)]
struct Seen {
    method: String,
    uri: String,
    accept: Option<String>,
    content_type: Option<String>,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// A DICOMweb server on a free loopback port that records requests and answers
/// `application/dicom+json`. Returns its base URL (with a path, as servers have).
async fn dicomweb_server() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        any(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let log = log.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    log.lock().unwrap().push(Seen {
                        method: method.to_string(),
                        uri: uri.to_string(),
                        accept: header("accept"),
                        content_type: header("content-type"),
                        authorization: header("authorization"),
                        body: body.to_vec(),
                    });
                    (
                        StatusCode::OK,
                        [("content-type", "application/dicom+json")],
                        r#"[{"0020000D":{"vr":"UI","Value":["1.2.3"]}}]"#,
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/dicom-web"), seen)
}

#[tokio::test]
async fn unconfigured_viewer_routes_say_what_is_missing() {
    let h = Harness::new().await;
    for (path, option) in [
        ("/ohif/", "--ohif"),
        ("/ohif/app.js", "--ohif"),
        ("/proxy/dicom/qido/studies", "--dicomweb"),
    ] {
        let reply = h.send(Req::new("GET", path).request()).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(
            reply.detail().contains(option),
            "{path}: {}",
            reply.detail()
        );
    }
    let gpu = h.send(Req::new("GET", "/logs/gpu").request()).await;
    let has_nvidia_smi = std::process::Command::new("nvidia-smi")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_nvidia_smi {
        assert_eq!(gpu.status, StatusCode::OK);
        assert!(String::from_utf8_lossy(&gpu.body).contains("NVIDIA"));
    } else {
        assert_eq!(gpu.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(gpu.detail().contains("nvidia-smi"), "{}", gpu.detail());
    }
}

#[tokio::test]
async fn ohif_files_are_served_and_other_paths_get_the_index() {
    let site = tempfile::tempdir().unwrap();
    let ohif = site.path().join("ohif");
    std::fs::create_dir_all(&ohif).unwrap();
    std::fs::write(ohif.join("index.html"), "<html>OHIF</html>").unwrap();
    std::fs::write(ohif.join("app.js"), "console.log('viewer')").unwrap();
    std::fs::write(site.path().join("secret.txt"), "not for the web").unwrap();
    let h = Harness::with_config(Config {
        ohif_dir: Some(ohif),
        ..Config::default()
    })
    .await;

    let index = h.send(Req::new("GET", "/ohif/").request()).await;
    assert_eq!(
        (index.status, index.body.as_slice()),
        (StatusCode::OK, &b"<html>OHIF</html>"[..])
    );
    let script = h.send(Req::new("GET", "/ohif/app.js").request()).await;
    assert_eq!(script.body, b"console.log('viewer')");
    assert!(
        script
            .header("content-type")
            .unwrap()
            .contains("javascript")
    );
    let routed = h
        .send(Req::new("GET", "/ohif/viewer/1.2.3").request())
        .await;
    assert_eq!(routed.body, b"<html>OHIF</html>");
    let redirect = h.send(Req::new("GET", "/ohif").request()).await;
    assert_eq!(redirect.status, StatusCode::TEMPORARY_REDIRECT);
    for escape in ["/ohif/..%2Fsecret.txt", "/ohif/%2e%2e/secret.txt"] {
        let reply = h.send(Req::new("GET", escape).request()).await;
        assert_ne!(reply.body, b"not for the web", "{escape} left the folder");
    }
}

#[tokio::test]
async fn dicomweb_requests_are_relayed_with_query_body_and_credentials() {
    let (url, seen) = dicomweb_server().await;
    let h = Harness::with_config(Config {
        dicomweb: Some(DicomWeb {
            credentials: Some(Credentials::Basic {
                username: "orthanc".into(),
                password: "s3cret".into(),
            }),
            ..DicomWeb::new(&url)
        }),
        ..Config::default()
    })
    .await;
    let head = h.head().await;

    let qido = h
        .send(
            Req::new("GET", "/proxy/dicom/qido/studies?PatientID=7&limit=2")
                .header("accept", "application/dicom+json")
                .request(),
        )
        .await;
    assert_eq!(qido.status, StatusCode::OK);
    assert_eq!(qido.header("content-type"), Some("application/dicom+json"));
    assert_eq!(qido.json()[0]["0020000D"]["Value"][0], "1.2.3");

    let stow = h
        .send(
            Req::new("POST", "/proxy/dicom/stow/studies")
                .header(
                    "content-type",
                    "multipart/related; type=\"application/dicom\"",
                )
                .body(b"\x00DICM instance bytes".to_vec())
                .request(),
        )
        .await;
    assert_eq!(stow.status, StatusCode::OK);
    let wado = h
        .send(Req::new("GET", "/proxy/dicom/studies/1.2.3/series").request())
        .await;
    assert_eq!(wado.status, StatusCode::OK);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("GET", "/dicom-web/studies?PatientID=7&limit=2")
    );
    assert_eq!(seen[0].accept.as_deref(), Some("application/dicom+json"));
    // orthanc:s3cret in base64.
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Basic b3J0aGFuYzpzM2NyZXQ=")
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].uri.as_str()),
        ("POST", "/dicom-web/studies")
    );
    assert_eq!(seen[1].body, b"\x00DICM instance bytes");
    assert!(
        seen[1]
            .content_type
            .as_deref()
            .unwrap()
            .starts_with("multipart/related")
    );
    assert_eq!(seen[2].uri, "/dicom-web/studies/1.2.3/series");
    assert_eq!(h.head().await, head, "relaying records nothing");
}

#[tokio::test]
async fn dicomweb_paths_cannot_climb_and_a_dead_server_is_a_502() {
    let (url, seen) = dicomweb_server().await;
    let h = Harness::with_config(Config {
        dicomweb: Some(DicomWeb::new(&url)),
        ..Config::default()
    })
    .await;
    for path in [
        "/proxy/dicom/qido/..%2Fadmin",
        "/proxy/dicom/wado/studies/%2e%2e/%2e%2e/tools",
    ] {
        let reply = h.send(Req::new("GET", path).request()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the server"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let h = Harness::with_config(Config {
        dicomweb: Some(DicomWeb::new(&dead)),
        ..Config::default()
    })
    .await;
    let reply = h
        .send(Req::new("GET", "/proxy/dicom/studies").request())
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.detail().contains("unreachable"), "{}", reply.detail());
}
