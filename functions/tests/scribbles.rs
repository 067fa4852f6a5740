//! Scribbles without any model: `/info/` lists MONAI Label's `Histogram+GraphCut`, and
//! `POST /infer/Histogram+GraphCut` segments a CT-like phantom from strokes on three
//! slices, in every reply shape, through the router and through the real Python client;
//! scribbles that do not fit the image are refused and change nothing.

mod common;
#[path = "../../scribbles/tests/phantom/mod.rs"]
mod phantom;

use axum::http::StatusCode;
use common::{Harness, Req};
use medlabel_imaging::io::{read_volume_bytes, write_volume_bytes};
use medlabel_imaging::{DataType, Volume};
use phantom::{BACKGROUND, FOREGROUND, Phantom};
use serde_json::{Value, json};

/// A file uploaded with a request: its name and bytes.
type Upload<'a> = (&'a str, Vec<u8>);

/// `Histogram+GraphCut`, as the Python client quotes it into the path.
const METHOD_PATH: &str = "Histogram%2BGraphCut";

/// 192 × 192 × 160 mm at 1.5 × 1.5 × 4 mm: an abdominal CT's extent, few voxels.
fn ct_phantom() -> Phantom {
    phantom::phantom([128, 128, 40], [1.5, 1.5, 4.0], 15.0, 1)
}

fn encode(volume: &Volume<f32>, ext: &str, datatype: DataType) -> Vec<u8> {
    write_volume_bytes(volume, ext, datatype).unwrap()
}

