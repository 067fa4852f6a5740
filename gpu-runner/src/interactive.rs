//! Click-guided inference (MONAI Label's DeepGrow and DeepEdit tasks), on a region of
//! interest so that a click answers in well under a second on a CPU.
//!
//! As MONAI's deepgrow crops around its guidance (`SpatialCropGuidanced`) and restores
//! the result to the original geometry (`RestoreLabeld`), the runner crops the input
//! image around the clicks — their bounding box widened by the guidance `margin` and a
//! ring of `context`, at least one model window (`roi_size`) large — runs the usual
//! preprocessing on that crop only, adds the Gaussian guidance channels
//! ([`crate::guidance`]), runs the network (one window for one click, the model's
//! sliding window over a larger region), and pastes the labels inside the ring
//! back into a mask of the whole image. Elsewhere, a deepgrow mask is background and a
//! deepedit mask keeps the automatic segmentation (the model without clicks), which
//! the caller passes in.

use std::time::Instant;

use medlabel_imaging::Volume;
use tch::{Device, Kind, Tensor};

use crate::config::{Layout, ModelConfig, ModelType};
use crate::error::{Result, RunnerError};
use crate::guidance::{Clicks, signal};
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

/// Where clicks are answered: the voxels the network `sees`, and the part of them
/// whose labels are `pasted` (all but the context ring, which stays where it meets
/// the image's border).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClickRegion {
    pub seen: Region,
    pub pasted: Region,
}

/// The mask for `clicks` on `image`, with the input's dims and affine. `base` is the
/// mask outside the clicked region (deepedit's automatic segmentation); without it,
/// background. No clicks at all answer `base` (or an empty mask) unchanged.
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
    if clicks.is_empty() {
        lat.total = start.elapsed().as_secs_f64();
        return Ok((mask, lat));
    }
    let cfg = &model.config;
    let device = model.device();
    let ClickRegion {
        seen: region,
        pasted,
    } = click_region(cfg, image, clicks)?;
    let crop = crop_volume(image, region);
    let prep = prepare(&crop, None, cfg, device)?;
    let size: [i64; 3] = std::array::from_fn(|d| prep.image.size()[2 + d]);
    let crop_size = tensor_order(region.size.map(|s| s as i64));
    let on_grid: Vec<Vec<[f64; 3]>> = clicks
        .channels
        .iter()
        .map(|channel| {
            channel
                .iter()
                .map(|c| {
                    let local = std::array::from_fn(|a| (c[a] - region.start[a] as i64) as f64);
                    prep.to_grid(tensor_order(local), crop_size)
                })
                .collect()
        })
        .collect();
    let guidance = signal(&on_grid, size, cfg.guidance.sigma, device);
    let input = Tensor::cat(&[prep.image.shallow_clone(), guidance], 1);
    lat.pre = elapsed(device, start);

    let t = Instant::now();
    let amp = opts.amp && device.is_cuda();
    // Windows of the training crops' size: instance norm sees what it saw in training.
    let sw = sliding_window(model, opts);
    let logits =
        tch::no_grad(|| crate::with_amp(amp, || sw.run(&input, |x| model.forward(x, Mode::EVAL))))?;
    lat.infer = elapsed(device, t);

    let t = Instant::now();
    let labels = tch::no_grad(|| labels_on_grid(&prep, &logits));
    lat.invert = elapsed(device, t);

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
    paste(&mut mask, &crop_volume(&block, inner).data, pasted);
    lat.post = t.elapsed().as_secs_f64();
    lat.total = start.elapsed().as_secs_f64();
    Ok((mask, lat))
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

/// The input voxels the network sees for `clicks` — the clicks' box widened by the
/// guidance margin and context ring, at least one model window along each axis, kept
/// inside the image — and the part of them it answers for.
pub fn click_region(
    cfg: &ModelConfig,
    image: &Volume<f32>,
    clicks: &Clicks,
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
    let (mut seen, mut pasted) = (whole, whole);
    for c in 0..3 {
        let r = world_of[c];
        let voxels = |model_voxels: i64| model_voxels as f64 * cfg.spacing[r] / spacing[c];
        let lo = clicks.all().map(|p| p[c]).min().unwrap_or(0) as f64;
        let hi = clicks.all().map(|p| p[c]).max().unwrap_or(0) as f64;
        let ring = voxels(cfg.guidance.context).floor() as usize;
        let around = 2.0 * (voxels(cfg.guidance.margin) + ring as f64);
        let want = (hi - lo + 1.0 + around).max(voxels(cfg.roi_size[r])).ceil() as usize;
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

/// Writes a `region`-sized label block (voxel order i fastest) into `mask`.
fn paste(mask: &mut Volume<u8>, block: &[u8], region: Region) {
    let [si, sj, sk] = region.size;
    let [di, dj, _] = mask.dims;
    for k in 0..sk {
        for j in 0..sj {
            let row = ((region.start[2] + k) * dj + region.start[1] + j) * di + region.start[0];
            let src = (k * sj + j) * si;
            mask.data[row..row + si].copy_from_slice(&block[src..src + si]);
        }
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
        let mut mask = image.with_data(vec![0u8; image.len()]);
        paste(&mut mask, &[1; 120], region);
        assert_eq!(mask.data.iter().map(|&v| v as usize).sum::<usize>(), 120);
        assert_eq!(crop_volume(&mask, region).data, vec![1; 120]);
    }

    #[test]
    fn the_region_covers_the_clicks_and_a_window_inside_the_image() {
        let cfg = deepgrow();
        let (image, _) = crate::synth::case(1, [40, 30, 20], [1.0, 1.0, 1.0]);
        let clicks = Clicks {
            channels: vec![vec![[38, 1, 10]], vec![[30, 3, 9]]],
        };
        let r = click_region(&cfg, &image, &clicks).unwrap();
        // A window is 8 model voxels of 2 mm = 16 input voxels; along i the clicks span
        // 9, plus 2 · 4 of margin and 2 · 4 of context: 25, up to the image's end.
        assert_eq!(r.seen.start, [15, 0, 1]);
        assert_eq!(r.seen.size, [25, 19, 18]);
        // The context ring is not pasted, except where the image ends.
        assert_eq!(r.pasted.start, [19, 0, 5]);
        assert_eq!(r.pasted.size, [21, 15, 10]);
    }

    #[test]
    fn clicks_change_only_their_region() {
        tch::manual_seed(2);
        let model = Model::new(deepgrow(), Device::Cpu).unwrap();
        let (image, _) = crate::synth::case(1, [40, 30, 20], [1.0, 1.0, 1.0]);
        let base = image.with_data(vec![7u8; image.len()]);
        let clicks = Clicks {
            channels: vec![vec![[20, 15, 10]], vec![]],
        };
        let opts = InferOptions::default();
        let (mask, _) = infer_clicks(&model, &image, &clicks, Some(&base), &opts).unwrap();
        let region = click_region(&model.config, &image, &clicks).unwrap().pasted;
        let changed = mask.data.iter().filter(|&&v| v != 7).count();
        assert_eq!(changed, region.size.iter().product::<usize>());
        assert_eq!(
            crop_volume(&mask, region)
                .data
                .iter()
                .filter(|&&v| v == 7)
                .count(),
            0
        );
        let (empty, _) = infer_clicks(&model, &image, &Clicks::default(), None, &opts).unwrap();
        assert!(empty.data.iter().all(|&v| v == 0));
    }
}
