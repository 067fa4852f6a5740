//! The embedded event store: one SQLite file, shared safely by several processes.
//!
//! Layout: `events` holds every event under its global `position` (the rowid, so the
//! global order is the table's own order) with `UNIQUE(stream, sequence)` guarding
//! per-stream order; `requests` maps each request id to the [`Appended`] it produced,
//! which is what makes retries idempotent.
//!
//! Appends commit in `BEGIN IMMEDIATE` transactions: taking the write lock up front
//! serialises writers (across processes too, through SQLite's file lock and the busy
//! timeout), so reading the request record, the stream version and the global head and
//! then inserting at `head + 1` cannot race, and positions stay gapless: a position is
//! only ever assigned by the one transaction holding the lock, and a rolled-back one
//! leaves nothing behind. Appends that arrive while another commits are committed
//! together, each in its own savepoint (group commit): one fsync serves them all, and
//! one that conflicts is rolled back alone. The file runs in WAL mode with `synchronous = FULL`, so a
//! commit returns only after the log is fsynced: an acknowledged append survives a
//! killed process and a power cut. Readers use their own connections and never wait
//! behind an append's fsync.
//!
//! The same file can also hold a folder blob store's small blobs (table `blobs`, see
//! [`crate::blob::fs::FolderBlobStore::open_with_inline`]), written on a second writer
//! connection with `synchronous = NORMAL`: such a commit only reaches the WAL, and the
//! next append's fsync of that WAL makes it durable too, so a small blob plus the event
//! that references it cost one fsync instead of three. Why that is safe is argued in
//! `docs/event-store.md` ("The embedded store: small blobs in the event database").
//!
//! SQLite calls block. Appends run on tokio's blocking pool, with the two writer
//! connections behind one mutex; an append can read the log's tail in the same trip
//! ([`EventStore::append_and_read`]). Reads use a few reader connections, each behind
//! its own mutex, in place when one is free and on the blocking pool when none is. Appends
//! made through this handle (or its clones) wake [`EventStore::wait_for_append`] at
//! once; appends from other processes are noticed by polling the head. Checkpoints
//! (copying the WAL into the database file) run on a thread of their own, not inside a
//! commit (see `checkpoint_in_background`).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{oneshot, watch};

use crate::event::{self, NewEvent, RecordedEvent, StreamId};
use crate::store::{Appended, EventStore, ExpectedVersion, StoreError, Tail, check_append};

/// Version of the table layout this build writes (`PRAGMA user_version`). Version 2
/// added `blobs`: a file that holds blobs must not be opened by a build that would not
/// look for them there.
const LAYOUT_VERSION: i64 = 2;

/// Read connections per handle (see [`Readers`]).
const READERS: usize = 4;

/// How long a connection waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Least time between two background checkpoints: each one fsyncs the database file.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(20);

/// WAL length (frames of one page) past which a checkpoint makes sure the WAL restarts:
/// SQLite's own automatic checkpoint threshold, about 4 MB.
const WAL_RESTART_FRAMES: u32 = 1000;

/// How often [`EventStore::wait_for_append`] looks for appends from other processes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

const LAYOUT: &str = "
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    sequence       INTEGER NOT NULL,
    timestamp_ms   INTEGER NOT NULL,
    actor          TEXT    NOT NULL,
    request_id     TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,
    UNIQUE (stream, sequence)
);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    result     TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    name  TEXT PRIMARY KEY,
    bytes BLOB NOT NULL
);
";

const COLUMNS: &str = "position, stream, sequence, timestamp_ms, actor, request_id, \
                       event_type, schema_version, payload";

/// An [`EventStore`] in a local SQLite file. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct SqliteEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Writers>,
    readers: Readers,
    /// Appends waiting for the writer, and whether a leader is committing them.
    pending: Mutex<Queue>,
    /// Highest position this handle has committed, to wake waiters without polling.
    appended: watch::Sender<u64>,
    /// Wakes the background checkpointer after each group commit.
    checkpoints: SyncSender<()>,
}

