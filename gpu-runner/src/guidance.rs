//! Click guidance as MONAI Label's DeepGrow and DeepEdit tasks define it: clicks are
//! voxel indices `[i, j, k]` of the image a client shows, grouped per guidance channel
//! (deepgrow: `foreground`, `background`; deepedit: one list per label name, background
//! included), and each channel becomes a Gaussian point map beside the image
//! (`AddGuidanceSignal`: the clicks' impulses smoothed by a Gaussian of σ voxels and
//! scaled to a maximum of 1).
//!
//! Training and the quality checks simulate clicks the way MONAI's interaction loop
//! does: in the largest connected region where a label is missed, at the voxel deepest
//! inside it (the maximum of its distance transform).

use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use crate::components::{keep_largest, neighbour_offsets};
use crate::config::{ModelConfig, ModelType};

/// A click: voxel indices (i, j, k) of the input image.
pub type Click = [i64; 3];

/// Request params that may hold lists of points without being clicks on a label.
const NOT_LABELS: [&str; 2] = ["foreground", "points"];

/// A request's clicks, one list per guidance channel ([`ModelConfig::guidance_channels`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Clicks {
    pub channels: Vec<Vec<Click>>,
}

/// Why a request's clicks cannot be used (a 422 for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClickError(pub String);

impl Clicks {
    /// Reads the clicks of MONAI Label's request `params` for model `cfg` and checks
    /// each lies in an image of `dims` voxels. A deepedit request may name its labels
    /// (`{<label>: [[i, j, k], ...], "background": [...]}`) or send `foreground` clicks
    /// for the label `label` names; a label name the model does not know is refused.
    pub fn from_params(
        cfg: &ModelConfig,
        params: &Map<String, Value>,
        dims: [usize; 3],
    ) -> Result<Self, ClickError> {
        let mut channels = match cfg.model_type {
            ModelType::Segmentation => Vec::new(),
            ModelType::Deepgrow => vec![
                points(params, "foreground", dims)?,
                points(params, "background", dims)?,
            ],
            ModelType::Deepedit => deepedit_channels(cfg, params, dims)?,
        };
        if cfg.dimension() == 2 && cfg.model_type.is_interactive() {
            let k = clicked_slice(&channels, params.get("slice"), dims)?;
            channels
                .iter_mut()
                .for_each(|c| c.retain(|p| Some(p[2]) == k));
        }
        Ok(Self { channels })
    }

    /// Whether no channel has a click.
    pub fn is_empty(&self) -> bool {
        self.channels.iter().all(Vec::is_empty)
    }
}

/// Deepedit's channels: label names by label index; `foreground` clicks join the
/// channel of the label that `label` names.
fn deepedit_channels(
    cfg: &ModelConfig,
    params: &Map<String, Value>,
    dims: [usize; 3],
) -> Result<Vec<Vec<Click>>, ClickError> {
    let known = |name: &str| cfg.labels.contains_key(name);
    let unknown = |name: &str| {
        ClickError(format!(
            "unknown label {name:?}: model labels are {:?}",
            cfg.labels.keys().collect::<Vec<_>>()
        ))
    };
    let selected = params.get("label").and_then(Value::as_str).unwrap_or("");
    if !selected.is_empty() && !known(selected) {
        return Err(unknown(selected));
    }
    // Slicer sends a (possibly empty) list for every label it knows; a non-empty list of
    // points under a name that is not this model's label is a click it cannot place.
    for (key, value) in params {
        if !known(key) && !NOT_LABELS.contains(&key.as_str()) && is_point_list(value) {
            return Err(unknown(key));
        }
    }
    let mut channels = Vec::new();
    for name in label_order(cfg) {
        let mut clicks = points(params, &name, dims)?;
        if name == selected {
            clicks.extend(points(params, "foreground", dims)?);
        }
        channels.push(clicks);
    }
    Ok(channels)
}

/// The slice (k) a 2D model answers, as MONAI's `AddGuidanceFromPointsd` picks it:
/// `slice` when the request names one (Slicer sends the last click's), else the
/// lowest slice clicked; `None` without clicks. The clicks of other slices are not
/// the model's to see, but the named slice must have one.
fn clicked_slice(
    channels: &[Vec<Click>],
    slice: Option<&Value>,
    dims: [usize; 3],
) -> Result<Option<i64>, ClickError> {
    let clicked = || channels.iter().flatten().map(|p| p[2]);
    let Some(slice) = slice.filter(|v| !v.is_null()) else {
        return Ok(clicked().min());
    };
    let k = slice
        .as_i64()
        .filter(|k| (0..dims[2] as i64).contains(k))
        .ok_or_else(|| {
            ClickError(format!(
                "slice: {slice} is not a slice of the image's {} (k)",
                dims[2]
            ))
        })?;
    if clicked().all(|c| c != k) {
        return Err(ClickError(format!("slice: no click on slice {k}")));
    }
    Ok(Some(k))
}

