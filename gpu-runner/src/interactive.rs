//! Click-guided inference (MONAI Label's DeepGrow and DeepEdit tasks), on regions of
//! interest so that a click answers in well under a second on a CPU.
//!
//! As MONAI's deepgrow crops around its guidance (`SpatialCropGuidanced`) and restores
//! the result to the original geometry (`RestoreLabeld`), the runner crops the input
//! image around each click — the click widened by the guidance `margin` and a ring of
//! `context`, at least one model window (`roi_size`) large — runs the usual
//! preprocessing on that crop only, adds the Gaussian guidance channels of every click
//! ([`crate::guidance`]), runs the network, and merges the labels inside the ring into
//! a mask of the whole image: where regions overlap the nearest click decides, and a
//! click only edits its own label ([`edits`]). Elsewhere, a deepgrow mask is background
//! and a deepedit mask keeps the automatic segmentation (the model without clicks),
//! which the caller passes in.

use std::time::Instant;

use medlabel_imaging::Volume;
use tch::{Device, Kind, Tensor};

use crate::components::connected_to;
use crate::config::{Layout, ModelConfig, ModelType};
use crate::error::{Result, RunnerError};
use crate::guidance::{Click, Clicks, channel_labels, signal};
use crate::infer::{InferOptions, Latencies, labels_on_grid, segment, sliding_window};
use crate::model::Model;
use crate::networks::Mode;
use crate::pipeline::prepare;
use crate::transforms::{Orientation, tensor_order};

/// A voxel box of the input image: `start` and `size` per axis (i, j, k).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: [usize; 3],
    pub size: [usize; 3],
}

impl Region {
    fn contains(&self, voxel: [usize; 3]) -> bool {
        (0..3).all(|a| (self.start[a]..self.start[a] + self.size[a]).contains(&voxel[a]))
    }

    fn overlaps(&self, other: &Region) -> bool {
        (0..3).all(|a| {
            self.start[a] < other.start[a] + other.size[a]
                && other.start[a] < self.start[a] + self.size[a]
        })
    }
}

/// Where clicks are answered: the voxels the network `sees`, and the part of them
/// whose labels are `pasted` (all but the context ring, which stays where it meets
/// the image's border).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClickRegion {
    pub seen: Region,
    pub pasted: Region,
}

/// The mask for `clicks` on `image`, with the input's dims and affine. `base` is the
/// mask outside the clicked regions (deepedit's automatic segmentation); without it,
/// background. No clicks at all answer `base` (or an empty mask) unchanged.
///
/// Each click gets a region of its own, centred on it ([`click_region`]), where the
/// network runs with every click as guidance; a voxel that several regions answer
/// takes the label of the region whose click is nearest (in millimetres). A click's
/// window is where training showed the network its clicks; one region spanning all
/// the clicks instead runs windows that see a click at their edge or none at all, and
/// a later click far from the first then set back what the first had fixed.
pub fn infer_clicks(
    model: &Model,
    image: &Volume<f32>,
    clicks: &Clicks,
    base: Option<&Volume<u8>>,
    opts: &InferOptions,
) -> Result<(Volume<u8>, Latencies)> {
    let start = Instant::now();
    let mut mask = match base {
        Some(b) if b.dims == image.dims => b.clone(),
        Some(_) => return Err(RunnerError::invalid("base mask does not fit the image")),
        None => image.with_data(vec![0u8; image.len()]),
    };
    let mut lat = Latencies::default();
    let labels = channel_labels(&model.config);
    let points: Vec<(Click, i64)> = clicks
        .channels
        .iter()
        .zip(&labels)
        .flat_map(|(channel, &label)| channel.iter().map(move |&click| (click, label)))
        .collect();
    let mut answers = Vec::with_capacity(points.len());
    for &(point, label) in &points {
        let region = click_region(&model.config, image, &[point])?;
        let block = infer_region(model, image, clicks, region, opts, &mut lat)?;
        let pasted = region.pasted;
        let before: Vec<u8> = match base {
            Some(b) => crop_volume(b, pasted).data,
            None => vec![0; block.len()],
        };
        let click = std::array::from_fn(|a| point[a] as usize - pasted.start[a]);
        answers.push((pasted, edits(&before, &block, label, pasted.size, click)));
    }
    let spacing = image.spacing();
    let distance = |voxel: [usize; 3], point: &Click| -> f64 {
        (0..3)
            .map(|a| ((voxel[a] as f64 - point[a] as f64) * spacing[a]).powi(2))
            .sum()
    };
    // What click `c` makes of voxel `v` (inside its region), if it changes it.
    let proposal = |c: usize, v: [usize; 3]| {
        let (region, changes) = &answers[c];
        let [si, sj, _] = region.size;
        let local: [usize; 3] = std::array::from_fn(|a| v[a] - region.start[a]);
        changes[(local[2] * sj + local[1]) * si + local[0]]
    };
    for (own, (region, _)) in answers.iter().enumerate() {
        let [si, sj, sk] = region.size;
        let shared = answers
            .iter()
            .enumerate()
            .any(|(other, (r, _))| other != own && r.overlaps(region));
        for k in 0..sk {
            for j in 0..sj {
                for i in 0..si {
                    let v = [
                        region.start[0] + i,
                        region.start[1] + j,
                        region.start[2] + k,
                    ];
                    let Some(label) = proposal(own, v) else {
                        continue;
                    };
                    let mine = (distance(v, &points[own].0), own);
                    let outvoted = shared
                        && answers.iter().enumerate().any(|(other, (r, _))| {
                            other != own
                                && r.contains(v)
                                && (distance(v, &points[other].0), other) < mine
                                && proposal(other, v).is_some()
                        });
                    if !outvoted {
                        let at = mask.index(v[0], v[1], v[2]);
                        mask.data[at] = label;
                    }
                }
            }
        }
    }
    lat.total = start.elapsed().as_secs_f64();
    Ok((mask, lat))
}

