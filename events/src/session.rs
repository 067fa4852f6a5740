//! Upload sessions as events: MONAI Label's `/session/` cache, made durable and private.
//!
//! A session is one uploaded file (a volume a client wants to run inference on without
//! adding it to the datastore) with an expiry. Each session is its own stream,
//! `session/<id>`: `SessionCreated` (the blob is stored first), `SessionAccessed` each
//! time it is used with `update_ts`, and `SessionRemoved` when it is deleted, expires,
//! or is swept. The state of a session is the fold of its stream ([`fold`]), so any
//! process (a Lambda instance, the local server) reads the same answer from the log.
//!
//! Unlike MONAI Label (issue #1829), a session belongs to the user who created it (the
//! `actor` of its `SessionCreated` event): anyone else gets "not found", exactly as if
//! the id did not exist, so ids cannot be probed.
//!
//! Expiry follows MONAI Label: `min(expiry > 0 ? expiry : max, max)` seconds after the
//! last access, with `max` the configured ceiling (values ≤ 60 mean 3600). Expired
//! sessions are removed lazily on access and by [`Sessions::sweep`], whose request ids
//! are derived from the session and its stream version, so concurrent sweepers record
//! each removal once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::blob::{BlobError, BlobReader, BlobRef, BlobStore};
use crate::clock::Clock;
use crate::datastore::WriteContext;
use crate::event::{Actor, Event, Info, NewEvent, RecordedEvent, StreamId};
use crate::id::{Extension, RunId, split_file_name};
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// MONAI Label's default and fallback session lifetime (`MONAI_LABEL_SESSION_EXPIRY`).
pub const DEFAULT_MAX_EXPIRY_S: u64 = 3600;

/// How many times an update re-reads a session after losing a version race.
const MAX_CONFLICT_RETRIES: usize = 16;

/// Events read per batch while catching the sweep index up with the log.
const INDEX_BATCH: usize = 1000;

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Unknown, removed, expired, or another user's session: deliberately one error.
    #[error("Session ({0}) Not Found")]
    NotFound(String),
    #[error("gave up after {0} version conflicts; try again")]
    Contended(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

pub type Result<T, E = SessionError> = std::result::Result<T, E>;

/// A live session, as folded from its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: RunId,
    /// Who created it; only this user may see, use or remove it.
    pub owner: Actor,
    /// The uploaded file's base name (the client's directories are dropped).
    pub file_name: String,
    pub ext: Extension,
    pub blob: BlobRef,
    /// The form fields sent with the upload (MONAI Label's `meta`).
    pub meta: Info,
    pub expiry_s: u64,
    pub created_ms: i64,
    pub last_access_ms: i64,
    /// The stream version this state was folded at.
    pub version: u64,
}

impl Session {
    /// When the session expires unless it is accessed again.
    pub fn expires_at_ms(&self) -> i64 {
        self.last_access_ms
            .saturating_add((self.expiry_s as i64).saturating_mul(1000))
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        now_ms > self.expires_at_ms()
    }
}

/// The lifetime MONAI Label gives a session asked to live `requested_s` seconds under a
/// ceiling of `max_s` seconds.
pub fn effective_expiry(requested_s: i64, max_s: u64) -> u64 {
    let max = if max_s <= 60 {
        DEFAULT_MAX_EXPIRY_S
    } else {
        max_s
    };
    if requested_s > 0 {
        (requested_s as u64).min(max)
    } else {
        max
    }
}

/// Folds a session stream: `None` if it was never created or has been removed.
pub fn fold(events: &[RecordedEvent]) -> Option<Session> {
    let mut session: Option<Session> = None;
    for recorded in events {
        match &recorded.event {
            Event::SessionCreated {
                session: id,
                name,
                ext,
                blob,
                meta,
                expiry_s,
            } => {
                session = Some(Session {
                    id: id.clone(),
                    owner: recorded.actor.clone(),
                    file_name: name.clone(),
                    ext: ext.clone(),
                    blob: blob.clone(),
                    meta: meta.clone(),
                    expiry_s: *expiry_s,
                    created_ms: recorded.timestamp_ms,
                    last_access_ms: recorded.timestamp_ms,
                    version: recorded.sequence,
                });
            }
            Event::SessionAccessed { .. } => {
                if let Some(state) = session.as_mut() {
                    state.last_access_ms = recorded.timestamp_ms;
                    state.version = recorded.sequence;
                }
            }
            Event::SessionRemoved { .. } => session = None,
            _ => {}
        }
    }
    session
}

