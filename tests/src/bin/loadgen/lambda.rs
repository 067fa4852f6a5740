//! Cold start of a Lambda binary: process spawn to its first answer, through a fake
//! Lambda Runtime API on loopback.
//!
//! The fake runtime implements the four routes a custom runtime uses: `next` hands out
//! one event and then never answers again (the process is killed once it has replied),
//! and `response`, the invocation `error` and `init/error` routes end the run. The
//! clock starts just before `spawn` and stops when the `response` POST reaches the
//! fake runtime, so a run includes loading the binary, the SDK and state setup, one
//! request against the emulator-backed state and the reply. The time to the first
//! `next` poll (initialisation alone) is reported beside it, and, when the emulator
//! reports its busy time, the process's own share (the answer less the emulator's time).
//!
//! State lives in a fresh DynamoDB table and S3 bucket on the moto emulator
//! (`MEDLABEL_AWS_ENDPOINT`, or one started for this process), optionally seeded with
//! images so that the projection a function rebuilds at start is not empty, and with
//! more after the first run so that the later ones fold events past its snapshot.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use medlabel_events::blob::s3::S3BlobStore;
use medlabel_events::datastore::{Datastore, WriteContext};
use medlabel_events::store::dynamo::DynamoEventStore;
use medlabel_events::{Actor, BlobStore, Extension, ImageId};
use medlabel_tests::emulator::AwsTestEnv;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::LoadgenError;
use crate::stats::{median, millis};

/// The id of the one invocation each run makes.
const REQUEST_ID: &str = "00000000-0000-4000-8000-000000000001";

/// One binary's measurement.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bin: PathBuf,
    pub runs: usize,
    /// The invocation event (an API Gateway v2 request, or any raw event); `{run}` in
    /// it becomes the run's number, so that each run can be a different client.
    pub event: Value,
    /// Images to record before the first run.
    pub seed_images: usize,
    /// Images to record after the first run (which snapshots the seeded state), so that
    /// the later runs fold that many events past the snapshot.
    pub tail_images: usize,
    /// Per-run limit; a run that has not answered by then fails.
    pub timeout: Duration,
}

/// Timings of one run, the first two from just before spawn.
#[derive(Debug, Clone, Copy)]
struct Run {
    first_poll: Duration,
    answered: Duration,
    /// Time the emulator spent handling requests during the run, when it reports it.
    emulator: Option<Duration>,
}

