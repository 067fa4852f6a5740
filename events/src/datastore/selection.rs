//! Active learning: which unlabeled image to hand to which annotator next.
//!
//! MONAI Label's strategies scan every image on every call and ignore who asks, so two
//! annotators can be handed the same image. Here the view keeps a [`SelectionIndex`]
//! of the images without a `final` label, updated by each event, and a handed-out image
//! is *leased* to its client: nobody else gets it until a final label is saved, the
//! lease expires or the client releases it, and the same client asking again gets it
//! back first. Every query below costs O(log N) plus the number of images it must skip
//! because they are leased to someone else (bounded by the number of annotators).
//!
//! Strategies, with MONAI Label's semantics where they exist:
//! - `random`: images never handed out first, uniformly at random; then one handed out
//!   longest ago, at random among those served in that same second (MONAI's weight
//!   `now − last served` makes unserved images dominate);
//! - `first` / `last`: the smallest / largest id;
//! - `epistemic`: MONAI's `min(now − last served, 1 day)` then highest stored
//!   uncertainty: images not handed out within a day, highest `epistemic_entropy`
//!   first (unscored ones after scored ones), then the one handed out longest ago.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::event::Info;
use crate::id::ImageId;

/// How many equally-old served images a re-serving pick draws from: enough to spread
/// a team's concurrent requests, few enough to stay O(1) per pick.
const MAX_SERVED_TIES: usize = 64;

/// MONAI Label's cap on "time since served" for the epistemic strategy.
const EPISTEMIC_RECENT_S: i64 = 86_400;

/// An active-learning strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    Random,
    First,
    Last,
    Epistemic,
}

impl Strategy {
    /// Parses a strategy name as clients send it (`random`, `first`, `last`,
    /// `epistemic`, or MONAI Label's app-specific `<model>_epistemic`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "random" => Some(Self::Random),
            "first" => Some(Self::First),
            "last" => Some(Self::Last),
            "epistemic" => Some(Self::Epistemic),
            other if other.ends_with("_epistemic") => Some(Self::Epistemic),
            _ => None,
        }
    }

    /// Every strategy with the description `/info/` shows.
    pub fn all() -> [(&'static str, &'static str); 4] {
        [
            (
                "random",
                "Random Strategy (unserved images first, leased per annotator)",
            ),
            ("first", "Get First Sample"),
            ("last", "Get Last Sample"),
            ("epistemic", "Epistemic Uncertainty (MC dropout scores)"),
        ]
    }
}

/// A reservation of an image for one client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub client_id: String,
    pub expires_at_ms: i64,
}

/// Total order on scores so they can live in a `BTreeSet` (NaN sorts lowest).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Score(f64);

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Indexes over the images that have no `final` label.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SelectionIndex {
    ids: BTreeSet<ImageId>,
    /// Never handed out: a vector for O(1) uniform picks, with positions for O(1) removal.
    never_served: Vec<ImageId>,
    pool_position: HashMap<ImageId, usize>,
    /// Handed out before, oldest first (seconds since the epoch).
    served: BTreeSet<(i64, ImageId)>,
    last_served: HashMap<ImageId, i64>,
    by_entropy: BTreeSet<(Reverse<Score>, ImageId)>,
    entropy: HashMap<ImageId, f64>,
    leases: HashMap<ImageId, Lease>,
    /// The images each client has a lease record on (expired ones too), so that finding
    /// a client's lease does not scan everyone's: one-off clients leave thousands.
    leased_by: HashMap<String, BTreeSet<ImageId>>,
}

/// The latest `strategy[*].ts` recorded in an image's info (imported studies carry it).
fn last_served_in(info: &Info) -> Option<i64> {
    info.get("strategy")?
        .as_object()?
        .values()
        .filter_map(|s| s.get("ts").and_then(Value::as_i64))
        .max()
}

fn entropy_in(info: &Info) -> Option<f64> {
    match info.get("epistemic_entropy")? {
        Value::Number(n) => n.as_f64(),
        Value::Object(o) => o.get("score").and_then(Value::as_f64),
        _ => None,
    }
}