/// The connections that write, behind one lock: writers in this process take turns on
/// it instead of meeting SQLite's busy handler, which sleeps in millisecond steps.
struct Writers {
    /// `synchronous = FULL`: a commit returns once the WAL is fsynced. Appends use it.
    durable: Connection,
    /// `synchronous = NORMAL`: a commit writes the WAL without an fsync (checkpoints and
    /// WAL restarts still sync). Small blobs use it; the next durable commit's fsync of
    /// the same WAL file covers them.
    deferred: Connection,
}

/// The connections that read, each behind its own lock; a read takes whichever is free.
///
/// Several, not one, because a thread holding a connection can be put aside by the
/// scheduler mid-read: the studies folder's follower reads the log at the lowest CPU
/// priority, and with a single connection a request's read could queue behind it for
/// as long as the request handlers kept both cores busy (issue #14). In WAL mode readers
/// never block each other or the writer, so extra connections only cost their page
/// caches.
struct Readers {
    connections: Vec<Mutex<Connection>>,
    /// Which connection a read that found none free waits for, in turn.
    next: AtomicUsize,
}

impl Readers {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let connections = (0..READERS)
            .map(|_| connect(path, Synchronous::Full).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            connections,
            next: AtomicUsize::new(0),
        })
    }

    /// A free connection, if one is.
    fn try_any(&self) -> Option<MutexGuard<'_, Connection>> {
        self.connections
            .iter()
            .find_map(|connection| match connection.try_lock() {
                Ok(conn) => Some(conn),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            })
    }

    /// A free connection, or else the next one in turn once its read is done. Blocks.
    fn any(&self) -> MutexGuard<'_, Connection> {
        self.try_any().unwrap_or_else(|| {
            let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
            lock(&self.connections[turn])
        })
    }
}

impl Inner {
    /// Commits waiting appends, group after group, until none is left.
    fn lead_commits(&self) {
        // A panic must not leave the queue believing a leader is at work.
        struct Stepdown<'a>(&'a Mutex<Queue>);
        impl Drop for Stepdown<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    lock(self.0).leading = false;
                }
            }
        }
        let _stepdown = Stepdown(&self.pending);
        loop {
            let group = {
                let mut queue = lock(&self.pending);
                if queue.waiting.is_empty() {
                    queue.leading = false;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            commit_group(&mut lock(&self.writer).durable, group);
            // A wake-up already pending covers this commit too.
            let _ = self.checkpoints.try_send(());
        }
    }
}

impl std::fmt::Debug for SqliteEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEventStore").finish_non_exhaustive()
    }
}

