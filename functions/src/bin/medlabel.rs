//! `medlabel serve --studies DIR`: the whole API on one port, on embedded backends.
//!
//! Events go to `DIR/.medlabel/events.db` (SQLite), files to `DIR/.medlabel/blobs`
//! (content-addressed; the studies folder's own files are hard-linked, not copied) and
//! uploads are spooled in `DIR/.medlabel/tmp`. At start the studies folder is imported
//! as MONAI Label lays it out (idempotent: a restart imports only what changed).
//!
//! GPU work runs in a child process, `medlabel-runner worker` (found beside this binary
//! or given by `--runner`): it follows the same event log, runs training, scoring and
//! batch-inference jobs, and serves interactive inference on a loopback port, restarted
//! by a supervisor whenever it dies (`medlabel_functions::supervisor`). This binary
//! never links libtorch.
//!
//! Browsers: no other web origin may call the API unless named by `--cors-origin`, and
//! a server bound to loopback answers only requests for a loopback name or its address
//! (DNS rebinding). `--starter-model DIR` publishes a model folder
//! (`config.json` + `model.safetensors`) as version 1 of its model when none is
//! published yet, so a fresh studies folder can segment at once.
//!
//! Authentication is off unless `--auth builtin` (users of the studies folder, managed
//! with `medlabel user`) or `--auth oidc` asks for it (see `medlabel_functions::auth_cli`).
//!
//! `medlabel serve --backend aws --table T --bucket B` serves a cloud deployment's
//! table and bucket instead, with no studies folder and no runner child: the container
//! service that takes the routes with large bodies in the cloud
//! (`medlabel_functions::cloud`, `docs/deploy.md`). Its settings beyond the flags come
//! from the environment the functions read (`MEDLABEL_AUTH_*`, `MEDLABEL_RUNNER_ENDPOINT`,
//! `MEDLABEL_LOG_GROUPS`, ...).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};
use medlabel_events::Actor;
use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::clock::SystemClock;
use medlabel_events::datastore::{WriteContext, import_studies};
use medlabel_events::models::Models;
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_functions::auth_cli;
use medlabel_functions::model_runner::{InferenceEndpoint, LocalRunner};
use medlabel_functions::runner::NoRunner;
use medlabel_functions::state::{AppState, Config, DicomWeb};
use medlabel_functions::supervisor::{RunnerCommand, RunnerSupervisor};

