//! `medlabel serve --studies DIR`: the whole API on one port, on embedded backends.
//!
//! Events go to `DIR/.medlabel/events.db` (SQLite), files to `DIR/.medlabel/blobs`
//! (content-addressed; the studies folder's own files are hard-linked, not copied) and
//! uploads are spooled in `DIR/.medlabel/tmp`. At start the studies folder is imported
//! as MONAI Label lays it out (idempotent: a restart imports only what changed), then
//! kept as a projection of the log: every image and latest label under MONAI Label's
//! names and `datastore_v2.json` (`medlabel_events::datastore::StudiesFolder`), so
//! MONAI Label itself can open the folder again.
//!
//! `--studies http://host/dicom-web` makes a DICOMweb server the studies instead
//! (`medlabel_functions::dicomweb`): the log, blobs and spool live in the `--home`
//! folder (default `~/.cache/medlabel/dicomweb/<hash of the URL>`), the server is
//! polled every `--poll-interval` seconds, and `/proxy/dicom/` relays to it.
//!
//! GPU work runs in a child process, `medlabel-runner worker` (found beside this binary
//! or given by `--runner`): it follows the same event log, runs training, scoring and
//! batch-inference jobs, and serves interactive inference on a loopback port, restarted
//! by a supervisor whenever it dies (`medlabel_functions::supervisor`). This binary
//! never links libtorch.
//!
//! Browsers: no other web origin may call the API unless named by `--cors-origin`, and
//! a server bound to loopback answers only requests for a loopback name or its address
//! (DNS rebinding). `--starter-model DIR` (repeatable) publishes a model folder
//! (`config.json` + `model.safetensors`) as version 1 of its model when none is
//! published yet, so a fresh studies folder can segment, and answer clicks, at once.
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
use medlabel_events::ModelName;
use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::clock::SystemClock;
use medlabel_events::datastore::{StudiesFolder, WriteContext, import_studies};
use medlabel_events::models::Models;
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_functions::auth_cli;
use medlabel_functions::dicomweb::Studies;
use medlabel_functions::model_import::{self, ModelImporter};
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
                        .help("The studies folder (images flat, labels/<tag>/), or a DICOMweb server's URL (http://host:8042/dicom-web; credentials from MEDLABEL_DICOMWEB_TOKEN or MEDLABEL_DICOMWEB_USERNAME/_PASSWORD); required with --backend local"),
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
                    Arg::new("home")
                        .long("home")
                        .value_parser(value_parser!(PathBuf))
                        .help("With a DICOMweb --studies: the folder for the event log, blobs and users (default ~/.cache/medlabel/dicomweb/<hash of the URL>)"),
                )
                .arg(
                    Arg::new("poll-interval")
                        .long("poll-interval")
                        .default_value("30")
                        .value_parser(value_parser!(f64))
                        .help("With a DICOMweb --studies: seconds between searches for new, changed or removed series"),
                )
                .arg(
                    Arg::new("search-filter")
                        .long("search-filter")
                        .action(ArgAction::Append)
                        .help("With a DICOMweb --studies: a QIDO attribute filter for images, KEY=VALUE (repeatable; default Modality=CT)"),
                )
                .arg(Arg::new("qido-prefix").long("qido-prefix").default_value("").help("Path between the DICOMweb URL and QIDO-RS paths"))
                .arg(Arg::new("wado-prefix").long("wado-prefix").default_value("").help("Path between the DICOMweb URL and WADO-RS paths"))
                .arg(Arg::new("stow-prefix").long("stow-prefix").default_value("").help("Path between the DICOMweb URL and STOW-RS paths"))
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
                        .action(ArgAction::Append)
                        .value_parser(value_parser!(PathBuf))
                        .help("A model folder to publish when its model has no version yet (repeatable)"),
                )
                .arg(
                    Arg::new("bundle")
                        .long("bundle")
                        .action(ArgAction::Append)
                        .value_parser(value_parser!(PathBuf))
                        .help("A MONAI bundle (folder or zip) to serve as the model named after it, published when that model has no version yet (repeatable)"),
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
                        .help("A DICOMweb server for /proxy/dicom/ (default: a DICOMweb --studies; credentials as for it)"),
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
        .subcommand(auth_cli::user_command())
        .subcommand(
            Command::new("model")
                .about("Manage the models of a studies folder")
                .subcommand_required(true)
                .subcommand(
                    Command::new("new")
                        .about("A new model for a label set, on a template network with fresh weights (train it with POST /train/NAME)")
                        .arg(Arg::new("name").required(true).help("The model's name"))
                        .arg(
                            Arg::new("studies")
                                .long("studies")
                                .required(true)
                                .value_parser(value_parser!(PathBuf))
                                .help("The studies folder whose server will serve it"),
                        )
                        .arg(
                            Arg::new("network")
                                .long("network")
                                .default_value("segresnet")
                                .value_parser(["unet", "segresnet", "dynunet"])
                                .help("The template network"),
                        )
                        .arg(
                            Arg::new("labels")
                                .long("labels")
                                .required(true)
                                .help("name=channel,... (channel 0 is background), e.g. spleen=1,liver=2"),
                        )
                        .arg(runner_arg()),
                ),
        );
    #[cfg(feature = "aws")]
    let command = command.subcommand(
        Command::new("publish-model")
            .about(
                "Publish a model folder (config.json and its weights) or a MONAI bundle \
                 (folder or zip, imported with the runner) to a deployment's log, when that \
                 model has no version yet; later versions come from training or \
                 PUT /model/{name}",
            )
            .arg(
                Arg::new("model")
                    .required(true)
                    .value_parser(value_parser!(PathBuf))
                    .help("The model folder or bundle; its name is the model's"),
            )
            .arg(runner_arg())
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

fn runner_arg() -> Arg {
    Arg::new("runner")
        .long("runner")
        .value_parser(value_parser!(PathBuf))
        .help("The medlabel-runner binary (default: beside this one)")
}

/// The runner binary: `--runner`, else `medlabel-runner` beside this binary, if it exists.
fn runner_binary(args: &ArgMatches) -> Option<PathBuf> {
    args.get_one::<PathBuf>("runner")
        .cloned()
        .or_else(|| {
            std::env::current_exe()
                .ok()?
                .parent()
                .map(|d| d.join("medlabel-runner"))
        })
        .filter(|path| path.is_file())
}

/// A model's name from a bundle's folder or zip file name.
fn bundle_name(bundle: &Path) -> Result<ModelName, Box<dyn std::error::Error>> {
    let name = bundle
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".zip").unwrap_or(n))
        .ok_or_else(|| format!("{}: no file name to name the model after", bundle.display()))?;
    Ok(ModelName::parse(name)?)
}

