//! The inference pipeline: image → RAS → model spacing → intensity → sliding window →
//! softmax → back to the original grid → argmax → uint8 mask with the input's affine.
//!
//! Stages are timed like MONAI Label's result `latencies` (seconds): `pre` (orientation,
//! resampling, intensity, upload), `infer` (windows), `invert` (softmax, resampling the
//! class probabilities back to the original voxel grid, undoing the orientation), `post`
//! (argmax, download), `write` and `total`. Probabilities rather than labels are
//! resampled so boundaries stay smooth at the original resolution (with two classes only
//! the foreground probability, which decides the same argmax); when that tensor
//! would be huge (many classes on a large image) the argmax is taken first and labels
//! are resampled by nearest neighbour instead.

use std::path::Path;
use std::time::Instant;

use medlabel_imaging::Volume;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, RunnerError};
use crate::model::Model;
use crate::sliding::{BlendMode, SlidingWindow};
use crate::transforms::{self, prepare_image, tensor_order};
use crate::unet::Mode;

/// Above this many probability values the inversion resamples labels instead.
const MAX_INVERT_ELEMENTS: i64 = 1 << 29;

/// Per-request inference knobs (defaults: MONAI's overlap 0.25, Gaussian blending).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InferOptions {
    pub overlap: f64,
    pub sw_batch_size: usize,
    pub mode: BlendMode,
    /// Mixed precision (autocast to float16) for the windows; only used on CUDA.
    pub amp: bool,
}

impl Default for InferOptions {
    fn default() -> Self {
        Self {
            overlap: 0.25,
            sw_batch_size: 1,
            mode: BlendMode::Gaussian,
            amp: true,
        }
    }
}

/// Stage timings in seconds, with MONAI Label's keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    pub pre: f64,
    pub infer: f64,
    pub invert: f64,
    pub post: f64,
    pub write: f64,
    pub total: f64,
}

/// Segments an in-memory volume; the mask has the input's dims and affine. The `write`
/// latency is left at 0.
pub fn segment(
    model: &Model,
    image: &Volume<f32>,
    opts: &InferOptions,
) -> Result<(Volume<u8>, Latencies)> {
    let start = Instant::now();
    let mut lat = Latencies::default();
    let cfg = &model.config;
    let device = model.device();
    let prep = prepare_image(image, cfg.spacing, &cfg.intensity, device)?;
    lat.pre = sync_elapsed(device, start);

    let t = Instant::now();
    let sw = SlidingWindow {
        roi_size: tensor_order(cfg.roi_size),
        overlap: opts.overlap,
        sw_batch_size: opts.sw_batch_size.max(1),
        mode: opts.mode,
        sigma_scale: 0.125,
    };
    let amp = opts.amp && device.is_cuda();
    let logits = tch::no_grad(|| {
        crate::with_amp(amp, || {
            sw.run(&prep.image, |x| model.forward(x, Mode::EVAL))
        })
    })?;
    lat.infer = sync_elapsed(device, t);

    let t = Instant::now();
    let labels_ras = tch::no_grad(|| labels_on_grid(&logits, prep.ras_size));
    let labels = prep.orientation.from_ras(&labels_ras).contiguous();
    lat.invert = sync_elapsed(device, t);

    let t = Instant::now();
    let flat = labels
        .to_kind(Kind::Uint8)
        .to_device(Device::Cpu)
        .flatten(0, -1);
    let data = Vec::<u8>::try_from(&flat)?;
    if data.len() != image.len() {
        return Err(RunnerError::invalid(
            "inverted mask does not match the input voxel count",
        ));
    }
    let mask = image.with_data(data);
    lat.post = t.elapsed().as_secs_f64();
    lat.total = start.elapsed().as_secs_f64();
    Ok((mask, lat))
}

/// Class labels on a grid of `size` (the image in RAS) from window logits
/// `[1, classes, …]` on the model's grid.
fn labels_on_grid(logits: &Tensor, size: [i64; 3]) -> Tensor {
    let classes = logits.size()[1];
    let full: i64 = size.iter().product::<i64>() * classes;
    if classes == 2 && full / 2 <= MAX_INVERT_ELEMENTS {
        // Two classes: the argmax is "p1 > p0", i.e. p1 > ½ with p1 = σ(l1 − l0), and
        // linear resampling commutes with p1 − p0 = 2·p1 − 1, so resampling p1 alone
        // decides every voxel as resampling both channels would, at half the work.
        let fg = (logits.select(1, 1) - logits.select(1, 0)).sigmoid();
        transforms::resample_linear(&fg.unsqueeze(1), size)
            .gt(0.5)
            .to_kind(Kind::Uint8)
    } else if full <= MAX_INVERT_ELEMENTS {
        let probs = transforms::resample_linear(&logits.softmax(1, Kind::Float), size);
        probs.argmax(1, true)
    } else {
        transforms::resample_nearest(&logits.argmax(1, true), size)
    }
}