/// When each live session was last touched, for sweeping without reading every stream.
#[derive(Default)]
struct SweepIndex {
    position: u64,
    /// Session id → (last access in ms, lifetime in s).
    live: BTreeMap<RunId, (i64, u64)>,
}

/// The session service over an event store and a blob store.
pub struct Sessions {
    store: Arc<dyn EventStore>,
    blobs: Arc<dyn BlobStore>,
    clock: Arc<dyn Clock>,
    max_expiry_s: u64,
    index: Mutex<SweepIndex>,
}

impl Sessions {
    /// `max_expiry_s` is MONAI Label's `MONAI_LABEL_SESSION_EXPIRY` (≤ 60 means 3600).
    pub fn new(
        store: Arc<dyn EventStore>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        max_expiry_s: u64,
    ) -> Self {
        Self {
            store,
            blobs,
            clock,
            max_expiry_s,
            index: Mutex::new(SweepIndex::default()),
        }
    }

    /// Stores `file` and records a new session owned by `ctx.actor`. `file_name` is the
    /// name the client sent (a full path is reduced to its base name); `requested_expiry_s`
    /// is the `expiry` query parameter. A retried request id returns the session the
    /// first attempt created.
    pub async fn create(
        &self,
        ctx: &WriteContext,
        file: &Path,
        file_name: &str,
        meta: Info,
        requested_expiry_s: i64,
    ) -> Result<Session> {
        let base = file_name
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(file_name)
            .to_owned();
        // The extension only labels the blob for readers; a name it cannot be parsed
        // from still makes a session.
        let ext = split_file_name(&base)
            .map(|(_, ext)| ext)
            .unwrap_or_else(|_| Extension::parse("").expect("empty extension is valid"));
        let blob = self.blobs.put_file(file, &ext).await?;
        let id = RunId::random();
        let event = Event::SessionCreated {
            session: id.clone(),
            name: base,
            ext,
            blob,
            meta,
            expiry_s: effective_expiry(requested_expiry_s, self.max_expiry_s),
        };
        let appended = self
            .store
            .append(
                &StreamId::session(&id),
                ExpectedVersion::NoStream,
                vec![self.stamp(event, &ctx.actor)],
                &ctx.request_id,
            )
            .await?;
        let events = self.store.read_stream(&appended.stream, 1).await?;
        fold(&events).ok_or_else(|| SessionError::NotFound(appended.stream.to_string()))
    }

    /// The session `id` if `caller` owns it (the same authenticated subject; the same
    /// user name with auth off) and it is live. An expired session is removed on the
    /// way (as MONAI Label removes a session whose file vanished).
    pub async fn get(&self, id: &RunId, caller: &Actor) -> Result<Session> {
        let session = self.load(id).await?;
        if !session.owner.same_caller(caller) {
            return Err(SessionError::NotFound(id.to_string()));
        }
        if session.is_expired(self.clock.now_ms()) {
            self.expire(&session).await?;
            return Err(SessionError::NotFound(id.to_string()));
        }
        Ok(session)
    }

    /// Records an access (`update_ts`), extending the session's life.
    pub async fn touch(&self, ctx: &WriteContext, id: &RunId) -> Result<Session> {
        self.update(
            ctx,
            id,
            Event::SessionAccessed {
                session: id.clone(),
            },
        )
        .await?;
        self.get(id, &ctx.actor).await
    }

    /// Removes the session and returns its last state.
    pub async fn remove(&self, ctx: &WriteContext, id: &RunId) -> Result<Session> {
        self.update(
            ctx,
            id,
            Event::SessionRemoved {
                session: id.clone(),
            },
        )
        .await
    }

    /// Streams the session's file.
    pub async fn open(&self, session: &Session) -> Result<BlobReader> {
        Ok(self.blobs.get(&session.blob).await?)
    }

