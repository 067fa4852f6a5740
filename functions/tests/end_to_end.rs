//! The cloud pipeline end to end on the AWS emulator, every hop real:
//!
//! API Gateway v2 event → the datastore function (image upload) and the infer function
//! (batch inference request) → events in DynamoDB, blobs in S3 → the table's own
//! stream records (DynamoDB Streams API) → the dispatcher → a job message on the FIFO
//! queue → the runner's SQS worker (`medlabel-runner sqs-worker`, a separate process
//! on libtorch) → result events in DynamoDB → the functions show the result.
//!
//! Then the failure modes that delivery "at least once" brings: a replayed stream
//! batch and a message delivered again after its job ran change nothing. And a click:
//! the infer function calls the runner's HTTP contract through the SageMaker runtime
//! SDK, and the runner fetches the image (and a `label` upload) from S3 by presigned URL.

#![cfg(feature = "aws")]

mod common;
mod stack;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use common::{Reply, Req, send_lambda};
use medlabel_dispatcher::{Dispatcher, JobAction};
use medlabel_events::blob::s3::S3BlobStore;
use medlabel_events::store::dynamo::DynamoEventStore;
use medlabel_events::{BlobStore, EventStore};
use medlabel_functions::app::finish;
use medlabel_functions::model_runner::InferenceEndpoint;
use medlabel_functions::routes;
use medlabel_functions::state::{AppState, Config};
use medlabel_imaging::nifti::read_nifti_bytes;
use medlabel_imaging::transforms::dice;
use serde_json::{Value, json};
use stack::Stack;

const MODEL: &str = "segmentation_spleen";

/// What these tests need of a deployment beyond [`Stack`]: its stores, its functions
/// and a runner that drains its queue.
impl Stack {
    fn store(&self) -> Arc<dyn EventStore> {
        Arc::new(DynamoEventStore::new(self.env.dynamodb(), &self.table))
    }

    fn blobs(&self) -> Arc<dyn BlobStore> {
        Arc::new(S3BlobStore::new(self.env.s3(), &self.bucket))
    }

    /// One Lambda function as `lambda_main` builds it: its routes over state opened
    /// from DynamoDB + S3, with the event-log runner port.
    async fn function(&self, routes: fn() -> axum::Router<AppState>) -> Router {
        self.function_inferring_at(routes, None).await
    }

    /// [`Stack::function`] with interactive inference at `endpoint`.
    async fn function_inferring_at(
        &self,
        routes: fn() -> axum::Router<AppState>,
        endpoint: Option<InferenceEndpoint>,
    ) -> Router {
        let config = Config {
            max_upload_bytes: 6 * 1024 * 1024,
            temp_dir: std::env::temp_dir(),
            ..Config::default()
        };
        let state = AppState::open(self.store(), self.blobs(), config)
            .await
            .unwrap()
            .with_model_runner(endpoint);
        finish(routes(), state)
    }