/// Whether `path` is a bundle (a zip, or a folder with configs/metadata.json) rather
/// than a model folder.
#[cfg(feature = "aws")]
fn is_bundle(path: &Path) -> bool {
    path.is_file() || path.join("configs/metadata.json").is_file()
}

/// Imports the bundle with the runner and publishes it unless its model has a version.
async fn publish_bundle(
    importer: &ModelImporter,
    models: &Models,
    blobs: &dyn medlabel_events::BlobStore,
    bundle: &Path,
) -> Result<bool, Box<dyn std::error::Error>> {
    let name = bundle_name(bundle)?;
    let folder = importer
        .import(bundle, None)
        .await
        .map_err(|e| format!("{}: {e}", bundle.display()))?;
    Ok(model_import::publish_if_absent(models, blobs, &name, &folder.path()).await?)
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
        Some(("model", args)) => match args.subcommand() {
            Some(("new", args)) => new_model(args).await,
            _ => unreachable!("clap requires a subcommand"),
        },
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
    let published = if is_bundle(dir) {
        let runner = runner_binary(args)
            .ok_or("a bundle is imported with medlabel-runner: give --runner")?;
        let importer = ModelImporter::new(runner, std::env::temp_dir());
        publish_bundle(&importer, &models, &blobs, dir).await?
    } else {
        model_import::publish_model_folder(&models, &blobs, dir).await?
    };
    let model = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    println!(
        "{}",
        serde_json::json!({"model": model, "published": published})
    );
    Ok(())
}

