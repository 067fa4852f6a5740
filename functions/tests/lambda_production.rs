//! A function with the production Lambda configuration, `state_from_env` on the AWS
//! emulator, driven through the Lambda adapter: request bodies stop at Lambda's 6 MB,
//! presigned uploads have their own limit, volumes go out as `307` to S3 under their
//! own file name, `/logs/` reads the deployment's CloudWatch log groups, and inference
//! without a runner endpoint answers 503.
//!
//! One test in its own binary: it sets the process environment the function reads.

#![cfg(feature = "aws")]

mod common;

use std::process::Command;

use common::{Req, send_lambda};
use medlabel_events::blob::MIN_UPLOAD_PART;
use medlabel_functions::app;
use medlabel_imaging::DataType;
use medlabel_tests::emulator::{AwsTestEnv, aws, unique_name};
use serde_json::json;

/// A gzip'd int16 volume of noise of about `bytes` bytes: noise does not compress.
fn volume(bytes: usize) -> Vec<u8> {
    let slices = bytes / (2 * 64 * 64) + 1;
    common::nifti([64, 64, slices], DataType::I16, true, |i| {
        // A hash of the index (xorshift of a multiplicative hash): no repeats to find.
        let mut x = (i as u32).wrapping_mul(0x9e37_79b9) ^ 0x2545_f491;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f32::from((x % 2000) as i16 - 1000)
    })
}

/// A log group on the emulator holding `lines`, as a function or the runner wrote them.
async fn log_group(env: &AwsTestEnv, lines: &[&str]) -> String {
    let logs = aws_sdk_cloudwatchlogs::Client::new(&env.config);
    let group = format!("/aws/lambda/{}", unique_name("runner"));
    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    logs.create_log_stream()
        .log_group_name(&group)
        .log_stream_name("instance-1")
        .send()
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let events = lines.iter().enumerate().map(|(n, line)| {
        aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
            .timestamp(now + n as i64)
            .message(*line)
            .build()
            .unwrap()
    });
    logs.put_log_events()
        .log_group_name(&group)
        .log_stream_name("instance-1")
        .set_log_events(Some(events.collect()))
        .send()
        .await
        .unwrap();
    group
}

fn publish_starter_model(env: &AwsTestEnv, table: &str, bucket: &str) {
    let starter = common::manifest_dir().join("../gpu-runner/models/segmentation_spleen");
    let output = Command::new(env!("CARGO_BIN_EXE_medlabel"))
        .arg("publish-model")
        .arg(starter)
        .args(["--table", table, "--bucket", bucket])
        .envs([
            ("AWS_ENDPOINT_URL", env.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_production_lambda_state_redirects_volumes_and_keeps_its_limits() {
    let env = aws().await;
    let (table, bucket) = (env.fresh_table().await, env.fresh_bucket().await);
    let group = log_group(&env, &["{\"fields\":{\"message\":\"job finished\"}}"]).await;
    publish_starter_model(&env, &table, &bucket);
    // SAFETY: the only test of this binary, before it starts any other thread that
    // reads the environment.
    unsafe {
        for (name, value) in [
            ("MEDLABEL_EVENTS_TABLE", table.as_str()),
            ("MEDLABEL_BLOBS_BUCKET", bucket.as_str()),
            ("AWS_ENDPOINT_URL", env.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            (
                "MEDLABEL_LOG_GROUPS",
                &format!("{group},/aws/lambda/not-created-yet"),
            ),
        ] {
            std::env::set_var(name, value);
        }
    }
    let state = medlabel_functions::lambda::state_from_env().await.unwrap();
    let function = || app(state.clone());
    let http = reqwest::Client::new();

    // A small volume goes up through API Gateway; 7 MB is over Lambda's 6 MB.
    let small = volume(200_000);
    let put = |id: &str, bytes: &[u8]| {
        Req::new("PUT", &format!("/datastore/?image={id}"))
            .multipart(&[], &[("file", &format!("{id}.nii.gz"), bytes)])
    };
    let reply = send_lambda(function(), &put("small", &small), None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.detail());
    let before = state.datastore.event_store().head().await.unwrap();
    let reply = send_lambda(function(), &put("big", &volume(7 << 20)), None, None).await;
    assert_eq!(reply.status, 413, "{}", reply.detail());
    assert_eq!(state.datastore.event_store().head().await.unwrap(), before);

    // The same 7 MB through a presigned upload: its own limit, S3's.
    let big = volume(7 << 20);
    assert!(big.len() > 6 << 20 && big.len() > MIN_UPLOAD_PART as usize);
    let started = send_lambda(
        function(),
        &Req::new("POST", "/datastore/upload"),
        None,
        None,
    )
    .await
    .json();
    let sent = http
        .put(started["url"].as_str().unwrap())
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success());
    let confirm = Req::new(
        "POST",
        &format!(
            "/datastore/upload/{}/image?image=big&ext=.nii.gz",
            started["upload_id"].as_str().unwrap()
        ),
    )
    .json(json!({}));
    let reply = send_lambda(function(), &confirm, None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.detail());

    // The volume goes out as a redirect to S3, under its own name, whoever asks.
    let reply = send_lambda(
        function(),
        &Req::new("GET", "/datastore/image?image=big"),
        None,
        None,
    )
    .await;
    assert_eq!(reply.status, 307);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let location = reply.header("location").unwrap().to_owned();
    assert!(location.starts_with(&env.endpoint), "{location}");
    let fetched = http.get(&location).send().await.unwrap();
    assert_eq!(
        fetched.headers()["content-disposition"],
        "attachment; filename=\"big.nii.gz\""
    );
    assert!(fetched.bytes().await.unwrap().as_ref() == big.as_slice());
    // A small file: inline to a client that does not follow redirects (the
    // `monailabel` client's http.client), a redirect for Slicer's urllib.
    let get_small = Req::new("GET", "/datastore/image?image=small");
    let reply = send_lambda(function(), &get_small, None, None).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == small);
    let reply = send_lambda(
        function(),
        &get_small.header("user-agent", "Python-urllib/3.12"),
        None,
        None,
    )
    .await;
    assert_eq!(reply.status, 307);

    // Interactive inference without a runner endpoint says what is missing.
    let reply = send_lambda(
        function(),
        &Req::new("POST", "/infer/segmentation_spleen?image=small").json(json!({})),
        None,
        None,
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.detail());
    assert!(
        reply.detail().contains("runner endpoint"),
        "{}",
        reply.detail()
    );

    // /logs/ reads the deployment's log groups; one not created yet reads as empty.
    let reply = send_lambda(
        function(),
        &Req::new("GET", "/logs/?text=true&lines=50"),
        None,
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.body).unwrap();
    let short = group.rsplit('/').next().unwrap();
    assert!(
        text.contains(&format!(
            "[{short}] {{\"fields\":{{\"message\":\"job finished\"}}}}"
        )),
        "{text}"
    );
}