/// The seconds the emulator has spent handling requests so far, if it reports them
/// (`scripts/moto_server.py` does, at `/_medlabel/busy`).
async fn emulator_busy(endpoint: &str) -> Option<Duration> {
    let reply: Value = reqwest::get(format!("{endpoint}/_medlabel/busy"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    reply["busy_s"].as_f64().map(Duration::from_secs_f64)
}

/// Measures `plan.runs` cold starts and returns the JSON report line.
pub async fn run(plan: Plan) -> Result<Value, LoadgenError> {
    if plan.runs == 0 {
        return Err(LoadgenError::Usage("--runs must be at least 1".into()));
    }
    let aws = medlabel_tests::emulator::aws().await;
    let table = aws.fresh_table().await;
    let bucket = aws.fresh_bucket().await;
    if plan.seed_images > 0 {
        seed(&aws, &table, &bucket, "seed", plan.seed_images).await?;
    }
    let name = plan
        .bin
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("function")
        .to_owned();
    let env = [
        ("AWS_ENDPOINT_URL", aws.endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("MEDLABEL_EVENTS_TABLE", table.clone()),
        ("MEDLABEL_BLOBS_BUCKET", bucket.clone()),
        // The dispatcher only needs a well-formed URL for an empty batch.
        (
            "MEDLABEL_JOB_QUEUE_URL",
            format!("{}/123456789012/medlabel-jobs.fifo", aws.endpoint),
        ),
        ("AWS_LAMBDA_FUNCTION_NAME", name.clone()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "loadgen".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
    ];
    let log = tempfile::NamedTempFile::new()?;
    let mut runs = Vec::with_capacity(plan.runs);
    let mut status = Value::Null;
    for n in 0..plan.runs {
        if n == 1 && plan.tail_images > 0 {
            seed(&aws, &table, &bucket, "tail", plan.tail_images).await?;
        }
        let busy_before = emulator_busy(&aws.endpoint).await;
        let (mut run, answer) = once(&plan, n, &env, log.path()).await?;
        run.emulator = busy_before
            .zip(emulator_busy(&aws.endpoint).await)
            .map(|(before, after)| after.saturating_sub(before));
        status = answer
            .get("statusCode")
            .cloned()
            .unwrap_or(json!("not HTTP"));
        runs.push(run);
    }
    let answered: Vec<Duration> = runs.iter().map(|r| r.answered).collect();
    let polled: Vec<Duration> = runs.iter().map(|r| r.first_poll).collect();
    let ms = |values: &[Duration]| values.iter().map(|d| millis(*d)).collect::<Vec<_>>();
    // The process's own share: the answer time less the emulator's.
    let own: Option<Vec<Duration>> = runs
        .iter()
        .map(|r| r.emulator.map(|e| r.answered.saturating_sub(e)))
        .collect();
    let emulator: Option<Vec<Duration>> = runs.iter().map(|r| r.emulator).collect();
    Ok(json!({
        "bin": name,
        "path": plan.bin,
        "runs": plan.runs,
        "seed_images": plan.seed_images,
        "tail_images": plan.tail_images,
        "median_answer_ms": median(&answered).map(millis),
        "median_init_ms": median(&polled).map(millis),
        "answer_ms": ms(&answered),
        "init_ms": ms(&polled),
        "emulator_ms": emulator.as_deref().map(ms),
        "median_own_ms": own.as_deref().and_then(median).map(millis),
        "status_code": status,
    }))
}

/// Records `count` images named `<prefix>NNNNN` that share one stored blob.
async fn seed(
    aws: &AwsTestEnv,
    table: &str,
    bucket: &str,
    prefix: &str,
    count: usize,
) -> Result<(), LoadgenError> {
    let store = DynamoEventStore::new(aws.dynamodb(), table);
    let blobs = S3BlobStore::new(aws.s3(), bucket);
    let datastore = Datastore::open(Arc::new(store), Arc::new(blobs.clone()))
        .await
        .map_err(|err| LoadgenError::Seed(err.to_string()))?;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), b"seed image bytes")?;
    let ext = Extension::parse(".nii.gz").map_err(|err| LoadgenError::Seed(err.to_string()))?;
    let blob = blobs
        .put_file(file.path(), &ext)
        .await
        .map_err(|err| LoadgenError::Seed(err.to_string()))?;
    for n in 0..count {
        let id = ImageId::parse(format!("{prefix}{n:05}"))
            .map_err(|err| LoadgenError::Seed(err.to_string()))?;
        datastore
            .add_image_blob(
                &WriteContext::fresh(Actor::admin()),
                &id,
                blob.clone(),
                Default::default(),
            )
            .await
            .map_err(|err| LoadgenError::Seed(err.to_string()))?;
    }
    Ok(())
}

/// One spawn (run number `n`): returns the timings and the function's answer.
async fn once(
    plan: &Plan,
    n: usize,
    env: &[(&str, String)],
    log: &Path,
) -> Result<(Run, Value), LoadgenError> {
    let (done, finished) = oneshot::channel();
    let runtime = Arc::new(Runtime {
        event: plan.event.to_string().replace("{run}", &n.to_string()),
        first_poll: OnceLock::new(),
        done: Mutex::new(Some(done)),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(axum::serve(listener, router(runtime.clone())).into_future());

    let mut command = tokio::process::Command::new(&plan.bin);
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(log)?)
        .stderr(std::fs::File::create(log.with_extension("err"))?)
        .kill_on_drop(true);
    let start = Instant::now();
    let spawned = command.spawn();
    let outcome = match spawned {
        Ok(mut child) => {
            let outcome = tokio::time::timeout(plan.timeout, finished).await;
            let _ = child.kill().await;
            outcome
        }
        Err(err) => {
            server.abort();
            return Err(LoadgenError::Spawn(plan.bin.clone(), err));
        }
    };
    server.abort();
    let output = || {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        let text = read(log) + &read(&log.with_extension("err"));
        let tail: String = text.chars().rev().take(2000).collect();
        tail.chars().rev().collect::<String>()
    };
    let _ = std::fs::remove_file(log.with_extension("err"));
    match outcome {
        Ok(Ok(Ended::Answered { at, body })) => {
            let first_poll = runtime.first_poll.get().copied().unwrap_or(at);
            let run = Run {
                first_poll: first_poll - start,
                answered: at - start,
                emulator: None,
            };
            Ok((run, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
        Ok(Ok(Ended::Failed { route, body })) => Err(LoadgenError::Function(format!(
            "{} reported {route}: {}\n{}",
            plan.bin.display(),
            String::from_utf8_lossy(&body),
            output()
        ))),
        Ok(Err(_)) | Err(_) => Err(LoadgenError::Function(format!(
            "{} gave no answer within {:?}\n{}",
            plan.bin.display(),
            plan.timeout,
            output()
        ))),
    }
}

/// How a run ended, as the fake runtime saw it.
enum Ended {
    Answered { at: Instant, body: Vec<u8> },
    Failed { route: &'static str, body: Vec<u8> },
}

/// The fake runtime's state for one run.
struct Runtime {
    event: String,
    first_poll: OnceLock<Instant>,
    done: Mutex<Option<oneshot::Sender<Ended>>>,
}

impl Runtime {
    fn finish(&self, ended: Ended) {
        let sender = self.done.lock().ok().and_then(|mut slot| slot.take());
        if let Some(sender) = sender {
            let _ = sender.send(ended);
        }
    }
}

fn router(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(
                |State(rt): State<Arc<Runtime>>, body: axum::body::Bytes| async move {
                    rt.finish(Ended::Answered {
                        at: Instant::now(),
                        body: body.to_vec(),
                    });
                    StatusCode::ACCEPTED
                },
            ),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(
                |State(rt): State<Arc<Runtime>>, body: axum::body::Bytes| async move {
                    rt.finish(Ended::Failed {
                        route: "an invocation error",
                        body: body.to_vec(),
                    });
                    StatusCode::ACCEPTED
                },
            ),
        )
        .route(
            "/2018-06-01/runtime/init/error",
            post(
                |State(rt): State<Arc<Runtime>>, body: axum::body::Bytes| async move {
                    rt.finish(Ended::Failed {
                        route: "an init error",
                        body: body.to_vec(),
                    });
                    StatusCode::ACCEPTED
                },
            ),
        )
        .with_state(runtime)
}

/// The first poll gets the event; later polls wait until the process is killed.
async fn next(State(runtime): State<Arc<Runtime>>) -> Response {
    if runtime.first_poll.set(Instant::now()).is_err() {
        std::future::pending::<()>().await;
    }
    let deadline_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() + 30_000)
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    let pairs = [
        ("lambda-runtime-aws-request-id", REQUEST_ID.to_owned()),
        ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:123456789012:function:loadgen".to_owned(),
        ),
        (
            "lambda-runtime-trace-id",
            "Root=1-00000000-000000000000000000000000;Sampled=0".to_owned(),
        ),
        ("content-type", "application/json".to_owned()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    }
    (headers, runtime.event.clone()).into_response()
}

/// An API Gateway HTTP API (payload v2) event for `method path?query` with a JSON body.
pub fn api_gateway_event(method: &str, path_and_query: &str, body: Option<&str>) -> Value {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut headers = json!({
        "host": "loadgen.execute-api.us-east-1.amazonaws.com",
        "accept": "application/json",
        "user-agent": "loadgen",
    });
    if body.is_some() {
        headers["content-type"] = json!("application/json");
    }
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "loadgen",
            "domainName": "loadgen.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "loadgen",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "loadgen",
            },
            "requestId": REQUEST_ID,
            "routeKey": "$default",
            "stage": "$default",
            "time": "27/Nov/2026:00:00:00 +0000",
            "timeEpoch": 1_795_737_600_000u64,
        },
        "body": body,
        "isBase64Encoded": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_splits_the_query_and_marks_json_bodies() {
        let event = api_gateway_event("POST", "/datastore/?output=stats", Some("{}"));
        assert_eq!(event["rawPath"], "/datastore/");
        assert_eq!(event["rawQueryString"], "output=stats");
        assert_eq!(event["requestContext"]["http"]["method"], "POST");
        assert_eq!(event["headers"]["content-type"], "application/json");
        let plain = api_gateway_event("GET", "/info/", None);
        assert_eq!(plain["rawQueryString"], "");
        assert!(plain["headers"].get("content-type").is_none());
        assert!(plain["body"].is_null());
    }

    /// The fake runtime against a real Lambda runtime client would need a function
    /// binary; this drives its routes the way one does and checks the run ends once.
    #[tokio::test]
    async fn fake_runtime_serves_one_event_and_reports_the_answer() {
        let (done, finished) = oneshot::channel();
        let runtime = Arc::new(Runtime {
            event: r#"{"hello":1}"#.into(),
            first_poll: OnceLock::new(),
            done: Mutex::new(Some(done)),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let base = format!(
            "http://{}/2018-06-01/runtime",
            listener.local_addr().unwrap()
        );
        let server = tokio::spawn(axum::serve(listener, router(runtime.clone())).into_future());
        let client = reqwest::Client::new();
        let event = client
            .get(format!("{base}/invocation/next"))
            .send()
            .await
            .unwrap();
        assert_eq!(event.headers()["lambda-runtime-aws-request-id"], REQUEST_ID);
        assert_eq!(event.text().await.unwrap(), r#"{"hello":1}"#);
        // A second poll must not get the event again.
        let again = client
            .get(format!("{base}/invocation/next"))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
        assert!(again.is_err(), "the second poll was answered");
        let posted = client
            .post(format!("{base}/invocation/{REQUEST_ID}/response"))
            .body(r#"{"statusCode":200}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 202);
        match finished.await.unwrap() {
            Ended::Answered { body, .. } => assert_eq!(body, br#"{"statusCode":200}"#),
            Ended::Failed { route, .. } => panic!("run failed: {route}"),
        }
        assert!(runtime.first_poll.get().is_some());
        server.abort();
    }
}
