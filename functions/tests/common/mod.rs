//! Test support: an app over embedded backends in a temp dir, request builders in the
//! shape real clients send, and the Lambda path driven with API Gateway v2 events.

#![allow(dead_code)] // each test binary uses its own subset

pub mod oidc;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::clock::ManualClock;
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_functions::runner::NoRunner;
use medlabel_functions::{AppState, Config};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

/// The MONAI Label Python client's fixed multipart boundary.
pub const PY_BOUNDARY: &str = "----------lImIt_of_THE_fIle_eW_$";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with_limit(1 << 20).await
    }

    pub async fn with_limit(max_upload_bytes: u64) -> Self {
        Self::with_config(Config {
            max_upload_bytes,
            ..Config::default()
        })
        .await
    }

    /// A harness with `config`; its spool folder is the harness's own.
    pub async fn with_config(config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
        let blobs = FolderBlobStore::open_with_inline(dir.path().join("blobs"), &store).unwrap();
        let temp = dir.path().join("tmp");
        std::fs::create_dir_all(&temp).unwrap();
        let clock = Arc::new(ManualClock::new(1_750_000_000_000));
        let config = Config {
            temp_dir: temp,
            ..config
        };
        let state = AppState::open_with(
            Arc::new(store),
            Arc::new(blobs),
            clock.clone(),
            Arc::new(NoRunner),
            config,
        )
        .await
        .unwrap();
        Self { dir, state, clock }
    }

    pub fn app(&self) -> Router {
        medlabel_functions::app(self.state.clone())
    }

    /// The event store's head: unchanged means nothing was recorded.
    pub async fn head(&self) -> u64 {
        self.state.datastore.event_store().head().await.unwrap()
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        send(self.app(), request).await
    }

    /// The same request through the Lambda adapter, as an API Gateway v2 event.
    pub async fn send_lambda(&self, request: &Req) -> Reply {
        send_lambda(self.app(), request, None, None).await
    }
}

/// A reply, collected.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

pub async fn send(app: Router, request: Request<Body>) -> Reply {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// A request description both paths can be built from.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn new(method: &'static str, path_and_query: &str) -> Self {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        Self {
            method,
            path: path.to_owned(),
            query: query.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn json(self, value: Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    /// A multipart body exactly as the Python client builds it.
    pub fn multipart(self, fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> Self {
        let body = multipart_body(fields, files);
        self.header(
            "content-type",
            &format!("multipart/form-data; boundary={PY_BOUNDARY}"),
        )
        .header("content-length", &body.len().to_string())
        .body(body)
    }

    pub fn request(&self) -> Request<Body> {
        let uri = if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        };
        let mut builder = Request::builder().method(self.method).uri(uri);
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        builder.body(Body::from(self.body.clone())).unwrap()
    }

    /// The API Gateway HTTP API (payload v2) event for this request.
    pub fn v2_event(&self, stage: Option<&str>, user: Option<&str>) -> Value {
        let raw_path = match stage {
            Some(stage) => format!("/{stage}{}", self.path),
            None => self.path.clone(),
        };
        let mut headers = serde_json::Map::new();
        headers.insert(
            "host".into(),
            json!("abc123.execute-api.eu-west-1.amazonaws.com"),
        );
        for (k, v) in &self.headers {
            headers.insert(k.to_ascii_lowercase(), json!(v));
        }
        let mut context = json!({
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {"method": self.method, "path": raw_path, "protocol": "HTTP/1.1",
                     "sourceIp": "192.0.2.1", "userAgent": "test"},
            "requestId": "lambda-request",
            "routeKey": "$default",
            "stage": stage.unwrap_or("$default"),
            "time": "27/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1_795_000_000_000u64,
        });
        if let Some(user) = user {
            context["authorizer"] = json!({"jwt": {"claims": {"preferred_username": user, "sub": "x"},
                                                   "scopes": null}});
        }
        let mut event = json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": raw_path,
            "rawQueryString": self.query,
            "headers": headers,
            "requestContext": context,
            "isBase64Encoded": !self.body.is_empty(),
        });
        if !self.body.is_empty() {
            event["body"] = json!(BASE64.encode(&self.body));
        }
        event
    }
}

