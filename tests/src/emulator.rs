//! The AWS emulator the AWS-backed tests run against.
//!
//! [`aws`] connects to `MEDLABEL_AWS_ENDPOINT` when it is set (`.ci/run` starts one
//! moto server for the whole run and exports it). Otherwise the first call in a test
//! binary starts its own server, `scripts/moto_server.py` under the venv that
//! `scripts/setup.sh` creates, on a free loopback port. That server is started through a
//! small `sh` watchdog that kills it once the test binary's process is gone, so no
//! emulator outlives the tests, whichever way they end. There is deliberately no
//! fallback that skips: without an emulator the AWS tests fail and say why.
//!
//! With the `containers` feature and a Docker engine, the emulator runs in a container
//! instead (see [`container`]): LocalStack when `LOCALSTACK_AUTH_TOKEN` is set (its
//! current image needs one), moto's image otherwise. [`choose`] makes that choice, a
//! pure function the unit tests cover where no Docker runs; `.ci/run` runs the AWS
//! tests against the container when it finds a Docker engine and says it skips them
//! otherwise.
//!
//! Only the endpoint is shared process-wide. Every test gets its own SDK config and
//! clients (an SDK client's connection pool belongs to the tokio runtime that made it,
//! and each `#[tokio::test]` has its own runtime) and, through
//! [`AwsTestEnv::event_store`] and [`AwsTestEnv::blob_store`], its own table or bucket,
//! so tests never see each other's data.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use medlabel_events::blob::s3::S3BlobStore;
use medlabel_events::store::dynamo::DynamoEventStore;
use serde_json::{Value, json};

/// Environment variable naming a running emulator (`http://127.0.0.1:5000`).
pub const ENDPOINT_VAR: &str = "MEDLABEL_AWS_ENDPOINT";

/// How long a freshly started emulator may take to listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// SDK configuration and helpers for one test against the emulator.
#[derive(Debug, Clone)]
pub struct AwsTestEnv {
    /// Region us-east-1, credentials test/test, the emulator as endpoint.
    pub config: SdkConfig,
    /// The emulator's base URL.
    pub endpoint: String,
}

/// Connects to the emulator (starting one if needed) and returns a fresh SDK config.
///
/// # Panics
/// When no emulator is configured and none can be started: the message says what to do.
pub async fn aws() -> AwsTestEnv {
    let endpoint = shared_endpoint().await.to_owned();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "medlabel-tests",
        ))
        .load()
        .await;
    AwsTestEnv { config, endpoint }
}