/// Label names by label index: the order of deepedit's guidance channels.
pub fn label_order(cfg: &ModelConfig) -> Vec<String> {
    let mut names: Vec<(&String, &i64)> = cfg.labels.iter().collect();
    names.sort_by_key(|&(_, &idx)| idx);
    names.into_iter().map(|(n, _)| n.clone()).collect()
}

/// The label value each guidance channel clicks on: deepgrow's foreground (1) and
/// background (0), deepedit's label indices in channel order.
pub fn channel_labels(cfg: &ModelConfig) -> Vec<i64> {
    match cfg.model_type {
        ModelType::Segmentation => Vec::new(),
        ModelType::Deepgrow => vec![1, 0],
        ModelType::Deepedit => label_order(cfg).iter().map(|n| cfg.labels[n]).collect(),
    }
}

/// Whether `value` is a non-empty list whose items are all lists of three numbers.
fn is_point_list(value: &Value) -> bool {
    value.as_array().is_some_and(|items| {
        !items.is_empty()
            && items.iter().all(|p| {
                p.as_array()
                    .is_some_and(|c| c.len() == 3 && c.iter().all(Value::is_number))
            })
    })
}

/// The clicks under `key` (absent or null: none), each checked to lie in the image.
fn points(
    params: &Map<String, Value>,
    key: &str,
    dims: [usize; 3],
) -> Result<Vec<Click>, ClickError> {
    let bad = |why: &str| ClickError(format!("{key}: {why}"));
    let items = match params.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad("expected a list of [i, j, k] points")),
    };
    items
        .iter()
        .map(|p| {
            let coords: Vec<f64> = p
                .as_array()
                .filter(|c| c.len() == 3)
                .map(|c| c.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            if coords.len() != 3 || coords.iter().any(|c| !c.is_finite()) {
                return Err(bad(&format!("{p} is not an [i, j, k] point")));
            }
            let click: Click = std::array::from_fn(|a| coords[a].round() as i64);
            if (0..3).any(|a| click[a] < 0 || click[a] >= dims[a] as i64) {
                return Err(bad(&format!(
                    "{click:?} is outside the image of {dims:?} voxels"
                )));
            }
            Ok(click)
        })
        .collect()
}

/// `[1, channels, D, H, W]` guidance maps on a grid of `size` voxels (tensor order)
/// from clicks in that grid's coordinates (tensor order, fractional).
pub fn signal(channels: &[Vec<[f64; 3]>], size: [i64; 3], sigma: f64, device: Device) -> Tensor {
    let maps: Vec<Tensor> = channels
        .iter()
        .map(|points| point_map(points, size, sigma, device))
        .collect();
    Tensor::stack(&maps, 0).unsqueeze(0)
}

/// One channel: the sum of a Gaussian per point, scaled to a maximum of 1 (all zeros
/// without points).
fn point_map(points: &[[f64; 3]], size: [i64; 3], sigma: f64, device: Device) -> Tensor {
    let mut map = Tensor::zeros(size.as_slice(), (Kind::Float, device));
    for p in points {
        let axis = |d: usize| {
            let x = Tensor::arange(size[d], (Kind::Float, device)) - p[d];
            (-(&x * &x) / (2.0 * sigma * sigma)).exp()
        };
        let g = axis(0).view([-1, 1, 1]) * axis(1).view([1, -1, 1]) * axis(2).view([1, 1, -1]);
        map += g;
    }
    let max = map.max().double_value(&[]);
    if max > 0.0 { map / max } else { map }
}

/// The click MONAI's interaction loop makes for one label: in the largest connected
/// (face-adjacent) region of `missed` (a `[d, h, w]` mask), the voxel farthest from
/// its border. Returns that voxel (tensor order) and the region's size.
pub fn deepest_in_largest(missed: &[bool], dims: [usize; 3]) -> Option<([i64; 3], usize)> {
    let mut region: Vec<u8> = missed.iter().map(|&m| u8::from(m)).collect();
    keep_largest(&mut region, dims, &[1], true, 1);
    let size = region.iter().filter(|&&v| v == 1).count();
    if size == 0 {
        return None;
    }
    let depth = chamfer_distance(&region, dims);
    let (best, _) = depth
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))?;
    let [_, h, w] = dims;
    let voxel = [best / (h * w), best / w % h, best % w].map(|v| v as i64);
    Some((voxel, size))
}

