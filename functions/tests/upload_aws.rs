//! Presigned uploads on the cloud backend (DynamoDB + S3 on the AWS emulator): the
//! route hands out a URL, the client PUTs to it, the confirm step checks the object and
//! records the image or label. Bad confirms record nothing.

mod common;

use std::sync::Arc;

use common::Req;
use medlabel_functions::{AppState, Config};
use medlabel_tests::emulator::aws;
use serde_json::json;

async fn cloud_state(max_upload_bytes: u64) -> AppState {
    let env = aws().await;
    let temp = tempfile::tempdir().unwrap().keep();
    let config = Config {
        max_upload_bytes,
        temp_dir: temp,
        ..Config::default()
    };
    AppState::open(
        Arc::new(env.event_store().await),
        Arc::new(env.blob_store().await),
        config,
    )
    .await
    .unwrap()
}

async fn head(state: &AppState) -> u64 {
    state.datastore.event_store().head().await.unwrap()
}

async fn put(url: &str, bytes: Vec<u8>) {
    let response = reqwest::Client::new()
        .put(url)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

#[tokio::test]
async fn presigned_upload_then_confirm_records_the_image_and_label() {
    let state = cloud_state(1 << 20).await;
    let app = || medlabel_functions::app(state.clone());
    let started = common::send(app(), Req::new("POST", "/datastore/upload").request()).await;
    assert_eq!(started.status, 200);
    let (id, url) = (
        started.json()["upload_id"].as_str().unwrap().to_owned(),
        started.json()["url"].as_str().unwrap().to_owned(),
    );
    let volume: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    put(&url, volume.clone()).await;

    let before = head(&state).await;
    // Unknown upload ids and traversal attempts are refused and record nothing.
    for bad in ["no-such-upload", "..%2F..%2Fetc"] {
        let reply = common::send(
            app(),
            Req::new("POST", &format!("/datastore/upload/{bad}/image?image=ct"))
                .json(json!({}))
                .request(),
        )
        .await;
        assert!(reply.status.is_client_error(), "{bad}: {}", reply.status);
    }
    let unknown_image = common::send(
        app(),
        Req::new(
            "POST",
            &format!("/datastore/upload/{id}/label?image=missing&tag=final"),
        )
        .json(json!({}))
        .request(),
    )
    .await;
    assert_eq!(unknown_image.status, 404);
    assert_eq!(head(&state).await, before);

    let confirmed = common::send(
        app(),
        Req::new(
            "POST",
            &format!("/datastore/upload/{id}/image?image=ct&ext=.nii.gz"),
        )
        .json(json!({"client_id": "big-uploader"}))
        .request(),
    )
    .await;
    assert_eq!(confirmed.status, 200, "{:?}", confirmed.json());
    let download = common::send(
        app(),
        Req::new("GET", "/datastore/image?image=ct").request(),
    )
    .await;
    assert_eq!(download.status, 200);
    assert_eq!(download.body, volume);
    // The staging object is gone: confirming again finds nothing.
    let again = common::send(
        app(),
        Req::new("POST", &format!("/datastore/upload/{id}/image?image=ct2"))
            .json(json!({}))
            .request(),
    )
    .await;
    assert_eq!(again.status, 404);

    let label_upload = common::send(app(), Req::new("POST", "/datastore/upload").request())
        .await
        .json();
    put(label_upload["url"].as_str().unwrap(), vec![1u8; 5000]).await;
    let label = common::send(
        app(),
        Req::new(
            "POST",
            &format!(
                "/datastore/upload/{}/label?image=ct&tag=final",
                label_upload["upload_id"].as_str().unwrap()
            ),
        )
        .json(json!({}))
        .request(),
    )
    .await;
    assert_eq!(label.status, 200);
    assert_eq!(label.json()["version"], 1);
    assert_eq!(state.datastore.status().await.unwrap().completed, 1);
}

#[tokio::test]
async fn an_oversized_presigned_upload_is_refused() {
    let state = cloud_state(1000).await;
    let app = || medlabel_functions::app(state.clone());
    let started = common::send(app(), Req::new("POST", "/datastore/upload").request())
        .await
        .json();
    put(started["url"].as_str().unwrap(), vec![7u8; 5000]).await;
    let before = head(&state).await;
    let reply = common::send(
        app(),
        Req::new(
            "POST",
            &format!(
                "/datastore/upload/{}/image?image=huge",
                started["upload_id"].as_str().unwrap()
            ),
        )
        .json(json!({}))
        .request(),
    )
    .await;
    assert_eq!(reply.status, 413);
    assert_eq!(head(&state).await, before);
}

#[tokio::test]
async fn the_local_store_streams_uploads_instead() {
    let h = common::Harness::new().await;
    let reply = h
        .send(Req::new("POST", "/datastore/upload").request())
        .await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("PUT /datastore/image")
    );
}