impl AwsTestEnv {
    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.config)
    }

    /// An S3 client with path-style addressing, as the emulator needs.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        S3BlobStore::client(&self.config)
    }

    /// A new table, returned as its name.
    pub async fn fresh_table(&self) -> String {
        let table = unique_name("events");
        DynamoEventStore::create_table(&self.dynamodb(), &table)
            .await
            .unwrap_or_else(|err| panic!("creating table {table} on the emulator: {err}"));
        table
    }

    /// A new, empty bucket, returned as its name.
    pub async fn fresh_bucket(&self) -> String {
        let bucket = unique_name("blobs");
        S3BlobStore::create_bucket(&self.s3(), &bucket)
            .await
            .unwrap_or_else(|err| panic!("creating bucket {bucket} on the emulator: {err}"));
        bucket
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.config)
    }

    /// A new FIFO queue (deduplication ids supplied by the sender), returned as its URL.
    pub async fn fresh_fifo_queue(&self) -> String {
        self.sqs()
            .create_queue()
            .queue_name(format!("{}.fifo", unique_name("jobs")))
            .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
            .send()
            .await
            .unwrap_or_else(|err| panic!("creating a FIFO queue on the emulator: {err}"))
            .queue_url
            .expect("a queue URL")
    }

    /// Every record of `table`'s stream so far, as the one batch Lambda would deliver:
    /// read through the DynamoDB Streams API and given the `eventSourceARN` Lambda adds.
    pub async fn stream_batch(&self, table: &str) -> aws_lambda_events::dynamodb::Event {
        let description = self
            .dynamodb()
            .describe_table()
            .table_name(table)
            .send()
            .await
            .unwrap_or_else(|err| panic!("describing {table} on the emulator: {err}"));
        let arn = description
            .table()
            .and_then(|t| t.latest_stream_arn())
            .expect("the event table has a stream")
            .to_owned();
        let stream = self
            .streams_call("DescribeStream", json!({"StreamArn": arn}))
            .await;
        let mut records = Vec::new();
        for shard in stream["StreamDescription"]["Shards"].as_array().unwrap() {
            let iterator = self
                .streams_call(
                    "GetShardIterator",
                    json!({"StreamArn": arn, "ShardId": shard["ShardId"],
                           "ShardIteratorType": "TRIM_HORIZON"}),
                )
                .await;
            let mut iterator = iterator["ShardIterator"].clone();
            loop {
                let page = self
                    .streams_call("GetRecords", json!({"ShardIterator": iterator}))
                    .await;
                let page_records = page["Records"].as_array().unwrap();
                if page_records.is_empty() {
                    break;
                }
                for record in page_records {
                    let mut record = record.clone();
                    record["eventSourceARN"] = json!(arn);
                    records.push(record);
                }
                iterator = page["NextShardIterator"].clone();
            }
        }
        serde_json::from_value(json!({"Records": records})).expect("Lambda's DynamoDB event shape")
    }

    /// One DynamoDB Streams API call, JSON in and out (the emulator does not check
    /// signatures; the credential scope routes the call to its Streams backend).
    async fn streams_call(&self, target: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(&self.endpoint)
            .header("X-Amz-Target", format!("DynamoDBStreams_20120810.{target}"))
            .header("Content-Type", "application/x-amz-json-1.0")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|err| panic!("{target} on the emulator: {err}"));
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{target}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// An event store over a new table.
    pub async fn event_store(&self) -> DynamoEventStore {
        DynamoEventStore::new(self.dynamodb(), self.fresh_table().await)
    }

    /// A blob store over a new bucket.
    pub async fn blob_store(&self) -> S3BlobStore {
        S3BlobStore::new(self.s3(), self.fresh_bucket().await)
    }
}

/// A name no other test uses, valid as a table and as a bucket name (lower case,
/// digits and dashes, at most 63 characters for a prefix of up to 16).
pub fn unique_name(prefix: &str) -> String {
    format!("medlabel-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Where the AWS tests' emulator comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulator {
    /// `MEDLABEL_AWS_ENDPOINT` names one that runs already.
    Given(String),
    /// A container started once per test binary.
    Container(Image),
    /// moto's server as a child process of the test binary.
    Process,
}

/// The emulator image a container runs.
#[derive(Clone, PartialEq, Eq)]
pub enum Image {
    /// testcontainers-modules' LocalStack image, with this auth token.
    LocalStack { auth_token: String },
    /// moto's image.
    Moto,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Image::LocalStack { .. } => f.write_str("LocalStack { auth_token: [REDACTED] }"),
            Image::Moto => f.write_str("Moto"),
        }
    }
}

/// The emulator for a test binary: a given endpoint first; else a container when
/// `containers` (the feature is on and a Docker engine answers), LocalStack when a
/// `localstack_token` is set; else moto's process.
pub fn choose(
    endpoint: Option<&str>,
    containers: bool,
    localstack_token: Option<&str>,
) -> Emulator {
    match (endpoint.filter(|e| !e.is_empty()), containers) {
        (Some(endpoint), _) => Emulator::Given(endpoint.to_owned()),
        (None, true) => Emulator::Container(match localstack_token.filter(|t| !t.is_empty()) {
            Some(token) => Image::LocalStack {
                auth_token: token.to_owned(),
            },
            None => Image::Moto,
        }),
        (None, false) => Emulator::Process,
    }
}

/// The endpoint every test of this binary shares, started on first use. Started from
/// the first test's runtime, without blocking on another: a container through
/// testcontainers' async runner, moto's process through a watchdog.
async fn shared_endpoint() -> &'static str {
    static ENDPOINT: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    ENDPOINT
        .get_or_init(|| async {
            let given = std::env::var(ENDPOINT_VAR).ok();
            let token = std::env::var("LOCALSTACK_AUTH_TOKEN").ok();
            #[cfg(feature = "containers")]
            let containers = container::docker_available();
            #[cfg(not(feature = "containers"))]
            let containers = false;
            match choose(given.as_deref(), containers, token.as_deref()) {
                Emulator::Given(endpoint) => endpoint,
                #[cfg(feature = "containers")]
                Emulator::Container(image) => container::start(&image).await,
                #[cfg(not(feature = "containers"))]
                Emulator::Container(_) => unreachable!("no containers without the feature"),
                Emulator::Process => start_emulator(),
            }
        })
        .await
}