/// What a click on label `clicked` at voxel `click` of a region of `size` voxels
/// changes there: per voxel, the new label or `None`. `before` is the mask the click
/// edits, `network` the network's labels, both in the region's voxel order (i fastest).
///
/// Each voxel follows [`edit`]; what the click labels as its own must also be
/// connected (through faces) to the click: to the voxels it turns to background for a
/// background click, to the label's voxels after the edit for a label click. A user
/// points at the blob that is wrong; the network's changes elsewhere in the window
/// (a background click once took true liver away beyond the false blob it was on) are
/// not what was asked.
fn edits(
    before: &[u8],
    network: &[u8],
    clicked: i64,
    size: [usize; 3],
    click: [usize; 3],
) -> Vec<Option<u8>> {
    let mut changes: Vec<Option<u8>> = before
        .iter()
        .zip(network)
        .map(|(&b, &n)| edit(b, n, clicked))
        .collect();
    let Ok(own) = u8::try_from(clicked) else {
        return changes;
    };
    // The voxels the click's own label may spread through.
    let through = |v: usize| match changes[v] {
        Some(label) => label == own,
        None => own != 0 && before[v] == own,
    };
    let [si, sj, sk] = size;
    let seed = (click[2] * sj + click[1]) * si + click[0];
    let reached = connected_to([sk, sj, si], seed, 1, &through);
    for (change, reached) in changes.iter_mut().zip(&reached) {
        if *change == Some(own) && !reached {
            *change = None;
        }
    }
    changes
}

/// What a click on label `clicked` (0: a background click) makes of a voxel labelled
/// `before`, given the `network`'s label for it in the click's region: a click edits
/// its own label only. A background click removes labels where the network finds
/// background and adds none; a click on a label adds that label where the network
/// finds it and, where the voxel had it, gives it the network's label instead. `None`:
/// the click leaves the voxel alone.
///
/// As a user expects of an editing tool, a click on the liver changes nothing but liver:
/// it may claim a voxel for the liver, but never gives a spleen voxel to anything else,
/// and a background click never grows an organ. Without this rule a background click
/// could shrink an organ it was not on, and did in the held-out test.
fn edit(before: u8, network: u8, clicked: i64) -> Option<u8> {
    let clicked = u8::try_from(clicked).ok()?;
    match (clicked, before == clicked, network == clicked) {
        (0, false, true) => Some(0),
        (0, _, _) => None,
        (_, false, true) => Some(clicked),
        (_, true, false) => Some(network),
        _ => None,
    }
}

