//! Upload sessions as events: MONAI Label's `/session/` cache, made durable and private.
//!
//! A session is one uploaded file (a volume a client wants to run inference on without
//! adding it to the datastore) with an expiry. Each session is its own stream,
//! `session/<id>`: `SessionCreated` (the blob is stored first), `SessionAccessed` each
//! time it is used with `update_ts`, and `SessionRemoved` when it is deleted, expires,
//! or is swept. The sessions are a fold of those events ([`SessionsView`]) and every
//! write is a pure decision ([`decide`]) appended at the version it saw, as for the
//! datastore (`crate::decision`), so any process (a Lambda instance, the local server)
//! reads the same answer from the log.
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

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::blob::{BlobError, BlobReader, BlobRef, BlobStore};
use crate::clock::Clock;
use crate::datastore::WriteContext;
use crate::decision::{self, Decision, WriteError};
use crate::event::{Actor, Event, Info, RecordedEvent, StreamId};
use crate::id::{Extension, RunId, split_file_name};
use crate::projection::{Projected, Projection};
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// MONAI Label's default and fallback session lifetime (`MONAI_LABEL_SESSION_EXPIRY`).
pub const DEFAULT_MAX_EXPIRY_S: u64 = 3600;

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Unknown, removed, expired, or another user's session: deliberately one error.
    #[error("Session ({0}) Not Found")]
    NotFound(String),
    #[error("gave up after {0} version conflicts; try again")]
    Contended(usize),
    #[error("request id {0:?} was already used for a different write")]
    RequestIdReused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

impl WriteError for SessionError {
    fn contended(attempts: usize) -> Self {
        Self::Contended(attempts)
    }
    fn request_id_reused(request_id: &str) -> Self {
        Self::RequestIdReused(request_id.to_owned())
    }
}

pub type Result<T, E = SessionError> = std::result::Result<T, E>;

/// A live session, as folded from its stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// The live sessions, folded from the log; a removed session leaves only its stream's
/// version behind (a removed id is never reused, but its version still counts).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionsView {
    position: u64,
    live: HashMap<RunId, Session>,
    versions: HashMap<RunId, u64>,
}

impl Projection for SessionsView {
    fn position(&self) -> u64 {
        self.position
    }

    fn apply(&mut self, recorded: &RecordedEvent) {
        self.position = recorded.position;
        let ts = recorded.timestamp_ms;
        match &recorded.event {
            Event::SessionCreated {
                session,
                name,
                ext,
                blob,
                meta,
                expiry_s,
            } => {
                self.versions.insert(session.clone(), recorded.sequence);
                self.live.insert(
                    session.clone(),
                    Session {
                        id: session.clone(),
                        owner: recorded.actor.clone(),
                        file_name: name.clone(),
                        ext: ext.clone(),
                        blob: blob.clone(),
                        meta: meta.clone(),
                        expiry_s: *expiry_s,
                        created_ms: ts,
                        last_access_ms: ts,
                        version: recorded.sequence,
                    },
                );
            }
            Event::SessionAccessed { session } => {
                self.versions.insert(session.clone(), recorded.sequence);
                if let Some(state) = self.live.get_mut(session) {
                    state.last_access_ms = ts;
                    state.version = recorded.sequence;
                }
            }
            Event::SessionRemoved { session } => {
                self.versions.insert(session.clone(), recorded.sequence);
                self.live.remove(session);
            }
            // An undecodable event's stream version still counts (see the datastore view).
            Event::Unreadable { .. } => {
                if let Some(session) = recorded
                    .stream
                    .as_str()
                    .strip_prefix("session/")
                    .and_then(|id| RunId::parse(id).ok())
                {
                    self.versions.insert(session.clone(), recorded.sequence);
                    if let Some(state) = self.live.get_mut(&session) {
                        state.version = recorded.sequence;
                    }
                }
            }
            _ => {}
        }
    }
}

impl SessionsView {
    /// The live session `id`, whoever owns it.
    pub fn session(&self, id: &RunId) -> Option<&Session> {
        self.live.get(id)
    }

    /// The live session `id` if `caller` owns it (the same authenticated subject; the
    /// same user name with auth off).
    pub fn owned(&self, id: &RunId, caller: &Actor) -> Option<&Session> {
        self.live.get(id).filter(|s| s.owner.same_caller(caller))
    }

    /// Sessions whose lifetime ended before `now_ms`.
    pub fn expired(&self, now_ms: i64) -> impl Iterator<Item = &Session> {
        self.live.values().filter(move |s| s.is_expired(now_ms))
    }
}

/// Session decisions: pure functions of the view.
pub mod decide {
    use super::*;

    fn on_session(session: &Session, event: Event) -> Decision {
        Decision {
            stream: StreamId::session(&session.id),
            expected: ExpectedVersion::from_version(session.version),
            events: vec![event],
        }
    }

    fn not_found(id: &RunId) -> SessionError {
        SessionError::NotFound(id.to_string())
    }

    /// A new session `id` (ids are fresh, so its stream must not exist).
    pub fn create(
        id: &RunId,
        file_name: String,
        blob: BlobRef,
        meta: Info,
        expiry_s: u64,
    ) -> Decision {
        Decision {
            stream: StreamId::session(id),
            expected: ExpectedVersion::NoStream,
            events: vec![Event::SessionCreated {
                session: id.clone(),
                name: file_name,
                ext: blob.ext.clone(),
                blob,
                meta,
                expiry_s,
            }],
        }
    }

