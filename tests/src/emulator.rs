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
//! current image needs one), moto's image otherwise. CI has no Docker and uses the
//! process.
//!
//! Only the endpoint is shared process-wide. Every test gets its own SDK config and
//! clients (an SDK client's connection pool belongs to the tokio runtime that made it,
//! and each `#[tokio::test]` has its own runtime) and, through
//! [`AwsTestEnv::event_store`] and [`AwsTestEnv::blob_store`], its own table or bucket,
//! so tests never see each other's data.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{OnceLock, mpsc};
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
    let endpoint = shared_endpoint().to_owned();
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

fn shared_endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| match std::env::var(ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.is_empty() => endpoint,
        #[cfg(feature = "containers")]
        _ if container::docker_available() => container::start(),
        _ => start_emulator(),
    })
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

#[cfg(feature = "containers")]
pub mod container {
    //! The emulator in a container, through testcontainers. The container is started
    //! once per test binary and removed by a watchdog (`docker rm -f`) when the binary's
    //! process is gone: statics are never dropped, so testcontainers' own cleanup would
    //! not run.

    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::SyncRunner;
    use testcontainers::{ContainerRequest, GenericImage, ImageExt};

    use super::STARTUP_TIMEOUT;

    /// A Docker engine is reachable (`DOCKER_HOST`, or the default socket).
    pub fn docker_available() -> bool {
        std::env::var_os("DOCKER_HOST").is_some() || Path::new("/var/run/docker.sock").exists()
    }

    /// Image, port and health path of the emulator to run.
    fn image() -> (ContainerRequest<GenericImage>, u16, &'static str) {
        match std::env::var("LOCALSTACK_AUTH_TOKEN") {
            Ok(token) if !token.is_empty() => {
                let tag = std::env::var("MEDLABEL_LOCALSTACK_TAG").unwrap_or("stable".into());
                let image = GenericImage::new("localstack/localstack", &tag)
                    .with_exposed_port(4566.tcp())
                    .with_wait_for(WaitFor::Nothing)
                    .with_env_var("LOCALSTACK_AUTH_TOKEN", token)
                    .with_env_var("SERVICES", "dynamodb,dynamodbstreams,s3,sqs");
                (image, 4566, "/_localstack/health")
            }
            _ => {
                let tag = std::env::var("MEDLABEL_MOTO_TAG").unwrap_or("5.2.5".into());
                let image = GenericImage::new("motoserver/moto", &tag)
                    .with_exposed_port(5000.tcp())
                    .with_wait_for(WaitFor::Nothing)
                    .into();
                (image, 5000, "/moto-api/")
            }
        }
    }

    /// Starts the emulator container and returns its endpoint once it answers HTTP.
    pub fn start() -> String {
        let (image, port, health) = image();
        let container = image
            .with_startup_timeout(STARTUP_TIMEOUT)
            .start()
            .unwrap_or_else(|err| panic!("starting the emulator container: {err}"));
        let host_port = container
            .get_host_port_ipv4(port)
            .unwrap_or_else(|err| panic!("the emulator container's port {port}: {err}"));
        remove_when_gone(container.id());
        // Owned by the static endpoint from here on; the watchdog removes it.
        std::mem::forget(container);
        let address = format!("127.0.0.1:{host_port}");
        wait_for_http(&address, health);
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
}
