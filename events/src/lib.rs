//! medlabel's domain core.
//!
//! Everything medlabel knows is a fold of the events in [`event`]: an append-only log
//! per aggregate (an image with its labels, a session, a model, a training run), kept
//! by an [`store::EventStore`] with optimistic concurrency and per-request idempotency.
//! File contents live in a content-addressed [`blob::BlobStore`] and are written before
//! the event that references them. The [`datastore::Datastore`] service implements
//! MONAI Label's Datastore interface on top: its decisions are pure functions of the
//! current [`datastore::DatastoreView`] that return events, and the view is rebuilt by
//! folding the log, so a projection dropped and replayed gives the identical state.
//!
//! This crate knows neither HTTP nor torch (volumes are read with the pure-Rust
//! `medlabel-imaging`, to check files before they are recorded): the functions and the
//! GPU runner build on it.

pub mod blob;
pub mod clock;
pub mod cold_start;
pub mod datastore;
pub mod decision;
pub mod event;
pub mod id;
pub mod jobs;
pub mod models;
pub mod pinned;
pub mod projection;
pub mod queue;
pub mod session;
pub mod snapshot;
pub mod store;

pub use blob::{BlobError, BlobRef, BlobStore};
pub use clock::{Clock, SystemClock};
pub use event::{Actor, Event, Info, NewEvent, RecordedEvent, StreamId};
pub use id::{ClientId, Extension, ImageId, InvalidId, ModelName, RunId, Tag, UserName};
pub use store::{Appended, EventStore, ExpectedVersion, StoreError};
