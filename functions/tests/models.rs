//! The model file routes over a published model (the repository's starter model):
//! download, info, upload of new weights as the next version, delete; and every bad
//! upload refused with nothing recorded.

mod common;

use std::path::PathBuf;

use axum::http::StatusCode;
use common::{Harness, Req};
use medlabel_events::ModelName;
use medlabel_events::models::Models;
use medlabel_functions::model_import::publish_model_folder;
use sha2::{Digest, Sha256};

const MODEL: &str = "segmentation_spleen";

fn starter() -> PathBuf {
    common::manifest_dir()
        .join("../gpu-runner/models")
        .join(MODEL)
}

/// A harness whose log has the starter model published as version 1.
async fn published() -> (Harness, Vec<u8>) {
    let h = Harness::with_limit(8 << 20).await;
    publish_model_folder(
        &h.state.models,
        h.state.datastore.blob_store().as_ref(),
        &starter(),
    )
    .await
    .unwrap();
    let weights = std::fs::read(starter().join("model.safetensors")).unwrap();
    (h, weights)
}

fn upload(weights: &[u8]) -> Req {
    Req::new("PUT", &format!("/model/{MODEL}")).multipart(&[], &[("file", "model.pt", weights)])
}

fn checksum(bytes: &[u8]) -> String {
    format!("SHA256:{}", hex::encode(Sha256::digest(bytes)))
}

#[tokio::test]
async fn uploaded_weights_become_the_next_version() {
    let (h, weights) = published().await;
    let download = h
        .send(Req::new("GET", &format!("/model/{MODEL}")).request())
        .await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.body, weights);

    // Same tensors, different values: the last data byte changed.
    let mut retrained = weights.clone();
    *retrained.last_mut().unwrap() ^= 0x5a;
    let reply = h.send(upload(&retrained).request()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.detail());
    assert_eq!(reply.json()["checksum"], checksum(&retrained));

    let download = h
        .send(Req::new("GET", &format!("/model/{MODEL}")).request())
        .await;
    assert_eq!(download.body, retrained);
    let info = h
        .send(Req::new("GET", &format!("/model/info/{MODEL}")).request())
        .await
        .json();
    assert_eq!(info["checksum"], checksum(&retrained));
    // Another service folding the same log sees the same version.
    let models = Models::new(
        h.state.datastore.event_store().clone(),
        h.state.datastore.clock().clone(),
    );
    let model = models
        .current(&ModelName::parse(MODEL).unwrap())
        .await
        .unwrap();
    let (version, current) = (model.version, model.weights.checksum());
    assert_eq!((version, current), (2, checksum(&retrained)));

    // Deleted models take no uploads.
    let delete = h
        .send(Req::new("DELETE", &format!("/model/{MODEL}")).request())
        .await;
    assert_eq!(delete.status, StatusCode::OK);
    let reply = h.send(upload(&retrained).request()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_uploads_are_refused_and_change_nothing() {
    let (h, weights) = published().await;
    let head = h.head().await;

    let mut reshaped = weights.clone();
    // The header names shapes as JSON: turn the first output-channel count 8 into 9.
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(weights[8..8 + header_len].to_vec()).unwrap();
    let at = header
        .find("\"shape\":[8,")
        .expect("a tensor with 8 channels");
    reshaped[8 + at + "\"shape\":[".len()] = b'9';

    let cases: Vec<(&str, Req, StatusCode, &str)> = vec![
        (
            "truncated",
            upload(&weights[..weights.len() - 10]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "outside",
        ),
        (
            "not safetensors",
            upload(b"\x89PNG\r\n\x1a\n not a model"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "header length",
        ),
        (
            "another network",
            upload(&reshaped),
            StatusCode::UNPROCESSABLE_ENTITY,
            "the model's network needs",
        ),
        (
            "no file",
            Req::new("PUT", &format!("/model/{MODEL}")).multipart(&[("params", "{}")], &[]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
        ),
        (
            "unknown model",
            Req::new("PUT", "/model/unknown").multipart(&[], &[("file", "m.pt", &weights)]),
            StatusCode::NOT_FOUND,
            "NOT configured",
        ),
    ];
    for (what, request, status, detail) in cases {
        let reply = h.send(request.request()).await;
        assert_eq!(reply.status, status, "{what}: {:?}", reply.json());
        let body = String::from_utf8_lossy(&reply.body);
        assert!(body.contains(detail), "{what}: {body}");
        assert_eq!(h.head().await, head, "{what} recorded something");
    }
    let download = h
        .send(Req::new("GET", &format!("/model/{MODEL}")).request())
        .await;
    assert_eq!(download.body, weights, "the model is unchanged");
}
