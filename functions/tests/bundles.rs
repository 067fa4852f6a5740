//! Users' own models over HTTP, against the real `medlabel serve` and its runner: a MONAI
//! bundle (built with MONAI by the runner's test tooling) served with `--bundle`, its
//! TorchScript archive and a bundle zip uploaded through `PUT /model/{name}` as the next
//! versions, and files that are not models, or bundles the runner cannot honour,
//! refused with 422 and nothing published; an imported TorchScript model trained through
//! `/train/` and served at its new version; `medlabel model new` for a label set.

mod common;

#[path = "../../gpu-runner/tests/common/mod.rs"]
mod bundle_tooling;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::LocalServer;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

const MODEL: &str = "organs";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// Zips the folder `dir` (entries relative to it).
fn zip_folder(dir: &Path) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.start_file(name, options).unwrap();
            out.write_all(&std::fs::read(&path).unwrap()).unwrap();
        }
    }
    out.finish().unwrap().into_inner()
}

async fn put_model(url: &str, file_name: &str, bytes: Vec<u8>) -> reqwest::Response {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_owned()),
    );
    client()
        .put(format!("{url}/model/{MODEL}"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn model_checksum(url: &str) -> String {
    let info: Value = common::get_json(&format!("{url}/model/info/{MODEL}")).await;
    info["checksum"].as_str().unwrap().to_owned()
}

/// Foreground voxels of the NIfTI label inference answered with.
async fn infer_foreground(url: &str, image: &str) -> usize {
    // The runner child may still be starting (503 until it listens).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let reply = loop {
        let reply = client()
            .post(format!("{url}/infer/{MODEL}?image={image}&output=image"))
            .send()
            .await
            .unwrap();
        if reply.status() != StatusCode::SERVICE_UNAVAILABLE || std::time::Instant::now() > deadline
        {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        reply.status(),
        StatusCode::OK,
        "{}",
        reply.text().await.unwrap()
    );
    let bytes = reply.bytes().await.unwrap();
    let volume =
        medlabel_imaging::nifti::read_nifti_bytes(&bytes, bytes.starts_with(&[0x1f, 0x8b]))
            .unwrap();
    volume.data.iter().filter(|&&v| v > 0.0).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_is_served_and_replaced_by_uploads_and_bad_models_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join(MODEL);
    let made = bundle_tooling::run(&[
        "make".as_ref(),
        bundle.as_os_str(),
        "--network".as_ref(),
        "unet".as_ref(),
        "--format".as_ref(),
        "ts".as_ref(),
        "--seed".as_ref(),
        "1".as_ref(),
    ]);
    let studies = tmp.path().join("studies");
    std::fs::create_dir_all(&studies).unwrap();
    std::fs::copy(
        made["image"].as_str().unwrap(),
        studies.join("case1.nii.gz"),
    )
    .unwrap();

    let server = LocalServer::start(&studies, &["--bundle".as_ref(), bundle.as_os_str()]);
    let url = server.url.clone();

    // /info/ lists the bundle's model with the labels its metadata declares.
    let info: Value = common::get_json(&format!("{url}/info/")).await;
    assert_eq!(info["models"][MODEL]["labels"]["organ"], 1, "{info}");
    assert!(infer_foreground(&url, "case1").await > 0);
    let first = model_checksum(&url).await;

    // The bundle's TorchScript archive, uploaded, is the next version.
    let archive = std::fs::read(bundle.join("models/model.ts")).unwrap();
    let reply = put_model(&url, "model.ts", archive.clone()).await;
    assert_eq!(
        reply.status(),
        StatusCode::OK,
        "{}",
        reply.text().await.unwrap()
    );
    let checksum = format!("SHA256:{}", hex::encode(Sha256::digest(&archive)));
    assert_eq!(model_checksum(&url).await, checksum);
    assert!(infer_foreground(&url, "case1").await > 0);

    // A bundle with a transform the runner does not map: refused, naming it.
    let odd = tmp.path().join("odd");
    std::fs::create_dir_all(odd.join("configs")).unwrap();
    std::fs::create_dir_all(odd.join("models")).unwrap();
    std::fs::copy(
        bundle.join("configs/metadata.json"),
        odd.join("configs/metadata.json"),
    )
    .unwrap();
    std::fs::copy(bundle.join("models/model.ts"), odd.join("models/model.ts")).unwrap();
    let mut inference: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("configs/inference.json")).unwrap())
            .unwrap();
    inference["preprocessing"]["transforms"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"_target_": "RandFlipd", "keys": "@image_key", "prob": 0.5}));
    std::fs::write(
        odd.join("configs/inference.json"),
        serde_json::to_vec(&inference).unwrap(),
    )
    .unwrap();
    let reply = put_model(&url, "odd.zip", zip_folder(&odd)).await;
    assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let detail = reply.text().await.unwrap();
    assert!(detail.contains("RandFlipd"), "{detail}");

    // A zip that is no model at all, and a truncated archive.
    let junk = zip_folder(&studies);
    let reply = put_model(&url, "junk.zip", junk).await;
    assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let reply = put_model(&url, "model.ts", archive[..archive.len() / 2].to_vec()).await;
    assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        model_checksum(&url).await,
        checksum,
        "nothing was published"
    );

    // The whole bundle, zipped, is a version too (the runner's import of it is stable:
    // the same archive, so the same checksum as the upload before).
    let reply = put_model(&url, "organs.zip", zip_folder(&bundle)).await;
    assert_eq!(
        reply.status(),
        StatusCode::OK,
        "{}",
        reply.text().await.unwrap()
    );
    assert_eq!(model_checksum(&url).await, checksum);
    assert_ne!(first, "", "the first version had a checksum");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_model_for_a_label_set_is_served_and_made_only_once() {
    let tmp = tempfile::tempdir().unwrap();
    let studies = tmp.path().join("studies");
    std::fs::create_dir_all(&studies).unwrap();
    let new_model = |labels: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_medlabel"))
            .args(["model", "new", "abdomen", "--studies"])
            .arg(&studies)
            .args(["--network", "segresnet", "--labels", labels])
            .output()
            .unwrap()
    };
    let bad = new_model("spleen");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("name=channel"));
    let made = new_model("spleen=1,liver=2");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let again = new_model("spleen=1,liver=2");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    let server = LocalServer::start(&studies, &[]);
    let info: Value = common::get_json(&format!("{}/info/", server.url)).await;
    let labels = &info["models"]["abdomen"]["labels"];
    assert_eq!(
        (labels["spleen"].as_i64(), labels["liver"].as_i64()),
        (Some(1), Some(2)),
        "{info}"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_imported_torchscript_model_trains_and_the_next_inference_uses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join(MODEL);
    bundle_tooling::run(&[
        "make".as_ref(),
        bundle.as_os_str(),
        "--network".as_ref(),
        "unet".as_ref(),
        "--format".as_ref(),
        "ts".as_ref(),
        "--seed".as_ref(),
        "2".as_ref(),
    ]);
    let studies = tmp.path().join("studies");
    common::sample_studies(&studies, 4);
    // Cases from other seeds, never in the studies folder: uploaded to `/infer` as files.
    let held_out = tmp.path().join("held_out");
    common::sample_studies_seeded(&held_out, 2, 900);
    let server = LocalServer::start(&studies, &["--bundle".as_ref(), bundle.as_os_str()]);
    let url = server.url.clone();
    infer_foreground(&url, "spleen_000").await;
    let before = model_checksum(&url).await;
    let dice_before = held_out_dice(&url, &held_out).await;

    let reply = client()
        .post(format!("{url}/train/{MODEL}"))
        .json(&serde_json::json!({"max_epochs": 10, "val_split": 0.25, "learning_rate": 5e-3}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        reply.status(),
        StatusCode::OK,
        "{}",
        reply.text().await.unwrap()
    );
    let done = common::training_outcome(&url, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "DONE", "{done}");
    // An imported model has no metric yet, so its first training publishes version 2,
    // still TorchScript, and the next inference is served by it.
    assert_eq!(done["result"]["published"]["version"], 2, "{done}");
    let after = model_checksum(&url).await;
    assert_ne!(after, before);
    let download = client()
        .get(format!("{url}/model/{MODEL}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(download.starts_with(b"PK\x03\x04"), "a TorchScript archive");
    let reply: Value = client()
        .post(format!("{url}/infer/{MODEL}?image=spleen_000&output=json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["model_version"], 2, "{reply}");
    // The bundle's model thresholds bright tissue; the synthetic cases label only the
    // spleen, so fine-tuning must find it on cases it never saw.
    let dice_after = held_out_dice(&url, &held_out).await;
    // Measured: 0.36 → 0.89.
    assert!(
        dice_after > dice_before + 0.25 && dice_after > 0.7,
        "held-out Dice {dice_before:.3} → {dice_after:.3}"
    );
    server.stop();
}

/// Mean spleen Dice over the `make-sample` cases in `dir`, each image uploaded to
/// `/infer` as a file and compared with its final label.
async fn held_out_dice(url: &str, dir: &Path) -> f64 {
    let read = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        medlabel_imaging::nifti::read_nifti_bytes(&bytes, bytes.starts_with(&[0x1f, 0x8b])).unwrap()
    };
    let mut scores = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".nii.gz") {
            continue;
        }
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(std::fs::read(&path).unwrap())
                .file_name(name.to_owned()),
        );
        let reply = client()
            .post(format!("{url}/infer/{MODEL}?output=image"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        let bytes = reply.bytes().await.unwrap();
        let mask =
            medlabel_imaging::nifti::read_nifti_bytes(&bytes, bytes.starts_with(&[0x1f, 0x8b]))
                .unwrap();
        let label = read(&dir.join("labels/final").join(name));
        let (mut both, mut total) = (0.0, 0.0);
        for (&m, &t) in mask.data.iter().zip(&label.data) {
            let (m, t) = (m == 1.0, t == 1.0);
            both += f64::from(u8::from(m && t));
            total += f64::from(u8::from(m)) + f64::from(u8::from(t));
        }
        scores.push(2.0 * both / total.max(1.0));
    }
    assert!(!scores.is_empty(), "no held-out cases in {}", dir.display());
    scores.iter().sum::<f64>() / scores.len() as f64
}