impl SqliteEventStore {
    /// Opens the store at `path`, creating the file and its tables if needed.
    ///
    /// Creates the file and its folder when missing. Several handles, in one process or many, may open the same file: appends from all
    /// of them share one gapless global order. Blocks on file I/O (and, if another
    /// process holds the write lock, up to 30 s); call it at start-up or from a
    /// blocking context.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| {
                StoreError::Backend(format!("creating {}: {err}", parent.display()))
            })?;
        }
        let mut durable = connect(path, Synchronous::Full)?;
        prepare_layout(&mut durable)?;
        let deferred = connect(path, Synchronous::Normal)?;
        let readers = Readers::open(path)?;
        let head = query_head(&readers.any())?;
        // Checkpoints run on their own connection and thread (`checkpoint_in_background`),
        // not inside whichever commit crosses SQLite's automatic threshold.
        durable.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        deferred.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        let checkpointer = connect(path, Synchronous::Full)?;
        let (checkpoints, wake_ups) = mpsc::sync_channel(1);
        let inner = Arc::new(Inner {
            writer: Mutex::new(Writers { durable, deferred }),
            readers,
            pending: Mutex::new(Queue::default()),
            appended: watch::Sender::new(head),
            checkpoints,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_in_background(&checkpointer, &weak, &wake_ups))
            .map_err(|err| StoreError::Backend(format!("starting the checkpointer: {err}")))?;
        Ok(Self { inner })
    }

    /// Commits `batch` and, given `read_after = (after, limit)`, returns the log's tail
    /// after `after` read on the writer connection right after the commit.
    ///
    /// Group commit with a leader: the first append to find no leader becomes one and
    /// commits, on the blocking pool, everything waiting, group after group, until the
    /// queue is empty; appends arriving meanwhile only queue and wait for their answer.
    /// A group costs one transaction, one fsync, one tail read and one trip to the pool,
    /// however many appends it holds.
    async fn commit(
        &self,
        batch: Batch,
        read_after: Option<(u64, usize)>,
    ) -> Result<(Appended, Tail), StoreError> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = lock(&self.inner.pending);
            queue.waiting.push(Waiting {
                batch,
                read_after,
                reply,
            });
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            let inner = Arc::clone(&self.inner);
            // Not awaited: the leader answers every append, this one included, through
            // its reply channel.
            tokio::task::spawn_blocking(move || inner.lead_commits());
        }
        let (appended, tail) = answer
            .await
            .map_err(|_| StoreError::Backend("the group commit dropped an append".into()))??;
        if !appended.replayed {
            self.inner.appended.send_if_modified(|head| {
                let newer = appended.last_position > *head;
                if newer {
                    *head = appended.last_position;
                }
                newer
            });
        }
        Ok((appended, tail))
    }

    /// Runs a read on a reader connection: right here when one is free, on the
    /// blocking pool when other reads hold them all. The reads that keep a view
    /// caught up are short indexed queries on hot pages (tens of microseconds), cheaper
    /// than the two thread wake-ups of a trip to the pool, which dominated a loaded
    /// server's profile; a read that does wait for the disk is rare and brief in WAL mode,
    /// where readers never wait for a writer.
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if let Some(mut conn) = self.inner.readers.try_any() {
            return work(&mut conn);
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&mut inner.readers.any()))
            .await
            .map_err(|err| StoreError::Backend(format!("sqlite worker failed: {err}")))?
    }

    /// Stores a small blob's bytes under `name`, unless a blob of that name is stored.
    /// Blocks; call it from the blocking pool.
    ///
    /// Returns once the row is committed to the WAL but before it is fsynced: it becomes
    /// durable with the next append committed to this file, by any handle or process,
    /// because that append's fsync flushes the whole WAL file.
    pub(crate) fn put_blob(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut writers = lock(&self.inner.writer);
        let tx = writers
            .deferred
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("INSERT OR IGNORE INTO blobs (name, bytes) VALUES (?1, ?2)")?
            .execute(params![name, bytes])?;
        tx.commit()?;
        Ok(())
    }

    /// A stored blob's bytes, or `None`. Blocks.
    pub(crate) fn blob(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .inner
            .readers
            .any()
            .prepare_cached("SELECT bytes FROM blobs WHERE name = ?1")?
            .query_row([name], |row| row.get(0))
            .optional()?)
    }

    /// A stored blob's size in bytes, or `None`. Blocks.
    pub(crate) fn blob_size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let size: Option<i64> = self
            .inner
            .readers
            .any()
            .prepare_cached("SELECT length(bytes) FROM blobs WHERE name = ?1")?
            .query_row([name], |row| row.get(0))
            .optional()?;
        size.map(|size| stored_u64("blob size", size)).transpose()
    }

    /// Every stored blob's name and size. Blocks.
    pub(crate) fn blob_sizes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let reader = self.inner.readers.any();
        let mut statement = reader.prepare_cached("SELECT name, length(bytes) FROM blobs")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.map(|row| {
            let (name, size): (String, i64) = row?;
            Ok((name, stored_u64("blob size", size)?))
        })
        .collect()
    }

    /// Deletes a stored blob (absent is not an error). Blocks.
    pub(crate) fn delete_blob(&self, name: &str) -> Result<(), StoreError> {
        lock(&self.inner.writer)
            .deferred
            .prepare_cached("DELETE FROM blobs WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }
}

/// Locks a connection or the queue of waiting appends. A panic while a connection was
/// held dropped its open transaction (rolling it back) before the lock was poisoned, so
/// the connection is still sound; the queue is only ever pushed to or taken whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// When a connection's commits reach the disk (`PRAGMA synchronous`).
#[derive(Clone, Copy)]
enum Synchronous {
    /// Every commit fsyncs the WAL before it returns.
    Full,
    /// Commits only write the WAL; checkpoints and WAL restarts still fsync.
    Normal,
}

/// Copies the WAL into the database file after commits, at most once per
/// [`CHECKPOINT_PAUSE`], until the store is dropped.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses its threshold, and
/// every append queued behind that commit waits for it: a few milliseconds of copying
/// and an fsync of the database, the largest part of a loaded server's p99. Here a
/// passive checkpoint copies frames while appends go on. The WAL can only start over
/// from its beginning when a checkpoint has copied every frame and no commit came in
/// between, which steady load never allows, so once it holds [`WAL_RESTART_FRAMES`] a
/// second pass runs holding the writers' lock: it only copies what arrived during the
/// first, and the next commit restarts the WAL.
fn checkpoint_in_background(conn: &Connection, inner: &Weak<Inner>, wake_ups: &Receiver<()>) {
    while wake_ups.recv().is_ok() {
        match passive_checkpoint(conn) {
            Ok(frames) if frames >= WAL_RESTART_FRAMES => {
                let Some(inner) = inner.upgrade() else { return };
                let _writers = lock(&inner.writer);
                if let Err(err) = passive_checkpoint(conn) {
                    tracing::warn!(%err, "WAL checkpoint failed");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "WAL checkpoint failed"),
        }
        std::thread::sleep(CHECKPOINT_PAUSE);
    }
}

/// Copies what it can of the WAL into the database without waiting for anyone;
/// returns the number of frames the WAL holds.
fn passive_checkpoint(conn: &Connection) -> Result<u32, rusqlite::Error> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

/// Opens one connection with the durability and sharing settings every handle needs.
fn connect(path: &Path, sync: Synchronous) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "{} cannot use write-ahead logging (journal mode {mode})",
            path.display()
        )));
    }
    // The bundled SQLite reads bound values while planning (STAT4, a bound LIMIT) and
    // then recompiles a cached statement whenever those bindings change: every tail
    // read re-parsed its SELECT, a fifth of a loaded server's time. The query
    // planner stability guarantee keeps one plan per statement.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.execute_batch(match sync {
        Synchronous::Full => "PRAGMA synchronous = FULL;",
        Synchronous::Normal => "PRAGMA synchronous = NORMAL;",
    })?;
    Ok(conn)
}