fn cli() -> Command {
    let command = Command::new("medlabel")
        .about("MONAI Label compatible, event-sourced annotation server")
        .subcommand_required(true)
        .subcommand(
            Command::new("serve")
                .about("Serve a MONAI Label studies folder on one port")
                .arg(
                    Arg::new("studies")
                        .long("studies")
                        .value_parser(value_parser!(PathBuf))
                        .help("The studies folder (images flat, labels/<tag>/); required with --backend local"),
                )
                .arg(
                    Arg::new("backend")
                        .long("backend")
                        .default_value("local")
                        .value_parser(["local", "aws"])
                        .help("local: a studies folder on SQLite; aws: a cloud deployment's DynamoDB table and S3 bucket"),
                )
                .arg(
                    Arg::new("table")
                        .long("table")
                        .env("MEDLABEL_EVENTS_TABLE")
                        .help("With --backend aws: the event table (stack output EventsTableName)"),
                )
                .arg(
                    Arg::new("bucket")
                        .long("bucket")
                        .env("MEDLABEL_BLOBS_BUCKET")
                        .help("With --backend aws: the blob bucket (stack output BlobsBucketName)"),
                )
                .arg(
                    Arg::new("host")
                        .long("host")
                        .default_value("127.0.0.1")
                        .help("Address to listen on"),
                )
                .arg(
                    Arg::new("port")
                        .long("port")
                        .default_value("8000")
                        .value_parser(value_parser!(u16))
                        .help("Port to listen on (0: any free port)"),
                )
                .arg(
                    Arg::new("max-upload-bytes")
                        .long("max-upload-bytes")
                        .default_value("2000000000")
                        .value_parser(value_parser!(u64))
                        .help("Largest accepted upload body; larger ones get 413"),
                )
                .arg(
                    Arg::new("runner")
                        .long("runner")
                        .value_parser(value_parser!(PathBuf))
                        .help("The medlabel-runner binary (default: beside this one; none: no models)"),
                )
                .arg(
                    Arg::new("starter-model")
                        .long("starter-model")
                        .value_parser(value_parser!(PathBuf))
                        .help("A model folder to publish when its model has no version yet"),
                )
                .arg(
                    Arg::new("device")
                        .long("device")
                        .default_value("auto")
                        .help("Runner device: cpu, cuda, cuda:N or auto"),
                )
                .arg(
                    Arg::new("ohif")
                        .long("ohif")
                        .value_parser(value_parser!(PathBuf))
                        .help("A built OHIF viewer folder to serve at /ohif/"),
                )
                .arg(
                    Arg::new("dicomweb")
                        .long("dicomweb")
                        .help("A DICOMweb server for /proxy/dicom/ (basic auth from MEDLABEL_DICOMWEB_USERNAME/_PASSWORD)"),
                )
                .arg(
                    Arg::new("cors-origin")
                        .long("cors-origin")
                        .env("MEDLABEL_CORS_ORIGINS")
                        .value_delimiter(',')
                        .action(ArgAction::Append)
                        .help("A web origin allowed to call the API from a browser, e.g. https://viewer.example (repeatable; default: none)"),
                )
                .arg(
                    Arg::new("job-lease")
                        .long("job-lease")
                        .default_value("60")
                        .value_parser(value_parser!(f64))
                        .help("Seconds a runner holds a job without renewing it; a job whose runner stops renewing ends as ERROR"),
                )
                .arg(
                    Arg::new("session-expiry")
                        .long("session-expiry")
                        .default_value("3600")
                        .value_parser(value_parser!(u64))
                        .help("Longest session lifetime in seconds (MONAI_LABEL_SESSION_EXPIRY)"),
                )
                .args(auth_cli::serve_args()),
        )
        .subcommand(auth_cli::user_command());
    #[cfg(feature = "aws")]
    let command = command.subcommand(
        Command::new("publish-model")
            .about(
                "Publish a model folder (config.json, model.safetensors) to a deployment's \
                 log, when that model has no version yet; later versions come from \
                 training or PUT /model/{name}",
            )
            .arg(
                Arg::new("model")
                    .required(true)
                    .value_parser(value_parser!(PathBuf))
                    .help("The model folder; its name is the model's"),
            )
            .arg(
                Arg::new("table")
                    .long("table")
                    .required(true)
                    .help("The deployment's event table (stack output EventsTableName)"),
            )
            .arg(
                Arg::new("bucket")
                    .long("bucket")
                    .required(true)
                    .help("The deployment's blob bucket (stack output BlobsBucketName)"),
            ),
    );
    command
}

#[tokio::main]
async fn main() {
    let matches = cli().get_matches();
    let result = match matches.subcommand() {
        Some(("serve", args)) => match args.get_one::<String>("backend").map(String::as_str) {
            #[cfg(feature = "aws")]
            Some("aws") => serve_cloud(args).await,
            #[cfg(not(feature = "aws"))]
            Some("aws") => Err("--backend aws needs medlabel built with the `aws` feature".into()),
            _ => serve(args).await,
        },
        Some(("user", args)) => auth_cli::run_user(args),
        #[cfg(feature = "aws")]
        Some(("publish-model", args)) => publish_model(args).await,
        _ => unreachable!("clap requires a subcommand"),
    };
    medlabel_functions::logging::flush();
    if let Err(err) = result {
        eprintln!("medlabel: {err}");
        std::process::exit(1);
    }
}

