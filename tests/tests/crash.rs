//! Killing a writer mid-stream loses no acknowledged append (invariant 5).
//!
//! Each round starts `append_loop` on the same SQLite file, reads its acknowledgements,
//! SIGKILLs it at a point that varies per round (so the kill lands anywhere in the
//! append cycle), then reopens the file and checks that every acknowledged append is
//! there under the sequence it was acknowledged with, the global order is gapless, the
//! file passes SQLite's integrity check, and the store accepts new appends.
//!
//! A SIGKILL leaves the page cache intact, so this proves the commit protocol (nothing
//! acknowledged before the commit, nothing half-written after it); surviving a power cut
//! additionally relies on `synchronous = FULL`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_events::{EventStore, ExpectedVersion, StreamId};
use medlabel_tests::store_contract::{fresh_request, named};

const ROUNDS: usize = 4;

#[tokio::test]
async fn killed_writer_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let stream = StreamId::from_stored("crash".into());
    let mut acknowledged = Vec::new();

    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_append_loop"))
            .arg(&path)
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let wanted = 200 + 37 * round;
        for _ in 0..wanted {
            let line = lines.next().expect("append_loop exited early").unwrap();
            acknowledged.push(parse_ack(&line));
        }
        // Child::kill sends SIGKILL: no destructor, no flush, no clean close.
        child.kill().unwrap();
        child.wait().unwrap();
        // Acks printed after the last one read are still in the pipe; they count too.
        for line in lines {
            acknowledged.push(parse_ack(&line.unwrap()));
        }

        let store = SqliteEventStore::open(&path).unwrap();
        let events = store.read_stream(&stream, 1).await.unwrap();
        for (sequence, request_id) in &acknowledged {
            let event = events.get(*sequence as usize - 1).unwrap_or_else(|| {
                panic!("acknowledged sequence {sequence} lost in round {round}")
            });
            assert_eq!((&event.sequence, &event.request_id), (sequence, request_id));
        }
        // At most the one append in flight at the kill may exist unacknowledged.
        assert!(events.len() <= acknowledged.len() + 1);
        if events.len() > acknowledged.len() {
            // Keep the bookkeeping exact for the next round's check.
            let extra = events.last().unwrap();
            acknowledged.push((extra.sequence, extra.request_id.clone()));
        }

        let all = store.read_all(0, usize::MAX).await.unwrap();
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, e)| e.position == i as u64 + 1)
        );
        assert_eq!(store.head().await.unwrap(), all.len() as u64);
        let integrity: String = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");

        let version = events.len() as u64;
        let appended = store
            .append(
                &stream,
                ExpectedVersion::Exact(version),
                vec![named("after-kill")],
                &fresh_request(),
            )
            .await
            .unwrap();
        assert_eq!(appended.last_sequence, version + 1);
        let after = store.read_stream(&stream, version + 1).await.unwrap();
        acknowledged.push((after[0].sequence, after[0].request_id.clone()));
    }
    assert!(acknowledged.len() > ROUNDS * 200);
}

/// Parses `ack <sequence> <request_id>`.
fn parse_ack(line: &str) -> (u64, String) {
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["ack", sequence, request_id] => (sequence.parse().unwrap(), (*request_id).to_owned()),
        _ => panic!("unexpected line from append_loop: {line:?}"),
    }
}