/// Where the images come from.
enum Source {
    Folder(PathBuf),
    DicomWeb(String),
}

/// The default home of a DICOMweb datastore: one folder per server URL, as MONAI
/// Label keeps one cache folder per URL.
fn default_home(url: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    use sha2::{Digest, Sha256};
    let home = std::env::var_os("HOME").ok_or("HOME is not set: give --home")?;
    let digest = hex::encode(Sha256::digest(url.trim_end_matches('/')));
    Ok(PathBuf::from(home)
        .join(".cache/medlabel/dicomweb")
        .join(&digest[..16]))
}

/// `KEY=VALUE` filters, Modality=CT when none is given.
fn search_filter(args: &ArgMatches) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let given: Vec<&String> = args
        .get_many("search-filter")
        .into_iter()
        .flatten()
        .collect();
    if given.is_empty() {
        return Ok(vec![("Modality".into(), "CT".into())]);
    }
    given
        .into_iter()
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("--search-filter {f:?} is not KEY=VALUE").into())
        })
        .collect()
}

/// The DICOMweb server at `url` with the prefixes and environment credentials.
fn dicomweb_server(url: &str, args: &ArgMatches) -> DicomWeb {
    let prefix = |name: &str| args.get_one::<String>(name).cloned().unwrap_or_default();
    DicomWeb {
        qido_prefix: prefix("qido-prefix"),
        wado_prefix: prefix("wado-prefix"),
        stow_prefix: prefix("stow-prefix"),
        ..DicomWeb::with_env_credentials(url)
    }
}

