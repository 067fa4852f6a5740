//! Logging: tracing to stdout (JSON on Lambda, where CloudWatch indexes fields) and a
//! bounded in-memory copy of recent lines that `GET /logs/` serves, as MONAI Label
//! serves its `app.log`.
//!
//! Every line written while a request runs carries the request's span, and so its
//! `request_id` (see [`crate::request_id`]).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Lines kept for `/logs/`.
pub const KEPT_LINES: usize = 5000;

/// The most recent log lines, shared by the subscriber and the logs route.
#[derive(Debug, Clone, Default)]
pub struct LogBuffer(Arc<Mutex<VecDeque<String>>>);

impl LogBuffer {
    /// The process-wide buffer the subscriber installed by [`init`] writes to.
    pub fn global() -> &'static LogBuffer {
        static GLOBAL: OnceLock<LogBuffer> = OnceLock::new();
        GLOBAL.get_or_init(LogBuffer::default)
    }

    pub fn push(&self, line: &str) {
        let mut lines = relock(&self.0);
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
    }

    /// The last `n` lines (all of them when `n` is 0), oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = relock(&self.0);
        let skip = if n == 0 {
            0
        } else {
            lines.len().saturating_sub(n)
        };
        lines.iter().skip(skip).cloned().collect()
    }
}

/// Collects one formatted event, then hands it to the buffer and to stdout.
pub struct Tee {
    buffer: LogBuffer,
    pending: Vec<u8>,
}

impl Write for Tee {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.pending);
        for line in text.lines().filter(|l| !l.is_empty()) {
            self.buffer.push(line);
        }
        Stdout::global().write(&self.pending);
    }
}

/// Stdout as the subscriber writes it. On Lambda lines are written in place: a process
/// frozen between invocations must not hold them back. Elsewhere they collect in memory
/// and a thread of its own writes them every few milliseconds, so a request neither
/// waits for a write nor wakes a thread per line (a loaded local server spent a seventh
/// of its time writing its log).
enum Stdout {
    InPlace,
    Batched(Arc<Batch>),
}

#[derive(Default)]
struct Batch {
    lines: Mutex<Vec<u8>>,
    /// Signalled when lines arrive in an empty batch.
    arrived: Condvar,
    /// Held while a batch is written, so that batches reach stdout in order.
    writing: Mutex<()>,
}

/// How long the writer lets lines gather before writing them.
const GATHER: Duration = Duration::from_millis(5);

impl Stdout {
    fn global() -> &'static Stdout {
        static GLOBAL: OnceLock<Stdout> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            if on_lambda() {
                return Stdout::InPlace;
            }
            let batch = Arc::new(Batch::default());
            let writer = batch.clone();
            match std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || writer.write_forever())
            {
                Ok(_) => Stdout::Batched(batch),
                Err(_) => Stdout::InPlace,
            }
        })
    }

    fn write(&self, line: &[u8]) {
        match self {
            // A closed stdout has nowhere to report to.
            Stdout::InPlace => drop(std::io::stdout().write_all(line)),
            Stdout::Batched(batch) => {
                let mut lines = relock(&batch.lines);
                if lines.is_empty() {
                    batch.arrived.notify_one();
                }
                lines.extend_from_slice(line);
            }
        }
    }
}

impl Batch {
    fn write_forever(&self) {
        loop {
            {
                let lines = relock(&self.lines);
                let _waiting = self
                    .arrived
                    .wait_while(lines, |lines| lines.is_empty())
                    .unwrap_or_else(|e| e.into_inner());
            }
            std::thread::sleep(GATHER);
            self.write_out();
        }
    }

    fn write_out(&self) {
        let _writing = relock(&self.writing);
        let lines = std::mem::take(&mut *relock(&self.lines));
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&lines).and_then(|()| stdout.flush());
    }
}

fn relock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes every line logged so far to stdout: call it before the process exits.
pub fn flush() {
    if let Stdout::Batched(batch) = Stdout::global() {
        batch.write_out();
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = Tee;

    fn make_writer(&'a self) -> Self::Writer {
        Tee {
            buffer: self.clone(),
            pending: Vec::new(),
        }
    }
}

/// Installs the global subscriber (once; later calls do nothing). JSON when `json`,
/// human-readable otherwise; the level comes from `RUST_LOG` (default `info`).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogBuffer::global().clone())
        .with_ansi(false);
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    // Already installed (tests, or a second call): the first subscriber stays.
    drop(result);
}

/// Whether this process runs on AWS Lambda.
pub fn on_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines() {
        let buffer = LogBuffer::default();
        for i in 0..(KEPT_LINES + 3) {
            buffer.push(&format!("line {i}"));
        }
        assert_eq!(buffer.tail(0).len(), KEPT_LINES);
        assert_eq!(
            buffer.tail(2),
            vec![
                format!("line {}", KEPT_LINES + 1),
                format!("line {}", KEPT_LINES + 2)
            ]
        );
    }
}
