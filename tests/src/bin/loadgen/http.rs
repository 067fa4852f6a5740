//! Closed-loop HTTP load against a running medlabel: `clients` tasks, each sending its
//! next request as soon as its previous answer is read, for one request kind.
//!
//! The run is bounded twice: a shared counter hands out exactly `requests` request
//! slots, and a deadline stops every client early if the server is slower than
//! planned, so the generator always ends by itself. Warm-up requests go through the
//! same path and are discarded. Latency is measured from just before sending to the
//! last byte of the body, so it includes the whole answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::LoadgenError;
use crate::stats::{Summary, millis};

/// One kind of request; a run sends only one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET /info/`.
    Info,
    /// `GET /datastore/?output=stats`.
    Stats,
    /// `PUT /datastore/label?image=<id>&tag=final` with a small multipart label,
    /// rotating over every image id the server lists.
    LabelPut,
    /// `POST /activelearning/random` with client ids `client-0` … `client-<clients-1>`:
    /// each client keeps getting the image it already leases.
    NextSame,
    /// `POST /activelearning/random` with a new random client id per request, so every
    /// request makes a real pick (and leases one more image).
    NextFresh,
}

impl Kind {
    pub const NAMES: [&str; 5] = ["info", "stats", "label-put", "next-same", "next-fresh"];

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "info" => Self::Info,
            "stats" => Self::Stats,
            "label-put" => Self::LabelPut,
            "next-same" => Self::NextSame,
            "next-fresh" => Self::NextFresh,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Stats => "stats",
            Self::LabelPut => "label-put",
            Self::NextSame => "next-same",
            Self::NextFresh => "next-fresh",
        }
    }

    /// The request as the report names it.
    fn describe(self) -> &'static str {
        match self {
            Self::Info => "GET /info/",
            Self::Stats => "GET /datastore/?output=stats",
            Self::LabelPut => "PUT /datastore/label?image=<id>&tag=final",
            Self::NextSame => "POST /activelearning/random (same client id per client)",
            Self::NextFresh => "POST /activelearning/random (fresh client id per request)",
        }
    }
}

/// What to send, how much, and how long at most.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base: String,
    pub kind: Kind,
    pub clients: usize,
    pub requests: u64,
    pub warmup: u64,
    /// Measured-phase deadline; warm-up gets the same again.
    pub max_time: Duration,
    /// The label file's bytes, for [`Kind::LabelPut`].
    pub label: Option<Vec<u8>>,
}

/// What every request needs: the client, the kind and the ids labels rotate over.
struct Target {
    client: reqwest::Client,
    base: String,
    kind: Kind,
    image_ids: Vec<String>,
    label: Vec<u8>,
}