/// Creates the tables in a fresh file and refuses files laid out by a newer build.
fn prepare_layout(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > LAYOUT_VERSION {
        return Err(StoreError::Corrupt(format!(
            "event store layout version {version} is newer than this build's {LAYOUT_VERSION}"
        )));
    }
    if version < LAYOUT_VERSION {
        tx.execute_batch(LAYOUT)?;
        tx.pragma_update(None, "user_version", LAYOUT_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

fn query_head(conn: &Connection) -> Result<u64, StoreError> {
    let head: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM events")?
        .query_row([], |row| row.get(0))?;
    stored_u64("position", head)
}

/// The stream's version (its last sequence; 0 when it has none).
fn stream_version_in(conn: &Connection, stream: &StreamId) -> Result<u64, StoreError> {
    let version: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(sequence), 0) FROM events WHERE stream = ?1")?
        .query_row([stream.as_str()], |row| row.get(0))?;
    stored_u64("sequence", version)
}

/// Up to `limit` events after position `after`, in order.
fn read_tail(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    read_events(
        conn,
        &format!("SELECT {COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"),
        params![bound(after), limit],
    )
}

/// Validates and encodes one append's arguments off the writer.
fn encode_batch(
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    request_id: &str,
) -> Result<Batch, StoreError> {
    let payloads = check_append(&events, request_id)?;
    let rows = events
        .iter()
        .zip(payloads)
        .map(|(new, payload)| {
            let actor = serde_json::to_string(&new.actor)
                .map_err(|err| StoreError::Backend(format!("encoding the actor: {err}")))?;
            Ok((new.timestamp_ms, actor, new.event.event_type(), payload))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Batch {
        stream: stream.clone(),
        expected,
        request_id: request_id.to_owned(),
        rows,
    })
}

/// Appends waiting for the group commit.
#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A leader is committing (see [`SqliteEventStore::commit`]).
    leading: bool,
}

/// An append waiting for the group commit, with where to send its result.
struct Waiting {
    batch: Batch,
    /// `(after, limit)`: the caller also wants the log's tail after `after`.
    read_after: Option<(u64, usize)>,
    reply: oneshot::Sender<Result<(Appended, Tail), StoreError>>,
}

/// The validated, pre-encoded arguments of one append.
struct Batch {
    stream: StreamId,
    expected: ExpectedVersion,
    request_id: String,
    /// Per event: timestamp, actor JSON, type name, payload JSON.
    rows: Vec<(i64, String, &'static str, String)>,
}

/// Commits a group of appends in one transaction. Each append runs in its own
/// savepoint, so one that conflicts or fails is rolled back alone and reported to its
/// caller; if the commit itself fails, every caller in the group gets the error. The
/// tails the callers asked for come from one read after the commit.
fn commit_group(conn: &mut Connection, group: Vec<Waiting>) {
    let mut batches = Vec::with_capacity(group.len());
    let mut callers = Vec::with_capacity(group.len());
    for waiting in group {
        batches.push(waiting.batch);
        callers.push((waiting.read_after, waiting.reply));
    }
    let outcome = (|| -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(batches.len());
        for batch in batches {
            let savepoint = tx.savepoint()?;
            let result = append_in(&savepoint, batch);
            if result.is_ok() {
                savepoint.commit()?;
            }
            results.push(result);
        }
        tx.commit()?;
        Ok(results)
    })();
    let results = match outcome {
        Ok(results) => results,
        Err(err) => {
            let message = err.to_string();
            for (_, reply) in callers {
                let _ = reply.send(Err(StoreError::Backend(message.clone())));
            }
            return;
        }
    };
    // Overlapping tails (callers of one view sit near the head) come from one read;
    // a view far behind gets its own.
    let mut ranges: Vec<(u64, u64)> = callers
        .iter()
        .zip(&results)
        .filter(|(_, result)| result.is_ok())
        .filter_map(|((read_after, _), _)| *read_after)
        .map(|(after, limit)| (after, after.saturating_add(limit as u64)))
        .collect();
    ranges.sort_unstable();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (after, end) in ranges {
        match spans.last_mut() {
            Some(span) if after <= span.1 => span.1 = span.1.max(end),
            _ => spans.push((after, end)),
        }
    }
    // One shared read per span: the callers' tails are views into it, not copies.
    let tails: Vec<_> = spans
        .into_iter()
        .map(|(from, to)| {
            let limit = usize::try_from(to - from).unwrap_or(usize::MAX);
            let events = read_tail(conn, from, limit).map(Arc::<[RecordedEvent]>::from);
            ((from, to), events)
        })
        .collect();
    for ((read_after, reply), result) in callers.into_iter().zip(results) {
        let answer = result.and_then(|appended| {
            let Some((after, limit)) = read_after else {
                return Ok((appended, Vec::new().into()));
            };
            let (_, events) = tails
                .iter()
                .find(|((from, to), _)| (*from..=*to).contains(&after))
                .expect("every tail asked for lies in a span that was read");
            let events = events.as_ref().map_err(|err| {
                StoreError::Backend(format!("reading back after a committed append: {err}"))
            })?;
            Ok((appended, Tail::after(events.clone(), after, limit)))
        });
        let _ = reply.send(answer);
    }
}

/// One append inside the group's transaction (`tx` sees the group's earlier appends).
fn append_in(tx: &Connection, batch: Batch) -> Result<Appended, StoreError> {
    let earlier: Option<String> = tx
        .prepare_cached("SELECT result FROM requests WHERE request_id = ?1")?
        .query_row([&batch.request_id], |row| row.get(0))
        .optional()?;
    if let Some(earlier) = earlier {
        let mut appended: Appended = serde_json::from_str(&earlier)
            .map_err(|err| StoreError::Corrupt(format!("request {}: {err}", batch.request_id)))?;
        appended.replayed = true;
        return Ok(appended);
    }

    let version = stream_version_in(tx, &batch.stream)?;
    if !batch.expected.matches(version) {
        return Err(StoreError::Conflict {
            stream: batch.stream,
            expected: batch.expected,
            actual: version,
        });
    }
    let head = query_head(tx)?;

    let count = batch.rows.len() as u64;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (position, stream, sequence, timestamp_ms, actor, request_id, \
             event_type, schema_version, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for (offset, (timestamp_ms, actor, event_type, payload)) in (1u64..).zip(&batch.rows) {
            insert.execute(params![
                head + offset,
                batch.stream.as_str(),
                version + offset,
                timestamp_ms,
                actor,
                batch.request_id,
                event_type,
                event::SCHEMA_VERSION,
                payload,
            ])?;
        }
    }
    let appended = Appended {
        stream: batch.stream,
        first_sequence: version + 1,
        last_sequence: version + count,
        first_position: head + 1,
        last_position: head + count,
        replayed: false,
    };
    let record = serde_json::to_string(&appended)
        .map_err(|err| StoreError::Backend(format!("encoding the request record: {err}")))?;
    tx.prepare_cached("INSERT INTO requests (request_id, result) VALUES (?1, ?2)")?
        .execute(params![batch.request_id, record])?;
    Ok(appended)
}

/// Runs a query whose rows are events and decodes them.
fn read_events(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map(params, |row| {
        Ok(StoredRow {
            position: row.get(0)?,
            stream: row.get(1)?,
            sequence: row.get(2)?,
            timestamp_ms: row.get(3)?,
            actor: row.get(4)?,
            request_id: row.get(5)?,
            event_type: row.get(6)?,
            schema_version: row.get(7)?,
            payload: row.get(8)?,
        })
    })?;
    rows.map(|row| row?.decode()).collect()
}

/// One `events` row as stored, before its JSON is decoded.
struct StoredRow {
    position: i64,
    stream: String,
    sequence: i64,
    timestamp_ms: i64,
    actor: String,
    request_id: String,
    event_type: String,
    schema_version: i64,
    payload: String,
}

impl StoredRow {
    fn decode(self) -> Result<RecordedEvent, StoreError> {
        let at = |what: &str, err: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!(
                "{what} of event at position {}: {err}",
                self.position
            ))
        };
        let schema_version =
            u16::try_from(self.schema_version).map_err(|err| at("schema version", &err))?;
        let position = stored_u64("position", self.position)?;
        let (event, actor) =
            event::decode_or_quarantine(position, &self.stream, &self.payload, &self.actor);
        Ok(RecordedEvent {
            stream: StreamId::from_stored(self.stream),
            sequence: stored_u64("sequence", self.sequence)?,
            position,
            timestamp_ms: self.timestamp_ms,
            actor,
            request_id: self.request_id,
            event_type: self.event_type,
            schema_version,
            event,
        })
    }
}

