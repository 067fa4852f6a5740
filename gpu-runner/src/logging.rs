//! The runner's log: `tracing` events as JSON lines on stderr.
//!
//! Stdout belongs to each command's one JSON document (and the worker's `listening`
//! line its parent reads), so the log goes to stderr, which ECS's `awslogs` driver and
//! SageMaker ship to CloudWatch like stdout. JSON, as the functions write it on Lambda:
//! CloudWatch indexes the fields, and the stack's metric filter counts jobs that ended
//! in `ERROR` from the worker's `job finished` lines. The level comes from `RUST_LOG`
//! (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the subscriber once; later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .try_init();
    // Already installed (a test, or a second call): the first subscriber stays.
    drop(installed);
}
