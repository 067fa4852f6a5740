//! Hostile input: every refusal is a clear 4xx in MONAI Label's shape, and nothing
//! is recorded (the event store's head does not move).

mod common;

use axum::http::StatusCode;
use common::{Harness, Req};
use serde_json::json;

static CT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| common::ct_volume(1));

async fn seeded() -> Harness {
    let h = Harness::new().await;
    let reply = h
        .send(
            Req::new("PUT", "/datastore/?image=ct")
                .multipart(&[], &[("file", "ct.nii.gz", CT.as_slice())])
                .request(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    h
}

/// Sends `req`, asserts the status, that the reply has MONAI Label's `detail`, that the
/// request id is echoed, and that nothing was recorded.
async fn refused(h: &Harness, req: Req, status: StatusCode) -> common::Reply {
    let head = h.head().await;
    let reply = h.send(req.clone().request()).await;
    assert_eq!(
        reply.status,
        status,
        "{} {}?{}: {:?}",
        req.method,
        req.path,
        req.query,
        String::from_utf8_lossy(&reply.body)
    );
    if req.method != "HEAD" {
        assert!(reply.json()["detail"].is_string() || reply.json()["detail"].is_array());
    }
    assert!(reply.header("x-request-id").is_some());
    assert_eq!(
        h.head().await,
        head,
        "{} {} recorded something",
        req.method,
        req.path
    );
    reply
}

#[tokio::test]
async fn unknown_ids_are_404() {
    let h = seeded().await;
    for req in [
        Req::new("GET", "/datastore/image?image=nope"),
        Req::new("HEAD", "/datastore/image?image=nope"),
        Req::new("DELETE", "/datastore/image?id=nope"),
        Req::new("DELETE", "/datastore/?id=nope"),
        Req::new("GET", "/datastore/label?label=ct&tag=final"),
        Req::new("PUT", "/datastore/image/info?image=nope")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("info=%7B%7D"),
        Req::new("PUT", "/datastore/label/info?label=ct&tag=final")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("info=%7B%7D"),
        Req::new("PUT", "/datastore/label?image=nope")
            .multipart(&[], &[("label", "l.nii.gz", CT.as_slice())]),
        Req::new("GET", "/session/7c9e6679-7425-40de-944b-e07fc1f90ae7"),
        Req::new("DELETE", "/session/7c9e6679-7425-40de-944b-e07fc1f90ae7"),
        Req::new("GET", "/datastore/dataset"),
        Req::new("GET", "/no/such/route"),
    ] {
        refused(&h, req, StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test]
async fn malformed_params_are_422() {
    let h = seeded().await;
    for req in [
        Req::new("PUT", "/datastore/?image=x").multipart(
            &[("params", "{not json")],
            &[("file", "x.nii.gz", CT.as_slice())],
        ),
        Req::new("PUT", "/datastore/label?image=ct").multipart(
            &[("params", "[1,2]")],
            &[("label", "l.nii.gz", CT.as_slice())],
        ),
        Req::new("PUT", "/datastore/image/info?image=ct")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("info=%7Bbad"),
        Req::new("POST", "/activelearning/first").json(json!([1])),
        Req::new("POST", "/activelearning/first")
            .header("content-type", "application/json")
            .body("{oops"),
        Req::new("GET", "/datastore/?output=everything"),
        Req::new("PUT", "/datastore/image/info?image=ct"),
        Req::new("PUT", "/datastore/?image=x").multipart(&[("params", "{}")], &[]),
        Req::new("GET", "/session/x?image=maybe"),
    ] {
        let reply = refused(&h, req, StatusCode::UNPROCESSABLE_ENTITY).await;
        let detail = &reply.json()["detail"][0];
        assert!(
            detail["type"].is_string() && detail["loc"].is_array() && detail["msg"].is_string()
        );
    }
}

#[tokio::test]
async fn traversal_ids_are_refused() {
    let h = seeded().await;
    for id in [
        "../x",
        "a/b",
        "%2e%2e",
        "%2e%2e%2fetc",
        "x%00y",
        "..",
        ".hidden",
        "a%5Cb",
    ] {
        for req in [
            Req::new("GET", &format!("/datastore/image?image={id}")),
            Req::new("GET", &format!("/datastore/label?label={id}&tag=final")),
            Req::new("GET", &format!("/datastore/label?label=ct&tag={id}")),
            Req::new("DELETE", &format!("/datastore/?id={id}")),
            Req::new("PUT", &format!("/datastore/?image={id}"))
                .multipart(&[], &[("file", "x.nii.gz", CT.as_slice())]),
            Req::new("PUT", &format!("/datastore/label?image=ct&tag={id}"))
                .multipart(&[], &[("label", "l.nii.gz", CT.as_slice())]),
        ] {
            refused(&h, req, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
    }
    // In a path segment an impossible id answers like an unknown one.
    for path in [
        "/session/..",
        "/session/%2e%2e",
        "/session/a%2Fb",
        "/session/x%00",
    ] {
        refused(&h, Req::new("GET", path), StatusCode::NOT_FOUND).await;
    }
    for path in ["/model/%2e%2e", "/model/a%2Fb", "/infer/%2e%2e"] {
        let method = if path.starts_with("/infer") {
            "POST"
        } else {
            "GET"
        };
        refused(&h, Req::new(method, path), StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    // A file name that tries to climb out: only its base name counts.
    let reply = h
        .send(
            Req::new("PUT", "/datastore/")
                .multipart(&[], &[("file", "../../etc/passwd.nii.gz", CT.as_slice())])
                .request(),
        )
        .await;
    assert_eq!(reply.json(), json!({"image": "passwd"}));
    let head = h.head().await;
    refused(
        &h,
        Req::new("PUT", "/datastore/").multipart(&[], &[("file", "../..", CT.as_slice())]),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(h.head().await, head);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let h = Harness::with_limit(4096).await;
    let big = vec![7u8; 10_000];
    // Declared length over the limit: refused before reading.
    refused(
        &h,
        Req::new("PUT", "/datastore/?image=big").multipart(&[], &[("file", "big.nii.gz", &big)]),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    // No declared length (chunked): refused while streaming.
    let mut req = Req::new("PUT", "/datastore/label?image=big")
        .multipart(&[], &[("label", "l.nii.gz", &big)]);
    req.headers.retain(|(k, _)| k != "content-length");
    refused(&h, req.clone(), StatusCode::NOT_FOUND).await; // image unknown: refused first
    let h2 = seeded_with_limit(4096).await;
    let mut req =
        Req::new("PUT", "/datastore/label?image=ct").multipart(&[], &[("label", "l.nii.gz", &big)]);
    req.headers.retain(|(k, _)| k != "content-length");
    refused(&h2, req, StatusCode::PAYLOAD_TOO_LARGE).await;
    let mut req = Req::new("PUT", "/session/").multipart(&[], &[("files", "s.nii.gz", &big)]);
    req.headers.retain(|(k, _)| k != "content-length");
    refused(&h2, req, StatusCode::PAYLOAD_TOO_LARGE).await;
    // The spool directory is left empty.
    let spooled = std::fs::read_dir(h2.dir.path().join("tmp"))
        .unwrap()
        .count();
    assert_eq!(spooled, 0);
}

async fn seeded_with_limit(limit: u64) -> Harness {
    let h = Harness::with_limit(limit).await;
    let reply = h
        .send(
            Req::new("PUT", "/datastore/?image=ct")
                .multipart(&[], &[("file", "ct.nii.gz", CT.as_slice())])
                .request(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    h
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let h = seeded().await;
    for (method, path) in [
        ("GET", "/session/"),
        ("POST", "/datastore/image"),
        ("PATCH", "/datastore/label"),
        ("GET", "/activelearning/first"),
        ("PUT", "/info/"),
        ("GET", "/infer/m"),
    ] {
        let reply = refused(&h, Req::new(method, path), StatusCode::METHOD_NOT_ALLOWED).await;
        assert_eq!(reply.json(), json!({"detail": "Method Not Allowed"}));
        assert!(
            reply.header("allow").is_some_and(|a| !a.is_empty()),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_retried_write_records_once() {
    let h = seeded().await;
    let req = Req::new("PUT", "/datastore/label?image=ct&tag=final")
        .header("x-request-id", "client-retry-42")
        .multipart(&[], &[("label", "l.nii.gz", &common::label_volume(1, 50))]);
    let first = h.send(req.request()).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-request-id"), Some("client-retry-42"));
    let head = h.head().await;
    let second = h.send(req.request()).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(h.head().await, head);
    let history = h
        .state
        .datastore
        .history(&medlabel_events::ImageId::parse("ct").unwrap())
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|e| e.event_type == "LabelSaved")
            .count(),
        1
    );
    assert!(history.iter().any(|e| e.request_id == "client-retry-42"));
}

/// A label of `dims` voxels on the test grid's spacing, valued `value(index)`, as
/// `datatype`.
fn label_of(dims: [usize; 3], datatype: medlabel_imaging::DataType, value: f32) -> Vec<u8> {
    common::nifti(dims, datatype, true, |i| if i < 20 { value } else { 0.0 })
}

/// gzip of a NIfTI header for the test grid (uint8) followed by `payload` bytes.
fn gz_with_payload(payload: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let header = common::nifti(
        common::TEST_DIMS,
        medlabel_imaging::DataType::U8,
        false,
        |_| 0.0,
    );
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&header[..352]).unwrap();
    encoder.write_all(payload).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn labels_that_are_not_labels_of_their_image_are_refused() {
    use medlabel_imaging::DataType;
    let h = seeded().await;
    let good = common::label_volume(1, 40);
    let voxels: usize = common::TEST_DIMS.iter().product();
    let mut off_grid = common::TEST_DIMS;
    off_grid[2] += 1;
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            "l.nii.gz",
            b"\x1f\x8b random bytes named .nii.gz".to_vec(),
            "gzip",
        ),
        ("not NIfTI", "l.nii", vec![7u8; 600], "sizeof_hdr"),
        (
            "truncated gzip",
            "l.nii.gz",
            good[..good.len() / 2].to_vec(),
            "NIfTI",
        ),
        (
            "short payload",
            "l.nii.gz",
            gz_with_payload(&vec![0u8; voxels / 2]),
            "truncated",
        ),
        (
            "decompression bomb",
            "l.nii.gz",
            gz_with_payload(&vec![0u8; 64 << 20]),
            "longer than",
        ),
        (
            "another shape",
            "l.nii.gz",
            label_of(off_grid, DataType::U8, 1.0),
            "shape mismatch",
        ),
        (
            "fractional voxels",
            "l.nii.gz",
            label_of(common::TEST_DIMS, DataType::F32, 0.5),
            "whole numbers",
        ),
        (
            "NaN voxels",
            "l.nii.gz",
            label_of(common::TEST_DIMS, DataType::F32, f32::NAN),
            "whole numbers",
        ),
        (
            "raw label of the wrong size",
            "label.bin",
            vec![1u8; voxels - 1],
            "one byte per voxel",
        ),
        (
            "unknown format",
            "l.png",
            good.clone(),
            "unsupported file extension",
        ),
    ];
    for (what, file_name, bytes, why) in cases {
        let reply = refused(
            &h,
            Req::new("PUT", "/datastore/label?image=ct&tag=final")
                .multipart(&[], &[("label", file_name, &bytes)]),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let detail = reply.json()["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(detail.contains(why), "{what}: {detail}");
        assert_eq!(
            reply.json()["detail"][0]["loc"],
            json!(["body", "label"]),
            "{what}"
        );
    }
    // An affine off by more than the tolerance: the same dims, somewhere else.
    let mut moved = medlabel_imaging::io::read_volume_bytes(&good, ".nii.gz").unwrap();
    moved.affine[0][3] += 5.0;
    let moved = medlabel_imaging::nifti::write_nifti_bytes(&moved, DataType::U8, true).unwrap();
    let reply = refused(
        &h,
        Req::new("PUT", "/datastore/label?image=ct")
            .multipart(&[], &[("label", "l.nii.gz", &moved)]),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(
        reply.json()["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("affines differ")
    );

    // OHIF's raw label (one uint8 per voxel, in the image's voxel order) becomes a NIfTI
    // label on the image's grid.
    let raw: Vec<u8> = (0..voxels).map(|i| u8::from(i % 5 == 0)).collect();
    let saved = h
        .send(
            Req::new("PUT", "/datastore/label?image=ct&tag=final")
                .multipart(&[], &[("label", "label.bin", &raw)])
                .request(),
        )
        .await;
    assert_eq!(saved.status, StatusCode::OK, "{:?}", saved.json());
    let download = h
        .send(Req::new("GET", "/datastore/label?label=ct&tag=final").request())
        .await;
    assert_eq!(
        download.header("content-disposition"),
        Some("attachment; filename=\"ct.nii.gz\"")
    );
    let label = medlabel_imaging::io::read_volume_bytes(&download.body, ".nii.gz").unwrap();
    let image = medlabel_imaging::io::read_volume_bytes(&CT, ".nii.gz").unwrap();
    assert_eq!(label.grid(), image.grid());
    assert_eq!(
        label.data,
        raw.iter().map(|&v| f32::from(v)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn images_that_do_not_read_are_refused() {
    let h = Harness::new().await;
    let good = common::ct_volume(3);
    for (what, file_name, bytes) in [
        ("garbage", "x.nii.gz", b"random bytes".to_vec()),
        ("truncated", "x.nii.gz", good[..good.len() - 40].to_vec()),
        ("named as NRRD", "x.nrrd", good.clone()),
    ] {
        for req in [
            Req::new("PUT", "/datastore/?image=x").multipart(&[], &[("file", file_name, &bytes)]),
            Req::new("PUT", "/session/").multipart(&[], &[("files", file_name, &bytes)]),
        ] {
            let reply = refused(&h, req, StatusCode::UNPROCESSABLE_ENTITY).await;
            let detail = reply.json()["detail"][0]["msg"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(detail.starts_with(file_name), "{what}: {detail}");
        }
    }
}
