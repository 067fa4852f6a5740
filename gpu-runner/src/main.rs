//! `medlabel-runner`: the command-line face of the runner.
//!
//! Commands: `infer`, `train`, `serve`, `worker` (the local server's child), `sqs-worker`,
//! `sagemaker-train`, `import` (bundles, TorchScript, state dicts, safetensors into a
//! model folder), `new-model` (a template network for a label set), `make-sample`,
//! `uncertainty`, `gpu-check` and `bench`; `medlabel-runner help <command>` lists each
//! one's options ([`cli`]). Every command prints one JSON document on stdout; errors go
//! to stderr with exit code 1.

mod bench;
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use medlabel_runner::import::import_model;
use medlabel_runner::infer::{InferOptions, infer_file};
use medlabel_runner::{
    BundleImport, Model, ModelConfig, Result, RunnerError, TrainRequest, parse_device, sagemaker,
    serve, synth, train,
};
use serde_json::{Value, json};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    medlabel_runner::init_runtime();
    medlabel_runner::logging::init();
    let cli = Cli::parse();
    let name = command_name(&cli.command);
    match run(cli.command) {
        Ok(out) => {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("medlabel-runner {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Infer(_) => "infer",
        Command::Train(_) => "train",
        Command::Serve(_) => "serve",
        Command::Worker(_) => "worker",
        #[cfg(feature = "aws")]
        Command::SqsWorker(_) => "sqs-worker",
        Command::SagemakerTrain(_) => "sagemaker-train",
        Command::Import(_) => "import",
        Command::NewModel(_) => "new-model",
        Command::MakeSample(_) => "make-sample",
        Command::Uncertainty(_) => "uncertainty",
        Command::GpuCheck(_) => "gpu-check",
        Command::Bench(_) => "bench",
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().map_err(|e| RunnerError::io("tokio runtime", e))
}

fn run(command: Command) -> Result<Value> {
    let out = match command {
        Command::Infer(a) => {
            let device = parse_device(&a.device)?;
            let model = Model::load(&a.model, device)?;
            let opts = InferOptions {
                overlap: Some(a.overlap),
                sw_batch_size: Some(a.sw_batch_size),
                amp: !a.no_amp,
                ..Default::default()
            };
            let lat = infer_file(&model, &a.image, &a.out, &opts)?;
            json!({"label": a.out, "label_names": model.config.label_names(), "latencies": lat, "device": format!("{device:?}")})
        }
        Command::Train(a) => train_cmd(*a)?,
        Command::Serve(a) => {
            let device = parse_device(&a.device)?;
            let rt = runtime()?;
            match (a.table, a.bucket) {
                #[cfg(feature = "aws")]
                (Some(table), Some(bucket)) => rt.block_on(serve_following_log(
                    &a.addr,
                    &a.model_dir,
                    device,
                    &a.data_root,
                    table,
                    bucket,
                ))?,
                #[cfg(not(feature = "aws"))]
                (Some(_), Some(_)) => {
                    return Err(RunnerError::invalid(
                        "--table and --bucket need a runner built with the `aws` feature",
                    ));
                }
                _ => {
                    let paths = serve::DataPaths::below(&a.data_root)?;
                    let runner = Arc::new(serve::Runner::new(&a.model_dir, device, paths)?);
                    rt.block_on(serve::serve(&a.addr, runner))?;
                }
            }
            json!({"stopped": true})
        }
        Command::Worker(a) => {
            let lease = a.lease_seconds.map_or(
                medlabel_runner::worker::DEFAULT_LEASE,
                std::time::Duration::from_secs_f64,
            );
            // The secret comes on stdin, never in argv or the environment, where any
            // local process could read it.
            let mut stdin = std::io::BufReader::new(std::io::stdin());
            let secret = if a.secret_stdin {
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
            if a.exit_with_stdin {
                // The parent holds our stdin: when it dies, however it dies, we read EOF.
                // `_exit`, not `exit`: libtorch's static destructors must not run while
                // another thread is inside a kernel (the log already holds all we did).
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut stdin, &mut std::io::sink());
                    // SAFETY: ends the process at once, running no handlers.
                    unsafe { libc::_exit(0) }
                });
            }
            runtime()?.block_on(worker_cmd(a.home, a.serve, a.device, lease, secret))?;
            json!({"stopped": true})
        }
        #[cfg(feature = "aws")]
        Command::SqsWorker(a) => {
            let work = a
                .work
                .unwrap_or_else(|| std::env::temp_dir().join("medlabel-runner"));
            let handled = runtime()?.block_on(sqs_worker_cmd(
                a.queue_url,
                a.table,
                a.bucket,
                work,
                a.device,
                a.until_empty,
            ))?;
            json!({"handled": handled})
        }
        Command::SagemakerTrain(a) => {
            let outcome = sagemaker::run(&sagemaker::SageMakerPaths { root: a.root })?;
            json!({"model_dir": outcome.model_dir, "train_stats": outcome.stats})
        }
        Command::Import(a) => {
            let opts = BundleImport {
                prefer_torchscript: a.prefer_torchscript,
            };
            let (config, source) = import_model(&a.file, a.like.as_deref(), &a.out, &opts)?;
            json!({"model_dir": a.out, "source": source, "network": config.network.name(), "format": config.format, "labels": config.labels})
        }
        Command::NewModel(a) => {
            let config = ModelConfig::template(&a.network, a.labels.into_iter().collect())?;
            tch::manual_seed(a.seed);
            let model = Model::new(config, tch::Device::Cpu)?;
            model.save(&a.out)?;
            json!({"model_dir": a.out, "network": model.config.network.name(), "labels": model.config.labels})
        }
        Command::MakeSample(a) => {
            let pairs =
                synth::write_labelled_studies(&a.out, a.cases, a.seed, a.dims, a.spacing, a.liver)?;
            json!({"studies": a.out, "cases": pairs.len()})
        }
        Command::Uncertainty(a) => {
            let device = parse_device(&a.device)?;
            let model = Model::load(&a.model, device)?;
            let image = medlabel_runner::io::read_image(&a.image)?;
            let u = medlabel_runner::uncertainty::mc_dropout(&model, &image, a.passes, 0.25, 0)?;
            serde_json::to_value(u).map_err(|e| RunnerError::json("uncertainty", e))?
        }
        Command::GpuCheck(a) => bench::gpu_check(a)?,
        Command::Bench(a) => bench::bench(a)?,
    };
    Ok(out)
}

