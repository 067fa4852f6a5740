//! Presigned uploads on the cloud backend (DynamoDB + S3 on the AWS emulator): the
//! route hands out a URL, the client PUTs to it, the confirm step checks the object and
//! records the image or label. Bad confirms record nothing.

mod common;

use std::sync::Arc;

use common::Req;
use medlabel_events::blob::MIN_UPLOAD_PART;
use medlabel_events::blob::s3::S3BlobStore;
use medlabel_functions::{AppState, Config};
use medlabel_imaging::DataType;
use medlabel_tests::emulator::aws;
use serde_json::json;
use sha2::{Digest, Sha256};

/// State on the emulator; presigned uploads have their own limit, apart from the
/// request body limit (which the presigned flow never meets).
async fn cloud_state(max_presigned_upload_bytes: u64) -> AppState {
    let env = aws().await;
    let temp = tempfile::tempdir().unwrap().keep();
    let config = Config {
        max_upload_bytes: 1000,
        max_presigned_upload_bytes,
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

/// PUTs `bytes` to a presigned URL; the ETag S3 answered.
async fn put(url: &str, bytes: Vec<u8>) -> String {
    let response = reqwest::Client::new()
        .put(url)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.headers()["etag"].to_str().unwrap().to_owned()
}

/// Joins an upload's parts through the API.
async fn complete(app: axum::Router, id: &str, parts: serde_json::Value) -> common::Reply {
    common::send(
        app,
        Req::new("POST", &format!("/datastore/upload/{id}/complete"))
            .json(json!({ "parts": parts }))
            .request(),
    )
    .await
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
    let dims = [64, 64, 24];
    let volume = common::nifti(dims, DataType::I16, false, |i| (i % 251) as f32);
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
            &format!("/datastore/upload/{id}/image?image=ct&ext=.nii"),
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

    // A label that is not a volume is refused at the confirm step and records nothing.
    let garbage = common::send(app(), Req::new("POST", "/datastore/upload").request())
        .await
        .json();
    put(garbage["url"].as_str().unwrap(), vec![1u8; 5000]).await;
    let before = head(&state).await;
    let refused = common::send(
        app(),
        Req::new(
            "POST",
            &format!(
                "/datastore/upload/{}/label?image=ct&tag=final&ext=.nii.gz",
                garbage["upload_id"].as_str().unwrap()
            ),
        )
        .json(json!({}))
        .request(),
    )
    .await;
    assert_eq!(refused.status, 422, "{:?}", refused.json());
    assert_eq!(head(&state).await, before);

    let label_upload = common::send(app(), Req::new("POST", "/datastore/upload").request())
        .await
        .json();
    let mask = common::nifti(dims, DataType::U8, true, |i| f32::from(i % 3 == 0));
    put(label_upload["url"].as_str().unwrap(), mask).await;
    let label = common::send(
        app(),
        Req::new(
            "POST",
            &format!(
                "/datastore/upload/{}/label?image=ct&tag=final&ext=.nii.gz",
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

/// Starts a multipart upload of `parts` parts; its id and part URLs.
async fn start_parts(app: axum::Router, parts: u16) -> (String, Vec<String>) {
    let started = common::send(
        app,
        Req::new("POST", &format!("/datastore/upload?parts={parts}")).request(),
    )
    .await;
    assert_eq!(started.status, 200, "{:?}", started.json());
    let reply = started.json();
    assert_eq!(reply["min_part_size"], MIN_UPLOAD_PART);
    let urls: Vec<String> = reply["parts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(n, part)| {
            assert_eq!(part["part_number"], n + 1);
            part["url"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(urls.len(), usize::from(parts));
    (reply["upload_id"].as_str().unwrap().to_owned(), urls)
}

#[tokio::test]
async fn a_volume_sent_in_parts_is_joined_hashed_and_recorded() {
    let env = aws().await;
    // A copy limit of one part makes adoption copy the joined object in ranges, the
    // path volumes over S3's 5 GiB CopyObject limit take.
    let blobs =
        S3BlobStore::new(env.s3(), env.fresh_bucket().await).with_copy_limit(MIN_UPLOAD_PART);
    let config = Config {
        max_upload_bytes: 64 << 20,
        temp_dir: tempfile::tempdir().unwrap().keep(),
        ..Config::default()
    };
    let state = AppState::open(Arc::new(env.event_store().await), Arc::new(blobs), config)
        .await
        .unwrap();
    let app = || medlabel_functions::app(state.clone());

    let part = MIN_UPLOAD_PART as usize;
    // An uncompressed 11.5 MB volume: two full parts and a shorter last one.
    let volume = common::nifti([256, 256, 88], DataType::I16, false, |i| {
        (i * 31 % 251) as f32
    });
    assert!(volume.len() > 2 * part && volume.len() < 3 * part);
    let (id, urls) = start_parts(app(), 3).await;
    let mut parts = Vec::new();
    for (n, (url, piece)) in urls.iter().zip(volume.chunks(part)).enumerate() {
        let etag = put(url, piece.to_vec()).await;
        parts.push(json!({"part_number": n + 1, "etag": etag}));
    }
    let joined = complete(app(), &id, json!(parts)).await;
    assert_eq!(joined.status, 200, "{:?}", joined.json());
    let confirmed = common::send(
        app(),
        Req::new(
            "POST",
            &format!("/datastore/upload/{id}/image?image=big_ct&ext=.nii"),
        )
        .json(json!({"client_id": "uploader"}))
        .request(),
    )
    .await;
    assert_eq!(confirmed.status, 200, "{:?}", confirmed.json());
    let download = common::send(
        app(),
        Req::new("GET", "/datastore/image?image=big_ct").request(),
    )
    .await;
    assert_eq!(download.body.len(), volume.len());
    assert!(download.body == volume, "the joined bytes differ");
    // Recorded under the address of the joined bytes.
    let image = medlabel_events::ImageId::parse("big_ct").unwrap();
    let blob = state.datastore.image(&image).await.unwrap().blob;
    assert_eq!(blob.sha256, hex::encode(Sha256::digest(&volume)));
    assert_eq!(blob.size, volume.len() as u64);
}

#[tokio::test]
async fn bad_part_uploads_are_refused_and_record_nothing() {
    let state = cloud_state(64 << 20).await;
    let app = || medlabel_functions::app(state.clone());
    let before = head(&state).await;
    for parts in ["0", "10001", "two"] {
        let reply = common::send(
            app(),
            Req::new("POST", &format!("/datastore/upload?parts={parts}")).request(),
        )
        .await;
        assert_eq!(reply.status, 422, "parts={parts}");
    }

    // Parts under S3's minimum (the last excepted) cannot be joined; neither can a part
    // named with an ETag it does not have, or no part at all.
    let (id, urls) = start_parts(app(), 2).await;
    let mut parts = Vec::new();
    for (n, url) in urls.iter().enumerate() {
        let etag = put(url, vec![7; 1024]).await;
        parts.push(json!({"part_number": n + 1, "etag": etag}));
    }
    let forged = json!([{"part_number": 1, "etag": "\"0123456789abcdef0123456789abcdef\""}]);
    for bad in [
        json!(parts),
        forged,
        json!([]),
        json!([{"part_number": 0, "etag": "x"}]),
    ] {
        let reply = complete(app(), &id, bad.clone()).await;
        assert_eq!(reply.status, 422, "{bad}: {:?}", reply.json());
    }
    let unknown = complete(app(), "no-such-upload", json!(parts)).await;
    assert_eq!(unknown.status, 404);
    // Unjoined parts are no upload to confirm.
    let confirm = common::send(
        app(),
        Req::new("POST", &format!("/datastore/upload/{id}/image?image=ct"))
            .json(json!({}))
            .request(),
    )
    .await;
    assert_eq!(confirm.status, 404, "{:?}", confirm.json());
    assert_eq!(head(&state).await, before, "nothing was recorded");
}