    /// A use of the caller's live session that extends its life.
    pub fn touch(view: &SessionsView, id: &RunId, caller: &Actor, now_ms: i64) -> Result<Decision> {
        let session = view
            .owned(id, caller)
            .filter(|s| !s.is_expired(now_ms))
            .ok_or_else(|| not_found(id))?;
        Ok(on_session(
            session,
            Event::SessionAccessed {
                session: id.clone(),
            },
        ))
    }

    /// The caller removes its live session.
    pub fn remove(view: &SessionsView, id: &RunId, caller: &Actor) -> Result<Decision> {
        let session = view.owned(id, caller).ok_or_else(|| not_found(id))?;
        Ok(on_session(
            session,
            Event::SessionRemoved {
                session: id.clone(),
            },
        ))
    }

    /// The removal of a session whose lifetime ended before `now_ms`, whoever notices.
    pub fn expire(view: &SessionsView, id: &RunId, now_ms: i64) -> Option<Decision> {
        let session = view.session(id).filter(|s| s.is_expired(now_ms))?;
        Some(on_session(
            session,
            Event::SessionRemoved {
                session: id.clone(),
            },
        ))
    }
}

/// The session service over an event store and a blob store.
pub struct Sessions {
    blobs: Arc<dyn BlobStore>,
    clock: Arc<dyn Clock>,
    max_expiry_s: u64,
    view: Projected<SessionsView>,
}

impl Sessions {
    /// `max_expiry_s` is MONAI Label's `MONAI_LABEL_SESSION_EXPIRY` (≤ 60 means 3600).
    pub fn new(
        store: Arc<dyn EventStore>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        max_expiry_s: u64,
    ) -> Self {
        Self::starting_at(store, blobs, clock, max_expiry_s, SessionsView::default())
    }

    /// Sessions over `view`, a view restored elsewhere (`crate::cold_start`) that its
    /// first read catches up with the log.
    pub fn starting_at(
        store: Arc<dyn EventStore>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        max_expiry_s: u64,
        view: SessionsView,
    ) -> Self {
        Self {
            blobs,
            clock,
            max_expiry_s,
            view: Projected::starting_at(store, view),
        }
    }

    async fn execute(
        &self,
        ctx: &WriteContext,
        decide: impl Fn(&SessionsView) -> Result<Option<Decision>>,
    ) -> Result<Option<Decision>> {
        decision::execute(&self.view, ctx, || self.clock.now_ms(), decide).await
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
        // The id derives from the request id, so a retried request names the same
        // session and records nothing new.
        let id = RunId::parse(
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, ctx.request_id.as_bytes()).to_string(),
        )
        .expect("a UUID is a valid run id");
        let expiry_s = effective_expiry(requested_expiry_s, self.max_expiry_s);
        self.execute(ctx, |view| {
            Ok((view.session(&id).is_none())
                .then(|| decide::create(&id, base.clone(), blob.clone(), meta.clone(), expiry_s)))
        })
        .await?;
        self.view
            .peek()
            .owned(&id, &ctx.actor)
            .cloned()
            .ok_or_else(|| SessionError::RequestIdReused(ctx.request_id.clone()))
    }

    /// The session `id` if `caller` owns it and it is live. An expired session is
    /// removed on the way (as MONAI Label removes a session whose file vanished).
    pub async fn get(&self, id: &RunId, caller: &Actor) -> Result<Session> {
        let session = self
            .view
            .read()
            .await?
            .owned(id, caller)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        if session.is_expired(self.clock.now_ms()) {
            self.expire(&session).await?;
            return Err(SessionError::NotFound(id.to_string()));
        }
        Ok(session)
    }

    /// Records an access (`update_ts`), extending the session's life.
    pub async fn touch(&self, ctx: &WriteContext, id: &RunId) -> Result<Session> {
        let now = self.clock.now_ms();
        self.execute(ctx, |view| {
            decide::touch(view, id, &ctx.actor, now).map(Some)
        })
        .await?;
        self.get(id, &ctx.actor).await
    }

    /// Removes the session and returns its last state.
    pub async fn remove(&self, ctx: &WriteContext, id: &RunId) -> Result<Session> {
        let before = self.get(id, &ctx.actor).await?;
        self.execute(ctx, |view| decide::remove(view, id, &ctx.actor).map(Some))
            .await?;
        Ok(before)
    }

    /// Streams the session's file.
    pub async fn open(&self, session: &Session) -> Result<BlobReader> {
        Ok(self.blobs.get(&session.blob).await?)
    }

    /// Removes every expired session; returns the ids removed by this call.
    pub async fn sweep(&self) -> Result<Vec<RunId>> {
        let now = self.clock.now_ms();
        let due: Vec<Session> = self.view.read().await?.expired(now).cloned().collect();
        let mut removed = Vec::new();
        for session in due {
            if self.expire(&session).await? {
                removed.push(session.id);
            }
        }
        Ok(removed)
    }

    /// Records the removal of an expired session under a request id derived from its
    /// state, so that two sweepers record it once. `false` if someone else did it first.
    async fn expire(&self, session: &Session) -> Result<bool> {
        let ctx = WriteContext::new(
            session.owner.clone(),
            format!("session-expired:{}:{}", session.id, session.version),
        );
        let now = self.clock.now_ms();
        let expired = self
            .execute(&ctx, |view| Ok(decide::expire(view, &session.id, now)))
            .await?;
        Ok(expired.is_some())
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