/// Publishes a model folder to a cloud deployment's log (DynamoDB + S3; the SDK's
/// usual configuration picks the account, region and endpoint) and prints the outcome.
#[cfg(feature = "aws")]
async fn publish_model(args: &ArgMatches) -> Result<(), Box<dyn std::error::Error>> {
    use medlabel_events::blob::s3::S3BlobStore;
    use medlabel_events::store::dynamo::DynamoEventStore;
    let dir: &PathBuf = args.get_one("model").expect("required");
    let table: &String = args.get_one("table").expect("required");
    let bucket: &String = args.get_one("bucket").expect("required");
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = DynamoEventStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    let blobs = S3BlobStore::new(S3BlobStore::client(&sdk), bucket);
    let models = Models::new(Arc::new(store), Arc::new(SystemClock));
    let published =
        medlabel_functions::model_runner::publish_model_folder(&models, &blobs, dir).await?;
    let model = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    println!(
        "{}",
        serde_json::json!({"model": model, "published": published})
    );
    Ok(())
}

async fn serve(args: &ArgMatches) -> Result<(), Box<dyn std::error::Error>> {
    medlabel_functions::logging::init(false);
    let studies: &PathBuf = args
        .get_one("studies")
        .ok_or("--studies is required with --backend local")?;
    if !studies.is_dir() {
        return Err(format!("{} is not a directory", studies.display()).into());
    }
    let home = studies.join(".medlabel");
    let temp_dir = home.join("tmp");
    std::fs::create_dir_all(&temp_dir)?;
    let auth = auth_cli::from_serve_args(args, &home).await?;
    let store = open_store(&home.join("events.db")).await?;
    let blobs = FolderBlobStore::open_with_inline(home.join("blobs"), &store)?;
    let host: &String = args.get_one("host").expect("defaulted");
    let allowed_hosts = loopback_names(host);
    if allowed_hosts.is_none() && auth.is_none() {
        tracing::warn!(
            %host,
            "listening beyond loopback without authentication: anyone who can reach this \
             address can read, change and delete every image and label"
        );
        eprintln!(
            "medlabel: WARNING: --host {host} is reachable from the network and authentication \
             is off: anyone who can reach it gets full access to the patient data"
        );
    }
    let config = Config {
        max_upload_bytes: *args.get_one::<u64>("max-upload-bytes").expect("defaulted"),
        max_session_expiry_s: *args.get_one::<u64>("session-expiry").expect("defaulted"),
        temp_dir,
        ohif_dir: args.get_one::<PathBuf>("ohif").cloned(),
        dicomweb: args
            .get_one::<String>("dicomweb")
            .cloned()
            .map(DicomWeb::with_env_credentials),
        cors_origins: args
            .get_many::<String>("cors-origin")
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        allowed_hosts,
        auth,
        ..Config::default()
    };
    let state = AppState::open_with(
        Arc::new(store),
        Arc::new(blobs.clone()),
        Arc::new(SystemClock),
        Arc::new(NoRunner),
        config,
    )
    .await?;
    let report = import_studies(
        &state.datastore,
        &blobs,
        studies,
        &WriteContext::fresh(Actor::admin()),
    )
    .await?;
    tracing::info!(
        images = report.images_added,
        labels = report.labels_added,
        unchanged = report.unchanged,
        skipped = report.skipped.len(),
        "studies imported"
    );
    for (path, why) in &report.skipped {
        tracing::warn!(path = %path.display(), reason = %why, "skipped while importing");
    }
    tokio::spawn(medlabel_functions::routes::session::sweep_forever(
        state.sessions.clone(),
    ));

    if let Some(dir) = args.get_one::<PathBuf>("starter-model") {
        medlabel_functions::model_runner::publish_model_folder(
            &state.models,
            state.datastore.blob_store().as_ref(),
            dir,
        )
        .await?;
    }
    let runner = args
        .get_one::<PathBuf>("runner")
        .cloned()
        .or_else(|| {
            std::env::current_exe()
                .ok()?
                .parent()
                .map(|d| d.join("medlabel-runner"))
        })
        .filter(|path| path.is_file());
    let state = match runner {
        Some(binary) => {
            let endpoint = Arc::new(LocalRunner::default());
            let command = RunnerCommand {
                binary,
                home: home.clone(),
                device: args.get_one::<String>("device").expect("defaulted").clone(),
                lease: std::time::Duration::from_secs_f64(
                    *args.get_one::<f64>("job-lease").expect("defaulted"),
                ),
            };
            let supervisor = RunnerSupervisor::new(command, endpoint.clone(), state.jobs.clone());
            tokio::spawn(supervisor.run());
            state.with_model_runner(Some(InferenceEndpoint::Local(endpoint)))
        }
        None => {
            tracing::warn!("no medlabel-runner found: serving without models");
            state.with_model_runner(None)
        }
    };

    let port: u16 = *args.get_one("port").expect("defaulted");
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    let address: SocketAddr = listener.local_addr()?;
    println!(
        "medlabel serving {} at http://{address}/",
        studies.display()
    );
    axum::serve(listener, medlabel_functions::app(state))
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

/// Ctrl-C, or SIGTERM (how ECS stops a task): in-flight requests finish first.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `medlabel serve --backend aws`: every router over a cloud deployment's table and
/// bucket, as the container service behind the load balancer runs it.
#[cfg(feature = "aws")]
async fn serve_cloud(args: &ArgMatches) -> Result<(), Box<dyn std::error::Error>> {
    use medlabel_functions::cloud::{self, Deployment, Front};
    // JSON lines, as the functions write them: CloudWatch indexes their fields.
    medlabel_functions::logging::init(true);
    let required = |name: &str| {
        args.get_one::<String>(name)
            .cloned()
            .ok_or_else(|| format!("--{name} is required with --backend aws"))
    };
    let deployment = Deployment {
        table: required("table")?,
        bucket: required("bucket")?,
    };
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let front = Front::Container {
        max_upload_bytes: *args.get_one::<u64>("max-upload-bytes").expect("defaulted"),
    };
    let mut config = front.config()?;
    config.max_session_expiry_s = *args.get_one::<u64>("session-expiry").expect("defaulted");
    // The stack passes its list joined, empty when no origin is allowed.
    config.cors_origins = args
        .get_many::<String>("cors-origin")
        .into_iter()
        .flatten()
        .filter(|origin| !origin.is_empty())
        .cloned()
        .collect();
    let state = cloud::state(&sdk, &deployment, config)
        .await
        .map_err(|err| err.to_string())?;
    tokio::spawn(medlabel_functions::routes::session::sweep_forever(
        state.sessions.clone(),
    ));
    let host: &String = args.get_one("host").expect("defaulted");
    let port: u16 = *args.get_one("port").expect("defaulted");
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    let address: SocketAddr = listener.local_addr()?;
    println!(
        "medlabel serving table {} and bucket {} at http://{address}/",
        deployment.table, deployment.bucket
    );
    axum::serve(listener, medlabel_functions::app(state))
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

/// The host names a server bound to `host` answers, when `host` is a loopback address
/// or name; `None` when it listens beyond this machine.
fn loopback_names(host: &str) -> Option<Vec<String>> {
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback.then(|| {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let bracketed = match host.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]"),
            Err(_) => host.to_owned(),
        };
        if !names.contains(&bracketed) {
            names.push(bracketed);
        }
        names
    })
}

async fn open_store(path: &Path) -> Result<SqliteEventStore, Box<dyn std::error::Error>> {
    let path = path.to_owned();
    Ok(tokio::task::spawn_blocking(move || SqliteEventStore::open(path)).await??)
}
