//! The local server's runner child, kept alive.
//!
//! `medlabel serve` runs GPU work in a child process, `medlabel-runner worker`: it
//! follows the event log for jobs and serves interactive inference on loopback. If that
//! child dies (killed, out of memory, a libtorch abort), nothing else restarts it, so
//! the [`RunnerSupervisor`] does:
//! - Each start gets a fresh random secret, written to the child's stdin (never its
//!   argv or environment, which other local processes can read); the child answers only
//!   requests that carry it. The child binds port 0 and reports the address and its
//!   worker name on a line of stdout; until then (and while it restarts) inference
//!   answers 503.
//! - When the child exits, the jobs it held are ended as `ERROR` at once (its lease
//!   would end them too, but later), and a new child starts after a backoff that
//!   doubles from half a second up to 30 seconds, and starts over once a child has run
//!   for a minute.
//! - The child holds a pipe to us as its stdin and exits at EOF, so it ends with this
//!   process however that ends.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use medlabel_events::datastore::WriteContext;
use medlabel_events::jobs::Jobs;
use medlabel_events::{Actor, UserName};
use rand::RngCore;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::model_runner::{LocalAddress, LocalRunner};

/// The first pause before a restart; it doubles with each quick failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that ran this long was healthy: the next restart waits [`FIRST_BACKOFF`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long a new child may take to report its address before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start the runner child.
#[derive(Debug, Clone)]
pub struct RunnerCommand {
    /// The `medlabel-runner` binary.
    pub binary: PathBuf,
    /// The studies folder's `.medlabel` home the child works in.
    pub home: PathBuf,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// How long a job claim holds without renewal.
    pub lease: Duration,
}

/// Starts the runner child and restarts it whenever it dies.
pub struct RunnerSupervisor {
    command: RunnerCommand,
    endpoint: Arc<LocalRunner>,
    jobs: Arc<Jobs>,
}

impl RunnerSupervisor {
    /// A supervisor that publishes each start's address and secret to `endpoint` and
    /// ends a dead child's jobs through `jobs`.
    pub fn new(command: RunnerCommand, endpoint: Arc<LocalRunner>, jobs: Arc<Jobs>) -> Self {
        Self {
            command,
            endpoint,
            jobs,
        }
    }

    /// Runs until this process ends: start, wait for the child's exit, clean up, wait,
    /// start again.
    pub async fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            match self.run_once().await {
                Ok(status) => tracing::error!(%status, "the runner exited; restarting it"),
                Err(err) => tracing::error!(%err, "the runner failed to start; retrying"),
            }
            self.endpoint.set(None);
            if started.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One life of the child: returns how it ended.
    async fn run_once(&self) -> std::io::Result<ExitStatus> {
        let secret = new_secret();
        let mut child = self.spawn(&secret).await?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let reported = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(started) = Started::parse(&line) {
                    return Ok(Some(started));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let started = match reported {
            Ok(Ok(Some(started))) => started,
            Ok(Ok(None)) => return child.wait().await,
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                child.kill().await?;
                return Err(std::io::Error::other(format!(
                    "no address reported within {START_TIMEOUT:?}"
                )));
            }
        };
        tracing::info!(address = %started.address, worker = %started.worker, "runner started");
        self.endpoint.set(Some(LocalAddress {
            url: format!("http://{}", started.address),
            secret,
        }));
        // Drained so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let status = child.wait().await?;
        self.endpoint.set(None);
        self.end_jobs_of(&started.worker, status).await;
        Ok(status)
    }

    async fn spawn(&self, secret: &str) -> std::io::Result<Child> {
        let command = &self.command;
        let mut child = Command::new(&command.binary)
            .arg("worker")
            .arg("--home")
            .arg(&command.home)
            .arg("--serve")
            .arg("127.0.0.1:0")
            .arg("--device")
            .arg(&command.device)
            .arg("--lease-seconds")
            .arg(command.lease.as_secs_f64().to_string())
            .arg("--exit-with-stdin")
            .arg("--secret-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(format!("{secret}\n").as_bytes()).await?;
        stdin.flush().await?;
        // Kept open for the child's life: its EOF tells the child we are gone.
        tokio::spawn(async move {
            let _stdin = stdin;
            std::future::pending::<()>().await
        });
        Ok(child)
    }

    /// Ends the jobs the dead child held, so training can start again at once.
    async fn end_jobs_of(&self, worker: &str, status: ExitStatus) {
        let actor = Actor {
            user: UserName::parse("medlabel").expect("a valid user name"),
            client_id: None,
            subject: None,
        };
        let why = format!("exited ({status}) while the job ran");
        match self
            .jobs
            .abandon(&WriteContext::fresh(actor), worker, &why)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(worker, jobs = n, "ended the dead runner's jobs"),
            Err(err) => tracing::error!(%err, "could not end the dead runner's jobs"),
        }
    }
}

/// The line a runner child prints once it listens.
struct Started {
    address: String,
    worker: String,
}

impl Started {
    fn parse(line: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(line).ok()?;
        Some(Self {
            address: value.get("listening")?.as_str()?.to_owned(),
            worker: value.get("worker")?.as_str()?.to_owned(),
        })
    }
}

/// 256 random bits, hex.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