/// Starts `scripts/moto_server.py` under a watchdog tied to this process and waits
/// until it listens.
fn start_emulator() -> String {
    let cache = std::env::var_os("MEDLABEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/medlabel"))
        })
        .unwrap_or_else(|| PathBuf::from("/root/.cache/medlabel"));
    let python = cache.join("py/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/moto_server.py");
    if !python.exists() {
        panic!(
            "no AWS emulator: {ENDPOINT_VAR} is not set and {} does not exist; run \
             scripts/setup.sh (or .ci/run, which also starts the emulator)",
            python.display()
        );
    }
    let port = free_port();
    let log = std::env::temp_dir().join(format!("medlabel-moto-{port}.log"));
    let log_file = std::fs::File::create(&log)
        .unwrap_or_else(|err| panic!("creating the emulator log {}: {err}", log.display()));
    // The watchdog polls this process once a second and kills the emulator when it is
    // gone (or when the watchdog itself is told to stop).
    let script_text = r#""$1" "$2" -H 127.0.0.1 -p "$3" & moto=$!
trap 'kill $moto 2>/dev/null' EXIT INT TERM HUP
while kill -0 "$4" 2>/dev/null && kill -0 $moto 2>/dev/null; do sleep 1; done"#;
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(script_text)
        .arg("medlabel-moto-watchdog")
        .arg(&python)
        .arg(&script)
        .arg(port.to_string())
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(
            log_file
                .try_clone()
                .expect("duplicating the emulator log handle"),
        )
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|err| panic!("starting the AWS emulator with sh: {err}"));
    // A waiter thread reaps the watchdog whenever it ends and reports an early exit.
    let (exited, exit) = mpsc::channel();
    std::thread::spawn(move || {
        let mut watchdog = watchdog;
        let _ = exited.send(watchdog.wait());
    });

    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        if let Ok(status) = exit.try_recv() {
            panic!(
                "the AWS emulator exited ({status:?}) before listening on {address}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            panic!(
                "the AWS emulator did not listen on {address} within {STARTUP_TIMEOUT:?}; \
                 see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("http://{address}")
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free loopback port for the AWS emulator")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_endpoint_wins_then_a_container_then_the_process() {
        let given = Some("http://127.0.0.1:5000");
        assert_eq!(
            choose(given, true, Some("ls-token")),
            Emulator::Given("http://127.0.0.1:5000".into())
        );
        assert_eq!(
            choose(None, true, Some("ls-token")),
            Emulator::Container(Image::LocalStack {
                auth_token: "ls-token".into()
            })
        );
        assert_eq!(choose(None, true, None), Emulator::Container(Image::Moto));
        assert_eq!(
            choose(Some(""), true, Some("")),
            Emulator::Container(Image::Moto)
        );
        assert_eq!(choose(None, false, Some("ls-token")), Emulator::Process);
        assert_eq!(choose(Some(""), false, None), Emulator::Process);
        // The token never shows up in a test's output.
        let shown = format!("{:?}", choose(None, true, Some("ls-token")));
        assert!(!shown.contains("ls-token"), "{shown}");
    }
}

#[cfg(feature = "containers")]
pub mod container {
    //! The emulator in a container, through testcontainers' async runner, so a
    //! `#[tokio::test]` starts it without a runtime of its own. The container is started
    //! once per test binary and removed by a watchdog (`docker rm -f`) when the binary's
    //! process is gone: statics are never dropped, so testcontainers' own cleanup would
    //! not run.

    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{ContainerRequest, GenericImage, ImageExt};
    use testcontainers_modules::localstack::LocalStack;

    use super::{Image, STARTUP_TIMEOUT};

    /// The services the tests use (LocalStack starts only those).
    const LOCALSTACK_SERVICES: &str = "dynamodb,dynamodbstreams,s3,sqs,logs";

