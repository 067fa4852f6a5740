//! The runner's two container contracts, driven the way their callers drive them: the
//! HTTP endpoint through its axum router, and the SageMaker training layout on disk.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use base64::Engine;
use medlabel_runner::sagemaker::{SageMakerPaths, has_model};
use medlabel_runner::serve::{DataPaths, InvocationResult, Runner, router};
use medlabel_runner::{Intensity, Model, ModelConfig, UNetConfig, synth};
use serde_json::{Value, json};
use tower::ServiceExt;

fn tiny_config() -> ModelConfig {
    ModelConfig {
        model_type: Default::default(),
        guidance: Default::default(),
        labels: BTreeMap::from([("background".into(), 0), ("spleen".into(), 1)]),
        spacing: [4.0, 4.0, 4.0],
        intensity: Intensity::spleen_ct(),
        roi_size: [16, 16, 16],
        network: UNetConfig {
            spatial_dims: 3,
            in_channels: 1,
            out_channels: 2,
            channels: vec![4, 8],
            strides: vec![2],
            num_res_units: 1,
            norm: Default::default(),
            dropout: 0.0,
        }
        .into(),
        ..Default::default()
    }
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        })
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn serve_fixture(root: &Path) -> (axum::Router, std::path::PathBuf) {
    let models = root.join("models");
    tch::manual_seed(0);
    Model::new(tiny_config(), tch::Device::Cpu)
        .unwrap()
        .save(&models.join("spleen_tiny"))
        .unwrap();
    let data = root.join("data");
    let pairs = synth::write_studies(&data, 1, 3, [20, 18, 12], [3.0, 3.0, 4.0]).unwrap();
    let runner = Runner::new(&models, tch::Device::Cpu, DataPaths::below(&data).unwrap()).unwrap();
    (router(Arc::new(runner)), pairs[0].0.clone())
}

