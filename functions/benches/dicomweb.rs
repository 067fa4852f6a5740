//! The DICOMweb datastore against a real Orthanc (issue #17): how long a user waits for
//! the first answer on a real-size CT, and what a PACS of 10,000 series costs.
//!
//! `cargo bench -p medlabel-functions --bench dicomweb` (Orthanc and its DICOMweb
//! plugin from `scripts/setup.sh`). It stores in a fresh Orthanc one 512 × 512 × 300 CT
//! series (300 single-frame instances, 157 MB) and `BENCH_SERIES` (default 10,000)
//! one-instance series, starts the release `medlabel serve --studies <Orthanc>/dicom-web`
//! and measures, from an HTTP client on loopback:
//!
//! - **first sync**: from start until every series is listed (the first QIDO poll
//!   recording one image per series);
//! - **first and cached request on the CT**: `POST /infer/segmentation_spleen` when
//!   `MEDLABEL_BENCH_RUNNER` names a built `medlabel-runner` (the series is fetched by
//!   WADO-RS, converted, recorded and inferred on), else `GET /datastore/image` (fetch,
//!   convert, record and download); then the same request again, served from the blob
//!   store;
//! - **latency at `BENCH_SERIES` series**: `GET /datastore/?output=stats`, next sample
//!   (`POST /activelearning/random`, a new client each time: a pick and a durable lease),
//!   `GET /datastore/?output=all`, `GET /datastore/image/info`: median and p99 of
//!   `BENCH_REQUESTS` (default 200) sequential requests.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/orthanc/mod.rs"]
mod orthanc;

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use common::LocalServer;
use futures::StreamExt;
use medlabel_dicom::synthetic::{SyntheticCt, synthetic_ct_series};
use orthanc::{Orthanc, PASSWORD, USER};
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median and p99 of `times`, in ms.
fn summary(mut times: Vec<Duration>) -> String {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    format!(
        "{:.2} / {:.2}",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    )
}