    /// `medlabel-runner sqs-worker --until-empty` against this stack; what it handled.
    fn run_worker(&self, work: &Path) -> Vec<Value> {
        stack::run(self.worker(work))["handled"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// A synthetic CT case from the runner (`make-sample`): image and true mask, on the
/// starter model's own 3 mm grid so its accuracy is not blurred by resampling.
fn sample_case(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    common::make_sample(dir, 1, 7, "64,64,48", "3,3,3", false);
    let name = "spleen_000.nii.gz";
    (
        std::fs::read(dir.join(name)).unwrap(),
        std::fs::read(dir.join("labels/final").join(name)).unwrap(),
    )
}

/// A client's upload of the sample case as `spleen_000`, through API Gateway.
async fn upload_sample(datastore: &Router, image: &[u8]) {
    let upload = Req::new("PUT", "/datastore/?image=spleen_000").multipart(
        &[("params", r#"{"client_id":"e2e"}"#)],
        &[("file", "spleen_000.nii.gz", image)],
    );
    ok(datastore, upload).await;
}

async fn ok(router: &Router, req: Req) -> Reply {
    let what = format!("{} {}?{}", req.method, req.path, req.query);
    let reply = send_lambda(router.clone(), &req, Some("prod"), None).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{what}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply
}

#[tokio::test]
async fn an_uploaded_image_is_segmented_by_a_batch_job_through_stream_queue_and_runner() {
    let stack = Stack::new().await;
    let work = tempfile::tempdir().unwrap();
    let (image, truth) = sample_case(&work.path().join("sample"));

    // An operator published the starter model to the deployment's log; doing it again
    // publishes nothing.
    let starter = common::manifest_dir()
        .join("../gpu-runner/models")
        .join(MODEL);
    assert_eq!(
        stack.publish_model(&starter),
        json!({"model": MODEL, "published": true})
    );
    assert_eq!(
        stack.publish_model(&starter),
        json!({"model": MODEL, "published": false})
    );
    let info = stack.function(routes::info::router).await;
    let listed = ok(&info, Req::new("GET", "/info/")).await.json();
    assert!(listed["models"][MODEL].is_object(), "{listed}");

    // A client uploads an image and asks for batch inference, through API Gateway.
    let datastore = stack.function(routes::datastore::router).await;
    let infer = stack.function(routes::infer::router).await;
    upload_sample(&datastore, &image).await;
    let requested = ok(
        &infer,
        Req::new("POST", &format!("/batch/infer/{MODEL}?images=all")),
    )
    .await;
    assert_eq!(
        requested.json()["status"],
        "SUBMITTED",
        "{:?}",
        requested.json()
    );

    // The table's stream carries the log; the dispatcher turns the job into a message.
    let batch = stack.env.stream_batch(&stack.table).await;
    let dispatcher = Dispatcher::new(stack.env.sqs(), &stack.queue_url).unwrap();
    let outcome = dispatcher.dispatch(&batch).await;
    assert!(
        outcome.response.batch_item_failures.is_empty(),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.sent,
        1,
        "one job record in {} records",
        batch.records.len()
    );
    assert!(
        outcome.skipped >= 2,
        "the model and image records are not jobs"
    );

    // The runner takes the message, claims the job in the log, runs it, reports back.
    let handled = stack.run_worker(work.path());
    assert_eq!(handled, vec![json!({"done": {"finished": "DONE"}})]);

    // The API shows the result: the batch job is done, and the image has a label
    // under `original` that matches the true organ.
    let status = ok(&infer, Req::new("GET", "/batch/infer")).await.json();
    assert_eq!(status["status"], "DONE", "{status}");
    let all = ok(&datastore, Req::new("GET", "/datastore/?output=all"))
        .await
        .json();
    let labels = &all["objects"]["spleen_000"]["labels"];
    assert!(labels["original"].is_object(), "{all}");
    let label = ok(
        &datastore,
        Req::new("GET", "/datastore/label?label=spleen_000&tag=original"),
    )
    .await;
    let predicted = read_nifti_bytes(&label.body, true).unwrap();
    let truth = read_nifti_bytes(&truth, true).unwrap();
    let score = dice(&truth, &predicted).unwrap();
    assert!(score > 0.8, "batch inference Dice {score}");

    // Replaying the stream batch (a Lambda retry) runs nothing again. SQS drops the
    // resend by its deduplication id (the event's position); moto forgets the ids of
    // deleted messages and delivers it, and then the runner finds the job ended.
    let head = stack.store().head().await.unwrap();
    let replay = stack.env.stream_batch(&stack.table).await;
    assert!(
        dispatcher
            .dispatch(&replay)
            .await
            .response
            .batch_item_failures
            .is_empty()
    );
    let handled = stack.run_worker(work.path());
    assert!(
        handled
            .iter()
            .all(|h| *h == json!({"done": "taken_or_ended"})),
        "{handled:?}"
    );
    assert_eq!(
        stack.store().head().await.unwrap(),
        head,
        "nothing was recorded"
    );

    // The same job delivered again outside the deduplication window (a new message
    // id): the runner sees the job ended in the log, deletes the message, runs nothing.
    let mut again = medlabel_dispatcher::job_message(
        batch
            .records
            .iter()
            .find(|r| matches!(medlabel_dispatcher::job_message(r), Ok(Some(_))))
            .unwrap(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(again.action, JobAction::Run);
    again.position += 1_000_000;
    stack
        .env
        .sqs()
        .send_message()
        .queue_url(&stack.queue_url)
        .message_body(again.body())
        .message_group_id(again.group_id())
        .message_deduplication_id(again.deduplication_id())
        .send()
        .await
        .unwrap();
    assert_eq!(
        stack.run_worker(work.path()),
        vec![json!({"done": "taken_or_ended"})]
    );
    assert_eq!(
        stack.store().head().await.unwrap(),
        head,
        "nothing was recorded"
    );
}

/// `medlabel-runner serve` on a free loopback port, as the SageMaker endpoint runs it:
/// serving the models published in the stack's log, written into `models`. Returns once
/// it answers `/ping`; the process is killed when the returned guard drops.
async fn serve_runner(stack: &Stack, models: &Path) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(common::runner_binary())
        .args(["serve", "--device", "cpu"])
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--table", &stack.table, "--bucket", &stack.bucket])
        .arg("--model-dir")
        .arg(models)
        .envs(stack.aws_env())
        .env("OMP_NUM_THREADS", "1")
        .kill_on_drop(true)
        .spawn()
        .expect("the runner starts");
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..600 {
        if reqwest::get(format!("{base}/ping"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return (child, base);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the runner did not answer /ping");
}

/// What SageMaker puts in front of an endpoint's container, for a test: no emulator
/// runs real-time endpoints. `POST /endpoints/{name}/invocations` (the SDK's request,
/// its signature unchecked) goes to the container's `/invocations` as is; the
/// container's reply comes back as is, or, when it failed, as SageMaker's `ModelError`
/// naming the container's status and body.
async fn sagemaker_front(runner: String) -> String {
    use axum::extract::{Path as UrlPath, State};
    use axum::response::IntoResponse;
    async fn invoke(
        State(runner): State<String>,
        UrlPath(endpoint): UrlPath<String>,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        assert_eq!(endpoint, "medlabel-infer");
        let reply = reqwest::Client::new()
            .post(format!("{runner}/invocations"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = reply.status();
        let text = reply.text().await.unwrap();
        if status.is_success() {
            return ([("content-type", "application/json")], text).into_response();
        }
        let error = json!({
            "Message": format!("Received client error ({status}) from primary"),
            "OriginalStatusCode": status.as_u16(),
            "OriginalMessage": text,
        });
        (
            StatusCode::FAILED_DEPENDENCY,
            [
                ("x-amzn-errortype", "ModelError"),
                ("content-type", "application/json"),
            ],
            error.to_string(),
        )
            .into_response()
    }
    let app = Router::new()
        .route(
            "/endpoints/{endpoint}/invocations",
            axum::routing::post(invoke),
        )
        .with_state(runner);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test]
async fn a_click_in_the_cloud_is_segmented_by_the_sagemaker_endpoint() {
    let stack = Stack::new().await;
    let work = tempfile::tempdir().unwrap();
    let (image, truth) = sample_case(&work.path().join("sample"));
    let starter = common::manifest_dir()
        .join("../gpu-runner/models")
        .join(MODEL);
    stack.publish_model(&starter);

    // The endpoint starts with what the log holds.
    let (_runner, runner_url) = serve_runner(&stack, &work.path().join("endpoint")).await;
    let front = sagemaker_front(runner_url).await;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&front)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sagemakerruntime::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await;
    let endpoint = InferenceEndpoint::SageMaker {
        client: aws_sdk_sagemakerruntime::Client::new(&sdk),
        name: "medlabel-infer".into(),
    };
    let datastore = stack.function(routes::datastore::router).await;
    let infer = stack
        .function_inferring_at(routes::infer::router, Some(endpoint))
        .await;
    upload_sample(&datastore, &image).await;

    // The mask comes back inline through the endpoint and matches the true organ.
    let reply = ok(
        &infer,
        Req::new(
            "POST",
            &format!("/infer/{MODEL}?image=spleen_000&output=image"),
        ),
    )
    .await;
    let predicted = read_nifti_bytes(&reply.body, true).unwrap();
    let truth_bytes = truth;
    let truth = read_nifti_bytes(&truth_bytes, true).unwrap();
    let score = dice(&truth, &predicted).unwrap();
    assert!(score > 0.8, "interactive inference Dice {score}");

    // A `label` upload goes to S3 and reaches the endpoint as a presigned URL, which the
    // runner fetches and checks against the image: one that fits is accepted, one of
    // another shape is the client's error.
    let fitting = send_lambda(
        infer.clone(),
        &Req::new(
            "POST",
            &format!("/infer/{MODEL}?image=spleen_000&output=json"),
        )
        .multipart(&[], &[("label", "label.nii.gz", &truth_bytes)]),
        Some("prod"),
        None,
    )
    .await;
    assert_eq!(fitting.status, StatusCode::OK, "{fitting:?}");
    let [nx, ny, nz] = truth.dims;
    let short = medlabel_imaging::Volume::new(
        truth.data[..nx * ny * (nz - 1)].to_vec(),
        [nx, ny, nz - 1],
        truth.affine,
    )
    .unwrap();
    let short =
        medlabel_imaging::nifti::write_nifti_bytes(&short, medlabel_imaging::DataType::U8, true)
            .unwrap();
    let misfit = send_lambda(
        infer.clone(),
        &Req::new(
            "POST",
            &format!("/infer/{MODEL}?image=spleen_000&output=json"),
        )
        .multipart(&[], &[("label", "label.nii.gz", &short)]),
        Some("prod"),
        None,
    )
    .await;
    assert_eq!(
        misfit.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{misfit:?}"
    );
    let detail = &misfit.json()["detail"][0];
    assert_eq!(detail["loc"], json!(["body", "label"]));
    assert!(
        detail["msg"]
            .as_str()
            .unwrap()
            .contains("does not fit the image"),
        "{detail}"
    );

    // The container's refusal of a request is a failed inference that records nothing.
    let head = stack.store().head().await.unwrap();
    let refused = send_lambda(
        infer.clone(),
        &Req::new(
            "POST",
            &format!("/infer/{MODEL}?image=spleen_000&output=image"),
        )
        .multipart(&[("params", r#"{"overlap":"high"}"#)], &[]),
        Some("prod"),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        stack.store().head().await.unwrap(),
        head,
        "nothing recorded"
    );

    // A model published while the endpoint runs is served once the endpoint has seen it;
    // until then the endpoint's 404 reaches the client as MONAI Label words it.
    let other = work.path().join("segmentation_other");
    std::fs::create_dir_all(&other).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(starter.join(file), other.join(file)).unwrap();
    }
    assert_eq!(stack.publish_model(&other)["published"], true);
    let click = Req::new(
        "POST",
        "/infer/segmentation_other?image=spleen_000&output=json",
    );
    let mut answer = send_lambda(infer.clone(), &click, Some("prod"), None).await;
    for _ in 0..60 {
        if answer.status != StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(
            answer.json()["detail"],
            "Model 'segmentation_other' NOT Found"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        answer = send_lambda(infer.clone(), &click, Some("prod"), None).await;
    }
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["model"], "segmentation_other");
}
