//! One cloud deployment on the AWS emulator, for the tests that run medlabel's and the
//! runner's binaries against it: a fresh table, bucket and job queue, and commands whose
//! AWS SDK points at the emulator.
#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use medlabel_tests::emulator::{AwsTestEnv, aws};
use serde_json::Value;

/// A deployment's resources on the emulator.
pub struct Stack {
    pub env: AwsTestEnv,
    pub table: String,
    pub bucket: String,
    pub queue_url: String,
}

impl Stack {
    pub async fn new() -> Self {
        let env = aws().await;
        Self {
            table: env.fresh_table().await,
            bucket: env.fresh_bucket().await,
            queue_url: env.fresh_fifo_queue().await,
            env,
        }
    }

    /// The environment that points a child process's AWS SDK at this stack's emulator.
    pub fn aws_env(&self) -> [(&str, &str); 5] {
        [
            ("AWS_ENDPOINT_URL", &self.env.endpoint),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
    }

    /// `program` with its AWS SDK pointed at this stack's emulator.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command.envs(self.aws_env());
        command
    }

    /// `medlabel publish-model DIR` against this stack; what it printed.
    pub fn publish_model(&self, dir: &Path) -> Value {
        let mut command = self.command(env!("CARGO_BIN_EXE_medlabel"));
        command.arg("publish-model").arg(dir).args([
            "--table",
            &self.table,
            "--bucket",
            &self.bucket,
        ]);
        run(command)
    }

    /// `medlabel-runner sqs-worker --until-empty` against this stack, to run with
    /// [`run`] or [`run_logged`].
    pub fn worker(&self, work: &Path) -> Command {
        let mut command = self.command(crate::common::runner_binary());
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

/// Runs `command` to its end; the JSON it printed.
pub fn run(command: Command) -> Value {
    run_logged(command).0
}

/// Runs `command` to its end; the JSON it printed, and its log (stderr).
pub fn run_logged(mut command: Command) -> (Value, String) {
    let output = command.output().expect("the command starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    // One JSON document: the runner's is pretty-printed, a script's one line.
    let answer = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("{command:?} printed no JSON ({err}): {stdout}"));
    (answer, stderr)
}
