//! `medlabel-runner`: the command-line face of the runner.
//!
//! ```text
//! medlabel-runner infer --model DIR --image PATH --out PATH [--device cpu|cuda|auto]
//!                       [--overlap F] [--sw-batch-size N] [--no-amp]
//! medlabel-runner train (--studies DIR | --datalist FILE.json) --out DIR [--max-epochs N]
//!                       [--request FILE.json] [--device D] [--seed N] [--lr F] [--val-interval N]
//!                       [--roi N,N,N] [--spacing F,F,F] [--channels N,..] [--strides N,..]
//!                       [--res-units N] [--norm instance|batch] [--dropout F] [--num-samples N]
//! medlabel-runner serve --model-dir DIR [--addr 127.0.0.1:8080] [--device D] [--data-root DIR]
//!                       [--table NAME --bucket NAME]   (serve the models published there)
//! medlabel-runner worker --home DIR [--serve 127.0.0.1:0] [--device D] [--lease-seconds N]
//!                        [--exit-with-stdin] [--secret-stdin]
//! medlabel-runner sqs-worker [--queue-url URL] [--table NAME] [--bucket NAME] [--work DIR]
//!                            [--device D] [--until-empty]
//! medlabel-runner sagemaker-train [--root /opt/ml]
//! medlabel-runner make-sample --out DIR [--cases N] [--seed N] [--dims N,N,N] [--spacing F,F,F]
//! medlabel-runner uncertainty --model DIR --image PATH [--passes N] [--device D]
//! medlabel-runner gpu-check [--model DIR] [--size N]
//! medlabel-runner bench [--device D] [--size N] [--repeat N] [--batch N]
//! ```
//! Every command prints one JSON document on stdout; errors go to stderr with exit code 1.
//! A datalist file is `[{"image": path, "label": path}, …]`.

mod bench;
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use medlabel_runner::infer::{InferOptions, infer_file};
use medlabel_runner::{
    Model, ModelConfig, Result, RunnerError, TrainRequest, parse_device, sagemaker, serve, synth,
    train,
};
use serde_json::json;

use crate::cli::Args;

