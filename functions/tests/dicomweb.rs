//! `medlabel serve --studies http://…/dicom-web` against a real Orthanc: synthetic CT
//! series (known geometry, oblique, reversed, multi-frame) stored in Orthanc become
//! images with MONAI Label's DICOM fields, convert to exactly the generator's volume,
//! final labels go back to Orthanc as DICOM SEG, SEG series in Orthanc become labels,
//! bad series and a dead PACS get clear errors, and the proxy relays with credentials.

mod common;
mod orthanc;

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::LocalServer;
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, from_reader};
use medlabel_dicom::synthetic::{
    SyntheticCt, synthetic_ct_multiframe, synthetic_ct_series, synthetic_ct_series_of,
};
use medlabel_dicom::{
    SegReadOptions, SegWriteOptions, Segment, SeriesInfo, read_seg, series_to_volume, write_seg,
};
use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::blob::{BlobRef, read_to_vec};
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_imaging::affine::max_abs_diff;
use medlabel_imaging::io::read_volume_bytes;
use medlabel_imaging::{DataType, Volume};
use orthanc::{Orthanc, PASSWORD, USER};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Row and column rotated 30° about z, then 20° about x: all three normal components.
fn oblique() -> [f64; 6] {
    let (s1, c1) = 30f64.to_radians().sin_cos();
    let (s2, c2) = 20f64.to_radians().sin_cos();
    [c1, s1, 0.0, -s1 * c2, c1 * c2, s2]
}

fn axial(seed: u64) -> SyntheticCt {
    SyntheticCt {
        seed,
        ..SyntheticCt::default()
    }
}

fn oblique_reversed(seed: u64) -> SyntheticCt {
    SyntheticCt {
        orientation: oblique(),
        origin: [12.5, -40.25, 77.0],
        reversed: true,
        seed,
        ..SyntheticCt::default()
    }
}

/// `medlabel serve` on Orthanc's DICOMweb root, polling twice a second, no runner.
fn serve(orthanc: &Orthanc, home: &Path) -> LocalServer {
    serve_url(&orthanc.dicomweb(), home, &[])
}

fn serve_url(url: &str, home: &Path, extra: &[&OsStr]) -> LocalServer {
    let mut args: Vec<&OsStr> = vec![
        "--home".as_ref(),
        home.as_os_str(),
        "--poll-interval".as_ref(),
        "0.5".as_ref(),
    ];
    if !extra.iter().any(|a| *a == "--runner") {
        args.extend([OsStr::new("--runner"), OsStr::new("/nonexistent")]);
    }
    args.extend_from_slice(extra);
    LocalServer::start_with_env(
        Path::new(url),
        &args,
        &[
            ("MEDLABEL_DICOMWEB_USERNAME", USER),
            ("MEDLABEL_DICOMWEB_PASSWORD", PASSWORD),
        ],
    )
}

async fn get(server: &LocalServer, path: &str) -> reqwest::Response {
    reqwest::get(format!("{}{path}", server.url)).await.unwrap()
}

