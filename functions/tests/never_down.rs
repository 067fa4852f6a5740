//! Never down, never stale: against the real `medlabel serve` (and its runner child),
//! the requests and crashes that used to stop medlabel for everyone.
//!
//! - JSON too deep or too large for the log is refused at the edge on every route that
//!   takes JSON; the deepest and widest accepted are recorded and read back after a
//!   restart. An event that still cannot be decoded is quarantined, not fatal.
//! - A runner killed (SIGKILL) or frozen (SIGSTOP) mid-training loses its job (at once,
//!   or when its lease lapses), training can start again, and the supervisor restarts
//!   the runner so inference answers again within seconds. Of eight concurrent training
//!   requests exactly one is accepted. The first inference after a training run uses
//!   the model it published. The runner's own port answers only its parent.
//! - No other web origin and no foreign `Host` gets an answer; a removed image stays
//!   removed after a restart.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::LocalServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn no_runner() -> [&'static std::ffi::OsStr; 2] {
    ["--runner".as_ref(), "/nonexistent".as_ref()]
}

/// `{"a": [[…[1]…]]}` nesting `depth` arrays and objects in all.
fn nested(depth: usize) -> String {
    format!(
        "{{\"a\":{}1{}}}",
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

/// `{"w": "xx…"}` of exactly `bytes` bytes.
fn wide(bytes: usize) -> String {
    format!("{{\"w\":\"{}\"}}", "x".repeat(bytes - 8))
}

/// The largest and deepest JSON values the edge accepts, and values just beyond.
const DEEPEST: usize = 32;
const WIDEST: usize = 64 << 10;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A multipart form with one text field and, optionally, a file.
fn form(field: &str, text: &str, file: Option<(&str, &str, Vec<u8>)>) -> reqwest::multipart::Form {
    let form = reqwest::multipart::Form::new().text(field.to_owned(), text.to_owned());
    match file {
        Some((name, file_name, bytes)) => form.part(
            name.to_owned(),
            reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_owned()),
        ),
        None => form,
    }
}

/// Every route that takes a client's JSON and records it, as a request carrying `json`.
fn json_requests(url: &str, json: &str) -> Vec<(&'static str, reqwest::RequestBuilder)> {
    let http = client();
    let ct = || Some(("file", "ct.nii.gz", common::ct_volume(1)));
    let label = || Some(("label", "label.nii.gz", common::label_volume(1, 40)));
    vec![
        (
            "PUT /datastore/ params",
            http.put(format!("{url}/datastore/?image=ct"))
                .multipart(form("params", json, ct())),
        ),
        (
            "PUT /datastore/image params",
            http.put(format!("{url}/datastore/image?image=ct"))
                .multipart(form("params", json, ct())),
        ),
        (
            "PUT /datastore/image/info info",
            http.put(format!("{url}/datastore/image/info?image=ct"))
                .multipart(form("info", json, None)),
        ),
        (
            "PUT /datastore/label params",
            http.put(format!("{url}/datastore/label?image=ct&tag=final"))
                .multipart(form("params", json, label())),
        ),
        (
            "PUT /datastore/label/info info",
            http.put(format!("{url}/datastore/label/info?label=ct&tag=final"))
                .multipart(form("info", json, None)),
        ),
        (
            "PUT /datastore/updatelabelinfo params",
            http.put(format!(
                "{url}/datastore/updatelabelinfo?label=ct&tag=final"
            ))
            .multipart(form("params", json, None)),
        ),
        (
            "POST /activelearning/random body",
            http.post(format!("{url}/activelearning/random"))
                .header("content-type", "application/json")
                .body(json.to_owned()),
        ),
        (
            "POST /scoring/dice body",
            http.post(format!("{url}/scoring/dice"))
                .header("content-type", "application/json")
                .body(json.to_owned()),
        ),
    ]
}

/// What the server shows of its datastore and tasks (each reply's status and body).
async fn everything(url: &str) -> Value {
    let http = client();
    let get = |path: &str| {
        let request = http.get(format!("{url}{path}"));
        async move {
            let reply = request.send().await.unwrap();
            let status = reply.status().as_u16();
            let body = reply.json::<Value>().await.unwrap();
            if status == 200 {
                body
            } else {
                json!({"status": status, "body": body})
            }
        }
    };
    json!({
        "datastore": get("/datastore/?output=all").await,
        "info": get("/info/").await["datastore"],
        "scoring": get("/scoring/?all=true").await,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_the_log_could_not_hold_is_refused_and_the_largest_accepted_reads_back() {
    let studies = tempfile::tempdir().unwrap();
    let server = LocalServer::start(studies.path(), &no_runner());
    let url = server.url.clone();
    // The image the other routes write to, and its label.
    for (_, request) in json_requests(&url, "{}").into_iter().take(4) {
        assert_eq!(request.send().await.unwrap().status(), StatusCode::OK);
    }

    for poison in [nested(DEEPEST + 1), nested(125), wide(WIDEST + 1)] {
        let before = everything(&url).await;
        for (route, request) in json_requests(&url, &poison) {
            let reply = request.send().await.unwrap();
            assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY, "{route}");
            let detail = reply.json::<Value>().await.unwrap()["detail"].to_string();
            assert!(
                detail.contains("deeper than") || detail.contains("larger than"),
                "{route}: {detail}"
            );
        }
        assert_eq!(
            everything(&url).await,
            before,
            "a refused request recorded something"
        );
    }
    for accepted in [nested(DEEPEST), wide(WIDEST)] {
        for (route, request) in json_requests(&url, &accepted) {
            let reply = request.send().await.unwrap();
            assert_eq!(
                reply.status(),
                StatusCode::OK,
                "{route}: {:?}",
                reply.text().await
            );
        }
    }
    // The widest value replaced the image's info (an upload replaces it) and the
    // deepest is merged back in (an info update merges).
    let (_, merge) = json_requests(&url, &nested(DEEPEST)).remove(2);
    assert_eq!(merge.send().await.unwrap().status(), StatusCode::OK);
    let recorded = everything(&url).await;
    let info = &recorded["datastore"]["objects"]["ct"]["image"]["info"];
    assert_eq!(info["w"].as_str().unwrap().len(), WIDEST - 8);
    let mut depth = 1;
    let mut value = &info["a"];
    while let Some(inner) = value.get(0) {
        (depth, value) = (depth + 1, inner);
    }
    assert_eq!(depth, DEEPEST, "{}", info["a"]);

    // Stopped and started again, it reads everything back.
    server.stop();
    let server = LocalServer::start(studies.path(), &no_runner());
    assert_eq!(everything(&server.url).await, recorded);
}

/// Appends a row to the store's `events` table directly: an event whose payload no
/// reader can decode, as the edge once let in. (The API cannot write one any more, so
/// the damage is made by hand; the table's layout is `events/src/store/sqlite.rs`'s.)
fn write_undecodable_event(db: &Path, stream: &str) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    let (position, sequence): (i64, i64) = conn
        .query_row(
            "SELECT COALESCE(MAX(position), 0) + 1, \
             (SELECT COALESCE(MAX(sequence), 0) + 1 FROM events WHERE stream = ?1) FROM events",
            [stream],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let payload = format!(
        r#"{{"type":"ImageInfoUpdated","data":{{"image":"ct","info":{}}}}}"#,
        nested(130)
    );
    conn.execute(
        "INSERT INTO events (position, stream, sequence, timestamp_ms, actor, request_id, \
         event_type, schema_version, payload) VALUES (?1, ?2, ?3, 0, ?4, 'damaged', \
         'ImageInfoUpdated', 1, ?5)",
        rusqlite::params![position, stream, sequence, r#"{"user":"admin"}"#, payload],
    )
    .unwrap();
    position as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_no_reader_can_decode_is_quarantined_and_everything_else_works() {
    let studies = tempfile::tempdir().unwrap();
    std::fs::write(studies.path().join("ct.nii.gz"), common::ct_volume(1)).unwrap();
    let server = LocalServer::start(studies.path(), &no_runner());
    server.stop();
    let position = write_undecodable_event(&studies.path().join(".medlabel/events.db"), "image/ct");

    let server = LocalServer::start(studies.path(), &no_runner());
    let info: Value = common::get_json(&format!("{}/info/", server.url)).await;
    let quarantined = &info["quarantined_events"][0];
    assert_eq!(quarantined["position"], position);
    assert_eq!(quarantined["stream"], "image/ct");
    assert!(
        quarantined["reason"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{quarantined}"
    );
    // The image's stream goes on after the damaged event: reads and writes work.
    for (route, request) in json_requests(&server.url, r#"{"after":"damage"}"#) {
        let reply = request.send().await.unwrap();
        assert_eq!(
            reply.status(),
            StatusCode::OK,
            "{route}: {:?}",
            reply.text().await
        );
    }
    let all = everything(&server.url).await;
    assert_eq!(
        all["datastore"]["objects"]["ct"]["image"]["info"]["after"],
        "damage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_origins_and_foreign_host_names_get_no_answer() {
    let studies = tempfile::tempdir().unwrap();
    let viewer = "https://viewer.example";
    let server = LocalServer::start(
        studies.path(),
        &[
            no_runner()[0],
            no_runner()[1],
            "--cors-origin".as_ref(),
            viewer.as_ref(),
        ],
    );
    let http = client();
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let allow_origin = |reply: &reqwest::Response| {
        reply
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    for origin in ["https://evil.example", "null"] {
        let reply = http
            .get(format!("{}/datastore/?output=all", server.url))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(allow_origin(&reply), None, "{origin} may read the reply");
        let preflight = http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/datastore/", server.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "DELETE")
            .send()
            .await
            .unwrap();
        assert_eq!(allow_origin(&preflight), None, "{origin} may send a DELETE");
    }
    let reply = http
        .get(format!("{}/info/", server.url))
        .header("origin", viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(allow_origin(&reply).as_deref(), Some(viewer));

    // A DNS-rebinding page reaches 127.0.0.1 through a name of its own.
    let rebound = http
        .get(format!("{}/datastore/?output=all", server.url))
        .header("host", format!("attacker.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    assert!(rebound.text().await.unwrap().contains("attacker.example"));
    for name in ["localhost", "127.0.0.1", "LOCALHOST"] {
        let reply = http
            .get(format!("{}/info/", server.url))
            .header("host", format!("{name}:{port}"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "{name}");
    }

    // Beyond loopback without authentication, the server says what that means.
    let mut open = Command::new(env!("CARGO_BIN_EXE_medlabel"))
        .args(["serve", "--studies"])
        .arg(studies.path())
        .args([
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--runner",
            "/nonexistent",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = open.stderr.take().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut first).unwrap();
    open.kill().unwrap();
    open.wait().unwrap();
    assert!(
        first.contains("WARNING") && first.contains("full access"),
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_removed_through_the_api_stays_removed_after_a_restart() {
    let studies = tempfile::tempdir().unwrap();
    std::fs::write(studies.path().join("keep.nii.gz"), common::ct_volume(1)).unwrap();
    std::fs::write(studies.path().join("patient.nii.gz"), common::ct_volume(2)).unwrap();
    let labels = studies.path().join("labels/final");
    std::fs::create_dir_all(&labels).unwrap();
    std::fs::write(labels.join("patient.nii.gz"), common::label_volume(1, 30)).unwrap();
    let server = LocalServer::start(studies.path(), &no_runner());
    let http = client();
    let removed = http
        .delete(format!("{}/datastore/?id=patient", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
    server.stop();

    let server = LocalServer::start(studies.path(), &no_runner());
    let all = everything(&server.url).await;
    let objects = all["datastore"]["objects"].as_object().unwrap();
    assert!(objects.contains_key("keep"));
    assert!(
        !objects.contains_key("patient"),
        "the removed image came back"
    );
    assert_eq!(all["info"]["completed"], 0, "its label came back");
    let head = http
        .head(format!("{}/datastore/image?image=patient", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
}

// ----- the runner child

/// A studies folder of synthetic CT cases with final labels, on the starter model's grid.
fn with_runner(studies: &Path, lease_seconds: &str) -> LocalServer {
    let runner = common::runner_binary();
    let starter = common::manifest_dir().join("../gpu-runner/models/segmentation_spleen");
    LocalServer::start(
        studies,
        &[
            "--runner".as_ref(),
            runner.as_os_str(),
            "--starter-model".as_ref(),
            starter.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
            "--job-lease".as_ref(),
            lease_seconds.as_ref(),
        ],
    )
}

/// The pid of the server's runner child.
fn runner_pid(server: &LocalServer) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = format!("/proc/{}/task", server.pid());
        let children: Vec<u32> = std::fs::read_dir(&tasks)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        if let [pid] = children[..] {
            return pid;
        }
        assert!(Instant::now() < deadline, "no runner child: {children:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn train(url: &str, epochs: u32) -> reqwest::Response {
    client()
        .post(format!("{url}/train/segmentation_spleen"))
        .json(&json!({"max_epochs": epochs, "val_split": 0.5}))
        .send()
        .await
        .unwrap()
}

async fn task(url: &str) -> Value {
    common::get_json(&format!("{url}/train/")).await
}

/// Polls the latest training task until `done` says so.
async fn wait_task(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let latest = task(url).await;
        if done(&latest) {
            return latest;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {latest}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn infer(url: &str) -> reqwest::Response {
    client()
        .post(format!(
            "{url}/infer/segmentation_spleen?image=spleen_000&output=json"
        ))
        .send()
        .await
        .unwrap()
}

/// Inference answers again (the runner may be starting).
async fn wait_infer(url: &str) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let reply = infer(url).await;
        if reply.status() == StatusCode::OK {
            return (reply.json().await.unwrap(), started.elapsed());
        }
        assert_eq!(
            reply.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{:?}",
            reply.text().await
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "inference never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_or_frozen_runner_loses_its_job_and_comes_back() {
    let studies = tempfile::tempdir().unwrap();
    common::sample_studies(studies.path(), 4);
    let server = with_runner(studies.path(), "3");
    let url = server.url.clone();
    wait_infer(&url).await;

    // Eight concurrent requests for the one training slot: exactly one is accepted.
    let requests = (0..8).map(|_| train(&url, 1000));
    let statuses: Vec<StatusCode> = futures::future::join_all(requests)
        .await
        .iter()
        .map(reqwest::Response::status)
        .collect();
    let accepted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((accepted, refused), (1, 7), "{statuses:?}");
    let first = wait_task(&url, "the runner's claim", |t| t["status"] == "RUNNING").await;

    // Frozen: it stops renewing its lease, and once the lease lapses a new request ends
    // its job and is accepted.
    let runner = runner_pid(&server);
    signal(runner, "-STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = train(&url, 1000).await;
    assert_eq!(second.status(), StatusCode::OK, "{:?}", second.text().await);
    let all: Value = common::get_json(&format!("{url}/train/?all=true")).await;
    let expired = all
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == first["id"])
        .unwrap();
    assert_eq!(expired["status"], "ERROR", "{expired}");
    assert!(
        expired["details"]
            .to_string()
            .contains("stopped renewing its lease")
    );
    signal(runner, "-CONT");
    // Thawed, it sees its job is gone and takes the new one.
    let second = wait_task(&url, "the second claim", |t| t["status"] == "RUNNING").await;

    // Killed: its job ends at once, training is accepted again, and the supervisor
    // brings inference back.
    signal(runner, "-KILL");
    let ended = wait_task(&url, "the dead runner's job to end", |t| {
        t["id"] == second["id"] && t["status"] == "ERROR"
    })
    .await;
    assert!(
        ended["details"].to_string().contains("signal: 9"),
        "{ended}"
    );
    let third = train(&url, 1000).await;
    assert_eq!(third.status(), StatusCode::OK);
    let (_, back_after) = wait_infer(&url).await;
    assert_ne!(runner_pid(&server), runner);
    eprintln!("inference answered {back_after:?} after the runner was killed");

    // Stopping ends the job at once, saying how far it got, and frees the slot.
    let stopped: Value = client()
        .delete(format!("{url}/train/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stopped["status"], "STOPPED");
    assert!(
        !stopped["details"].as_array().unwrap().is_empty(),
        "{stopped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_inference_after_training_uses_the_new_model() {
    let studies = tempfile::tempdir().unwrap();
    common::sample_studies(studies.path(), 4);
    let server = with_runner(studies.path(), "60");
    let url = server.url.clone();
    let (before, _) = wait_infer(&url).await;
    assert_eq!(before["model_version"], 1, "{before}");

    assert_eq!(train(&url, 1).await.status(), StatusCode::OK);
    let done = wait_task(&url, "training", |t| {
        t["status"] == "DONE" || t["status"] == "ERROR"
    })
    .await;
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["result"]["published"]["version"], 2, "{done}");
    // At once, while the runner is busy re-scoring with the new model.
    let after = infer(&url).await;
    assert_eq!(after.status(), StatusCode::OK);
    let after: Value = after.json().await.unwrap();
    assert_eq!(after["model_version"], 2, "{after}");

    // The runner's own port answers only the server that started it.
    let line = server
        .wait_for_log("runner started", Duration::from_secs(10))
        .expect("the supervisor logs the runner's address");
    let address = line
        .split("address=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"');
    let image = studies.path().join("spleen_000.nii.gz");
    for bearer in [None, Some("guess")] {
        let mut request = client()
            .post(format!("http://{address}/invocations"))
            .json(&json!({"model": "segmentation_spleen", "image": image}));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{bearer:?}"
        );
    }
}
