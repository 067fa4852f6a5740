//! Active-learning strategies that need no model: pure picks over the datastore view.
//!
//! All choose among the images without a `final` label (MONAI Label's "unlabeled").
//! `first` and `last` take the lowest and highest id; `random` weighs each image by the
//! seconds since `random` last served it (never served: since the epoch), so images
//! nobody has seen dominate, as in MONAI Label. Where MONAI Label fails (every weight 0)
//! this picks uniformly, and it reports the chosen image's own weight rather than the
//! first one's.

use medlabel_events::datastore::DatastoreView;
use medlabel_events::{ImageId, Tag};
use rand::Rng;

/// Strategy names and the descriptions `/info/` shows.
pub const STRATEGIES: &[(&str, &str)] = &[
    ("first", "Get First Sample"),
    ("last", "Get Last Sample"),
    ("random", "Random Strategy"),
];

/// The image a strategy picks and its weight; `None` when nothing is unlabeled or the
/// strategy is unknown (check [`is_known`] first to tell them apart).
pub fn pick(
    strategy: &str,
    view: &DatastoreView,
    now_s: i64,
    rng: &mut impl Rng,
) -> Option<(ImageId, f64)> {
    let candidates = view.unlabeled_images(&Tag::final_tag(), &[]);
    match strategy {
        "first" => candidates.first().map(|id| (id.clone(), 1.0)),
        "last" => candidates.last().map(|id| (id.clone(), 1.0)),
        "random" => {
            let weights: Vec<f64> = candidates
                .iter()
                .map(|id| {
                    let served = view
                        .image(id)
                        .and_then(|r| r.info.get("strategy"))
                        .and_then(|s| s.get(strategy))
                        .and_then(|s| s.get("ts"))
                        .and_then(|ts| ts.as_i64())
                        .unwrap_or(0);
                    (now_s - served).max(0) as f64
                })
                .collect();
            let total: f64 = weights.iter().sum();
            let index = if total > 0.0 {
                let mut target = rng.random_range(0.0..total);
                weights
                    .iter()
                    .position(|w| {
                        target -= w;
                        target < 0.0
                    })
                    .unwrap_or(weights.len().checked_sub(1)?)
            } else {
                if candidates.is_empty() {
                    return None;
                }
                rng.random_range(0..candidates.len())
            };
            Some((candidates[index].clone(), weights[index]))
        }
        _ => None,
    }
}

pub fn is_known(strategy: &str) -> bool {
    STRATEGIES.iter().any(|(name, _)| *name == strategy)
}