impl SelectionIndex {
    /// Number of images without a final label.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, image: &ImageId) -> bool {
        self.ids.contains(image)
    }

    /// The current lease on `image`, expired or not.
    pub fn lease(&self, image: &ImageId) -> Option<&Lease> {
        self.leases.get(image)
    }

    /// Starts tracking an image that has no final label; `info` supplies what earlier
    /// selections and scores recorded about it.
    pub fn insert(&mut self, image: &ImageId, info: &Info) {
        if !self.ids.insert(image.clone()) {
            return;
        }
        match last_served_in(info) {
            Some(ts) => {
                self.served.insert((ts, image.clone()));
                self.last_served.insert(image.clone(), ts);
            }
            None => {
                self.pool_position
                    .insert(image.clone(), self.never_served.len());
                self.never_served.push(image.clone());
            }
        }
        if let Some(score) = entropy_in(info) {
            self.set_entropy(image, score);
        }
    }

    /// Stops tracking an image (it got a final label or left the datastore).
    pub fn remove(&mut self, image: &ImageId) {
        if !self.ids.remove(image) {
            return;
        }
        self.take_from_pool(image);
        if let Some(ts) = self.last_served.remove(image) {
            self.served.remove(&(ts, image.clone()));
        }
        if let Some(score) = self.entropy.remove(image) {
            self.by_entropy
                .remove(&(Reverse(Score(score)), image.clone()));
        }
        self.drop_lease(image);
    }

    fn drop_lease(&mut self, image: &ImageId) {
        if let Some(old) = self.leases.remove(image)
            && let Some(images) = self.leased_by.get_mut(&old.client_id)
        {
            images.remove(image);
            if images.is_empty() {
                self.leased_by.remove(&old.client_id);
            }
        }
    }

    fn take_from_pool(&mut self, image: &ImageId) {
        if let Some(position) = self.pool_position.remove(image) {
            self.never_served.swap_remove(position);
            if let Some(moved) = self.never_served.get(position) {
                self.pool_position.insert(moved.clone(), position);
            }
        }
    }

    /// Records that the image was handed out at `ts` (seconds).
    pub fn served(&mut self, image: &ImageId, ts: i64) {
        if !self.ids.contains(image) {
            return;
        }
        self.take_from_pool(image);
        if let Some(old) = self.last_served.insert(image.clone(), ts) {
            self.served.remove(&(old, image.clone()));
        }
        self.served.insert((ts, image.clone()));
    }

    pub fn set_lease(&mut self, image: &ImageId, lease: Lease) {
        if self.ids.contains(image) {
            self.drop_lease(image);
            self.leased_by
                .entry(lease.client_id.clone())
                .or_default()
                .insert(image.clone());
            self.leases.insert(image.clone(), lease);
        }
    }

    /// Ends `client_id`'s lease on `image`; another client's lease stays.
    pub fn release(&mut self, image: &ImageId, client_id: &str) {
        if self
            .leases
            .get(image)
            .is_some_and(|l| l.client_id == client_id)
        {
            self.drop_lease(image);
        }
    }

    pub fn set_entropy(&mut self, image: &ImageId, score: f64) {
        if !self.ids.contains(image) {
            return;
        }
        if let Some(old) = self.entropy.insert(image.clone(), score) {
            self.by_entropy
                .remove(&(Reverse(Score(old)), image.clone()));
        }
        self.by_entropy
            .insert((Reverse(Score(score)), image.clone()));
    }

    /// Whether someone other than `client_id` holds an unexpired lease on `image`.
    fn held_by_other(&self, image: &ImageId, client_id: &str, now_ms: i64) -> bool {
        self.leases
            .get(image)
            .is_some_and(|l| l.client_id != client_id && l.expires_at_ms > now_ms)
    }

    /// The image `client_id` holds an unexpired lease on, if any (smallest id first).
    pub fn held_by(&self, client_id: &str, now_ms: i64) -> Option<&ImageId> {
        self.leased_by.get(client_id)?.iter().find(|id| {
            self.leases
                .get(*id)
                .is_some_and(|l| l.expires_at_ms > now_ms)
        })
    }

    /// Seconds since `image` was last handed out (`now` if never): MONAI's weight.
    pub fn weight(&self, image: &ImageId, now_ms: i64) -> i64 {
        let now = now_ms.div_euclid(1000);
        now - self.last_served.get(image).copied().unwrap_or(0)
    }

    /// Picks the next image for `client_id`. `random(n)` returns an index below `n`
    /// (a seeded generator makes the choice reproducible).
    pub fn pick(
        &self,
        strategy: Strategy,
        client_id: &str,
        now_ms: i64,
        random: &dyn Fn(usize) -> usize,
    ) -> Option<ImageId> {
        if let Some(held) = self.held_by(client_id, now_ms) {
            return Some(held.clone());
        }
        // Leases by other clients are expected to be few: `free` skips them in order.
        let free = |id: &&ImageId| !self.held_by_other(id, client_id, now_ms);
        // Images last handed out in the same second were served equally long ago (the
        // weight MONAI Label uses has one-second resolution): a uniform draw among them,
        // not the smallest id, keeps concurrent annotators from racing for one image.
        let oldest_served = || {
            let mut candidates = self.served.iter().filter(|(_, id)| free(&id));
            let &(oldest, ref first) = candidates.next()?;
            let ties: Vec<&ImageId> = std::iter::once(first)
                .chain(
                    candidates
                        .take_while(|(ts, _)| *ts == oldest)
                        .map(|(_, id)| id),
                )
                .take(MAX_SERVED_TIES)
                .collect();
            Some(ties[random(ties.len()) % ties.len()])
        };
        let pick = match strategy {
            Strategy::First => self.ids.iter().find(free),
            Strategy::Last => self.ids.iter().rev().find(free),
            Strategy::Random => {
                let unserved = if self.never_served.is_empty() {
                    None
                } else {
                    // Never-served images carry no lease (handing out records both), so
                    // one uniform draw nearly always lands; fall back to a scan.
                    let start = random(self.never_served.len());
                    self.never_served[start..]
                        .iter()
                        .chain(&self.never_served[..start])
                        .find(free)
                };
                unserved.or_else(oldest_served)
            }
            Strategy::Epistemic => {
                let now = now_ms.div_euclid(1000);
                let rested = |id: &&ImageId| {
                    self.last_served
                        .get(*id)
                        .is_none_or(|ts| now - ts >= EPISTEMIC_RECENT_S)
                };
                self.by_entropy
                    .iter()
                    .map(|(_, id)| id)
                    .filter(rested)
                    .find(free)
                    .or_else(|| {
                        self.ids
                            .iter()
                            .filter(|id| !self.entropy.contains_key(*id))
                            .filter(rested)
                            .find(free)
                    })
                    .or_else(oldest_served)
            }
        };
        pick.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(n: usize) -> ImageId {
        ImageId::parse(format!("img{n:03}")).unwrap()
    }

    fn index(n: usize) -> SelectionIndex {
        let mut index = SelectionIndex::default();
        for i in 0..n {
            index.insert(&id(i), &Info::new());
        }
        index
    }

    #[test]
    fn first_and_last_skip_images_leased_to_others() {
        let mut index = index(3);
        index.set_lease(
            &id(0),
            Lease {
                client_id: "a".into(),
                expires_at_ms: 1_000,
            },
        );
        let zero = |_: usize| 0;
        assert_eq!(index.pick(Strategy::First, "b", 500, &zero), Some(id(1)));
        assert_eq!(index.pick(Strategy::First, "a", 500, &zero), Some(id(0)));
        // Expired: free for anyone.
        assert_eq!(index.pick(Strategy::First, "b", 1_000, &zero), Some(id(0)));
        assert_eq!(index.pick(Strategy::Last, "b", 500, &zero), Some(id(2)));
    }

    #[test]
    fn a_clients_lease_is_found_through_takeovers_releases_and_removals() {
        let mut index = index(4);
        let lease = |client: &str, expires_at_ms| Lease {
            client_id: client.into(),
            expires_at_ms,
        };
        index.set_lease(&id(0), lease("a", 100));
        index.set_lease(&id(2), lease("a", 1_000));
        index.set_lease(&id(3), lease("b", 1_000));
        // The expired lease on img000 does not count; the live one does.
        assert_eq!(index.held_by("a", 500), Some(&id(2)));
        assert_eq!(index.held_by("b", 500), Some(&id(3)));
        // Another client taking img002 over leaves "a" with nothing live.
        index.set_lease(&id(2), lease("b", 2_000));
        assert_eq!(index.held_by("a", 500), None);
        assert_eq!(index.held_by("b", 500), Some(&id(2)));
        index.release(&id(2), "b");
        assert_eq!(index.held_by("b", 500), Some(&id(3)));
        index.remove(&id(3));
        assert_eq!(index.held_by("b", 500), None);
        assert_eq!(index.held_by("nobody", 500), None);
    }

    #[test]
    fn random_serves_everything_once_before_repeating() {
        let mut index = index(50);
        let mut seen = BTreeSet::new();
        for round in 0..50 {
            let choice = |n: usize| (round * 7919) % n;
            let image = index.pick(Strategy::Random, "c", 0, &choice).unwrap();
            assert!(seen.insert(image.clone()), "{image} handed out twice");
            index.served(&image, round as i64);
        }
        // Now the oldest served comes back first.
        assert_eq!(
            index.pick(Strategy::Random, "c", 0, &|_| 0),
            Some(id_of(&index, 0))
        );
    }

    #[test]
    fn repeats_draw_among_images_served_in_the_same_oldest_second() {
        let mut index = index(10);
        let ids: Vec<ImageId> = (0..10).map(id).collect();
        index.served(&ids[9], 100);
        for image in &ids[..9] {
            index.served(image, 200);
        }
        // One image is older than the rest: it comes first, whatever the draw.
        for k in 0..5 {
            assert_eq!(
                index.pick(Strategy::Random, "c", 0, &move |_| k),
                Some(ids[9].clone())
            );
        }
        index.served(&ids[9], 300);
        // Nine tied in the oldest second: the draw decides among them.
        let picks: BTreeSet<ImageId> = (0..9)
            .map(|k| index.pick(Strategy::Random, "c", 0, &move |_| k).unwrap())
            .collect();
        assert_eq!(picks, ids[..9].iter().cloned().collect());
    }

    fn id_of(index: &SelectionIndex, ts: i64) -> ImageId {
        index
            .served
            .iter()
            .find(|(t, _)| *t == ts)
            .unwrap()
            .1
            .clone()
    }

    #[test]
    fn epistemic_prefers_rested_high_entropy() {
        let mut index = SelectionIndex::default();
        index.insert(
            &id(0),
            &json!({"epistemic_entropy": 0.2})
                .as_object()
                .unwrap()
                .clone(),
        );
        index.insert(
            &id(1),
            &json!({"epistemic_entropy": 0.9})
                .as_object()
                .unwrap()
                .clone(),
        );
        index.insert(&id(2), &Info::new());
        let now_ms = 10 * EPISTEMIC_RECENT_S * 1000;
        let zero = |_: usize| 0;
        assert_eq!(
            index.pick(Strategy::Epistemic, "a", now_ms, &zero),
            Some(id(1))
        );
        index.served(&id(1), now_ms / 1000 - 10);
        assert_eq!(
            index.pick(Strategy::Epistemic, "a", now_ms, &zero),
            Some(id(0))
        );
        index.served(&id(0), now_ms / 1000 - 5);
        assert_eq!(
            index.pick(Strategy::Epistemic, "a", now_ms, &zero),
            Some(id(2))
        );
        index.served(&id(2), now_ms / 1000 - 1);
        // All served recently: the one served longest ago.
        assert_eq!(
            index.pick(Strategy::Epistemic, "a", now_ms, &zero),
            Some(id(1))
        );
    }

    #[test]
    fn removal_keeps_the_pool_consistent() {
        let mut index = index(5);
        index.remove(&id(0));
        index.remove(&id(3));
        let mut picked = BTreeSet::new();
        for i in 0..3 {
            let image = index.pick(Strategy::Random, "a", 0, &|n| i % n).unwrap();
            index.served(&image, i as i64);
            picked.insert(image);
        }
        assert_eq!(picked, [id(1), id(2), id(4)].into_iter().collect());
        assert_eq!(index.len(), 3);
    }
}