    /// Removes every expired session; returns the ids removed by this call.
    pub async fn sweep(&self) -> Result<Vec<RunId>> {
        let now = self.clock.now_ms();
        let due: Vec<RunId> = {
            let mut index = self.index.lock().await;
            self.catch_up(&mut index).await?;
            index
                .live
                .iter()
                .filter(|(_, (last, expiry_s))| now > last + (*expiry_s as i64) * 1000)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let mut removed = Vec::new();
        for id in due {
            // Re-read: another process may have touched or removed it since.
            let Ok(session) = self.load(&id).await else {
                continue;
            };
            if session.is_expired(now) && self.expire(&session).await? {
                removed.push(id);
            }
        }
        Ok(removed)
    }

    async fn catch_up(&self, index: &mut SweepIndex) -> Result<()> {
        loop {
            let batch = self.store.read_all(index.position, INDEX_BATCH).await?;
            let Some(last) = batch.last() else {
                return Ok(());
            };
            index.position = last.position;
            for recorded in &batch {
                match &recorded.event {
                    Event::SessionCreated {
                        session, expiry_s, ..
                    } => {
                        index
                            .live
                            .insert(session.clone(), (recorded.timestamp_ms, *expiry_s));
                    }
                    Event::SessionAccessed { session } => {
                        if let Some((last, _)) = index.live.get_mut(session) {
                            *last = recorded.timestamp_ms;
                        }
                    }
                    Event::SessionRemoved { session } => {
                        index.live.remove(session);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Records the removal of an expired session under a request id derived from its
    /// state, so that two sweepers record it once. `false` if someone else did it first.
    async fn expire(&self, session: &Session) -> Result<bool> {
        let request_id = format!("session-expired:{}:{}", session.id, session.version);
        let result = self
            .store
            .append(
                &StreamId::session(&session.id),
                ExpectedVersion::Exact(session.version),
                vec![self.stamp(
                    Event::SessionRemoved {
                        session: session.id.clone(),
                    },
                    &session.owner,
                )],
                &request_id,
            )
            .await;
        match result {
            Ok(appended) => Ok(!appended.replayed),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Appends `event` to a live session the caller owns, re-reading on conflicts.
    /// Returns the state the event was decided against.
    async fn update(&self, ctx: &WriteContext, id: &RunId, event: Event) -> Result<Session> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let session = self.get(id, &ctx.actor).await?;
            match self
                .store
                .append(
                    &StreamId::session(id),
                    ExpectedVersion::Exact(session.version),
                    vec![self.stamp(event.clone(), &ctx.actor)],
                    &ctx.request_id,
                )
                .await
            {
                Ok(_) => return Ok(session),
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(SessionError::Contended(MAX_CONFLICT_RETRIES))
    }

    async fn load(&self, id: &RunId) -> Result<Session> {
        let events = self.store.read_stream(&StreamId::session(id), 1).await?;
        fold(&events).ok_or_else(|| SessionError::NotFound(id.to_string()))
    }

    fn stamp(&self, event: Event, actor: &Actor) -> NewEvent {
        NewEvent {
            event,
            actor: actor.clone(),
            timestamp_ms: self.clock.now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::fs::FolderBlobStore;
    use crate::clock::ManualClock;
    use crate::id::UserName;
    use crate::store::sqlite::SqliteEventStore;

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        store: Arc<SqliteEventStore>,
        sessions: Sessions,
        file: std::path::PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteEventStore::open(dir.path().join("events.db")).unwrap());
        let blobs =
            Arc::new(FolderBlobStore::open_with_inline(dir.path().join("blobs"), &store).unwrap());
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let file = dir.path().join("upload.bin");
        std::fs::write(&file, b"voxels").unwrap();
        let sessions = Sessions::new(store.clone(), blobs, clock.clone(), 3600);
        Fixture {
            _dir: dir,
            clock,
            store,
            sessions,
            file,
        }
    }

    fn ctx(user: &str, request: &str) -> WriteContext {
        WriteContext::new(
            Actor {
                user: UserName::parse(user).unwrap(),
                client_id: None,
                subject: None,
            },
            request,
        )
    }

    #[test]
    fn expiry_follows_monai_label() {
        assert_eq!(effective_expiry(0, 3600), 3600);
        assert_eq!(effective_expiry(-5, 3600), 3600);
        assert_eq!(effective_expiry(120, 3600), 120);
        assert_eq!(effective_expiry(7200, 3600), 3600);
        assert_eq!(effective_expiry(100, 30), 100);
        assert_eq!(effective_expiry(0, 60), 3600);
    }

    #[tokio::test]
    async fn sessions_are_private_to_their_owner() {
        let f = fixture();
        let made = f
            .sessions
            .create(
                &ctx("alice", "r1"),
                &f.file,
                "/home/a/ct.nii.gz",
                Info::new(),
                0,
            )
            .await
            .unwrap();
        assert_eq!(made.file_name, "ct.nii.gz");
        assert_eq!(made.ext.as_str(), ".nii.gz");
        let alice = ctx("alice", "-").actor;
        let bob = ctx("bob", "-").actor;
        assert!(f.sessions.get(&made.id, &alice).await.is_ok());
        assert!(matches!(
            f.sessions.get(&made.id, &bob).await,
            Err(SessionError::NotFound(_))
        ));
        let head = f.store.head().await.unwrap();
        assert!(
            f.sessions
                .remove(&ctx("bob", "r2"), &made.id)
                .await
                .is_err()
        );
        assert_eq!(
            f.store.head().await.unwrap(),
            head,
            "bob's remove recorded something"
        );
        f.sessions
            .remove(&ctx("alice", "r3"), &made.id)
            .await
            .unwrap();
        assert!(f.sessions.get(&made.id, &alice).await.is_err());
    }

    #[tokio::test]
    async fn an_authenticated_session_belongs_to_its_subject_not_its_name() {
        let f = fixture();
        let mut owner = ctx("alice", "s1");
        owner.actor.subject = Some("https://idp#1".into());
        let made = f
            .sessions
            .create(&owner, &f.file, "ct.nrrd", Info::new(), 0)
            .await
            .unwrap();
        assert!(f.sessions.get(&made.id, &owner.actor).await.is_ok());
        // Another account with the same name, and the unauthenticated `alice`.
        let mut namesake = owner.actor.clone();
        namesake.subject = Some("https://idp#2".into());
        assert!(f.sessions.get(&made.id, &namesake).await.is_err());
        assert!(
            f.sessions
                .get(&made.id, &ctx("alice", "-").actor)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_retried_create_returns_the_first_session() {
        let f = fixture();
        let first = f
            .sessions
            .create(&ctx("admin", "same"), &f.file, "a.nrrd", Info::new(), 0)
            .await
            .unwrap();
        let head = f.store.head().await.unwrap();
        let again = f
            .sessions
            .create(&ctx("admin", "same"), &f.file, "a.nrrd", Info::new(), 0)
            .await
            .unwrap();
        assert_eq!(first.id, again.id);
        assert_eq!(f.store.head().await.unwrap(), head);
    }

    #[tokio::test]
    async fn sessions_expire_after_their_last_access_and_are_swept() {
        let f = fixture();
        let admin = Actor::admin();
        let short = f
            .sessions
            .create(&ctx("admin", "a"), &f.file, "a.nrrd", Info::new(), 100)
            .await
            .unwrap();
        let long = f
            .sessions
            .create(&ctx("admin", "b"), &f.file, "b.nrrd", Info::new(), 1000)
            .await
            .unwrap();
        f.clock.advance_ms(90_000);
        f.sessions
            .touch(&ctx("admin", "c"), &short.id)
            .await
            .unwrap();
        f.clock.advance_ms(90_000);
        // 180 s after creation, 90 s after the touch: still alive.
        assert!(f.sessions.get(&short.id, &admin).await.is_ok());
        assert!(f.sessions.sweep().await.unwrap().is_empty());
        f.clock.advance_ms(20_000);
        assert_eq!(f.sessions.sweep().await.unwrap(), vec![short.id.clone()]);
        assert!(f.sessions.get(&short.id, &admin).await.is_err());
        assert!(f.sessions.get(&long.id, &admin).await.is_ok());
        // Sweeping again records nothing.
        let head = f.store.head().await.unwrap();
        assert!(f.sessions.sweep().await.unwrap().is_empty());
        assert_eq!(f.store.head().await.unwrap(), head);
    }
}