/// The network's labels for the `pasted` part of `region` (voxel order i fastest),
/// with `clicks` as guidance; adds its stages to `lat`.
fn infer_region(
    model: &Model,
    image: &Volume<f32>,
    clicks: &Clicks,
    ClickRegion {
        seen: region,
        pasted,
    }: ClickRegion,
    opts: &InferOptions,
    lat: &mut Latencies,
) -> Result<Vec<u8>> {
    let start = Instant::now();
    let cfg = &model.config;
    let device = model.device();
    let crop = crop_volume(image, region);
    let prep = prepare(&crop, None, cfg, device)?;
    let size: [i64; 3] = std::array::from_fn(|d| prep.image.size()[2 + d]);
    let crop_size = tensor_order(region.size.map(|s| s as i64));
    // A 2D model's guidance is the clicks of its slice (a point map keeps clicks off
    // its grid, at full strength).
    let planar = cfg.dimension() == 2;
    let on_grid: Vec<Vec<[f64; 3]>> = clicks
        .channels
        .iter()
        .map(|channel| {
            channel
                .iter()
                .filter(|c| !planar || c[2] == region.start[2] as i64)
                .map(|c| {
                    let local = std::array::from_fn(|a| (c[a] - region.start[a] as i64) as f64);
                    prep.to_grid(tensor_order(local), crop_size)
                })
                .collect()
        })
        .collect();
    let guidance = signal(&on_grid, size, cfg.guidance.sigma, device);
    let input = Tensor::cat(&[prep.image.shallow_clone(), guidance], 1);
    lat.pre += elapsed(device, start);

    let t = Instant::now();
    let amp = opts.amp && device.is_cuda();
    // Windows of the training crops' size: instance norm sees what it saw in training.
    let sw = sliding_window(model, opts);
    let logits =
        tch::no_grad(|| crate::with_amp(amp, || sw.run(&input, |x| model.forward(x, Mode::EVAL))))?;
    lat.infer += elapsed(device, t);

    let t = Instant::now();
    let labels = tch::no_grad(|| labels_on_grid(&prep, &logits));
    lat.invert += elapsed(device, t);

    let t = Instant::now();
    let host = labels
        .to_kind(Kind::Uint8)
        .to_device(Device::Cpu)
        .flatten(0, -1);
    let block = crop.with_data(Vec::<u8>::try_from(&host)?);
    let inner = Region {
        start: std::array::from_fn(|a| pasted.start[a] - region.start[a]),
        size: pasted.size,
    };
    let labels = crop_volume(&block, inner).data;
    lat.post += t.elapsed().as_secs_f64();
    Ok(labels)
}

/// The network on a `[1, C, D, H, W]` input of any size: zero-padded up to the
/// network's size divisor, the logits cropped back.
pub fn forward_padded(model: &Model, input: &Tensor) -> Result<Tensor> {
    let div = grid_divisor(&model.config);
    let s = input.size();
    let pad: [i64; 3] = std::array::from_fn(|d| (div[d] - s[2 + d] % div[d]) % div[d]);
    let padded = input.constant_pad_nd([0, pad[2], 0, pad[1], 0, pad[0]]);
    let out = model.forward(&padded, Mode::EVAL)?;
    Ok(out
        .narrow(2, 0, s[2])
        .narrow(3, 0, s[3])
        .narrow(4, 0, s[4])
        .to_kind(Kind::Float))
}

/// The network's size divisor along the tensor axes (D, H, W).
pub fn grid_divisor(cfg: &ModelConfig) -> [i64; 3] {
    let div = cfg.network.size_divisor();
    match cfg.layout {
        Layout::Xyz => tensor_order(div),
        Layout::Zyx => div,
    }
}