fn main() -> ExitCode {
    medlabel_runner::init_runtime();
    medlabel_runner::logging::init();
    let mut argv = std::env::args().skip(1);
    let Some(cmd) = argv.next() else {
        eprintln!(
            "usage: medlabel-runner <infer|train|serve|worker|sqs-worker|sagemaker-train|make-sample|uncertainty|gpu-check|bench> [options]"
        );
        return ExitCode::from(2);
    };
    let result = Args::parse(argv.collect()).and_then(|args| run(&cmd, args));
    match result {
        Ok(out) => {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("medlabel-runner {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: &str, mut a: Args) -> Result<serde_json::Value> {
    let out = match cmd {
        "infer" => {
            let device = parse_device(&a.get_or("device", "auto"))?;
            let model = Model::load(&a.path("model")?, device)?;
            let opts = InferOptions {
                overlap: a.parse_or("overlap", 0.25)?,
                sw_batch_size: a.parse_or("sw-batch-size", 1)?,
                amp: !a.flag("no-amp"),
                ..Default::default()
            };
            let (image, dest) = (a.path("image")?, a.path("out")?);
            a.finish()?;
            let lat = infer_file(&model, &image, &dest, &opts)?;
            json!({"label": dest, "label_names": model.config.label_names(), "latencies": lat, "device": format!("{device:?}")})
        }
        "train" => train_cmd(a)?,
        "serve" => {
            let device = parse_device(&a.get_or("device", "auto"))?;
            let model_dir = a.path("model-dir")?;
            let addr = a.get_or("addr", "127.0.0.1:8080");
            let data_root = a
                .opt_path("data-root")
                .unwrap_or_else(|| PathBuf::from("/"));
            let log = match (a.get("table"), a.get("bucket")) {
                (Some(table), Some(bucket)) => Some((table, bucket)),
                (None, None) => None,
                _ => {
                    return Err(RunnerError::invalid(
                        "give both --table and --bucket, or neither",
                    ));
                }
            };
            a.finish()?;
            let rt =
                tokio::runtime::Runtime::new().map_err(|e| RunnerError::io("tokio runtime", e))?;
            match log {
                #[cfg(feature = "aws")]
                Some((table, bucket)) => rt.block_on(serve_following_log(
                    &addr, &model_dir, device, &data_root, table, bucket,
                ))?,
                #[cfg(not(feature = "aws"))]
                Some(_) => {
                    return Err(RunnerError::invalid(
                        "--table and --bucket need a runner built with the `aws` feature",
                    ));
                }
                None => {
                    let paths = serve::DataPaths::below(&data_root)?;
                    let runner = Arc::new(serve::Runner::new(&model_dir, device, paths)?);
                    rt.block_on(serve::serve(&addr, runner))?;
                }
            }
            json!({"stopped": true})
        }
        "worker" => {
            let home = a.path("home")?;
            let addr = a.get_or("serve", "127.0.0.1:0");
            let device = a.get_or("device", "auto");
            let lease = std::time::Duration::from_secs_f64(a.parse_or(
                "lease-seconds",
                medlabel_runner::worker::DEFAULT_LEASE.as_secs_f64(),
            )?);
            let exit_with_stdin = a.flag("exit-with-stdin");
            let secret_stdin = a.flag("secret-stdin");
            a.finish()?;
            // The secret comes on stdin, never in argv or the environment, where any
            // local process could read it.
            let mut stdin = std::io::BufReader::new(std::io::stdin());
            let secret = if secret_stdin {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut stdin, &mut line)
                    .map_err(|e| RunnerError::io("stdin", e))?;
                let secret = line.trim().to_owned();
                if secret.is_empty() {
                    return Err(RunnerError::invalid("--secret-stdin: no secret on stdin"));
                }
                Some(secret)
            } else {
                None
            };
            if exit_with_stdin {
                // The parent holds our stdin: when it dies, however it dies, we read EOF.
                // `_exit`, not `exit`: libtorch's static destructors must not run while
                // another thread is inside a kernel (the log already holds all we did).
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut stdin, &mut std::io::sink());
                    // SAFETY: ends the process at once, running no handlers.
                    unsafe { libc::_exit(0) }
                });
            }
            let rt =
                tokio::runtime::Runtime::new().map_err(|e| RunnerError::io("tokio runtime", e))?;
            rt.block_on(worker_cmd(home, addr, device, lease, secret))?;
            json!({"stopped": true})
        }
        #[cfg(feature = "aws")]
        "sqs-worker" => {
            let env_or = |a: &mut Args, key: &str, var: &str| {
                a.get(key)
                    .or_else(|| std::env::var(var).ok())
                    .ok_or_else(|| RunnerError::invalid(format!("--{key} (or {var}) is required")))
            };
            let queue_url = env_or(&mut a, "queue-url", "MEDLABEL_JOB_QUEUE_URL")?;
            let table = env_or(&mut a, "table", "MEDLABEL_EVENTS_TABLE")?;
            let bucket = env_or(&mut a, "bucket", "MEDLABEL_BLOBS_BUCKET")?;
            let work = a
                .opt_path("work")
                .unwrap_or_else(|| std::env::temp_dir().join("medlabel-runner"));
            let device = a.get_or("device", "auto");
            let until_empty = a.flag("until-empty");
            a.finish()?;
            let rt =
                tokio::runtime::Runtime::new().map_err(|e| RunnerError::io("tokio runtime", e))?;
            let handled = rt.block_on(sqs_worker_cmd(
                queue_url,
                table,
                bucket,
                work,
                device,
                until_empty,
            ))?;
            json!({"handled": handled})
        }
        "sagemaker-train" => {
            let root = a
                .opt_path("root")
                .unwrap_or_else(|| PathBuf::from("/opt/ml"));
            a.finish()?;
            let outcome = sagemaker::run(&sagemaker::SageMakerPaths { root })?;
            json!({"model_dir": outcome.model_dir, "train_stats": outcome.stats})
        }
        "make-sample" => {
            let dir = a.path("out")?;
            let cases = a.parse_or("cases", 4usize)?;
            let seed = a.parse_or("seed", 0u64)?;
            let dims = a.triple_or("dims", [96usize, 96, 64])?;
            let spacing = a.triple_or("spacing", [1.5f64, 1.5, 2.0])?;
            a.finish()?;
            let pairs = synth::write_studies(&dir, cases, seed, dims, spacing)?;
            json!({"studies": dir, "cases": pairs.len()})
        }
        "uncertainty" => {
            let device = parse_device(&a.get_or("device", "auto"))?;
            let model = Model::load(&a.path("model")?, device)?;
            let image = medlabel_runner::io::read_image(&a.path("image")?)?;
            let passes = a.parse_or("passes", 8usize)?;
            a.finish()?;
            let u = medlabel_runner::uncertainty::mc_dropout(&model, &image, passes, 0.25, 0)?;
            serde_json::to_value(u).map_err(|e| RunnerError::json("uncertainty", e))?
        }
        "gpu-check" => bench::gpu_check(a)?,
        "bench" => bench::bench(a)?,
        other => return Err(RunnerError::invalid(format!("unknown command {other:?}"))),
    };
    Ok(out)
}