fn train_cmd(a: cli::TrainArgs) -> Result<Value> {
    let mut req: TrainRequest = match &a.request {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| RunnerError::io(p, e))?;
            serde_json::from_str(&text)
                .map_err(|e| RunnerError::json(p.display().to_string(), e))?
        }
        None => TrainRequest::default(),
    };
    let mut cfg = req.model.clone().unwrap_or_else(ModelConfig::spleen);
    if let Some(labels) = a.labels {
        cfg.labels = labels.into_iter().collect();
    }
    if let Some(t) = &a.model_type {
        cfg.model_type =
            serde_json::from_value(json!(t)).map_err(|e| RunnerError::json("--type", e))?;
    }
    let outputs = cfg.labels.values().copied().max().unwrap_or(0) + 1;
    let inputs = 1 + cfg.guidance_channels();
    cfg.roi_size = a.roi.unwrap_or(cfg.roi_size);
    cfg.spacing = a.spacing.unwrap_or(cfg.spacing);
    if let medlabel_runner::NetworkConfig::UNet(net) = &mut cfg.network {
        if let Some(channels) = a.channels {
            net.channels = channels;
        }
        if let Some(strides) = a.strides {
            net.strides = strides;
        }
        net.num_res_units = a.res_units.unwrap_or(net.num_res_units);
        net.spatial_dims = a.spatial_dims.unwrap_or(net.spatial_dims);
        net.dropout = a.dropout.unwrap_or(net.dropout);
        if let Some(n) = &a.norm {
            net.norm =
                serde_json::from_value(json!(n)).map_err(|e| RunnerError::json("--norm", e))?;
        }
        // The network's inputs and outputs follow the labels and the model type.
        (net.in_channels, net.out_channels) = (inputs, outputs.max(2));
    }
    req.model = Some(cfg);
    req.pretrained = a.pretrained.or(req.pretrained);
    req.resume = a.resume.or(req.resume);
    req.max_epochs = a.max_epochs.unwrap_or(req.max_epochs);
    req.val_interval = a.val_interval.unwrap_or(req.val_interval);
    req.learning_rate = a.lr.unwrap_or(req.learning_rate);
    req.num_samples = a.num_samples.unwrap_or(req.num_samples);
    req.seed = a.seed.unwrap_or(req.seed);
    req.device = a.device.unwrap_or(req.device);
    let datalist = match (&a.studies, &a.datalist) {
        (Some(dir), None) => synth::studies_datalist(dir)?,
        (None, Some(file)) => cli::read_datalist(file)?,
        _ => unreachable!("clap requires exactly one of --studies and --datalist"),
    };
    let outcome = train(
        &req,
        &datalist,
        &a.out,
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