/// Distance (in voxels, 3-4-5-like chamfer weights 1, √2, √3) from each voxel of
/// `region` to the nearest voxel outside it or outside the volume; 0 outside. An axis
/// one voxel long is a plane's (a 2D model's slice): distances are measured in it.
fn chamfer_distance(region: &[u8], dims: [usize; 3]) -> Vec<f32> {
    let [d, h, w] = dims;
    let far = (d + h + w) as f32;
    let mut dist: Vec<f32> = region
        .iter()
        .map(|&v| if v == 1 { far } else { 0.0 })
        .collect();
    // The neighbours that come earlier in scan order (13 in a volume, 4 in a plane),
    // and their distances.
    let before: Vec<([isize; 3], f32)> = neighbour_offsets(3)
        .into_iter()
        .filter(|o| *o < [0, 0, 0])
        .filter(|o| (0..3).all(|a| o[a] == 0 || dims[a] > 1))
        .map(|o| (o, (o.iter().map(|c| c * c).sum::<isize>() as f32).sqrt()))
        .collect();
    let index = |z: isize, y: isize, x: isize| -> Option<usize> {
        let inside = (0..d as isize).contains(&z)
            && (0..h as isize).contains(&y)
            && (0..w as isize).contains(&x);
        inside.then(|| (z as usize * h + y as usize) * w + x as usize)
    };
    for forward in [true, false] {
        for n in 0..region.len() {
            let i = if forward { n } else { region.len() - 1 - n };
            if dist[i] == 0.0 {
                continue;
            }
            let (z, y, x) = (
                (i / (h * w)) as isize,
                (i / w % h) as isize,
                (i % w) as isize,
            );
            let sign = if forward { 1 } else { -1 };
            let mut best = dist[i];
            for (o, step) in &before {
                let near = index(z + sign * o[0], y + sign * o[1], x + sign * o[2]);
                // Beyond the volume counts as outside the region.
                let there = near.map_or(0.0, |j| dist[j]);
                best = best.min(there + step);
            }
            dist[i] = best;
        }
    }
    dist
}