/// The local `medlabel`'s child: the event-log worker plus the HTTP contract on `addr`,
/// over the studies folder's `.medlabel` home (`events.db`, `blobs/`, `models/`,
/// `tmp/`). Once listening it prints `{"listening": "<address>"}` as a line of its
/// own, so a parent that asked for port 0 learns the port (and the worker's name in
/// `JobStarted`, to end its jobs if it dies). Images are read from
/// `blobs/` and `tmp/`, masks written to `tmp/` only.
async fn worker_cmd(
    home: PathBuf,
    addr: String,
    device: String,
    lease: std::time::Duration,
    secret: Option<String>,
) -> Result<()> {
    use medlabel_events::blob::fs::FolderBlobStore;
    use medlabel_events::store::sqlite::SqliteEventStore;
    use medlabel_runner::worker::{Worker, WorkerConfig};
    let invalid = |e: &dyn std::fmt::Display| RunnerError::invalid(e.to_string());
    let store = SqliteEventStore::open(home.join("events.db")).map_err(|e| invalid(&e))?;
    let blobs =
        FolderBlobStore::open_with_inline(home.join("blobs"), &store).map_err(|e| invalid(&e))?;
    let models_dir = home.join("models");
    let config = WorkerConfig {
        models_dir: models_dir.clone(),
        work_dir: home.join("work"),
        device: device.clone(),
        name: format!("runner-{}", std::process::id()),
        lease,
    };
    let worker = Worker::open(
        Arc::new(store),
        Arc::new(blobs),
        Arc::new(medlabel_events::SystemClock),
        config,
    )
    .await?;
    worker.sync_models().await?;
    let (blobs_dir, spool) = (home.join("blobs"), home.join("tmp"));
    for dir in [&models_dir, &blobs_dir, &spool] {
        std::fs::create_dir_all(dir).map_err(|e| RunnerError::io(dir, e))?;
    }
    let paths = serve::DataPaths::new(&[&blobs_dir, &spool], &[&spool])?;
    let mut runner = serve::Runner::following(&models_dir, parse_device(&device)?, paths)?
        .with_source(Arc::new(worker.model_source()));
    if let Some(secret) = secret {
        runner = runner.with_secret(secret);
    }
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| RunnerError::io(&addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| RunnerError::io(&addr, e))?;
    println!(
        "{}",
        json!({"listening": bound.to_string(), "worker": worker.name()})
    );
    std::io::Write::flush(&mut std::io::stdout()).map_err(|e| RunnerError::io("stdout", e))?;
    tokio::try_join!(worker.run(), serve::serve_on(listener, Arc::new(runner))).map(drop)
}

/// How often an endpoint following the log looks for newly published models.
#[cfg(feature = "aws")]
const MODEL_SYNC_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

/// The interactive endpoint of a cloud deployment (SageMaker's `serve`): it serves the
/// models published in the log on DynamoDB (blobs on S3), written into `model_dir` at
/// start and whenever a new one or a new version is published (a finished training).
#[cfg(feature = "aws")]
async fn serve_following_log(
    addr: &str,
    model_dir: &std::path::Path,
    device: tch::Device,
    data_root: &std::path::Path,
    table: String,
    bucket: String,
) -> Result<()> {
    use medlabel_events::blob::s3::S3BlobStore;
    use medlabel_events::models::Models;
    use medlabel_events::store::dynamo::DynamoEventStore;
    use medlabel_runner::worker::LogModels;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = DynamoEventStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    let blobs = S3BlobStore::new(S3BlobStore::client(&sdk), bucket);
    let models = Models::new(Arc::new(store), Arc::new(medlabel_events::SystemClock));
    std::fs::create_dir_all(model_dir).map_err(|e| RunnerError::io(model_dir, e))?;
    let models = Arc::new(LogModels::new(
        Arc::new(models),
        Arc::new(blobs),
        model_dir.to_path_buf(),
    ));
    models.sync().await?;
    let paths = serve::DataPaths::below(data_root)?;
    let runner =
        Arc::new(serve::Runner::following(model_dir, device, paths)?.with_source(models.clone()));
    let follow = async {
        loop {
            tokio::time::sleep(MODEL_SYNC_PAUSE).await;
            // A failed sync (a throttled read, say) is retried on the next round.
            if let Err(err) = models.sync().await {
                tracing::warn!(%err, "could not sync the published models");
            }
        }
    };
    tokio::select! {
        served = serve::serve(addr, runner) => served,
        never = follow => never,
    }
}

