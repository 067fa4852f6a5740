//! Puts blobs and appends to the embedded backend until killed, for the crash test.
//!
//! Usage: `append_loop <db-path> <blobs-dir> <round>`. Each step puts a small blob
//! (stored inline in the event database) and appends one event referencing it on the
//! stream `crash` (see [`medlabel_tests::crash`]), expecting the version the previous
//! append left (so a lost write would show as a conflict), with request id `<round>-<n>`.
//! After each acknowledged append it prints `ack <sequence> <request_id>` and flushes, so
//! whatever the parent has read was acknowledged before the process died.

use std::io::Write;
use std::process::ExitCode;

use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_events::{EventStore, ExpectedVersion};
use medlabel_tests::crash;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, blobs, round] = args.as_slice() else {
        eprintln!("usage: append_loop <db-path> <blobs-dir> <round>");
        return ExitCode::from(2);
    };
    match run(path, blobs, round).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("append_loop: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &str, blobs: &str, round: &str) -> anyhow::Result<()> {
    let store = SqliteEventStore::open(path)?;
    let blobs = FolderBlobStore::open_with_inline(blobs, &store)?;
    let mut version = store.stream_version(&crash::stream()).await?;
    let mut stdout = std::io::stdout().lock();
    for n in 0u64.. {
        let request_id = format!("{round}-{n}");
        let expected = ExpectedVersion::from_version(version);
        let appended = crash::put_and_append(&store, &blobs, expected, &request_id).await?;
        version = appended.last_sequence;
        writeln!(stdout, "ack {version} {request_id}")?;
        stdout.flush()?;
    }
    Ok(())
}