/// One phase's results, merged over all clients.
#[derive(Debug, Default)]
struct Phase {
    latencies: Vec<Duration>,
    errors: u64,
    empty_replies: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

/// Runs the plan and returns its JSON report line.
pub async fn run(plan: Plan) -> Result<Value, LoadgenError> {
    if plan.clients == 0 {
        return Err(LoadgenError::Usage("--clients must be at least 1".into()));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(plan.clients)
        .build()
        .map_err(|err| LoadgenError::Http(err.to_string()))?;
    let image_ids = match plan.kind {
        Kind::LabelPut => list_images(&client, &plan.base).await?,
        _ => Vec::new(),
    };
    let label = match (plan.kind, &plan.label) {
        (Kind::LabelPut, None) => {
            return Err(LoadgenError::Usage("label-put needs --label FILE".into()));
        }
        (_, label) => label.clone().unwrap_or_default(),
    };
    let target = Arc::new(Target {
        client,
        base: plan.base.clone(),
        kind: plan.kind,
        image_ids,
        label,
    });
    let warm = phase(&target, plan.clients, plan.warmup, 0, plan.max_time).await;
    let measured = phase(
        &target,
        plan.clients,
        plan.requests,
        plan.warmup,
        plan.max_time,
    )
    .await;
    let mut latencies = measured.latencies;
    let completed = latencies.len() as u64;
    let mut report = json!({
        "kind": plan.kind.name(),
        "request": plan.kind.describe(),
        "base": plan.base,
        "clients": plan.clients,
        "planned": plan.requests,
        "completed": completed,
        "warmup": plan.warmup,
        "warmup_errors": warm.errors,
        "errors": measured.errors,
        "empty_replies": measured.empty_replies,
        "elapsed_s": millis(measured.elapsed) / 1000.0,
        "throughput_rps": completed as f64 / measured.elapsed.as_secs_f64().max(1e-9),
        "first_error": measured.first_error.or(warm.first_error),
    });
    if let (Some(summary), Some(fields)) = (Summary::of(&mut latencies), report.as_object_mut())
        && let Value::Object(extra) = summary.to_json()
    {
        fields.extend(extra);
    }
    Ok(report)
}

/// The image ids the server lists (`output=all`), sorted for a stable rotation.
async fn list_images(client: &reqwest::Client, base: &str) -> Result<Vec<String>, LoadgenError> {
    let url = format!("{base}/datastore/?output=all");
    let reply: Value = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|err| LoadgenError::Http(format!("GET {url}: {err}")))?
        .json()
        .await
        .map_err(|err| LoadgenError::Http(format!("GET {url}: {err}")))?;
    let mut ids: Vec<String> = reply["objects"]
        .as_object()
        .map(|objects| objects.keys().cloned().collect())
        .unwrap_or_default();
    if ids.is_empty() {
        return Err(LoadgenError::Http(format!("GET {url} lists no images")));
    }
    ids.sort();
    Ok(ids)
}

/// Sends `count` requests from `clients` concurrent loops; slot numbers start at
/// `first_slot` so label uploads keep rotating across phases.
async fn phase(
    target: &Arc<Target>,
    clients: usize,
    count: u64,
    first_slot: u64,
    max_time: Duration,
) -> Phase {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + max_time;
    let loops: Vec<_> = (0..clients)
        .map(|client_index| {
            let (target, next) = (target.clone(), next.clone());
            tokio::spawn(async move {
                let mut mine = Phase::default();
                loop {
                    let slot = next.fetch_add(1, Ordering::Relaxed);
                    if slot >= count || Instant::now() >= deadline {
                        return mine;
                    }
                    let sent = Instant::now();
                    let outcome = send(&target, client_index, first_slot + slot).await;
                    mine.latencies.push(sent.elapsed());
                    match outcome {
                        Ok(Reply::Full) => {}
                        Ok(Reply::Empty) => mine.empty_replies += 1,
                        Err(why) => {
                            mine.errors += 1;
                            mine.first_error.get_or_insert(why);
                        }
                    }
                }
            })
        })
        .collect();
    let mut merged = Phase::default();
    for handle in loops {
        match handle.await {
            Ok(part) => {
                merged.latencies.extend(part.latencies);
                merged.errors += part.errors;
                merged.empty_replies += part.empty_replies;
                if merged.first_error.is_none() {
                    merged.first_error = part.first_error;
                }
            }
            Err(join) => {
                merged.errors += 1;
                merged
                    .first_error
                    .get_or_insert(format!("client task failed: {join}"));
            }
        }
    }
    merged.elapsed = start.elapsed();
    merged
}

/// A successful answer: with content, or `{}` (no image to hand out).
enum Reply {
    Full,
    Empty,
}

/// Sends request number `slot` of this kind and reads the whole answer.
async fn send(target: &Target, client_index: usize, slot: u64) -> Result<Reply, String> {
    let base = &target.base;
    let request = match target.kind {
        Kind::Info => target.client.get(format!("{base}/info/")),
        Kind::Stats => target.client.get(format!("{base}/datastore/?output=stats")),
        Kind::LabelPut => {
            let image = &target.image_ids[(slot % target.image_ids.len() as u64) as usize];
            let part = Part::bytes(target.label.clone()).file_name("label.nii.gz");
            let form = Form::new().part("label", part).text("params", "{}");
            target
                .client
                .put(format!("{base}/datastore/label"))
                .query(&[("image", image.as_str()), ("tag", "final")])
                .multipart(form)
        }
        Kind::NextSame | Kind::NextFresh => {
            let client_id = match target.kind {
                Kind::NextSame => format!("client-{client_index}"),
                _ => format!("c{}", uuid::Uuid::new_v4().simple()),
            };
            target
                .client
                .post(format!("{base}/activelearning/random"))
                .json(&json!({ "client_id": client_id }))
        }
    };
    let response = request.send().await.map_err(|err| err.to_string())?;
    let status = response.status();
    let body = response.bytes().await.map_err(|err| err.to_string())?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        ));
    }
    Ok(if body.as_ref() == b"{}" {
        Reply::Empty
    } else {
        Reply::Full
    })
}