#[tokio::test]
async fn ping_and_invocations_by_path_and_inline() {
    let dir = tempfile::tempdir().unwrap();
    let (app, image) = serve_fixture(dir.path());
    let (status, body) = call(&app, "GET", "/ping", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["models"], json!(["spleen_tiny"]));

    // By path, written to an output path: the mask opens with the input's geometry.
    let out = dir.path().join("data").join("mask.nii.gz");
    let (status, body) = call(
        &app,
        "POST",
        "/invocations",
        json!({"image": image, "output": out, "params": {"overlap": 0.5}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let result: InvocationResult = serde_json::from_value(body).unwrap();
    assert_eq!(result.params.model, "spleen_tiny");
    assert_eq!(result.params.label_names["spleen"], 1);
    assert!(result.params.latencies.total > 0.0);
    let input = medlabel_runner::io::read_image(&image).unwrap();
    let mask = medlabel_runner::io::read_image(&out).unwrap();
    assert_eq!((mask.dims, mask.affine), (input.dims, input.affine));

    // Inline bytes in, inline mask out, in the format MONAI Label's params ask for
    // (OHIF sends `result_extension` among other params the runner ignores).
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = std::fs::read(&image).unwrap();
    let (status, body) = call(
        &app,
        "POST",
        "/invocations",
        json!({
            "model": "spleen_tiny",
            "image_b64": b64.encode(&bytes),
            "image_ext": ".nii.gz",
            "params": {"client_id": "ohif", "label_tag": "original", "result_extension": ".nrrd"}
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let inline = b64.decode(body["label_b64"].as_str().unwrap()).unwrap();
    let inline = medlabel_runner::io::read_image_bytes(&inline, ".nrrd").unwrap();
    assert_eq!(inline.data, mask.data);

    // By URL, as the cloud's infer function hands over an image on S3: the format comes
    // from the URL's path, whatever its query says.
    let url = file_server(bytes).await;
    let (status, body) = call(
        &app,
        "POST",
        "/invocations",
        json!({"image_url": format!("{url}/sha256/ab/ab12.nii.gz?X-Amz-Expires=3600")}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fetched = b64.decode(body["label_b64"].as_str().unwrap()).unwrap();
    let fetched = medlabel_runner::io::read_image_bytes(&fetched, ".nii.gz").unwrap();
    assert_eq!(fetched.data, mask.data);
}

/// A model folder written into the models folder while the runner serves (a model
/// published to the log it follows) is served by its name from the next request on.
#[tokio::test]
async fn a_model_folder_that_appears_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (app, image) = serve_fixture(dir.path());
    let request = json!({"image": image, "model": "spleen_copy"});
    let (status, _) = call(&app, "POST", "/invocations", request.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let models = dir.path().join("models");
    std::fs::create_dir(models.join("spleen_copy")).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(
            models.join("spleen_tiny").join(file),
            models.join("spleen_copy").join(file),
        )
        .unwrap();
    }
    let (status, body) = call(&app, "POST", "/invocations", request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["params"]["model"], "spleen_copy");
    let (_, ping) = call(&app, "GET", "/ping", Value::Null).await;
    assert_eq!(ping["models"], json!(["spleen_copy", "spleen_tiny"]));
}

/// Serves `bytes` at every path of a loopback HTTP server (a stand-in for a presigned S3
/// URL) except `/missing`, which answers 404; returns the base URL.
async fn file_server(bytes: Vec<u8>) -> String {
    let app = axum::Router::new()
        .route(
            "/missing",
            axum::routing::get(|| async { StatusCode::NOT_FOUND }),
        )
        .fallback(axum::routing::get(move || async move { bytes.clone() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    format!("http://{address}")
}

/// MONAI Label's `label` upload of an infer request reaches the runner by path (the
/// local server) or by URL (the cloud's presigned S3 URL): it is read and must fit the
/// image's grid.
#[tokio::test]
async fn an_invocations_label_is_read_by_path_or_url_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (app, image) = serve_fixture(dir.path());
    let input = medlabel_runner::io::read_image(&image).unwrap();
    let label = input.with_data(vec![0.0f32; input.data.len()]);
    let fitting = dir.path().join("data").join("fitting.nrrd");
    medlabel_imaging::io::write_volume(&fitting, &label, medlabel_imaging::DataType::U8).unwrap();
    let [nx, ny, nz] = input.dims;
    let short = medlabel_imaging::Volume::new(
        vec![0.0f32; nx * ny * (nz - 1)],
        [nx, ny, nz - 1],
        input.affine,
    )
    .unwrap();
    let misfit = dir.path().join("data").join("misfit.nii.gz");
    medlabel_imaging::io::write_volume(&misfit, &short, medlabel_imaging::DataType::U8).unwrap();
    let fitting_url = file_server(std::fs::read(&fitting).unwrap()).await;
    let misfit_url = file_server(std::fs::read(&misfit).unwrap()).await;
    let cases = [
        (
            json!({"image": image, "label": fitting}),
            StatusCode::OK,
            "",
        ),
        (
            json!({"image": image, "label_url": format!("{fitting_url}/sha256/cd/cd34.nrrd?X-Amz-Expires=60")}),
            StatusCode::OK,
            "",
        ),
        (
            json!({"image": image, "label": misfit}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "does not fit the image",
        ),
        (
            json!({"image": image, "label_url": format!("{misfit_url}/x"), "label_ext": ".nii.gz"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "does not fit the image",
        ),
        (
            json!({"image": image, "label": "/etc/hostname"}),
            StatusCode::BAD_REQUEST,
            "outside the folders the runner may read",
        ),
        (
            json!({"image": image, "label_url": format!("{fitting_url}/missing")}),
            StatusCode::BAD_REQUEST,
            "label_url",
        ),
        (
            json!({"image": image, "label": fitting, "label_url": format!("{fitting_url}/a.nrrd")}),
            StatusCode::BAD_REQUEST,
            "at most one of",
        ),
    ];
    for (req, status, needle) in cases {
        let (got, body) = call(&app, "POST", "/invocations", req.clone()).await;
        assert_eq!(got, status, "{req} → {body}");
        if status == StatusCode::OK {
            assert_eq!(body["params"]["model"], "spleen_tiny", "{req} → {body}");
        } else {
            assert!(
                body["detail"].as_str().unwrap().contains(needle),
                "{req} → {body}"
            );
        }
    }
}

#[tokio::test]
async fn bad_invocations_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (app, image) = serve_fixture(dir.path());
    let url = file_server(b"not an image".to_vec()).await;
    let cases = [
        (
            json!({"image": image, "model": "nope"}),
            StatusCode::NOT_FOUND,
            "unknown model",
        ),
        (json!({}), StatusCode::BAD_REQUEST, "exactly one of"),
        (
            json!({"image": image, "model": "../models/spleen_tiny"}),
            StatusCode::NOT_FOUND,
            "unknown model",
        ),
        (
            json!({"image": image, "image_url": format!("{url}/a.nii.gz")}),
            StatusCode::BAD_REQUEST,
            "exactly one of",
        ),
        (
            json!({"image_url": "file:///etc/hostname"}),
            StatusCode::BAD_REQUEST,
            "only http and https",
        ),
        (
            json!({"image_url": format!("{url}/missing")}),
            StatusCode::BAD_REQUEST,
            "404",
        ),
        (
            json!({"image_url": format!("{url}/not-an-image.nii.gz")}),
            StatusCode::BAD_REQUEST,
            "gzip stream is corrupt",
        ),
        (
            json!({"image": "/etc/hostname"}),
            StatusCode::BAD_REQUEST,
            "outside the folders the runner may read",
        ),
        (
            json!({"image": image, "output": "/tmp/x.nii.gz"}),
            StatusCode::BAD_REQUEST,
            "outside the folders the runner may write",
        ),
        (
            json!({"image_b64": "!!!"}),
            StatusCode::BAD_REQUEST,
            "image_b64",
        ),
        (
            json!({"image": image, "extra": 1}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            json!({"image": image, "params": {"overlap": "high"}}),
            StatusCode::BAD_REQUEST,
            "params",
        ),
    ];
    for (req, status, needle) in cases {
        let (got, body) = call(&app, "POST", "/invocations", req.clone()).await;
        assert_eq!(got, status, "{req} → {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(needle),
            "{req} → {body}"
        );
    }
}

#[test]
fn sagemaker_training_job_writes_model_or_failure() {
    let root = tempfile::tempdir().unwrap();
    let paths = SageMakerPaths {
        root: root.path().to_path_buf(),
    };
    synth::write_studies(
        &paths.channel("training"),
        2,
        5,
        [24, 24, 16],
        [4.0, 4.0, 4.0],
    )
    .unwrap();
    std::fs::create_dir_all(paths.hyperparameters().parent().unwrap()).unwrap();
    // SageMaker passes every hyperparameter as a string.
    let hp = json!({
        "max_epochs": "2",
        "num_samples": "2",
        "device": "cpu",
        "model": serde_json::to_string(&tiny_config()).unwrap(),
    });
    std::fs::write(paths.hyperparameters(), hp.to_string()).unwrap();
    let outcome = medlabel_runner::sagemaker::run(&paths).unwrap();
    assert_eq!(outcome.stats.current_epoch, 2);
    assert!(has_model(&paths.model()));
    assert!(!paths.failure().exists());

    // A missing channel fails with the reason in output/failure.
    std::fs::write(
        paths.hyperparameters(),
        json!({"channel": "absent", "device": "cpu"}).to_string(),
    )
    .unwrap();
    assert!(medlabel_runner::sagemaker::run(&paths).is_err());
    let reason = std::fs::read_to_string(paths.failure()).unwrap();
    assert!(reason.contains("absent"), "{reason}");
}

/// The local server's child takes requests only with the secret its parent gave it, and
/// reads and writes only where it was told to.
#[tokio::test]
async fn a_runner_answers_only_its_bearer_and_stays_in_its_folders() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    tch::manual_seed(0);
    Model::new(tiny_config(), tch::Device::Cpu)
        .unwrap()
        .save(&models.join("spleen_tiny"))
        .unwrap();
    let (blobs, spool, elsewhere) = (
        dir.path().join("blobs"),
        dir.path().join("tmp"),
        dir.path().join("elsewhere"),
    );
    for folder in [&blobs, &spool, &elsewhere] {
        std::fs::create_dir_all(folder).unwrap();
    }
    let pairs = synth::write_studies(&blobs, 1, 3, [20, 18, 12], [3.0, 3.0, 4.0]).unwrap();
    let image = &pairs[0].0;
    let outside = elsewhere.join("copy.nii.gz");
    std::fs::copy(image, &outside).unwrap();
    let paths = DataPaths::new(&[&blobs, &spool], &[&spool]).unwrap();
    let runner = Runner::new(&models, tch::Device::Cpu, paths)
        .unwrap()
        .with_secret("s3cret".into());
    let app = router(Arc::new(runner));
    let send = |uri: &str, bearer: Option<&str>, body: Value| {
        let mut req = Request::builder()
            .method(if body.is_null() { "GET" } else { "POST" })
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(bearer) = bearer {
            req = req.header("authorization", format!("Bearer {bearer}"));
        }
        let req = req.body(Body::from(body.to_string())).unwrap();
        let app = app.clone();
        async move {
            let reply = app.oneshot(req).await.unwrap();
            let status = reply.status();
            let bytes = to_bytes(reply.into_body(), usize::MAX).await.unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    for bearer in [None, Some("guess"), Some("s3cret ")] {
        let (status, body) = send("/ping", bearer, Value::Null).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bearer:?}");
        assert!(body["detail"].is_string());
        let (status, _) = send("/invocations", bearer, json!({"image": image})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bearer:?}");
    }
    let ok = |body: Value| send("/invocations", Some("s3cret"), body);
    let (status, _) = ok(json!({"image": image, "output": spool.join("mask.nii.gz")})).await;
    assert_eq!(status, StatusCode::OK);
    for (body, why) in [
        (json!({"image": outside}), "may read"),
        (
            json!({"image": image, "output": blobs.join("mask.nii.gz")}),
            "may write",
        ),
        (
            json!({"image": image, "output": elsewhere.join("mask.nii.gz")}),
            "may write",
        ),
    ] {
        let (status, reply) = ok(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(reply["detail"].as_str().unwrap().contains(why), "{reply}");
    }
    assert!(!blobs.join("mask.nii.gz").exists() && !elsewhere.join("mask.nii.gz").exists());
}