/// Reads `image_path`, segments it and writes the uint8 mask to `out_path`.
pub fn infer_file(
    model: &Model,
    image_path: &Path,
    out_path: &Path,
    opts: &InferOptions,
) -> Result<Latencies> {
    let start = Instant::now();
    let image = crate::io::read_image(image_path)?;
    let read = start.elapsed().as_secs_f64();
    let (mask, mut lat) = segment(model, &image, opts)?;
    let t = Instant::now();
    crate::io::write_mask(out_path, &mask)?;
    lat.write = t.elapsed().as_secs_f64();
    // Reading the file counts as preprocessing, as in MONAI Label (LoadImaged is a pre-transform).
    lat.pre += read;
    lat.total = start.elapsed().as_secs_f64();
    Ok(lat)
}

/// Seconds since `t`, after waiting for queued CUDA work so timings are honest.
fn sync_elapsed(device: Device, t: Instant) -> f64 {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    t.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Intensity, ModelConfig};
    use crate::unet::UNetConfig;
    use std::collections::BTreeMap;

    pub(crate) fn tiny_config(roi: [i64; 3]) -> ModelConfig {
        ModelConfig {
            labels: BTreeMap::from([("background".into(), 0), ("spleen".into(), 1)]),
            spacing: [2.0, 2.0, 2.0],
            intensity: Intensity::spleen_ct(),
            roi_size: roi,
            network: UNetConfig {
                in_channels: 1,
                out_channels: 2,
                channels: vec![4, 8],
                strides: vec![2],
                num_res_units: 1,
                norm: Default::default(),
                dropout: 0.0,
            },
        }
    }

    #[test]
    fn one_window_covering_the_volume_equals_one_forward_pass() {
        tch::manual_seed(3);
        let model = Model::new(tiny_config([16, 12, 8]), Device::Cpu).unwrap();
        let x = Tensor::randn([1, 1, 8, 12, 16], (Kind::Float, Device::Cpu));
        let direct = tch::no_grad(|| model.forward(&x, Mode::EVAL));
        let sw = SlidingWindow::new([8, 12, 16]);
        let windowed = tch::no_grad(|| sw.run(&x, |w| model.forward(w, Mode::EVAL))).unwrap();
        assert!(windowed.allclose(&direct, 1e-5, 1e-5, false));
    }

    #[test]
    fn two_class_inversion_decides_like_the_argmax_of_resampled_probabilities() {
        tch::manual_seed(6);
        let logits = Tensor::randn([1, 2, 7, 9, 11], (Kind::Float, Device::Cpu)) * 3.0;
        let size = [13, 17, 8];
        let fast = labels_on_grid(&logits, size);
        let probs = transforms::resample_linear(&logits.softmax(1, Kind::Float), size);
        let reference = probs.argmax(1, true).to_kind(Kind::Uint8);
        assert_eq!(fast.size(), vec![1, 1, 13, 17, 8]);
        assert!(fast.equal(&reference));
        // Both classes occur, so the comparison is not between two constant masks.
        assert!(
            fast.to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
                > 0.2
        );
        // Three classes take the general path, whose labels reach class 2.
        let three = Tensor::randn([1, 3, 7, 9, 11], (Kind::Float, Device::Cpu)) * 3.0;
        assert_eq!(labels_on_grid(&three, size).max().int64_value(&[]), 2);
    }

    #[test]
    fn mask_keeps_input_geometry_and_labels_are_in_range() {
        tch::manual_seed(4);
        let model = Model::new(tiny_config([8, 8, 8]), Device::Cpu).unwrap();
        // LPS-oriented, anisotropic input: the mask must come back on exactly this grid.
        let mut affine = medlabel_imaging::IDENTITY;
        affine[0][0] = -1.5;
        affine[1][1] = -1.0;
        affine[2][2] = 3.0;
        affine[0][3] = 12.0;
        let data = (0..20 * 14 * 6)
            .map(|i| (i % 97) as f32 * 3.0 - 100.0)
            .collect();
        let image = Volume {
            data,
            dims: [20, 14, 6],
            affine,
        };
        let opts = InferOptions {
            overlap: 0.5,
            ..Default::default()
        };
        let (mask, lat) = segment(&model, &image, &opts).unwrap();
        assert_eq!(mask.dims, image.dims);
        assert_eq!(mask.affine, image.affine);
        assert!(mask.data.iter().all(|&v| v < 2));
        assert!(lat.total >= lat.infer && lat.infer > 0.0);
    }
}
