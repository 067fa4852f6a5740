//! Killing a writer mid-stream loses no acknowledged append and no blob it references
//! (invariant 5).
//!
//! Each round starts `append_loop` on the same SQLite file and blob folder, reads its
//! acknowledgements, SIGKILLs it at a point that varies per round (so the kill lands
//! anywhere in the put-then-append cycle), then reopens both and checks that every
//! acknowledged append is there under the sequence it was acknowledged with, every
//! recorded event's small blob (kept inline in the event database) reads back intact, the
//! global order is gapless, the file passes SQLite's integrity check, and the store
//! accepts new appends.
//!
//! A SIGKILL leaves the page cache intact, so this proves the commit protocol (nothing
//! acknowledged before the commit, nothing half-written after it, no blob commit lost
//! behind an append); surviving a power cut additionally relies on `synchronous = FULL`
//! for appends and on their fsync covering the unsynced blob commits before them (see
//! docs/event-store.md).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_events::{EventStore, ExpectedVersion};
use medlabel_tests::crash;
use medlabel_tests::store_contract::fresh_request;

const ROUNDS: usize = 4;

#[tokio::test]
async fn killed_writer_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let blobs_dir = dir.path().join("blobs");
    let stream = crash::stream();
    let mut acknowledged = Vec::new();

    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_append_loop"))
            .arg(&path)
            .arg(&blobs_dir)
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
        let blobs = FolderBlobStore::open_with_inline(&blobs_dir, &store).unwrap();
        let events = store.read_stream(&stream, 1).await.unwrap();
        for (sequence, request_id) in &acknowledged {
            let event = events.get(*sequence as usize - 1).unwrap_or_else(|| {
                panic!("acknowledged sequence {sequence} lost in round {round}")
            });
            assert_eq!((&event.sequence, &event.request_id), (sequence, request_id));
        }
        // Every recorded event's blob was put before its append, acknowledged or not.
        for event in &events {
            crash::assert_blob_intact(&blobs, event).await;
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
        let appended = crash::put_and_append(
            &store,
            &blobs,
            ExpectedVersion::Exact(version),
            &fresh_request(),
        )
        .await
        .unwrap();
        assert_eq!(appended.last_sequence, version + 1);
        let after = store.read_stream(&stream, version + 1).await.unwrap();
        crash::assert_blob_intact(&blobs, &after[0]).await;
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