async fn with_image(p: &Phantom) -> Harness {
    let h = Harness::new().await;
    let ct = encode(&p.image, ".nii.gz", DataType::I16);
    let reply = h
        .send(
            Req::new("PUT", "/datastore/?image=ct")
                .multipart(&[], &[("file", "ct.nii.gz", &ct)])
                .request(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    h
}

fn infer(query: &str, params: &Value, label: (&str, &[u8])) -> Req {
    Req::new("POST", &format!("/infer/{METHOD_PATH}?image=ct{query}")).multipart(
        &[("params", &params.to_string())],
        &[("label", label.0, label.1)],
    )
}

fn mask_of(bytes: &[u8], ext: &str) -> Vec<u8> {
    read_volume_bytes(bytes, ext)
        .unwrap()
        .data
        .iter()
        .map(|&v| v as u8)
        .collect()
}

#[tokio::test]
async fn info_lists_histogram_graphcut_as_monai_label_does() {
    let h = Harness::new().await;
    let info = h.send(Req::new("GET", "/info/").request()).await.json();
    assert_eq!(
        info["models"]["Histogram+GraphCut"],
        json!({
            "type": "scribbles", "labels": [], "dimension": 3,
            "description": "A post processing step with histogram-based GraphCut for Generic segmentation",
            "config": {"lamda": 1.0, "sigma": 0.1, "num_bins": 64},
        })
    );
}

#[tokio::test]
async fn strokes_on_three_slices_segment_the_phantom_organ() {
    let p = ct_phantom();
    let h = with_image(&p).await;
    let scribbles = encode(&p.scribbles, ".nii.gz", DataType::U8);

    // The Python client's call: multipart reply with `params` and the mask.
    let reply = h
        .send(infer("", &json!({"roi": []}), ("scribbles.nii.gz", &scribbles)).request())
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let content_type = reply.header("content-type").unwrap();
    assert!(content_type.starts_with("multipart/form-data; boundary="));
    let body = String::from_utf8_lossy(&reply.body);
    assert!(body.contains("name=\"params\""), "{body:.300}");
    assert!(body.contains("name=\"image\"; filename=\"label"));

    // Slicer's call: its segment numbering in label_info, an NRRD scribbles file and an
    // NRRD result, read as a raw mask (OHIF's `output=image`).
    let renumbered = p.scribbles.with_data(
        p.scribbles
            .data
            .iter()
            .map(|&s| match s {
                BACKGROUND => 5.0,
                FOREGROUND => 6.0,
                _ => 0.0,
            })
            .collect(),
    );
    let params = json!({
        "lamda": 1.0, "sigma": 0.1, "num_bins": 64, "roi": [],
        "label_info": [{"name": "organ", "id": 1}, {"name": "background_scribbles", "id": 5},
                       {"name": "foreground_scribbles", "id": 6}],
        "selected_label_name": "organ", "result_extension": ".nrrd", "result_dtype": "uint8",
    });
    let nrrd = encode(&renumbered, ".nrrd", DataType::U8);
    let reply = h
        .send(infer("&output=image", &params, ("scribbles.nrrd", &nrrd)).request())
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let name = reply.header("content-disposition").unwrap();
    assert!(name.ends_with(".nrrd\""), "{name}");
    let mask = mask_of(&reply.body, ".nrrd");
    let dice = phantom::dice(&mask, &p.truth);
    assert!(dice >= 0.85, "dice {dice}");

    // `output=json`: MONAI Label's result keys, and the mask's box, [start, end) per axis.
    let result = h
        .send(infer("&output=json", &params, ("scribbles.nrrd", &nrrd)).request())
        .await
        .json();
    assert_eq!(result["label_names"], json!([]));
    assert_eq!(result["centroids"], json!({}));
    assert!(result["latencies"]["total"].is_number(), "{result}");
    let [nx, ny, _] = p.image.dims;
    let (mut lo, mut hi) = ([usize::MAX; 3], [0; 3]);
    for (v, _) in mask.iter().enumerate().filter(|(_, m)| **m == 1) {
        let ijk = [v % nx, v / nx % ny, v / (nx * ny)];
        for a in 0..3 {
            (lo[a], hi[a]) = (lo[a].min(ijk[a]), hi[a].max(ijk[a] + 1));
        }
    }
    assert_eq!(result["bbox"], json!([lo, hi]));

    // An ROI: nothing outside it.
    let roi = json!({"roi": p.roi, "result_extension": ".nii.gz"});
    let reply = h
        .send(infer("&output=image", &roi, ("scribbles.nii.gz", &scribbles)).request())
        .await;
    let mask = mask_of(&reply.body, ".nii.gz");
    assert!(phantom::dice(&mask, &p.truth) >= 0.85);
    for (v, _) in mask.iter().enumerate().filter(|(_, m)| **m == 1) {
        let ijk = [v % nx, v / nx % ny, v / (nx * ny)];
        let inside = (0..3).all(|a| (p.roi[2 * a]..p.roi[2 * a + 1]).contains(&(ijk[a] as i64)));
        assert!(inside, "voxel {ijk:?} outside the roi is foreground");
    }
}

#[tokio::test]
async fn save_label_stores_the_mask_under_label_tag() {
    let p = ct_phantom();
    let h = with_image(&p).await;
    let scribbles = encode(&p.scribbles, ".nii.gz", DataType::U8);
    let params = json!({"save_label": true, "label_tag": "scribbled"});
    let reply = h
        .send(infer("&output=json", &params, ("s.nii.gz", &scribbles)).request())
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let saved = h
        .send(Req::new("GET", "/datastore/label?label=ct&tag=scribbled").request())
        .await;
    assert_eq!(saved.status, StatusCode::OK);
    let mask = mask_of(&saved.body, ".nii.gz");
    assert!(phantom::dice(&mask, &p.truth) >= 0.85);
    let listed = h
        .send(Req::new("GET", "/datastore/?output=all").request())
        .await
        .json();
    let info = &listed["objects"]["ct"]["labels"]["scribbled"]["info"];
    assert_eq!(info["model"], "Histogram+GraphCut", "{listed}");
}

/// Scribbles of another shape or grid, no scribbles, unusable strokes or params: a 422
/// naming the field, and the log and blob store are as they were, even with
/// `save_label`.
#[tokio::test]
async fn refusals_are_422_and_change_nothing() {
    let p = ct_phantom();
    let h = with_image(&p).await;
    let head = h.head().await;
    let blobs = || {
        walk(&h.dir.path().join("blobs"))
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
    };
    let before = blobs();
    let save = json!({"save_label": true});

    let [nx, ny, nz] = p.scribbles.dims;
    let short = Volume::new(
        p.scribbles.data[..nx * ny * (nz - 1)].to_vec(),
        [nx, ny, nz - 1],
        p.scribbles.affine,
    )
    .unwrap();
    let mut shifted = p.scribbles.clone();
    shifted.affine[0][3] += 5.0;
    let no_foreground = p.scribbles.with_data(
        p.scribbles
            .data
            .iter()
            .map(|&s| if s == FOREGROUND { 0.0 } else { s })
            .collect(),
    );
    // (case, params, scribbles upload, the field the 422 names)
    let cases: Vec<(&str, Value, Option<Upload>, &str)> = vec![
        (
            "shape",
            save.clone(),
            Some(("s.nii.gz", encode(&short, ".nii.gz", DataType::U8))),
            "label",
        ),
        (
            "nrrd shape",
            save.clone(),
            Some(("s.nrrd", encode(&short, ".nrrd", DataType::U8))),
            "label",
        ),
        (
            "affine",
            save.clone(),
            Some(("s.nii.gz", encode(&shifted, ".nii.gz", DataType::U8))),
            "label",
        ),
        (
            "raw size",
            save.clone(),
            Some(("label.bin", vec![3u8; 100])),
            "label",
        ),
        (
            "garbage",
            save.clone(),
            Some(("s.nii.gz", b"not a volume".to_vec())),
            "label",
        ),
        ("no label", save.clone(), None, "label"),
        (
            "no foreground",
            save.clone(),
            Some(("s.nii.gz", encode(&no_foreground, ".nii.gz", DataType::U8))),
            "label",
        ),
        (
            "lamda",
            json!({"lamda": -1, "save_label": true}),
            Some(("s.nii.gz", encode(&p.scribbles, ".nii.gz", DataType::U8))),
            "params",
        ),
        (
            "roi",
            json!({"roi": [500, 600, 0, 9, 0, 9], "save_label": true}),
            Some(("s.nii.gz", encode(&p.scribbles, ".nii.gz", DataType::U8))),
            "params",
        ),
        (
            "extension",
            json!({"result_extension": ".png", "save_label": true}),
            Some(("s.nii.gz", encode(&p.scribbles, ".nii.gz", DataType::U8))),
            "params",
        ),
    ];
    for (case, params, label, field) in cases {
        let files: Vec<(&str, &str, &[u8])> = label
            .iter()
            .map(|(name, bytes)| ("label", *name, bytes.as_slice()))
            .collect();
        let reply = h
            .send(
                Req::new("POST", &format!("/infer/{METHOD_PATH}?image=ct"))
                    .multipart(&[("params", &params.to_string())], &files)
                    .request(),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: {reply:?}"
        );
        let detail = &reply.json()["detail"][0];
        assert_eq!(detail["loc"][1], field, "{case}: {detail}");
        assert_eq!(h.head().await, head, "{case}: the log changed");
        assert_eq!(blobs(), before, "{case}: a blob was stored");
    }
    let labels = h
        .send(Req::new("GET", "/datastore/?output=all").request())
        .await
        .json();
    assert_eq!(labels["objects"]["ct"]["labels"], json!({}));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// Slicer's scribbles request through the real `monailabel` client against `medlabel
/// serve` with no runner: NRRD scribbles in, the mask back, Dice ≥ 0.85, and a 422 for
/// scribbles of another shape.
#[test]
fn python_client_runs_scribbles_without_a_model() {
    let p = ct_phantom();
    let studies = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(work.path().join(name), bytes).unwrap();
    write("ct.nii.gz", encode(&p.image, ".nii.gz", DataType::I16));
    write(
        "scribbles.nrrd",
        encode(&p.scribbles, ".nrrd", DataType::U8),
    );
    let truth = p
        .image
        .with_data(p.truth.iter().map(|&t| f32::from(u8::from(t))).collect());
    write("truth.nii.gz", encode(&truth, ".nii.gz", DataType::U8));
    let [nx, ny, nz] = p.scribbles.dims;
    let short = Volume::new(
        p.scribbles.data[..nx * ny * (nz - 1)].to_vec(),
        [nx, ny, nz - 1],
        p.scribbles.affine,
    )
    .unwrap();
    write("wrong.nrrd", encode(&short, ".nrrd", DataType::U8));

    let server = common::LocalServer::start(
        studies.path(),
        &["--runner".as_ref(), "/nonexistent".as_ref()],
    );
    let report = common::run_python("client_scribbles.py", &server.url, work.path(), &[]);
    assert!(report["dice"].as_f64().unwrap() >= 0.85, "{report}");
}
