//! The cloud's volume service end to end on the AWS emulator: `medlabel serve --backend
//! aws` (the container behind the load balancer) over a fresh table and bucket, driven
//! by the real `monailabel` client and by Slicer's urllib download with 50 MB volumes,
//! then the stream dispatcher and `medlabel-runner sqs-worker` train on the saved label.

#![cfg(feature = "aws")]

use std::path::Path;
use std::process::Command;

use medlabel_dispatcher::Dispatcher;
use medlabel_tests::emulator::{AwsTestEnv, aws};
use serde_json::{Value, json};

mod common;

const MODEL: &str = "segmentation_spleen";

/// One deployment on the emulator: its table, bucket and job queue.
struct Stack {
    env: AwsTestEnv,
    table: String,
    bucket: String,
    queue_url: String,
}

impl Stack {
    async fn new() -> Self {
        let env = aws().await;
        Self {
            table: env.fresh_table().await,
            bucket: env.fresh_bucket().await,
            queue_url: env.fresh_fifo_queue().await,
            env,
        }
    }

    /// `command` with its AWS SDK pointed at this stack's emulator.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command.envs([
            ("AWS_ENDPOINT_URL", self.env.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]);
        command
    }

    /// Runs `command` to its end; the JSON it printed.
    fn run(command: Command) -> Value {
        Self::run_logged(command).0
    }

    /// Runs `command` to its end; the JSON it printed, and its log (stderr).
    fn run_logged(mut command: Command) -> (Value, String) {
        let output = command.output().expect("the command starts");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "{command:?} failed\nstdout: {stdout}\nstderr: {stderr}"
        );
        // One JSON document: the runner's is pretty-printed, the script's one line.
        let answer = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|err| panic!("{command:?} printed no JSON ({err}): {stdout}"));
        (answer, stderr)
    }

    fn publish_starter_model(&self) {
        let starter = common::manifest_dir()
            .join("../gpu-runner/models")
            .join(MODEL);
        let mut command = self.command(env!("CARGO_BIN_EXE_medlabel"));
        command.arg("publish-model").arg(starter).args([
            "--table",
            &self.table,
            "--bucket",
            &self.bucket,
        ]);
        assert_eq!(
            Self::run(command),
            json!({"model": MODEL, "published": true})
        );
    }

    /// `medlabel serve --backend aws` on a free loopback port: the volume service.
    fn serve(&self) -> common::LocalServer {
        let mut command = self.command(env!("CARGO_BIN_EXE_medlabel"));
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
            .args(["--table", &self.table, "--bucket", &self.bucket]);
        common::LocalServer::spawn(command)
    }

    /// `medlabel-runner sqs-worker --until-empty`, to run with [`Stack::run`].
    fn worker(&self, work: &Path) -> Command {
        let mut command = self.command(common::runner_binary());
        command
            .args(["sqs-worker", "--until-empty", "--device", "cpu"])
            .args(["--queue-url", &self.queue_url])
            .args(["--table", &self.table, "--bucket", &self.bucket])
            .arg("--work")
            .arg(work)
            .env("OMP_NUM_THREADS", "1");
        command
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_moves_50_mb_volumes_through_the_volume_service_and_the_runner_trains() {
    let stack = Stack::new().await;
    stack.publish_starter_model();
    let service = stack.serve();
    let work = tempfile::tempdir().unwrap();

    let python = common::cache_dir().join("py/bin/python");
    let mut client = Command::new(python);
    client
        .arg(common::manifest_dir().join("tests/python/client_cloud.py"))
        .arg(&service.url)
        .arg(work.path())
        .arg("50");
    let report = tokio::task::spawn_blocking(move || Stack::run(client))
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
    let (handled, log) = tokio::task::spawn_blocking(move || Stack::run_logged(worker))
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
