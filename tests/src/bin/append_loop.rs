//! Appends to a [`SqliteEventStore`] until killed, for the crash test.
//!
//! Usage: `append_loop <db-path> <round>`. Each append carries one event on the stream
//! `crash`, expects the version the previous append left (so a lost write would show
//! as a conflict), and uses request id `<round>-<n>`. After each acknowledged append it
//! prints `ack <sequence> <request_id>` and flushes, so whatever the parent has read was
//! acknowledged before the process died.

use std::io::Write;
use std::process::ExitCode;

use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_events::{EventStore, ExpectedVersion, StreamId};
use medlabel_tests::store_contract::named;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, round] = args.as_slice() else {
        eprintln!("usage: append_loop <db-path> <round>");
        return ExitCode::from(2);
    };
    match run(path, round).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("append_loop: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &str, round: &str) -> anyhow::Result<()> {
    let store = SqliteEventStore::open(path)?;
    let stream = StreamId::from_stored("crash".into());
    let mut version = store.stream_version(&stream).await?;
    let mut stdout = std::io::stdout().lock();
    for n in 0u64.. {
        let request_id = format!("{round}-{n}");
        let appended = store
            .append(
                &stream,
                ExpectedVersion::from_version(version),
                vec![named(format!("{round}.{n}"))],
                &request_id,
            )
            .await?;
        version = appended.last_sequence;
        writeln!(stdout, "ack {version} {request_id}")?;
        stdout.flush()?;
    }
    Ok(())
}
