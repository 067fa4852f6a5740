//! The shared source of randomness for active learning, and the lease length.
//!
//! Selection itself lives in the domain (`medlabel_events::datastore::Strategy`,
//! leases included); this only supplies what it needs from the process: a generator
//! that can be seeded, so a run can be reproduced, and the configured lease.

use std::sync::Mutex;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Default lease: how long an image handed out stays reserved for its annotator.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30 * 60);

/// Random picks for the `random` strategy, seeded or from the OS.
pub struct Picker {
    rng: Mutex<ChaCha8Rng>,
    pub lease: Duration,
}

impl Picker {
    pub fn new(seed: Option<u64>, lease: Duration) -> Self {
        let rng = match seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        Self {
            rng: Mutex::new(rng),
            lease,
        }
    }

    /// An index below `n` (`n` > 0).
    pub fn below(&self, n: usize) -> usize {
        self.rng
            .lock()
            .expect("rng lock poisoned")
            .random_range(0..n)
    }
}

impl Default for Picker {
    fn default() -> Self {
        Self::new(None, DEFAULT_LEASE)
    }
}