/// Positions and sequences are stored as SQLite's signed integers but never negative.
fn stored_u64(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what} {value}")))
}

/// Clamps a caller's bound into SQLite's integer range (no stored value exceeds it).
fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        match err {
            // A column holding the wrong type is damage, not a backend failure.
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(err.to_string()),
            other => StoreError::Backend(format!("sqlite: {other}")),
        }
    }
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        request_id: &str,
    ) -> Result<Appended, StoreError> {
        let batch = encode_batch(stream, expected, events, request_id)?;
        Ok(self.commit(batch, None).await?.0)
    }

    async fn append_and_read(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        request_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Appended, Tail), StoreError> {
        let batch = encode_batch(stream, expected, events, request_id)?;
        self.commit(batch, Some((after, limit))).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_sequence: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.as_str().to_owned();
        self.read(move |conn| {
            read_events(
                conn,
                &format!(
                    "SELECT {COLUMNS} FROM events WHERE stream = ?1 AND sequence >= ?2 \
                     ORDER BY sequence"
                ),
                params![stream, bound(from_sequence)],
            )
        })
        .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let stream = stream.clone();
        self.read(move |conn| stream_version_in(conn, &stream))
            .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(move |conn| read_tail(conn, after, limit)).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.read(|conn| query_head(conn)).await
    }

    async fn wait_for_append(&self, after: u64, timeout: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut appended = self.inner.appended.subscribe();
        loop {
            // The file's head covers appends from other handles and processes.
            if self.head().await? > after {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let nap = POLL_INTERVAL.min(deadline - now);
            // The sender lives as long as `self`, so `wait_for` only ends on an append.
            if tokio::time::timeout(nap, appended.wait_for(|&head| head > after))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
    }
}
