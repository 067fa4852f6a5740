//! Scoring methods that need no model: they read label volumes (pure-Rust NIfTI/NRRD)
//! and record each result as a `ScoreRecorded` event, where MONAI Label shows it.
//!
//! - `dice`: Dice between the `y` label (default `final`) and the `y_pred` label
//!   (default `original`) of each image that has both → image info `dice`;
//! - `sum`: foreground voxels and slices with foreground of every `final` and
//!   `original` label → that label's info `sum`, `slices`;
//! - `agreement`: mean pairwise Dice between the annotators' own tags (every tag but
//!   `final` and `original`, or the `tags` param) of each image with at least two →
//!   image info `agreement`.
//!
//! Epistemic uncertainty needs the network and is a runner job instead.

use std::collections::BTreeMap;

use medlabel_events::blob::read_to_vec;
use medlabel_events::datastore::{Datastore, DatastoreError, WriteContext};
use medlabel_events::{ImageId, Info, Tag};
use medlabel_imaging::Volume;
use medlabel_imaging::io::read_volume_bytes;
use medlabel_imaging::transforms::{dice, sum_and_slices};
use serde_json::{Value, json};

/// The scoring methods this module runs, with `/info/`'s descriptions.
pub const METHODS: &[(&str, &str)] = &[
    (
        "dice",
        "Dice between the final and the original label of each image",
    ),
    (
        "sum",
        "Foreground voxels and slices of final and original labels",
    ),
    (
        "agreement",
        "Mean pairwise Dice between annotators' own labels",
    ),
];

/// Why scoring failed.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error("Method '{0}' NOT Found")]
    UnknownMethod(String),
    #[error("{image}: {message}")]
    Unreadable { image: String, message: String },
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

/// One score to compute: the image, the label it belongs to (for `sum`), and the
/// labels to read.
type Plan = (ImageId, Option<Tag>, Vec<(Tag, medlabel_events::BlobRef)>);

/// Runs `method` over the datastore and returns MONAI Label's result of the method:
/// `{image: dice}` for `dice`, `{image: {"sum", "slices"}}` for `sum` (MONAI Label keys
/// it by label id, which is the image id, so a later tag's values replace an earlier
/// one's: `original` over `final`), `{image: agreement}` for `agreement`.
pub async fn score(
    datastore: &Datastore,
    ctx: &WriteContext,
    method: &str,
    params: &Info,
) -> Result<Info, ScoringError> {
    let tag_param = |key: &str, default: Tag| {
        params
            .get(key)
            .and_then(Value::as_str)
            .and_then(|t| Tag::parse(t).ok())
            .unwrap_or(default)
    };
    let plans: Vec<Plan> = {
        let view = datastore.view().await?;
        let mut plans = Vec::new();
        for (id, record) in view.images() {
            let label = |tag: &Tag| {
                record
                    .labels
                    .get(tag)
                    .map(|l| (tag.clone(), l.latest().blob.clone()))
            };
            match method {
                "dice" => {
                    let (y, y_pred) = (
                        tag_param("y", Tag::final_tag()),
                        tag_param("y_pred", Tag::original()),
                    );
                    if let (Some(a), Some(b)) = (label(&y), label(&y_pred)) {
                        plans.push((id.clone(), None, vec![a, b]));
                    }
                }
                "sum" => {
                    for tag in [Tag::final_tag(), Tag::original()] {
                        if let Some(found) = label(&tag) {
                            plans.push((id.clone(), Some(tag), vec![found]));
                        }
                    }
                }
                "agreement" => {
                    let wanted: Option<Vec<String>> =
                        params.get("tags").and_then(Value::as_array).map(|tags| {
                            tags.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        });
                    let annotators: Vec<_> = record
                        .labels
                        .keys()
                        .filter(|tag| match &wanted {
                            Some(list) => list.iter().any(|w| w == tag.as_str()),
                            None => **tag != Tag::final_tag() && **tag != Tag::original(),
                        })
                        .filter_map(label)
                        .collect();
                    if annotators.len() >= 2 {
                        plans.push((id.clone(), None, annotators));
                    }
                }
                other => return Err(ScoringError::UnknownMethod(other.to_owned())),
            }
        }
        plans
    };

    let mut results = Info::new();
    for (step, (image, label_tag, labels)) in plans.into_iter().enumerate() {
        let mut volumes = Vec::with_capacity(labels.len());
        for (tag, blob) in &labels {
            let bytes = read_to_vec(datastore.blob_store().as_ref(), blob)
                .await
                .map_err(DatastoreError::from)?;
            let volume = read_volume_bytes(&bytes, blob.ext.as_str()).map_err(|err| {
                ScoringError::Unreadable {
                    image: format!("{image} ({tag})"),
                    message: err.to_string(),
                }
            })?;
            volumes.push(volume);
        }
        let (values, result) = match method {
            "dice" => {
                let dice = pair_dice(&image, &volumes[0], &volumes[1])?;
                (json!({"dice": dice}), json!(dice))
            }
            "sum" => {
                let (sum, slices) = sum_and_slices(&volumes[0]);
                let values = json!({"sum": sum, "slices": slices});
                (values.clone(), values)
            }
            _ => {
                let mut total = 0.0;
                let mut pairs = 0;
                for i in 0..volumes.len() {
                    for j in i + 1..volumes.len() {
                        total += pair_dice(&image, &volumes[i], &volumes[j])?;
                        pairs += 1;
                    }
                }
                let agreement = total / pairs as f64;
                (json!({"agreement": agreement}), json!(agreement))
            }
        };
        let values = values.as_object().cloned().unwrap_or_default();
        let step_ctx = WriteContext::new(
            ctx.actor.clone(),
            format!("{}/{method}/{step}", ctx.request_id),
        );
        datastore
            .record_score(&step_ctx, &image, method, label_tag.as_ref(), values)
            .await?;
        results.insert(image.to_string(), result);
    }
    Ok(results)
}

fn pair_dice(image: &ImageId, a: &Volume<f32>, b: &Volume<f32>) -> Result<f64, ScoringError> {
    dice(a, b).map_err(|err| ScoringError::Unreadable {
        image: image.to_string(),
        message: err.to_string(),
    })
}

/// `/info/`'s `scoring` entries of this module.
pub fn describe() -> BTreeMap<String, Value> {
    METHODS
        .iter()
        .map(|(name, description)| ((*name).to_owned(), json!({"description": description})))
        .collect()
}
