//! The cloud's volume service end to end on the AWS emulator: `medlabel serve --backend
//! aws` (the container behind the load balancer) over a fresh table and bucket, driven
//! by the real `monailabel` client and by Slicer's urllib download with 50 MB volumes,
//! then the stream dispatcher and `medlabel-runner sqs-worker` train on the saved label.

#![cfg(feature = "aws")]

use std::process::Command;

use medlabel_dispatcher::Dispatcher;
use serde_json::{Value, json};
use stack::{Stack, run, run_logged};

mod common;
mod stack;

const MODEL: &str = "segmentation_spleen";

/// `medlabel serve --backend aws` on a free loopback port over `stack`: the volume
/// service.
fn serve(stack: &Stack) -> common::LocalServer {
    let mut command = stack.command(env!("CARGO_BIN_EXE_medlabel"));
    command
        .args([
            "serve",
            "--backend",
            "aws",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args(["--table", &stack.table, "--bucket", &stack.bucket]);
    common::LocalServer::spawn(command)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_moves_50_mb_volumes_through_the_volume_service_and_the_runner_trains() {
    let stack = Stack::new().await;
    let starter = common::manifest_dir()
        .join("../gpu-runner/models")
        .join(MODEL);
    assert_eq!(
        stack.publish_model(&starter),
        json!({"model": MODEL, "published": true})
    );
    let service = serve(&stack);
    let work = tempfile::tempdir().unwrap();

    let python = common::cache_dir().join("py/bin/python");
    let mut client = Command::new(python);
    client
        .arg(common::manifest_dir().join("tests/python/client_cloud.py"))
        .arg(&service.url)
        .arg(work.path())
        .arg("50");
    let report = tokio::task::spawn_blocking(move || run(client))
        .await
        .unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert!(
        report["image_bytes"].as_u64().unwrap() > 50_000_000,
        "{report}"
    );
    assert!(
        report["label_bytes"].as_u64().unwrap() > 50_000_000,
        "{report}"
    );
    // Slicer's download came from the object store, not through the service.
    let emulator = stack.env.endpoint.trim_start_matches("http://");
    assert_eq!(report["redirected_to"], emulator, "{report}");

    // The training request reaches the queue as a small message; the runner trains on
    // the pinned 50 MB pair and reports DONE.
    let batch = stack.env.stream_batch(&stack.table).await;
    let dispatcher = Dispatcher::new(stack.env.sqs(), &stack.queue_url).unwrap();
    let outcome = dispatcher.dispatch(&batch).await;
    assert!(
        outcome.response.batch_item_failures.is_empty(),
        "{outcome:?}"
    );
    assert_eq!(outcome.sent, 1, "{outcome:?}");
    let runner_work = work.path().join("runner");
    std::fs::create_dir_all(&runner_work).unwrap();
    let worker = stack.worker(&runner_work);
    let (handled, log) = tokio::task::spawn_blocking(move || run_logged(worker))
        .await
        .unwrap();
    assert_eq!(
        handled["handled"],
        json!([{"done": {"finished": "DONE"}}]),
        "{log}"
    );
    // The runner logs JSON lines, the shape the stack's job-error metric filter reads
    // (`$.fields.message`, `$.fields.status`).
    let finished: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "job finished")
        .collect();
    assert_eq!(finished.len(), 1, "{log}");
    assert_eq!(finished[0]["fields"]["status"], "DONE", "{log}");

    // The service sees the run's end in the log.
    let status: Value = reqwest::get(format!("{}/train/", service.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "DONE", "{status}");
}