async fn stats(http: &reqwest::Client, url: &str) -> Value {
    http.get(format!("{url}/datastore/?output=stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let series = env_usize("BENCH_SERIES", 10_000);
    let requests = env_usize("BENCH_REQUESTS", 200);
    let runner = std::env::var_os("MEDLABEL_BENCH_RUNNER");
    let http = reqwest::Client::new();

    let orthanc = Orthanc::start().await;
    let ct = SyntheticCt {
        dims: [512, 512, 300],
        spacing: [0.75, 0.75, 1.5],
        seed: 1,
        ..SyntheticCt::default()
    };
    let started = Instant::now();
    let files = synthetic_ct_series(&ct);
    futures::stream::iter(&files)
        .for_each_concurrent(4, |file| orthanc.store(file))
        .await;
    drop(files);
    eprintln!("bench: CT series stored in {:.1?}", started.elapsed());
    let started = Instant::now();
    futures::stream::iter(0..series)
        .for_each_concurrent(8, |n| {
            let spec = SyntheticCt {
                dims: [8, 8, 1],
                seed: 1_000 + n as u64,
                ..SyntheticCt::default()
            };
            let orthanc = &orthanc;
            async move { orthanc.store(&synthetic_ct_series(&spec)[0]).await }
        })
        .await;
    eprintln!(
        "bench: {series} small series stored in {:.1?}",
        started.elapsed()
    );

    let home = tempfile::tempdir().unwrap();
    let starter = common::manifest_dir().join("../gpu-runner/models/segmentation_spleen");
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("--home"),
        home.path().as_os_str(),
        OsStr::new("--poll-interval"),
        OsStr::new("5"),
    ];
    match &runner {
        Some(runner) => args.extend([
            OsStr::new("--runner"),
            runner.as_os_str(),
            OsStr::new("--starter-model"),
            starter.as_os_str(),
            OsStr::new("--device"),
            OsStr::new("cpu"),
        ]),
        None => args.extend([OsStr::new("--runner"), OsStr::new("/nonexistent")]),
    }
    let started = Instant::now();
    let server = LocalServer::start_with_env(
        std::path::Path::new(&orthanc.dicomweb()),
        &args,
        &[
            ("MEDLABEL_DICOMWEB_USERNAME", USER),
            ("MEDLABEL_DICOMWEB_PASSWORD", PASSWORD),
            ("RUST_LOG", "warn"),
        ],
    );
    let url = server.url.clone();
    loop {
        if stats(&http, &url).await["total"].as_u64() == Some(series as u64 + 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_sync = started.elapsed();

    // The CT: the first request fetches and converts it, the second finds it stored.
    let uid = ct.uids().series;
    let call = |what: &'static str| {
        let (http, url, uid) = (http.clone(), url.clone(), uid.clone());
        async move {
            let started = Instant::now();
            let reply = if what == "infer" {
                let params = json!({"result_extension": ".nii.gz", "result_dtype": "uint8"});
                http.post(format!(
                    "{url}/infer/segmentation_spleen?image={uid}&output=image"
                ))
                .multipart(reqwest::multipart::Form::new().text("params", params.to_string()))
                .send()
                .await
                .unwrap()
            } else {
                http.get(format!("{url}/datastore/image?image={uid}"))
                    .send()
                    .await
                    .unwrap()
            };
            let status = reply.status();
            let bytes = reply.bytes().await.unwrap();
            (status, bytes.len(), started.elapsed())
        }
    };
    let what = if runner.is_some() { "infer" } else { "image" };
    if runner.is_some() {
        // Wait for the runner without touching the CT: an unknown id answers 404 only
        // once inference is up.
        loop {
            let reply = http
                .post(format!(
                    "{url}/infer/segmentation_spleen?image=2.25.1&output=json"
                ))
                .send()
                .await
                .unwrap();
            if reply.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (status, size, first) = call(what).await;
    assert!(status.is_success(), "first {what}: {status}");
    let (status, _, cached) = call(what).await;
    assert!(status.is_success(), "cached {what}: {status}");

    // Latency with every series recorded.
    let mut stats_times = Vec::new();
    let mut next_times = Vec::new();
    let mut info_times = Vec::new();
    for n in 0..requests {
        let t = Instant::now();
        stats(&http, &url).await;
        stats_times.push(t.elapsed());
        let t = Instant::now();
        let next: Value = http
            .post(format!("{url}/activelearning/random"))
            .json(&json!({"client_id": format!("bench-{n}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        next_times.push(t.elapsed());
        assert!(next["StudyInstanceUID"].is_string(), "{next}");
        let t = Instant::now();
        let info = http
            .get(format!(
                "{url}/datastore/image/info?image={}",
                next["id"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap();
        assert!(info.status().is_success());
        info.bytes().await.unwrap();
        info_times.push(t.elapsed());
    }
    let mut all_times = Vec::new();
    for _ in 0..requests.min(20) {
        let t = Instant::now();
        let all = http
            .get(format!("{url}/datastore/?output=all"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        all_times.push(t.elapsed());
        assert!(all.len() > series * 100);
    }

    println!("series in Orthanc: {} + the CT", series);
    println!(
        "first sync (start → all listed): {:.2} s",
        first_sync.as_secs_f64()
    );
    println!(
        "CT 512×512×300, first {what} (fetch + convert + record{}): {:.2} s ({size} bytes)",
        if runner.is_some() {
            " + infer"
        } else {
            " + download"
        },
        first.as_secs_f64()
    );
    println!(
        "CT 512×512×300, cached {what}: {:.2} s",
        cached.as_secs_f64()
    );
    println!("median / p99 ms over {requests} sequential requests:");
    println!(
        "  GET /datastore/?output=stats      {}",
        summary(stats_times)
    );
    println!(
        "  POST /activelearning/random (new) {}",
        summary(next_times)
    );
    println!(
        "  GET /datastore/image/info         {}",
        summary(info_times)
    );
    println!(
        "  GET /datastore/?output=all (x{}) {}",
        requests.min(20),
        summary(all_times)
    );
    server.stop();
}