/// For each guidance channel, the click that corrects the prediction most: the
/// deepest voxel of the largest region where the channel's label is true but not
/// predicted. `truth` and `pred` are `[d, h, w]` label maps on the host; the size of
/// the region comes with each click. Only voxels at least `min_depth` voxels inside a
/// missed region count (1: all): on a grid finer than the model's, a boundary one
/// voxel off is no error a user would click.
pub fn error_clicks(
    truth: &[u8],
    pred: &[u8],
    dims: [usize; 3],
    labels: &[i64],
    min_depth: f32,
) -> Vec<Option<([i64; 3], usize)>> {
    labels
        .iter()
        .map(|&l| {
            let mut missed: Vec<bool> = truth
                .iter()
                .zip(pred)
                .map(|(&t, &p)| i64::from(t) == l && i64::from(p) != l)
                .collect();
            if min_depth > 1.0 {
                let region: Vec<u8> = missed.iter().map(|&m| u8::from(m)).collect();
                let depth = chamfer_distance(&region, dims);
                missed = depth.iter().map(|&d| d >= min_depth).collect();
            }
            deepest_in_largest(&missed, dims)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn deepedit() -> ModelConfig {
        let mut cfg = ModelConfig::spleen();
        cfg.model_type = ModelType::Deepedit;
        cfg.labels = BTreeMap::from([
            ("background".into(), 0),
            ("spleen".into(), 1),
            ("liver".into(), 2),
        ]);
        cfg
    }

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn deepedit_clicks_go_to_their_label_channels() {
        let cfg = deepedit();
        let p = params(
            json!({"spleen": [[1, 2, 3]], "liver": [], "background": [[0, 0, 0]],
                              "label": "liver", "foreground": [[4, 4, 4.2]], "client_id": "x"}),
        );
        let clicks = Clicks::from_params(&cfg, &p, [10, 10, 10]).unwrap();
        assert_eq!(
            clicks.channels,
            vec![vec![[0, 0, 0]], vec![[1, 2, 3]], vec![[4, 4, 4]]]
        );
    }

    #[test]
    fn unknown_labels_and_clicks_outside_the_image_are_refused() {
        let cfg = deepedit();
        let dims = [10, 10, 10];
        for bad in [
            json!({"kidney": [[1, 1, 1]]}),
            json!({"label": "kidney"}),
            json!({"spleen": [[10, 0, 0]]}),
            json!({"spleen": [[0, -1, 0]]}),
            json!({"spleen": [[0, 0]]}),
            json!({"spleen": "here"}),
        ] {
            assert!(
                Clicks::from_params(&cfg, &params(bad.clone()), dims).is_err(),
                "{bad}"
            );
        }
        // Slicer's empty lists for other models' labels are no clicks.
        let ok = Clicks::from_params(&cfg, &params(json!({"kidney": []})), dims).unwrap();
        assert!(ok.is_empty());
    }

    #[test]
    fn a_2d_model_takes_the_clicks_of_one_slice() {
        let mut cfg = ModelConfig::spleen();
        cfg.model_type = ModelType::Deepgrow;
        if let crate::networks::NetworkConfig::UNet(n) = &mut cfg.network {
            n.spatial_dims = 2;
        }
        let dims = [10, 10, 10];
        let clicks = |v: Value| Clicks::from_params(&cfg, &params(v), dims);
        let (fg, bg) = (json!([[1, 2, 6], [4, 5, 3]]), json!([[0, 0, 3]]));
        // Without `slice`, the lowest slice clicked (MONAI's choice); with it, that one.
        assert_eq!(
            clicks(json!({"foreground": fg, "background": bg}))
                .unwrap()
                .channels,
            vec![vec![[4, 5, 3]], vec![[0, 0, 3]]]
        );
        assert_eq!(
            clicks(json!({"foreground": fg, "background": bg, "slice": 6}))
                .unwrap()
                .channels,
            vec![vec![[1, 2, 6]], vec![]]
        );
        for (slice, why) in [
            (json!(5), "no click on slice 5"),
            (json!(10), "not a slice"),
            (json!("6"), "not a slice"),
        ] {
            let err = clicks(json!({"foreground": fg, "slice": slice})).unwrap_err();
            assert!(err.0.contains(why), "{slice}: {err}");
        }
        // A 3D model ignores `slice`.
        let volume = ModelConfig {
            network: ModelConfig::spleen().network,
            ..cfg.clone()
        };
        let all = Clicks::from_params(
            &volume,
            &params(json!({"foreground": fg, "slice": 5})),
            dims,
        );
        assert_eq!(all.unwrap().channels[0].len(), 2);
    }

    #[test]
    fn a_point_map_peaks_at_its_click() {
        let g = signal(
            &[vec![[2.0, 3.0, 4.0]], vec![]],
            [6, 7, 8],
            1.5,
            Device::Cpu,
        );
        assert_eq!(g.size(), vec![1, 2, 6, 7, 8]);
        assert_eq!(g.get(0).get(0).double_value(&[2, 3, 4]), 1.0);
        assert!(g.get(0).get(0).double_value(&[2, 3, 6]) < 0.5);
        assert_eq!(
            g.get(0).get(1).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }

    #[test]
    fn the_click_lands_deep_inside_the_largest_miss() {
        let dims = [9, 9, 9];
        let mut missed = vec![false; 729];
        // A 5³ cube at 2..7 and a lone voxel: the click is the cube's centre.
        for z in 2..7 {
            for y in 2..7 {
                for x in 2..7 {
                    missed[(z * 9 + y) * 9 + x] = true;
                }
            }
        }
        missed[0] = true;
        assert_eq!(deepest_in_largest(&missed, dims), Some(([4, 4, 4], 125)));
        // Two voxels deep, the cube's core (3³) remains; a one-voxel-thin slab does not.
        let truth: Vec<u8> = missed.iter().map(|&m| u8::from(m)).collect();
        let mut slab = vec![0u8; 729];
        slab[4 * 81..5 * 81].fill(1);
        let no = vec![0u8; 729];
        assert_eq!(
            error_clicks(&truth, &no, dims, &[1], 2.0),
            vec![Some(([4, 4, 4], 27))]
        );
        assert_eq!(error_clicks(&slab, &no, dims, &[1], 2.0), vec![None]);
        assert!(error_clicks(&slab, &no, dims, &[1], 1.0)[0].is_some());
        assert_eq!(deepest_in_largest(&[false; 8], [2, 2, 2]), None);
        // In a plane (one voxel deep: a 2D model's), depth is in-plane: a 5×5 square's
        // centre, not its first voxel.
        let mut square = vec![false; 81];
        for y in 2..7 {
            square[y * 9 + 2..y * 9 + 7].fill(true);
        }
        assert_eq!(
            deepest_in_largest(&square, [1, 9, 9]),
            Some(([0, 4, 4], 25))
        );
    }
}