/// The input voxels the network sees for `points` — their box widened by the guidance
/// margin and context ring, at least one model window along each axis, kept inside the
/// image — and the part of them it answers for.
pub fn click_region(
    cfg: &ModelConfig,
    image: &Volume<f32>,
    points: &[Click],
) -> Result<ClickRegion> {
    let spacing = image.spacing();
    // Model spacing and window along each input axis (the world axis it runs along).
    let ras = Orientation::from_affine(&image.affine)?;
    let world_of: [usize; 3] = std::array::from_fn(|c| {
        (0..3)
            .find(|&r| ras.permute_ijk([0, 1, 2])[r] == c)
            .unwrap_or(c)
    });
    let whole = Region {
        start: [0; 3],
        size: image.dims,
    };
    // A 2D model answers the slice of its clicks (k, as Slicer numbers slices), in the
    // plane the network was trained on: only an image whose k runs along S has both.
    let planar = cfg.dimension() == 2;
    if planar && world_of[2] != 2 {
        return Err(RunnerError::invalid(
            "a 2D model segments axial slices; this image's slices (k) are not axial",
        ));
    }
    let (mut seen, mut pasted) = (whole, whole);
    for c in 0..3 {
        let r = world_of[c];
        let voxels = |model_voxels: i64| model_voxels as f64 * cfg.spacing[r] / spacing[c];
        let lo = points.iter().map(|p| p[c]).min().unwrap_or(0) as f64;
        let hi = points.iter().map(|p| p[c]).max().unwrap_or(0) as f64;
        let flat = planar && c == 2;
        let ring = if flat {
            0
        } else {
            voxels(cfg.guidance.context).floor() as usize
        };
        let around = if flat {
            0.0
        } else {
            2.0 * (voxels(cfg.guidance.margin) + ring as f64)
        };
        let window = if flat { 1.0 } else { voxels(cfg.roi_size[r]) };
        let want = (hi - lo + 1.0 + around).max(window).ceil() as usize;
        let dim = image.dims[c];
        if want < dim {
            let centre = (lo + hi) / 2.0;
            let first = (centre - want as f64 / 2.0).round().max(0.0) as usize;
            seen.start[c] = first.min(dim - want);
            seen.size[c] = want;
        }
        let end = seen.start[c] + seen.size[c];
        let from = if seen.start[c] > 0 {
            seen.start[c] + ring
        } else {
            0
        };
        let to = if end < dim { end - ring } else { dim };
        pasted.start[c] = from;
        pasted.size[c] = to.saturating_sub(from).max(1);
    }
    Ok(ClickRegion { seen, pasted })
}

/// The voxels of `region` as a volume of their own, placed where they were in space.
pub fn crop_volume<T: Copy>(image: &Volume<T>, region: Region) -> Volume<T> {
    let [si, sj, sk] = region.size;
    let mut data = Vec::with_capacity(si * sj * sk);
    let [di, dj, _] = image.dims;
    for k in region.start[2]..region.start[2] + sk {
        for j in region.start[1]..region.start[1] + sj {
            let row = (k * dj + j) * di + region.start[0];
            data.extend_from_slice(&image.data[row..row + si]);
        }
    }
    let mut affine = image.affine;
    for (r, row) in affine.iter_mut().take(3).enumerate() {
        row[3] += (0..3)
            .map(|c| image.affine[r][c] * region.start[c] as f64)
            .sum::<f64>();
    }
    Volume {
        data,
        dims: region.size,
        affine,
    }
}

/// The mask a request asks for: automatic segmentation for a segmentation model;
/// the clicks' mask for deepgrow; for deepedit the automatic segmentation with the
/// clicked region re-segmented. `auto` keeps deepedit's automatic segmentation of the
/// last image, so that each click costs only its region.
pub fn answer(
    model: &Model,
    image: &Volume<f32>,
    clicks: &Clicks,
    auto: &mut AutoMask,
    opts: &InferOptions,
) -> Result<(Volume<u8>, Latencies)> {
    match model.config.model_type {
        ModelType::Segmentation => segment(model, image, opts),
        ModelType::Deepgrow => infer_clicks(model, image, clicks, None, opts),
        ModelType::Deepedit => {
            let start = Instant::now();
            let base = auto.get_or_segment(model, image, opts)?;
            let (mask, mut lat) = infer_clicks(model, image, clicks, Some(base), opts)?;
            lat.total = start.elapsed().as_secs_f64();
            Ok((mask, lat))
        }
    }
}

/// A model's automatic segmentation of the image it saw last, recognised by content.
#[derive(Debug, Default)]
pub struct AutoMask {
    last: Option<(u64, Volume<u8>)>,
}

impl AutoMask {
    /// The automatic segmentation of `image`, made now unless it is the last image's.
    pub fn get_or_segment(
        &mut self,
        model: &Model,
        image: &Volume<f32>,
        opts: &InferOptions,
    ) -> Result<&Volume<u8>> {
        let key = content_key(image);
        if self.last.as_ref().is_none_or(|(k, _)| *k != key) {
            let (mask, _) = segment(model, image, opts)?;
            self.last = Some((key, mask));
        }
        Ok(&self.last.as_ref().expect("set just above").1)
    }
}

/// A 64-bit fingerprint of a volume's grid and voxels (a multiply–xor hash: fast
/// enough to run on every click, and any changed voxel changes it).
fn content_key(image: &Volume<f32>) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(K).rotate_left(29);
    let grid = image
        .dims
        .iter()
        .map(|&d| d as u64)
        .chain(image.affine.iter().flatten().map(|a| a.to_bits()));
    let voxels = image.data.iter().map(|v| u64::from(v.to_bits()));
    grid.chain(voxels).fold(K, mix)
}