/// The cloud worker (the ECS task's command): jobs from SQS, the log on DynamoDB, blobs
/// on S3; `AWS_ENDPOINT_URL` and the other SDK variables configure the clients.
#[cfg(feature = "aws")]
async fn sqs_worker_cmd(
    queue_url: String,
    table: String,
    bucket: String,
    work: PathBuf,
    device: String,
    until_empty: bool,
) -> Result<Vec<medlabel_runner::queue_worker::Handled>> {
    use medlabel_events::blob::s3::S3BlobStore;
    use medlabel_events::store::dynamo::DynamoEventStore;
    use medlabel_runner::queue_worker::QueueWorker;
    use medlabel_runner::worker::{Worker, WorkerConfig};
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = DynamoEventStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    let blobs = S3BlobStore::new(S3BlobStore::client(&sdk), bucket);
    let config = WorkerConfig {
        models_dir: work.join("models"),
        work_dir: work.join("jobs"),
        device,
        name: format!("sqs-runner-{}", std::process::id()),
        lease: medlabel_runner::worker::DEFAULT_LEASE,
    };
    let worker = Worker::open(
        Arc::new(store),
        Arc::new(blobs),
        Arc::new(medlabel_events::SystemClock),
        config,
    )
    .await?;
    QueueWorker::new(worker, aws_sdk_sqs::Client::new(&sdk), queue_url)
        .run(until_empty)
        .await
}

fn train_cmd(mut a: Args) -> Result<serde_json::Value> {
    let mut req: TrainRequest = match a.opt_path("request") {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|e| RunnerError::io(&p, e))?;
            serde_json::from_str(&text)
                .map_err(|e| RunnerError::json(p.display().to_string(), e))?
        }
        None => TrainRequest::default(),
    };
    let mut cfg = req.model.clone().unwrap_or_else(ModelConfig::spleen);
    cfg.roi_size = a.triple_or("roi", cfg.roi_size)?;
    cfg.spacing = a.triple_or("spacing", cfg.spacing)?;
    cfg.network.channels = a.list_or("channels", cfg.network.channels)?;
    cfg.network.strides = a.list_or("strides", cfg.network.strides)?;
    cfg.network.num_res_units = a.parse_or("res-units", cfg.network.num_res_units)?;
    cfg.network.dropout = a.parse_or("dropout", cfg.network.dropout)?;
    if let Some(n) = a.get("norm") {
        cfg.network.norm =
            serde_json::from_value(json!(n)).map_err(|e| RunnerError::json("--norm", e))?;
    }
    req.model = Some(cfg);
    req.pretrained = a.opt_path("pretrained").or(req.pretrained);
    req.resume = a.opt_path("resume").or(req.resume);
    req.max_epochs = a.parse_or("max-epochs", req.max_epochs)?;
    req.val_interval = a.parse_or("val-interval", req.val_interval)?;
    req.learning_rate = a.parse_or("lr", req.learning_rate)?;
    req.num_samples = a.parse_or("num-samples", req.num_samples)?;
    req.seed = a.parse_or("seed", req.seed)?;
    req.device = a.get_or("device", &req.device);
    let datalist = match (a.opt_path("studies"), a.opt_path("datalist")) {
        (Some(dir), None) => synth::studies_datalist(&dir)?,
        (None, Some(file)) => cli::read_datalist(&file)?,
        _ => {
            return Err(RunnerError::invalid(
                "give exactly one of --studies and --datalist",
            ));
        }
    };
    let out = a.path("out")?;
    a.finish()?;
    let outcome = train(
        &req,
        &datalist,
        &out,
        |s| {
            eprintln!(
                "epoch {}/{}: loss {:.4} val_mean_dice {:.4} best {:.4}",
                s.epoch,
                s.total_epochs,
                s.train
                    .metrics
                    .get("train_loss")
                    .copied()
                    .unwrap_or(f64::NAN),
                s.eval
                    .metrics
                    .get("val_mean_dice")
                    .copied()
                    .unwrap_or(f64::NAN),
                s.best_metric
            )
        },
        &AtomicBool::new(false),
    )?;
    Ok(
        json!({"model_dir": outcome.model_dir, "stopped": outcome.stopped, "train_stats": outcome.stats}),
    )
}