async fn get_json(server: &LocalServer, path: &str) -> (StatusCode, Value) {
    let reply = get(server, path).await;
    let status = reply.status();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// Waits until `/datastore/?output=all` satisfies `done`, and returns it.
async fn wait_for(server: &LocalServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, all) = get_json(server, "/datastore/?output=all").await;
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {all:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Saves `file` as the final label of `image`, as a client's `PUT /datastore/label`
/// with `params` does, and checks it was taken.
async fn save_final_label(server: &LocalServer, image: &str, file: Vec<u8>, params: Value) {
    let form = reqwest::multipart::Form::new()
        .text("params", params.to_string())
        .part(
            "label",
            reqwest::multipart::Part::bytes(file).file_name(format!("{image}.nii.gz")),
        );
    let reply = reqwest::Client::new()
        .put(format!(
            "{}/datastore/label?image={image}&tag=final",
            server.url
        ))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        reply.status(),
        StatusCode::OK,
        "{}",
        reply.text().await.unwrap()
    );
}

/// The SeriesInstanceUID of the one SEG series Orthanc holds.
async fn the_seg_series(orthanc: &Orthanc) -> String {
    let segs = orthanc.series("Modality=SEG").await;
    assert_eq!(segs.len(), 1, "{segs:#?}");
    segs[0]["0020000E"]["Value"][0].as_str().unwrap().to_owned()
}

/// Checks that Orthanc's SEG series `seg_uid` of the series `spec` holds one `spleen`
/// segment whose mask is `label`.
async fn assert_spleen_seg(
    orthanc: &Orthanc,
    seg_uid: &str,
    spec: &SyntheticCt,
    label: &Volume<f32>,
) {
    let seg = orthanc.series_files(seg_uid).await.remove(0);
    assert_spleen_mask(&seg, spec, label);
}

/// Checks that the DICOM SEG `seg` of the series `spec` holds one `spleen` segment whose
/// mask is `label`, voxel for voxel.
fn assert_spleen_mask(seg: &[u8], spec: &SyntheticCt, label: &Volume<f32>) {
    let decoded = read_seg(seg, &series_info(spec), &SegReadOptions::default()).unwrap();
    assert_eq!(decoded.segments.len(), 1, "{:?}", decoded.segments);
    assert_eq!(decoded.segments[0].label, "spleen");
    assert!(
        decoded
            .mask
            .data
            .iter()
            .map(|&v| f32::from(v))
            .eq(label.data.iter().copied()),
        "the SEG's mask differs from the expected one"
    );
}

fn count(all: &Value) -> usize {
    all["objects"].as_object().map_or(0, |o| o.len())
}

/// `(stream, event type)` of every event the server recorded, from its log.
fn events(home: &Path) -> Vec<(String, String)> {
    let db = rusqlite::Connection::open_with_flags(
        home.join("events.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut query = db
        .prepare("SELECT stream, event_type FROM events ORDER BY position")
        .unwrap();
    query
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn assert_volume(bytes: &[u8], spec: &SyntheticCt) {
    let volume = read_volume_bytes(bytes, ".nii").unwrap();
    let expected = spec.volume();
    assert_eq!(volume.dims, expected.dims);
    let diff = max_abs_diff(&volume.affine, &expected.affine);
    assert!(diff < 1e-4, "affine off by {diff}");
    assert!(volume.data == expected.data, "voxels differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_become_images_that_convert_to_the_generators_volume() {
    let orthanc = Orthanc::start().await;
    let specs = [axial(1), oblique_reversed(2), oblique_reversed(3)];
    orthanc.store_all(&synthetic_ct_series(&specs[0])).await;
    orthanc.store_all(&synthetic_ct_series(&specs[1])).await;
    orthanc
        .store(&synthetic_ct_multiframe(&specs[2], true))
        .await;
    let home = tempfile::tempdir().unwrap();
    let server = serve(&orthanc, home.path());
    let all = wait_for(&server, "three images", |all| count(all) == 3).await;

    for spec in &specs {
        let uids = spec.uids();
        let info = &all["objects"][&uids.series]["image"]["info"];
        assert_eq!(info["StudyInstanceUID"], json!(uids.study));
        assert_eq!(info["SeriesInstanceUID"], json!(uids.series));
        assert_eq!(info["Modality"], "CT");
        assert_eq!(info["StudyDate"], "20240101");
        assert_eq!(info["StudyTime"], "120000");
        assert_eq!(info["PatientID"], json!(format!("SYNTH-{}", spec.seed)));
        let retrieve = info["RetrieveURL"].as_str().unwrap();
        assert!(
            retrieve.ends_with(&format!("/series/{}", uids.series)),
            "{retrieve}"
        );
    }

    // Next sample carries what OHIF reads; an unfetched series' path is its URL.
    let next: Value = reqwest::Client::new()
        .post(format!("{}/activelearning/random", server.url))
        .json(&json!({"client_id": "ohif"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let picked = specs
        .iter()
        .find(|s| json!(s.uids().series) == next["id"])
        .expect("next sample is one of the series");
    for field in [
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "StudyDate",
        "StudyTime",
        "PatientID",
        "RetrieveURL",
    ] {
        assert!(next[field].is_string(), "{field} missing: {next:#}");
    }
    assert_eq!(next["StudyInstanceUID"], json!(picked.uids().study));
    assert_eq!(next["path"], next["RetrieveURL"]);

    // Each series converts to exactly the generator's voxels and geometry.
    for spec in &specs {
        let uid = spec.uids().series;
        let reply = get(&server, &format!("/datastore/image?image={uid}")).await;
        assert_eq!(reply.status(), StatusCode::OK, "{uid}");
        assert_volume(&reply.bytes().await.unwrap(), spec);
        let (_, info) = get_json(&server, &format!("/datastore/image/info?image={uid}")).await;
        assert_eq!(info["name"], json!(format!("{uid}.nii")));
    }
    let fetched = events(home.path())
        .into_iter()
        .filter(|(_, t)| t == "ImageFetched")
        .count();
    assert_eq!(fetched, 3, "one fetch per series, recorded");
    // A second read is served from the blob store: nothing new is recorded.
    let before = events(home.path()).len();
    let uid = specs[0].uids().series;
    let reply = get(&server, &format!("/datastore/image?image={uid}")).await;
    assert_volume(&reply.bytes().await.unwrap(), &specs[0]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = events(home.path());
    assert!(
        after[before..].iter().all(|(_, t)| t == "DataRead"),
        "polls and cached reads record nothing: {:?}",
        &after[before..]
    );

    // A series that leaves the PACS leaves the datastore; its history stays.
    orthanc.delete_series(&specs[1].uids().series).await;
    wait_for(&server, "the deleted series to leave", |all| {
        count(all) == 2
    })
    .await;
    assert!(
        events(home.path())
            .iter()
            .any(|(s, t)| t == "ImageRemoved" && s == &format!("image/{}", specs[1].uids().series))
    );
}

/// The SeriesInfo of a synthetic series, as a SEG on it needs.
fn series_info(spec: &SyntheticCt) -> SeriesInfo {
    series_to_volume(&synthetic_ct_series(spec)).unwrap().info
}

/// A label on `spec`'s grid: `value` in the first `filled` voxels.
fn mask(spec: &SyntheticCt, value: f32, filled: usize) -> Volume<f32> {
    let grid = spec.volume();
    let data = (0..grid.data.len())
        .map(|i| if i < filled { value } else { 0.0 })
        .collect();
    Volume::new(data, grid.dims, grid.affine).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_labels_go_to_the_pacs_as_seg_and_seg_series_come_back_as_labels() {
    let orthanc = Orthanc::start().await;
    let (a, b) = (axial(11), oblique_reversed(12));
    orthanc.store_all(&synthetic_ct_series(&a)).await;
    orthanc.store_all(&synthetic_ct_series(&b)).await;
    let home = tempfile::tempdir().unwrap();
    let server = serve(&orthanc, home.path());
    wait_for(&server, "two images", |all| count(all) == 2).await;

    // A final label saved through the API is stored in Orthanc as a SEG of its series.
    let a_uid = a.uids().series;
    let label = mask(&a, 1.0, 3000);
    let file = medlabel_imaging::nifti::write_nifti_bytes(&label, DataType::U8, true).unwrap();
    save_final_label(
        &server,
        &a_uid,
        file,
        json!({"label_info": [{"name": "spleen", "idx": 1}], "client_id": "slicer"}),
    )
    .await;
    let seg_uid = the_seg_series(&orthanc).await;
    let (_, info) = get_json(
        &server,
        &format!("/datastore/label/info?label={a_uid}&tag=final"),
    )
    .await;
    assert_eq!(info["SeriesInstanceUID"], json!(seg_uid));
    assert_eq!(info["label_names"], json!({"spleen": 1}));
    assert_spleen_seg(&orthanc, &seg_uid, &a, &label).await;

    // A SEG stored in Orthanc by someone else (OHIF's export) becomes B's final label.
    let b_mask = mask(&b, 1.0, 2500);
    let written = write_seg(
        &b_mask,
        &series_info(&b),
        &[Segment {
            value: 1,
            label: "spleen".into(),
        }],
        &SegWriteOptions::default(),
    )
    .unwrap();
    orthanc.store(&written.bytes).await;
    let b_uid = b.uids().series;
    wait_for(&server, "B's label", |all| {
        all["objects"][&b_uid]["labels"]["final"].is_object()
    })
    .await;
    let reply = get(
        &server,
        &format!("/datastore/label?label={b_uid}&tag=final"),
    )
    .await;
    assert_eq!(reply.status(), StatusCode::OK);
    let label = read_volume_bytes(&reply.bytes().await.unwrap(), ".nii.gz").unwrap();
    assert!(label.data == b_mask.data, "the SEG's voxels, on B's grid");
    assert!(max_abs_diff(&label.affine, &b_mask.affine) < 1e-4);

    // A SEG of a series the datastore does not have is not a label of anything.
    let mut stranger = series_info(&b);
    stranger.series_instance_uid = "2.25.424242".into();
    let orphan = write_seg(
        &b_mask,
        &stranger,
        &[Segment {
            value: 1,
            label: "spleen".into(),
        }],
        &SegWriteOptions::default(),
    )
    .unwrap();
    orthanc.store(&orphan.bytes).await;
    assert!(
        server
            .wait_for_log("not an image of this datastore", Duration::from_secs(30))
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let labels: Vec<(String, String)> = events(home.path())
        .into_iter()
        .filter(|(_, t)| t == "LabelSaved")
        .collect();
    assert_eq!(
        labels,
        vec![
            (format!("image/{a_uid}"), "LabelSaved".into()),
            (format!("image/{b_uid}"), "LabelSaved".into())
        ],
        "one label each: the SEG medlabel stored is not recorded twice, the orphan not at all"
    );
    let (_, stats) = get_json(&server, "/datastore/?output=stats").await;
    assert_eq!(
        (stats["total"].as_u64(), stats["completed"].as_u64()),
        (Some(2), Some(2))
    );
}

/// Rewrites a Part 10 file after `change`, in the transfer syntax `ts`.
fn rewrite(file: &[u8], ts: &str, change: impl FnOnce(&mut InMemDicomObject)) -> Vec<u8> {
    let mut obj: InMemDicomObject = from_reader(file).unwrap().into_inner();
    change(&mut obj);
    let sop = obj
        .element(tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(sop.trim_end_matches('\0')),
        )
        .unwrap();
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_that_cannot_be_volumes_are_refused_and_nothing_is_recorded() {
    let orthanc = Orthanc::start().await;
    let good = axial(21);
    orthanc.store_all(&synthetic_ct_series(&good)).await;
    // A slice missing from the middle: uneven spacing.
    let gap = axial(22);
    let mut files = synthetic_ct_series(&gap);
    files.remove(5);
    orthanc.store_all(&files).await;
    // No pixel data.
    let empty = axial(23);
    let files: Vec<Vec<u8>> = synthetic_ct_series(&empty)
        .iter()
        .map(|f| {
            rewrite(f, uids::EXPLICIT_VR_LITTLE_ENDIAN, |o| {
                o.remove_element(tags::PIXEL_DATA);
            })
        })
        .collect();
    orthanc.store_all(&files).await;
    // Explicit VR big endian (retired, so named by its UID): not decoded here.
    let big = axial(24);
    let files: Vec<Vec<u8>> = synthetic_ct_series(&big)
        .iter()
        .map(|f| rewrite(f, "1.2.840.10008.1.2.2", |_| {}))
        .collect();
    orthanc.store_all(&files).await;

    let home = tempfile::tempdir().unwrap();
    let server = serve(&orthanc, home.path());
    wait_for(&server, "four images", |all| count(all) == 4).await;
    for (spec, says) in [
        (&gap, "missing slices or variable spacing"),
        (&empty, "no PixelData"),
        (&big, "1.2.840.10008.1.2.2"),
    ] {
        let uid = spec.uids().series;
        let reply = get(&server, &format!("/datastore/image?image={uid}")).await;
        assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY, "{uid}");
        let body: Value = reply.json().await.unwrap();
        let detail = body["detail"][0]["msg"].as_str().unwrap_or_default();
        assert!(detail.contains(says) && detail.contains(&uid), "{body:#}");
    }
    assert!(
        !events(home.path()).iter().any(|(_, t)| t == "ImageFetched"),
        "nothing was recorded for them"
    );
    // The rest of the datastore is unaffected.
    let reply = get(
        &server,
        &format!("/datastore/image?image={}", good.uids().series),
    )
    .await;
    assert_eq!(reply.status(), StatusCode::OK);
    assert_volume(&reply.bytes().await.unwrap(), &good);
    // A label for an unknown series is a 404.
    let reply = reqwest::Client::new()
        .put(format!(
            "{}/datastore/label?image=2.25.1&tag=final",
            server.url
        ))
        .multipart(reqwest::multipart::Form::new().part(
            "label",
            reqwest::multipart::Part::bytes(vec![0u8; 4]).file_name("x.nii.gz"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_pacs_is_a_502_that_never_shows_the_credentials() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/dicom-web", closed.local_addr().unwrap());
    drop(closed);
    let home = tempfile::tempdir().unwrap();
    let server = serve_url(&url, home.path(), &[]);
    let (status, stats) = get_json(&server, "/datastore/?output=stats").await;
    assert_eq!((status, stats["total"].as_u64()), (StatusCode::OK, Some(0)));
    for path in [
        "/datastore/image?image=2.25.77",
        "/proxy/dicom/qido/studies",
        "/proxy/dicom/wado/studies/1/series/2/metadata",
    ] {
        let reply = get(&server, path).await;
        assert_eq!(reply.status(), StatusCode::BAD_GATEWAY, "{path}");
        let text = reply.text().await.unwrap();
        assert!(text.contains("unreachable"), "{path}: {text}");
        assert!(
            !text.contains(PASSWORD) && !text.contains(USER),
            "{path}: {text}"
        );
    }
    assert!(
        server
            .wait_for_log("DICOMweb poll failed", Duration::from_secs(10))
            .is_some()
    );
    assert!(server.log().iter().all(|l| !l.contains(PASSWORD)));
    assert!(
        events(home.path())
            .iter()
            .all(|(s, _)| !s.starts_with("image/"))
    );

    // Credentials written into the URL are taken out of it.
    let in_url = url.replace("http://", &format!("http://{USER}:{PASSWORD}@"));
    let home = tempfile::tempdir().unwrap();
    let server = serve_url(&in_url, home.path(), &[]);
    let reply = get(&server, "/datastore/image?image=2.25.77").await;
    assert_eq!(reply.status(), StatusCode::BAD_GATEWAY);
    assert!(!reply.text().await.unwrap().contains(PASSWORD));
    assert!(
        server
            .wait_for_log("DICOMweb poll failed", Duration::from_secs(10))
            .is_some()
    );
    assert!(server.log().iter().all(|l| !l.contains(PASSWORD)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_relays_qido_wado_and_stow_to_orthanc_with_its_credentials() {
    let orthanc = Orthanc::start().await;
    let spec = axial(31);
    let files = synthetic_ct_series(&spec);
    orthanc.store(&files[0]).await;
    let home = tempfile::tempdir().unwrap();
    let server = serve(&orthanc, home.path());
    let uids = spec.uids();
    let http = reqwest::Client::new();

    let studies: Value = http
        .get(format!("{}/proxy/dicom/qido/studies", server.url))
        .header("accept", "application/dicom+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(studies[0]["0020000D"]["Value"][0], json!(uids.study));
    // OHIF asks for metadata under qido/ too: it goes to WADO.
    for op in ["wado", "qido"] {
        let reply = http
            .get(format!(
                "{}/proxy/dicom/{op}/studies/{}/series/{}/metadata",
                server.url, uids.study, uids.series
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "{op}");
        let metadata: Value = reply.json().await.unwrap();
        assert_eq!(metadata.as_array().unwrap().len(), 1);
    }
    // STOW of the rest of the series, as OHIF stores a SEG.
    let body_files: Vec<&[u8]> = files[1..].iter().map(Vec::as_slice).collect();
    let boundary = "medlabel-test-boundary";
    let mut body = Vec::new();
    for file in body_files {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let reply = http
        .post(format!("{}/proxy/dicom/stow/studies", server.url))
        .header(
            "content-type",
            format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
        )
        .header("accept", "application/dicom+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        reply.status(),
        StatusCode::OK,
        "{}",
        reply.text().await.unwrap()
    );
    let series = orthanc
        .series(&format!("SeriesInstanceUID={}", uids.series))
        .await;
    assert_eq!(series[0]["00201209"]["Value"][0], json!(files.len()));
    // The whole series is now an image, and converts.
    let reply = get(&server, &format!("/datastore/image?image={}", uids.series)).await;
    assert_eq!(reply.status(), StatusCode::OK);
    assert_volume(&reply.bytes().await.unwrap(), &spec);
}

// ----- with the GPU runner: infer, label, train

const MODEL: &str = "segmentation_spleen";

/// `medlabel serve` on Orthanc with the GPU runner on CPU and the starter spleen model.
fn serve_with_runner(orthanc: &Orthanc, home: &Path) -> LocalServer {
    let runner = common::runner_binary();
    let starter = common::manifest_dir().join("../gpu-runner/models/segmentation_spleen");
    serve_url(
        &orthanc.dicomweb(),
        home,
        &[
            OsStr::new("--runner"),
            runner.as_os_str(),
            OsStr::new("--starter-model"),
            starter.as_os_str(),
            OsStr::new("--device"),
            OsStr::new("cpu"),
        ],
    )
}

/// `POST /infer/{MODEL}?image=…&output=…` with OHIF's params, retried while the runner
/// starts (503).
async fn infer_when_ready(server: &LocalServer, image: &str, output: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let params = json!({"result_extension": ".nii.gz", "result_dtype": "uint8"});
        let reply = reqwest::Client::new()
            .post(format!(
                "{}/infer/{MODEL}?image={image}&output={output}",
                server.url
            ))
            .multipart(reqwest::multipart::Form::new().text("params", params.to_string()))
            .send()
            .await
            .unwrap();
        if reply.status() != StatusCode::SERVICE_UNAVAILABLE {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "inference never became available"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A box of `value` in the middle of `spec`'s grid.
fn box_mask(spec: &SyntheticCt, value: f32) -> Volume<f32> {
    let grid = spec.volume();
    let [x, y, z] = grid.dims;
    let inside = |d: usize, n: usize| (n / 4..n - n / 4).contains(&d);
    let data = (0..grid.data.len())
        .map(|n| {
            let (i, j, k) = (n % x, n / x % y, n / (x * y));
            if inside(i, x) && inside(j, y) && inside(k, z) {
                value
            } else {
                0.0
            }
        })
        .collect();
    Volume::new(data, grid.dims, grid.affine).unwrap()
}

/// The fields of every event of type `kind`, from the server's log.
fn payloads(home: &Path, kind: &str) -> Vec<Value> {
    let db = rusqlite::Connection::open_with_flags(
        home.join("events.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut query = db
        .prepare("SELECT payload FROM events WHERE event_type = ?1 ORDER BY position")
        .unwrap();
    query
        .query_map([kind], |row| row.get::<_, String>(0))
        .unwrap()
        .map(|p| serde_json::from_str::<Value>(&p.unwrap()).unwrap()["data"].take())
        .collect()
}

/// The images a training job's `JobRequested` pinned: the list is a blob it names.
async fn pinned_images(home: &Path, requested: &Value) -> Vec<String> {
    let store = SqliteEventStore::open(home.join("events.db")).unwrap();
    let blobs = FolderBlobStore::open_with_inline(home.join("blobs"), &store).unwrap();
    let blob: BlobRef = serde_json::from_value(requested["labels_blob"].clone())
        .unwrap_or_else(|err| panic!("no pinned label blob ({err}): {requested:#}"));
    let labels: Vec<Value> =
        serde_json::from_slice(&read_to_vec(&blobs, &blob).await.unwrap()).unwrap();
    labels
        .iter()
        .map(|l| l["image"].as_str().unwrap().to_owned())
        .collect()
}

/// Orthanc → medlabel → inference → DICOM SEG back in Orthanc → label → training, with
/// the series' SeriesInstanceUID as the image id throughout, as OHIF sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orthanc_series_are_inferred_labelled_as_seg_and_trained_on() {
    let orthanc = Orthanc::start().await;
    let shape = |seed| SyntheticCt {
        dims: [40, 36, 16],
        spacing: [2.0, 2.0, 3.0],
        ..oblique_reversed(seed)
    };
    let (a, b) = (shape(51), shape(52));
    orthanc.store_all(&synthetic_ct_series(&a)).await;
    orthanc.store_all(&synthetic_ct_series(&b)).await;
    let home = tempfile::tempdir().unwrap();
    let server = serve_with_runner(&orthanc, home.path());
    wait_for(&server, "two images", |all| count(all) == 2).await;
    let (a_uid, b_uid) = (a.uids().series, b.uids().series);

    // Auto segmentation on a series not fetched yet: a DICOM SEG of that series, its
    // segment named after the model's label, voxel for voxel the NIfTI answer.
    let reply = infer_when_ready(&server, &a_uid, "dicom_seg").await;
    assert_eq!(reply.status(), StatusCode::OK, "{:?}", reply.text().await);
    assert_eq!(reply.headers()["content-type"], "application/dicom");
    let seg = reply.bytes().await.unwrap();
    let reply = infer_when_ready(&server, &a_uid, "image").await;
    assert_eq!(reply.status(), StatusCode::OK);
    let nifti = read_volume_bytes(&reply.bytes().await.unwrap(), ".nii.gz").unwrap();
    assert_eq!(nifti.dims, a.dims);
    assert!(max_abs_diff(&nifti.affine, &a.volume().affine) < 1e-4);
    assert_spleen_mask(&seg, &a, &nifti);

    // The annotator's final label goes to Orthanc as a SEG, named after the model's
    // label, and reads back as the label.
    let label = box_mask(&a, 1.0);
    let file = medlabel_imaging::nifti::write_nifti_bytes(&label, DataType::U8, true).unwrap();
    save_final_label(&server, &a_uid, file, json!({"client_id": "ohif"})).await;
    let seg_uid = the_seg_series(&orthanc).await;
    assert_spleen_seg(&orthanc, &seg_uid, &a, &label).await;
    let reply = get(
        &server,
        &format!("/datastore/label?label={a_uid}&tag=final"),
    )
    .await;
    assert_eq!(reply.status(), StatusCode::OK);
    let back = read_volume_bytes(&reply.bytes().await.unwrap(), ".nii.gz").unwrap();
    assert!(back.data == label.data);

    // B is labelled in the viewer: its SEG is stored in Orthanc (OHIF's export), and the
    // poller makes it B's final label.
    let written = write_seg(
        &box_mask(&b, 1.0),
        &series_info(&b),
        &[Segment {
            value: 1,
            label: "spleen".into(),
        }],
        &SegWriteOptions::default(),
    )
    .unwrap();
    orthanc.store(&written.bytes).await;
    wait_for(&server, "B's label", |all| {
        all["objects"][&b_uid]["labels"]["final"].is_object()
    })
    .await;

    // Training takes both series with their labels.
    let reply = reqwest::Client::new()
        .post(format!("{}/train/{MODEL}", server.url))
        .json(&json!({"max_epochs": 1, "val_split": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK, "{:?}", reply.text().await);
    let done = common::training_outcome(&server.url, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "DONE", "{done:#}");
    let requested = payloads(home.path(), "JobRequested");
    let train = requested.iter().find(|p| p["kind"] == "train").unwrap();
    let mut trained_on = pinned_images(home.path(), train).await;
    trained_on.sort_unstable();
    let mut expected = vec![a_uid.as_str(), b_uid.as_str()];
    expected.sort_unstable();
    assert_eq!(trained_on, expected, "{train:#}");
}

// ----- OHIF

/// The OHIF build the `monailabel` wheel ships (MONAI Label's, with its panel).
fn wheel_ohif() -> std::path::PathBuf {
    let lib = common::cache_dir().join("py/lib");
    std::fs::read_dir(&lib)
        .unwrap()
        .filter_map(|entry| {
            let dir = entry
                .ok()?
                .path()
                .join("site-packages/monailabel/endpoints/static/ohif");
            dir.join("index.html").is_file().then_some(dir)
        })
        .next()
        .expect("scripts/setup.sh installs monailabel, which ships OHIF")
}

/// OHIF, served by medlabel at `/ohif/` from the wheel's build, runs in headless
/// Chromium (Debian's `chromium`) and lists Orthanc's study through `/proxy/dicom/`:
/// its QIDO-RS requests reach Orthanc with medlabel's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ohif_from_the_wheel_lists_the_pacs_studies_through_the_proxy() {
    let orthanc = Orthanc::start().await;
    let spec = axial(61);
    orthanc.store_all(&synthetic_ct_series(&spec)).await;
    let home = tempfile::tempdir().unwrap();
    let ohif = wheel_ohif();
    let server = serve_url(
        &orthanc.dicomweb(),
        home.path(),
        &[OsStr::new("--ohif"), ohif.as_os_str()],
    );
    wait_for(&server, "the series", |all| count(all) == 1).await;
    let reply = get(&server, "/ohif/").await;
    assert_eq!(reply.status(), StatusCode::OK);
    assert!(reply.text().await.unwrap().contains("app-config.js"));

    let profile = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=30000", "--dump-dom"])
        .arg(format!("{}/ohif/", server.url))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("Chromium finished")
        .expect("Debian's chromium is installed (scripts/setup.sh)");
    let dom = String::from_utf8_lossy(&output.stdout);
    // The study list row: OHIF read it from Orthanc by QIDO-RS through the proxy.
    assert!(
        dom.contains(&format!("SYNTH-{}", spec.seed)),
        "the study list lacks the study: {}",
        &dom[..dom.len().min(4000)]
    );
}

/// A `make-sample` phantom (a bright spleen-like ellipsoid beside a dimmer organ, what
/// the starter model learned) as a CT series: axial, rows and columns running along
/// RAS +x and +y so the converted volume is the phantom as it was made.
fn phantom_series(nifti: &Path, seed: u64) -> (SyntheticCt, Vec<Vec<u8>>) {
    let mut volume = read_volume_bytes(&std::fs::read(nifti).unwrap(), ".nii.gz").unwrap();
    for v in &mut volume.data {
        *v = v.clamp(-1024.0, 3071.0);
    }
    let spec = SyntheticCt {
        dims: volume.dims,
        spacing: std::array::from_fn(|axis| volume.affine[axis][axis].abs()),
        orientation: [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0],
        seed,
        ..SyntheticCt::default()
    };
    let files = synthetic_ct_series_of(&spec, &volume);
    (spec, files)
}

/// OHIF's MONAI Label panel in headless Chromium, as a user drives it: the viewer opens
/// a study from Orthanc through the proxy, Auto-Segmentation draws the model's mask over
/// it, and Next Sample opens the study the server picked. `tests/python/ohif_panel.py`
/// drives Chromium over the DevTools protocol and finds the overlay by comparing
/// screenshots taken before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ohif_panel_segments_a_study_and_opens_the_next_sample() {
    let orthanc = Orthanc::start().await;
    let phantoms = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(common::runner_binary())
        .args(["make-sample", "--cases", "2", "--seed", "11", "--out"])
        .arg(phantoms.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let mut studies = Vec::new();
    for (n, seed) in [(0, 71), (1, 72)] {
        let (spec, files) =
            phantom_series(&phantoms.path().join(format!("spleen_00{n}.nii.gz")), seed);
        orthanc.store_all(&files).await;
        studies.push(spec.uids().study);
    }
    let home = tempfile::tempdir().unwrap();
    let runner = common::runner_binary();
    let starter = common::manifest_dir().join("../gpu-runner/models/segmentation_spleen");
    let ohif = wheel_ohif();
    let server = serve_url(
        &orthanc.dicomweb(),
        home.path(),
        &[
            OsStr::new("--runner"),
            runner.as_os_str(),
            OsStr::new("--starter-model"),
            starter.as_os_str(),
            OsStr::new("--device"),
            OsStr::new("cpu"),
            OsStr::new("--ohif"),
            ohif.as_os_str(),
        ],
    );
    wait_for(&server, "the series", |all| count(all) == 2).await;
    // The panel's tabs need the model in /info/, which lists it once the runner serves.
    let deadline = Instant::now() + Duration::from_secs(180);
    while common::get_json(&format!("{}/info/", server.url)).await["models"][MODEL].is_null() {
        assert!(Instant::now() < deadline, "the runner never served {MODEL}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let out = tempfile::tempdir().unwrap();
    let mut script = std::process::Command::new(common::python());
    script
        .arg(common::manifest_dir().join("tests/python/ohif_panel.py"))
        .arg(&server.url)
        .arg(&studies[0])
        .arg(out.path());
    let output = tokio::task::spawn_blocking(move || script.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the OHIF panel run failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(
        report["overlay_pixels"].as_u64().unwrap() >= 50,
        "{report:#}"
    );
    let picked = report["next_sample"].as_str().unwrap();
    assert!(studies.iter().any(|s| s == picked), "{report:#}");
    assert!(out.path().join("overlay.png").is_file());
}