pub fn multipart_body(fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{PY_BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    for (name, file_name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{PY_BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{PY_BOUNDARY}--\r\n").as_bytes());
    body
}

/// Runs `request` the way `lambda_http::run` does: v2 JSON event → `LambdaRequest` →
/// the library's adapter over [`medlabel_functions::lambda::lambda_service`] → the
/// serialised API Gateway response, decoded back into a [`Reply`].
pub async fn send_lambda(
    app: Router,
    request: &Req,
    stage: Option<&str>,
    user: Option<&str>,
) -> Reply {
    let event: lambda_http::request::LambdaRequest =
        serde_json::from_value(request.v2_event(stage, user)).unwrap();
    let mut adapter = lambda_http::Adapter::from(medlabel_functions::lambda::lambda_service(app));
    let response = adapter
        .call(lambda_http::LambdaEvent::new(
            event,
            lambda_http::Context::default(),
        ))
        .await
        .unwrap();
    let wire = serde_json::to_value(&response).unwrap();
    let status = StatusCode::from_u16(wire["statusCode"].as_u64().unwrap() as u16).unwrap();
    let mut headers = HeaderMap::new();
    if let Some(map) = wire["headers"].as_object() {
        for (k, v) in map {
            headers.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.as_str().unwrap().parse().unwrap(),
            );
        }
    }
    let body = match wire["body"].as_str() {
        None => Vec::new(),
        Some(text) if wire["isBase64Encoded"].as_bool() == Some(true) => {
            BASE64.decode(text).unwrap()
        }
        Some(text) => text.as_bytes().to_vec(),
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// This crate's folder, read when the test runs: a test binary reused from a build in
/// another checkout (cargo's fingerprints do not depend on the workspace's path) would
/// carry that checkout's path in `env!`.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .expect("cargo sets CARGO_MANIFEST_DIR")
        .into()
}

/// Where `scripts/setup.sh` installs the test tooling (`MEDLABEL_CACHE`, default
/// `~/.cache/medlabel`).
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("MEDLABEL_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(&std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/medlabel")
        })
}

/// The Python that `scripts/setup.sh` installs `monailabel==0.8.5` into.
pub fn python() -> std::path::PathBuf {
    cache_dir().join("py/bin/python")
}

/// Runs `tests/python/<script> <url> <work> <extra...>`, checks it reports
/// `{"ok": true}` on its last line, and returns that report.
pub fn run_python(script: &str, url: &str, work: &std::path::Path, extra: &[&str]) -> Value {
    let path = manifest_dir().join("tests/python").join(script);
    let output = std::process::Command::new(python())
        .arg(&path)
        .arg(url)
        .arg(work)
        .args(extra)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    report
}

/// The GPU runner binary `cargo test --workspace` builds beside this test's binaries.
pub fn runner_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let runner = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("medlabel-runner");
    assert!(
        runner.is_file(),
        "{} is missing: build it first (`cargo test --workspace` does)",
        runner.display()
    );
    runner
}

/// The grid every test volume shares: 8×8×4 voxels of 1.5 × 1.5 × 2 mm.
pub const TEST_DIMS: [usize; 3] = [8, 8, 4];