async fn serve(args: &ArgMatches) -> Result<(), Box<dyn std::error::Error>> {
    medlabel_functions::logging::init(false);
    let studies_arg: &String = args
        .get_one("studies")
        .ok_or("--studies is required with --backend local")?;
    let source = if studies_arg.starts_with("http://") || studies_arg.starts_with("https://") {
        Source::DicomWeb(studies_arg.clone())
    } else {
        let dir = PathBuf::from(studies_arg);
        if !dir.is_dir() {
            return Err(format!("{} is not a directory", dir.display()).into());
        }
        Source::Folder(dir)
    };
    let home = match (&source, args.get_one::<PathBuf>("home")) {
        (Source::Folder(dir), _) => dir.join(".medlabel"),
        (Source::DicomWeb(_), Some(home)) => home.clone(),
        (Source::DicomWeb(url), None) => default_home(url)?,
    };
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
    let runner = runner_binary(args);
    let importer = runner
        .clone()
        .map(|binary| ModelImporter::new(binary, temp_dir.clone()));
    let studies_server = match &source {
        Source::DicomWeb(url) => Some(dicomweb_server(url, args)),
        Source::Folder(_) => None,
    };
    let config = Config {
        importer: importer.clone(),
        max_upload_bytes: *args.get_one::<u64>("max-upload-bytes").expect("defaulted"),
        max_session_expiry_s: *args.get_one::<u64>("session-expiry").expect("defaulted"),
        temp_dir: temp_dir.clone(),
        ohif_dir: args.get_one::<PathBuf>("ohif").cloned(),
        dicomweb: args
            .get_one::<String>("dicomweb")
            .map(|url| dicomweb_server(url, args))
            .or_else(|| studies_server.clone()),
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
    let mut state = AppState::open_with(
        Arc::new(store),
        Arc::new(blobs.clone()),
        Arc::new(SystemClock),
        Arc::new(NoRunner),
        config,
    )
    .await?;
    let store = state.datastore.event_store().clone();
    let folder = match (&source, studies_server) {
        (Source::Folder(dir), _) => {
            // What other tools changed in the folder while medlabel was stopped is
            // imported first; then the folder is made to match the log, and kept so
            // (design invariant 11).
            let report = import_studies(
                &state.datastore,
                &blobs,
                dir,
                &WriteContext::fresh(Actor::admin()),
                StudiesFolder::projected_position(dir),
            )
            .await?;
            tracing::info!(
                images = report.images_added,
                labels = report.labels_added,
                unchanged = report.unchanged,
                leftovers = report.leftovers.len(),
                skipped = report.skipped.len(),
                "studies imported"
            );
            for (path, why) in &report.skipped {
                tracing::warn!(path = %path.display(), reason = %why, "skipped while importing");
            }
            let folder = Arc::new(StudiesFolder::open(dir, blobs.clone())?);
            let projected = folder.rebuild(&store, &report.leftovers).await?;
            folder
                .clone()
                .follow_in_background(store.clone(), projected)?;
            state = state.with_studies_folder(folder.clone());
            Some(folder)
        }
        (Source::DicomWeb(_), Some(server)) => {
            let studies = Studies::new(
                server,
                state.datastore.clone(),
                search_filter(args)?,
                temp_dir.clone(),
            );
            state = state.with_studies(Arc::new(studies));
            None
        }
        (Source::DicomWeb(_), None) => unreachable!("a DICOMweb source has a server"),
    };
    tokio::spawn(medlabel_functions::routes::session::sweep_forever(
        state.sessions.clone(),
    ));

    let blob_store = state.datastore.blob_store();
    for dir in args
        .get_many::<PathBuf>("starter-model")
        .into_iter()
        .flatten()
    {
        model_import::publish_model_folder(&state.models, blob_store.as_ref(), dir).await?;
    }
    for bundle in args.get_many::<PathBuf>("bundle").into_iter().flatten() {
        let importer = importer
            .as_ref()
            .ok_or("--bundle needs medlabel-runner (beside this binary, or --runner)")?;
        publish_bundle(importer, &state.models, blob_store.as_ref(), bundle).await?;
    }
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

    if state.studies.is_some() {
        let interval = std::time::Duration::from_secs_f64(
            args.get_one::<f64>("poll-interval")
                .expect("defaulted")
                .max(0.1),
        );
        tokio::spawn(medlabel_functions::dicomweb::poll_forever(
            state.clone(),
            interval,
        ));
    }
    let port: u16 = *args.get_one("port").expect("defaulted");
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    let address: SocketAddr = listener.local_addr()?;
    println!("medlabel serving {studies_arg} at http://{address}/");
    axum::serve(listener, medlabel_functions::app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Leave the studies folder complete for whoever opens it next.
    if let Some(folder) = folder {
        folder.drained(store.as_ref()).await?;
    }
    Ok(())
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
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// `medlabel model new`: a template network for the label set, published as version 1
/// of the model in the studies folder's log (a running server sees it at once).
async fn new_model(args: &ArgMatches) -> Result<(), Box<dyn std::error::Error>> {
    let name = ModelName::parse(args.get_one::<String>("name").expect("required").as_str())?;
    let studies: &PathBuf = args.get_one("studies").expect("required");
    let home = studies.join(".medlabel");
    let temp_dir = home.join("tmp");
    std::fs::create_dir_all(&temp_dir)?;
    let labels = args
        .get_one::<String>("labels")
        .expect("required")
        .split(',')
        .map(|pair| {
            let (label, channel) = pair
                .split_once('=')
                .ok_or_else(|| format!("--labels: {pair:?} is not name=channel"))?;
            let channel: i64 = channel
                .trim()
                .parse()
                .map_err(|_| format!("--labels: {pair:?}: the channel must be an integer"))?;
            Ok((label.trim().to_owned(), channel))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let runner = runner_binary(args).ok_or("medlabel-runner not found: give --runner")?;
    let folder = ModelImporter::new(runner, temp_dir)
        .new_model(
            args.get_one::<String>("network").expect("defaulted"),
            &labels,
        )
        .await?;
    let store = open_store(&home.join("events.db")).await?;
    let blobs = FolderBlobStore::open_with_inline(home.join("blobs"), &store)?;
    let models = Models::new(Arc::new(store), Arc::new(SystemClock));
    let published = model_import::publish_if_absent(&models, &blobs, &name, &folder.path()).await?;
    if !published {
        return Err(
            format!("model {name} exists already; delete it first (DELETE /model/{name})").into(),
        );
    }
    println!(
        "{}",
        serde_json::json!({"model": name, "published": published})
    );
    Ok(())
}

/// Ctrl-C or SIGTERM (a service manager's, a container's stop).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
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