    /// A Docker engine answers: `DOCKER_HOST` is set, or the default socket accepts.
    pub fn docker_available() -> bool {
        std::env::var_os("DOCKER_HOST").is_some()
            || std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
    }

    /// LocalStack's image with the token and the services the tests use.
    pub fn localstack(auth_token: &str) -> ContainerRequest<LocalStack> {
        LocalStack::default()
            .with_env_var("LOCALSTACK_AUTH_TOKEN", auth_token)
            .with_env_var("SERVICES", LOCALSTACK_SERVICES)
            .with_startup_timeout(STARTUP_TIMEOUT)
    }

    /// moto's image (`MEDLABEL_MOTO_TAG`, default the version `scripts/setup.sh` pins).
    pub fn moto() -> ContainerRequest<GenericImage> {
        let tag = std::env::var("MEDLABEL_MOTO_TAG").unwrap_or("5.2.5".into());
        GenericImage::new("motoserver/moto", &tag)
            .with_exposed_port(5000.tcp())
            .with_wait_for(WaitFor::Nothing)
            .with_startup_timeout(STARTUP_TIMEOUT)
    }

    /// Starts `image` and returns its endpoint once it answers HTTP.
    pub async fn start(image: &Image) -> String {
        let (id, host_port, health) = match image {
            Image::LocalStack { auth_token } => {
                let container = localstack(auth_token)
                    .start()
                    .await
                    .unwrap_or_else(|err| panic!("starting the LocalStack container: {err}"));
                let port = container
                    .get_host_port_ipv4(4566)
                    .await
                    .unwrap_or_else(|err| panic!("LocalStack's port 4566: {err}"));
                let id = container.id().to_owned();
                // Owned by the static endpoint from here on; the watchdog removes it.
                std::mem::forget(container);
                (id, port, "/_localstack/health")
            }
            Image::Moto => {
                let container = moto()
                    .start()
                    .await
                    .unwrap_or_else(|err| panic!("starting the moto container: {err}"));
                let port = container
                    .get_host_port_ipv4(5000)
                    .await
                    .unwrap_or_else(|err| panic!("moto's port 5000: {err}"));
                let id = container.id().to_owned();
                std::mem::forget(container);
                (id, port, "/moto-api/")
            }
        };
        remove_when_gone(&id);
        let address = format!("127.0.0.1:{host_port}");
        let probe = address.clone();
        tokio::task::spawn_blocking(move || wait_for_http(&probe, health))
            .await
            .expect("the readiness probe");
        format!("http://{address}")
    }

    /// Docker accepts connections on a mapped port before the emulator listens, so
    /// readiness is a real HTTP answer.
    fn wait_for_http(address: &str, path: &str) {
        let started = Instant::now();
        loop {
            let answered = TcpStream::connect(address).ok().and_then(|mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).ok()?;
                Some(head.starts_with(b"HTTP/1.") && head[9] == b'2')
            });
            if answered == Some(true) {
                return;
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "the emulator container did not answer on {address}{path} in {STARTUP_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn remove_when_gone(id: &str) {
        let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done; docker rm -f "$2" >/dev/null 2>&1"#;
        let spawned = Command::new("sh")
            .args(["-c", script, "medlabel-container-watchdog"])
            .arg(std::process::id().to_string())
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if spawned.is_err() {
            eprintln!("cannot watch emulator container {id}: remove it with `docker rm -f {id}`");
        }
    }

    #[cfg(test)]
    mod tests {
        use testcontainers::Image as _;

        use super::*;

        #[test]
        fn the_images_are_localstack_with_its_token_and_moto() {
            let localstack = localstack("ls-token");
            assert_eq!(localstack.image().name(), "localstack/localstack");
            let env: Vec<(String, String)> = localstack
                .env_vars()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert!(env.contains(&("LOCALSTACK_AUTH_TOKEN".into(), "ls-token".into())));
            assert!(env.contains(&("SERVICES".into(), LOCALSTACK_SERVICES.into())));
            let moto = moto();
            assert_eq!(moto.image().name(), "motoserver/moto");
            assert_eq!(moto.expose_ports(), &[5000.tcp()]);
        }
    }
}