fn test_affine() -> medlabel_imaging::Affine {
    [
        [1.5, 0.0, 0.0, -6.0],
        [0.0, 1.5, 0.0, -6.0],
        [0.0, 0.0, 2.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

/// A NIfTI file image on a grid of `dims` voxels of 1.5 × 1.5 × 2 mm, each voxel
/// `value(index)` stored as `datatype`, gzipped when `gz`.
pub fn nifti(
    dims: [usize; 3],
    datatype: medlabel_imaging::DataType,
    gz: bool,
    value: impl Fn(usize) -> f32,
) -> Vec<u8> {
    let voxels = dims.iter().product::<usize>();
    let data = (0..voxels).map(value).collect();
    let volume = medlabel_imaging::Volume::new(data, dims, test_affine()).unwrap();
    medlabel_imaging::nifti::write_nifti_bytes(&volume, datatype, gz).unwrap()
}

/// A tiny CT-like image as a `.nii.gz` (int16): uploads are read whole before they
/// are recorded, so tests send real volumes. `seed` varies the voxels, so images with
/// different seeds are different blobs.
pub fn ct_volume(seed: u32) -> Vec<u8> {
    nifti(TEST_DIMS, medlabel_imaging::DataType::I16, true, |i| {
        ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 % 400.0 - 100.0
    })
}

/// A label on [`ct_volume`]'s grid as a `.nii.gz` (uint8): `value` in the voxels whose
/// index is below `filled`, background elsewhere.
pub fn label_volume(value: u8, filled: usize) -> Vec<u8> {
    nifti(TEST_DIMS, medlabel_imaging::DataType::U8, true, |i| {
        if i < filled { f32::from(value) } else { 0.0 }
    })
}

/// A `medlabel serve` process on a free loopback port, killed when dropped. Its
/// standard output (the log) is kept, so a test can wait for a line.
pub struct LocalServer {
    child: std::process::Child,
    pub url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LocalServer {
    /// Starts `medlabel serve --studies <studies> <extra…>` and waits for its address.
    pub fn start(studies: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Self {
        Self::start_with_env(studies, extra, &[])
    }

    /// [`LocalServer::start`] with extra environment variables.
    pub fn start_with_env(
        studies: &std::path::Path,
        extra: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_medlabel"));
        command
            .args(["serve", "--studies"])
            .arg(studies)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .envs(env.iter().copied());
        Self::spawn(command)
    }

    /// Starts `command` (a `medlabel serve ...` on a free loopback port) and waits for
    /// the address it prints.
    pub fn spawn(mut command: std::process::Command) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("medlabel starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("medlabel exited before printing its URL")
                .unwrap();
            if let Some(at) = line.find(" at http://") {
                break line[at + 4..].trim().trim_end_matches('/').to_owned();
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // Keep draining the log so the server never blocks on a full pipe.
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Self { child, url, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The first log line containing `needle`, waiting up to `timeout` for it.
    pub fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGKILL: no clean shutdown to lean on) and waits for it.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Synthetic CT-like studies with final labels, written by the runner (`make-sample`).
pub fn sample_studies(dir: &std::path::Path, cases: usize) {
    sample_studies_seeded(dir, cases, 3);
}

/// [`sample_studies`] from another seed: cases the seed-3 ones never show.
pub fn sample_studies_seeded(dir: &std::path::Path, cases: usize, seed: u64) {
    make_sample(dir, cases, seed, "48,48,32", "3,3,3", false);
}

/// `make-sample` into `dir`: `cases` synthetic CTs from `seed` of `dims` voxels
/// (`"i,j,k"`) at `spacing` mm, with final spleen labels (and liver ones, `liver`).
pub fn make_sample(
    dir: &std::path::Path,
    cases: usize,
    seed: u64,
    dims: &str,
    spacing: &str,
    liver: bool,
) {
    let status = std::process::Command::new(runner_binary())
        .args(["make-sample", "--cases", &cases.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--dims", dims, "--spacing", spacing])
        .args(liver.then_some("--liver"))
        .arg("--out")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `GET /train/` at `url` until the training task is DONE or ERROR, at most
/// `limit`; returns the task.
pub async fn training_outcome(url: &str, limit: std::time::Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let task = get_json(&format!("{url}/train/")).await;
        if task["status"] == "DONE" || task["status"] == "ERROR" {
            return task;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "training did not end: {task}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `GET url` (a 300 s timeout: a server may be busy training); the reply's JSON body,
/// whatever its status.
pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Splits a multipart reply into (headers, body) per part.
pub fn multipart_parts(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type.split("boundary=").nth(1).unwrap();
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(start) = find(rest, delimiter.as_bytes()) {
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let header_end = find(rest, b"\r\n\r\n").unwrap();
        let headers = String::from_utf8_lossy(&rest[2..header_end]).into_owned();
        let content = &rest[header_end + 4..];
        let end = find(content, format!("\r\n{delimiter}").as_bytes()).unwrap();
        out.push((headers, content[..end].to_vec()));
        rest = &content[end + 2..];
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