fn elapsed(device: Device, t: Instant) -> f64 {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    t.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Guidance, ModelType};
    use crate::infer::tests::tiny_config;
    use std::collections::BTreeMap;

    fn deepgrow() -> ModelConfig {
        let mut cfg = tiny_config([8, 8, 8]);
        cfg.model_type = ModelType::Deepgrow;
        cfg.guidance = Guidance {
            margin: 2,
            context: 2,
            ..Guidance::default()
        };
        cfg.labels = BTreeMap::from([("background".into(), 0), ("foreground".into(), 1)]);
        if let crate::networks::NetworkConfig::UNet(n) = &mut cfg.network {
            n.in_channels = 3;
        }
        cfg
    }

    #[test]
    fn a_crop_keeps_its_place_in_space() {
        let (image, _) = crate::synth::case(1, [12, 10, 8], [1.0, 1.5, 2.0]);
        let region = Region {
            start: [3, 2, 1],
            size: [4, 5, 6],
        };
        let crop = crop_volume(&image, region);
        assert_eq!(crop.data.len(), 4 * 5 * 6);
        assert_eq!(crop.data[0], image.data[(12 * 10) + 2 * 12 + 3]);
        let world = |v: &Volume<f32>, p: [f64; 3]| -> [f64; 3] {
            std::array::from_fn(|r| {
                (0..3).map(|c| v.affine[r][c] * p[c]).sum::<f64>() + v.affine[r][3]
            })
        };
        assert_eq!(world(&crop, [0.0; 3]), world(&image, [3.0, 2.0, 1.0]));
    }

    #[test]
    fn the_region_covers_the_clicks_and_a_window_inside_the_image() {
        let cfg = deepgrow();
        let (image, _) = crate::synth::case(1, [40, 30, 20], [1.0, 1.0, 1.0]);
        let r = click_region(&cfg, &image, &[[38, 1, 10], [30, 3, 9]]).unwrap();
        // A window is 8 model voxels of 2 mm = 16 input voxels; along i the clicks span
        // 9, plus 2 · 4 of margin and 2 · 4 of context: 25, up to the image's end.
        assert_eq!(r.seen.start, [15, 0, 1]);
        assert_eq!(r.seen.size, [25, 19, 18]);
        // The context ring is not pasted, except where the image ends.
        assert_eq!(r.pasted.start, [19, 0, 5]);
        assert_eq!(r.pasted.size, [21, 15, 10]);
    }

    /// A 2D deepgrow model whose network finds foreground everywhere (every weight 0,
    /// every two-channel bias [0, 1]: the last layer's output is its bias).
    fn everywhere_2d() -> Model {
        let mut cfg = deepgrow();
        cfg.roi_size = [8, 8, 1];
        if let crate::networks::NetworkConfig::UNet(n) = &mut cfg.network {
            n.spatial_dims = 2;
        }
        let model = Model::new(cfg, Device::Cpu).unwrap();
        tch::no_grad(|| {
            for (name, mut t) in model.vs.variables() {
                let _ = t.zero_();
                if name.ends_with("bias") && t.size() == [2] {
                    t.copy_(&Tensor::from_slice(&[0.0f32, 1.0]));
                }
            }
        });
        model
    }

    #[test]
    fn a_2d_model_answers_the_slice_clicked() {
        let model = everywhere_2d();
        assert_eq!(model.config.dimension(), 2);
        let (image, _) = crate::synth::case(1, [40, 30, 20], [1.0, 1.0, 2.5]);
        let r = click_region(&model.config, &image, &[[20, 15, 7]]).unwrap();
        assert_eq!((r.seen.start[2], r.seen.size[2]), (7, 1));
        assert_eq!((r.pasted.start[2], r.pasted.size[2]), (7, 1));
        // Slicer's request: clicks on two slices, `slice` naming one of them.
        let params = serde_json::json!({"foreground": [[20, 15, 7], [5, 5, 12]], "background": [], "slice": 7});
        let clicks =
            Clicks::from_params(&model.config, params.as_object().unwrap(), image.dims).unwrap();
        assert_eq!(clicks.channels, vec![vec![[20, 15, 7]], vec![]]);
        let (mask, _) =
            infer_clicks(&model, &image, &clicks, None, &InferOptions::default()).unwrap();
        let plane = image.dims[0] * image.dims[1];
        let labelled: Vec<usize> = (0..image.dims[2])
            .map(|k| {
                mask.data[k * plane..(k + 1) * plane]
                    .iter()
                    .filter(|&&v| v == 1)
                    .count()
            })
            .collect();
        // The pasted window of slice 7 is labelled, whole; no other slice is touched.
        assert_eq!(
            labelled[7],
            r.pasted.size[0] * r.pasted.size[1],
            "{labelled:?}"
        );
        assert_eq!(labelled.iter().sum::<usize>(), labelled[7], "{labelled:?}");
        // An image whose slices (k) run along R has no axial slice to answer.
        let mut sagittal = image.clone();
        for row in sagittal.affine.iter_mut().take(3) {
            row.swap(0, 2);
        }
        let err = click_region(&model.config, &sagittal, &[[20, 15, 7]]).unwrap_err();
        assert!(err.to_string().contains("axial"), "{err}");
    }

    #[test]
    fn clicks_change_only_their_region_and_their_label() {
        tch::manual_seed(2);
        let model = Model::new(deepgrow(), Device::Cpu).unwrap();
        let (image, _) = crate::synth::case(1, [40, 30, 20], [1.0, 1.0, 1.0]);
        let clicks = Clicks {
            channels: vec![vec![[20, 15, 10]], vec![]],
        };
        let opts = InferOptions::default();
        let region = click_region(&model.config, &image, &[[20, 15, 10]])
            .unwrap()
            .pasted;
        let changed_inside = |mask: &Volume<u8>, before: u8| {
            let inside = crop_volume(mask, region).data;
            let outside = mask.data.iter().filter(|&&v| v != before).count()
                - inside.iter().filter(|&&v| v != before).count();
            assert_eq!(outside, 0, "a voxel outside the click's region changed");
            inside.into_iter().filter(move |&v| v != before)
        };
        // Over another label a foreground click can only add its own.
        let other = image.with_data(vec![7u8; image.len()]);
        let (added, _) = infer_clicks(&model, &image, &clicks, Some(&other), &opts).unwrap();
        assert!(changed_inside(&added, 7).all(|v| v == 1));
        // Over its own label it can only give voxels up, to the network's background.
        let own = image.with_data(vec![1u8; image.len()]);
        let (kept, _) = infer_clicks(&model, &image, &clicks, Some(&own), &opts).unwrap();
        assert!(changed_inside(&kept, 1).all(|v| v == 0));
        let (empty, _) = infer_clicks(&model, &image, &Clicks::default(), None, &opts).unwrap();
        assert!(empty.data.iter().all(|&v| v == 0));
    }

    #[test]
    fn a_click_labels_only_what_is_connected_to_it() {
        // Rows of five voxels, the click at the given one.
        let row = |before: [u8; 5], network: [u8; 5], clicked: i64, at: usize| {
            edits(&before, &network, clicked, [5, 1, 1], [at, 0, 0])
        };
        // A background click removes the blob it is on, not the one beyond a gap.
        assert_eq!(
            row([2, 2, 0, 2, 2], [0; 5], 0, 0),
            [Some(0), Some(0), None, None, None]
        );
        // A label click adds its label next to the click only.
        assert_eq!(
            row([0; 5], [1, 1, 0, 1, 1], 1, 4),
            [None, None, None, Some(1), Some(1)]
        );
        // ... and grows through what already has its label.
        assert_eq!(
            row([0, 1, 1, 0, 0], [1, 1, 1, 1, 0], 1, 3),
            [Some(1), None, None, Some(1), None]
        );
        // Giving up its label where the network drops it is not bound to the click.
        assert_eq!(
            row([1; 5], [0, 1, 1, 1, 0], 1, 2),
            [Some(0), None, None, None, Some(0)]
        );
    }

    #[test]
    fn a_click_edits_its_own_label_only() {
        // (label before, network's label, clicked label) -> new label
        let cases = [
            ((2, 0, 0), Some(0)), // background click removes an organ the network drops
            ((2, 1, 0), None),    // ... but does not relabel it
            ((0, 1, 0), None),    // ... nor grow one
            ((0, 1, 1), Some(1)), // an organ click adds its organ
            ((2, 1, 1), Some(1)), // ... over another
            ((1, 0, 1), Some(0)), // ... and gives up voxels the network finds elsewhere
            ((1, 2, 1), Some(2)),
            ((2, 0, 1), None), // ... but never takes another organ's voxel away
            ((1, 1, 1), None),
        ];
        for ((before, network, clicked), expected) in cases {
            assert_eq!(
                edit(before, network, clicked),
                expected,
                "{before} {network} {clicked}"
            );
        }
    }
}
