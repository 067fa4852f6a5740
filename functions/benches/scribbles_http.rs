//! Scribbles round trip over HTTP: `POST /infer/Histogram+GraphCut?image=ct` with a
//! scribbles upload (strokes on three slices) to the app served on loopback (embedded
//! SQLite log, folder blob store, no runner), until the whole multipart reply with the
//! mask is read. The image is a 256 × 256 × 128 CT-like phantom (0.8 × 0.8 × 2.5 mm) in
//! the datastore; the scribbles go as `.nii.gz`, as the Python client sends a file, and
//! as Slicer's `.nrrd`.
//!
//! `cargo bench -p medlabel-functions --bench scribbles_http` (add `--profile dev` for the
//! unoptimised server, with the hot crates at opt-level 3 as the tests build them)

#[allow(dead_code)] // only the generator is used here
#[path = "../../scribbles/tests/phantom/mod.rs"]
mod phantom;

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::clock::SystemClock;
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_functions::runner::NoRunner;
use medlabel_functions::{AppState, Config};
use medlabel_imaging::DataType;
use medlabel_imaging::io::write_volume_bytes;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = phantom::phantom([256, 256, 128], [0.8, 0.8, 2.5], 15.0, 1);
    let ct = write_volume_bytes(&p.image, ".nii.gz", DataType::I16).unwrap();
    let scribbles_gz = write_volume_bytes(&p.scribbles, ".nii.gz", DataType::U8).unwrap();
    let scribbles_nrrd = write_volume_bytes(&p.scribbles, ".nrrd", DataType::U8).unwrap();

    let url = runtime.block_on(async {
        let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
        let blobs = FolderBlobStore::open_with_inline(dir.path().join("blobs"), &store).unwrap();
        let temp = dir.path().join("tmp");
        std::fs::create_dir_all(&temp).unwrap();
        let config = Config {
            temp_dir: temp,
            ..Config::default()
        };
        let state = AppState::open_with(
            Arc::new(store),
            Arc::new(blobs),
            Arc::new(SystemClock),
            Arc::new(NoRunner),
            config,
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, medlabel_functions::app(state))
                .await
                .unwrap()
        });
        url
    });
    let http = reqwest::Client::new();
    runtime.block_on(async {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(ct).file_name("ct.nii.gz"),
        );
        let reply = http
            .put(format!("{url}/datastore/?image=ct"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success(), "{:?}", reply.text().await);
    });

    let infer = |label: &[u8], name: &str, params: &str| {
        let form = reqwest::multipart::Form::new()
            .text("params", params.to_owned())
            .part(
                "label",
                reqwest::multipart::Part::bytes(label.to_vec()).file_name(name.to_owned()),
            );
        let request = http
            .post(format!("{url}/infer/Histogram%2BGraphCut?image=ct"))
            .multipart(form);
        runtime.block_on(async {
            let reply = request.send().await.unwrap();
            assert!(reply.status().is_success(), "{:?}", reply.status());
            reply.bytes().await.unwrap()
        })
    };
    let python = r#"{"roi": [], "client_id": "bench"}"#;
    let slicer = r#"{"lamda": 1.0, "sigma": 0.1, "num_bins": 64, "roi": [],
        "label_info": [{"name": "organ", "id": 1}, {"name": "background_scribbles", "id": 2},
                       {"name": "foreground_scribbles", "id": 3}],
        "selected_label_name": "organ", "result_extension": ".nrrd", "result_dtype": "uint8"}"#;
    let mut group = c.benchmark_group("scribbles over HTTP 256x256x128");
    group.sample_size(10);
    group.bench_function("Histogram+GraphCut, .nii.gz in and out", |b| {
        b.iter(|| infer(&scribbles_gz, "scribbles.nii.gz", python))
    });
    group.bench_function("Histogram+GraphCut, Slicer's .nrrd in and out", |b| {
        b.iter(|| infer(&scribbles_nrrd, "scribbles.nrrd", slicer))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
