//! `loadgen`: bounded speed measurements of medlabel, one JSON line per measurement.
//!
//! - `loadgen http --base URL --kind KIND`: closed-loop load from N concurrent clients
//!   (default 16) against a running `medlabel serve` on loopback, for one request kind
//!   at a time; warm-up first, then a fixed number of requests or a time limit,
//!   whichever ends first. Prints throughput, p50/p90/p99/max latency and errors.
//! - `loadgen lambda-cold-start --bin PATH`: spawns a Lambda function binary against a
//!   fake Lambda Runtime API and times process start to its first answer, over fresh
//!   emulator-backed state (see `lambda.rs`).
//!
//! Both always stop by themselves; `scripts/bench-http.sh` and
//! `scripts/bench-lambda.sh` drive them.

mod http;
mod lambda;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command, value_parser};

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Http(String),
    #[error("seeding the emulator state: {0}")]
    Seed(String),
    #[error("starting {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error("{0}")]
    Function(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn cli() -> Command {
    let count = |name: &'static str, default: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .default_value(default)
            .value_parser(value_parser!(u64))
            .help(help)
    };
    Command::new("loadgen")
        .about("Bounded speed measurements of medlabel's HTTP API and Lambda binaries")
        .subcommand_required(true)
        .subcommand(
            Command::new("http")
                .about("Load one request kind from concurrent clients; print one JSON line")
                .arg(
                    Arg::new("base")
                        .long("base")
                        .required(true)
                        .help("The server's base URL, e.g. http://127.0.0.1:8000"),
                )
                .arg(
                    Arg::new("kind")
                        .long("kind")
                        .required(true)
                        .value_parser(http::Kind::NAMES)
                        .help("Request kind"),
                )
                .arg(count("clients", "16", "Concurrent clients"))
                .arg(count("requests", "20000", "Measured requests"))
                .arg(count("warmup", "500", "Warm-up requests, not measured"))
                .arg(count("max-seconds", "300", "Time limit of each phase"))
                .arg(
                    Arg::new("label")
                        .long("label")
                        .value_parser(value_parser!(PathBuf))
                        .help("Label file uploaded by label-put"),
                ),
        )
        .subcommand(
            Command::new("lambda-cold-start")
                .about("Time a Lambda binary from spawn to its first answer; print one JSON line")
                .arg(
                    Arg::new("bin")
                        .long("bin")
                        .required(true)
                        .value_parser(value_parser!(PathBuf))
                        .help("The function binary"),
                )
                .arg(count("runs", "5", "Cold starts to time"))
                .arg(count(
                    "seed-images",
                    "0",
                    "Images recorded in the state first",
                ))
                .arg(count(
                    "tail-images",
                    "0",
                    "Images recorded after the first run, past the snapshot it records",
                ))
                .arg(count("timeout-seconds", "30", "Limit of each run"))
                .arg(
                    Arg::new("method")
                        .long("method")
                        .default_value("GET")
                        .help("HTTP method of the API Gateway event"),
                )
                .arg(
                    Arg::new("path")
                        .long("path")
                        .default_value("/info/")
                        .help("Path and query of the API Gateway event"),
                )
                .arg(
                    Arg::new("body")
                        .long("body")
                        .help("JSON body of the API Gateway event ({run}: the run's number)"),
                )
                .arg(
                    Arg::new("raw-event")
                        .long("raw-event")
                        .conflicts_with_all(["method", "path", "body"])
                        .help("A whole event as JSON instead (e.g. {\"Records\":[]})"),
                ),
        )
}

#[tokio::main]
async fn main() -> ExitCode {
    match measure(&cli().get_matches()).await {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("loadgen: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn measure(matches: &ArgMatches) -> Result<serde_json::Value, LoadgenError> {
    match matches.subcommand() {
        Some(("http", args)) => http::run(http_plan(args)?).await,
        Some(("lambda-cold-start", args)) => lambda::run(lambda_plan(args)?).await,
        _ => unreachable!("clap requires a subcommand"),
    }
}

fn number(args: &ArgMatches, name: &str) -> u64 {
    *args.get_one::<u64>(name).expect("defaulted")
}

fn http_plan(args: &ArgMatches) -> Result<http::Plan, LoadgenError> {
    let kind_name: &String = args.get_one("kind").expect("required");
    let kind = http::Kind::parse(kind_name).expect("clap checked the kind");
    let label = match args.get_one::<PathBuf>("label") {
        Some(path) => Some(std::fs::read(path).map_err(|err| {
            LoadgenError::Usage(format!("reading the label {}: {err}", path.display()))
        })?),
        None => None,
    };
    let base: &String = args.get_one("base").expect("required");
    Ok(http::Plan {
        base: base.trim_end_matches('/').to_owned(),
        kind,
        clients: number(args, "clients") as usize,
        requests: number(args, "requests"),
        warmup: number(args, "warmup"),
        max_time: Duration::from_secs(number(args, "max-seconds")),
        label,
    })
}

fn lambda_plan(args: &ArgMatches) -> Result<lambda::Plan, LoadgenError> {
    let event = match args.get_one::<String>("raw-event") {
        Some(raw) => serde_json::from_str(raw)
            .map_err(|err| LoadgenError::Usage(format!("--raw-event is not JSON: {err}")))?,
        None => lambda::api_gateway_event(
            args.get_one::<String>("method").expect("defaulted"),
            args.get_one::<String>("path").expect("defaulted"),
            args.get_one::<String>("body").map(String::as_str),
        ),
    };
    Ok(lambda::Plan {
        bin: args.get_one::<PathBuf>("bin").expect("required").clone(),
        runs: number(args, "runs") as usize,
        event,
        seed_images: number(args, "seed-images") as usize,
        tail_images: number(args, "tail-images") as usize,
        timeout: Duration::from_secs(number(args, "timeout-seconds")),
    })
}
