//! What a process that starts cold often (a Lambda function) opens: the datastore, the
//! jobs, the models and the sessions services, restored together from one snapshot.
//!
//! The views fold the same log, so after any fold they stand at the same position and
//! one snapshot can hold them all ([`StartViews`], stream `snapshot/views`). A start
//! then reads one snapshot event, fetches one blob and reads one tail of the log;
//! snapshotting each view on its own took twice those round trips, and against the
//! emulator that was about half of a cold start. After the restore the pair is split
//! and each service catches up on its own, as a service opened any other way does.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::blob::BlobStore;
use crate::clock::Clock;
use crate::datastore::{Datastore, DatastoreView};
use crate::event::RecordedEvent;
use crate::jobs::{Jobs, JobsView};
use crate::models::{Models, ModelsView};
use crate::projection::Projection;
use crate::session::SessionsView;
use crate::snapshot::{self, Snapshot};
use crate::store::{EventStore, StoreError};

/// The views a function starts with, folded and snapshotted as one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartViews {
    pub datastore: DatastoreView,
    pub jobs: JobsView,
    pub models: ModelsView,
    pub sessions: SessionsView,
}

impl Projection for StartViews {
    fn position(&self) -> u64 {
        // Equal to the other views': they all apply every event, and only together.
        self.datastore.position
    }

    fn apply(&mut self, event: &RecordedEvent) {
        self.datastore.apply(event);
        self.jobs.apply(event);
        self.models.apply(event);
        self.sessions.apply(event);
    }
}

impl Snapshot for StartViews {
    const NAME: &'static str = "views";
}

/// The services a start opens, each from its restored view, and the restored sessions
/// view (the sessions service also needs the deployment's expiry ceiling).
pub struct Started {
    pub datastore: Datastore,
    pub jobs: Jobs,
    pub models: Models,
    pub sessions: SessionsView,
}

/// Opens the datastore, jobs and models services from their latest snapshot and the
/// events after it, recording a new snapshot when this start had many to fold
/// ([`snapshot::open_projection`]).
pub async fn open(
    store: Arc<dyn EventStore>,
    blobs: Arc<dyn BlobStore>,
    clock: Arc<dyn Clock>,
) -> Result<Started, StoreError> {
    let views = snapshot::open_projection::<StartViews>(store.clone(), &*blobs, clock.now_ms())
        .await?
        .into_view();
    Ok(Started {
        jobs: Jobs::starting_at(store.clone(), clock.clone(), views.jobs),
        models: Models::starting_at(store.clone(), clock.clone(), views.models),
        sessions: views.sessions,
        datastore: Datastore::starting_at(store, blobs, clock, views.datastore),
    })
}
