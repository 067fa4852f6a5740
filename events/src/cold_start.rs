//! What a process that starts cold often (a Lambda function) opens: the datastore and
//! the jobs service, restored together from one snapshot.
//!
//! Both views fold the same log, so after any fold they stand at the same position and
//! one snapshot can hold them both ([`StartViews`], stream `snapshot/views`). A start
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
use crate::projection::Projection;
use crate::snapshot::{self, Snapshot};
use crate::store::{EventStore, StoreError};

/// The views a function starts with, folded and snapshotted as one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartViews {
    pub datastore: DatastoreView,
    pub jobs: JobsView,
}

impl Projection for StartViews {
    fn position(&self) -> u64 {
        // Equal to the jobs view's: both views apply every event, and only together.
        self.datastore.position
    }

    fn apply(&mut self, event: &RecordedEvent) {
        self.datastore.apply(event);
        self.jobs.apply(event);
    }
}

impl Snapshot for StartViews {
    const NAME: &'static str = "views";
}

/// Opens the datastore and the jobs service from their latest snapshot and the events
/// after it, recording a new snapshot when this start had many to fold
/// ([`snapshot::open_projection`]).
pub async fn open(
    store: Arc<dyn EventStore>,
    blobs: Arc<dyn BlobStore>,
    clock: Arc<dyn Clock>,
) -> Result<(Datastore, Jobs), StoreError> {
    let views = snapshot::open_projection::<StartViews>(store.clone(), &*blobs, clock.now_ms())
        .await?
        .into_view();
    let jobs = Jobs::starting_at(store.clone(), clock.clone(), views.jobs);
    Ok((
        Datastore::starting_at(store, blobs, clock, views.datastore),
        jobs,
    ))
}
