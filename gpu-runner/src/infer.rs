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

use crate::components::keep_largest;
use crate::error::{Result, RunnerError};
use crate::model::Model;
use crate::networks::Mode;
use crate::pipeline::{PostStep, Prepared, prepare};
use crate::sliding::{BlendMode, SlidingWindow};
use crate::transforms::tensor_order;

/// Above this many probability values the inversion resamples labels instead.
const MAX_INVERT_ELEMENTS: i64 = 1 << 29;

/// Per-request inference knobs; what a request leaves out comes from the model's
/// pipeline (its bundle's inferer, or the runner's defaults: overlap 0.25, Gaussian).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InferOptions {
    pub overlap: Option<f64>,
    pub sw_batch_size: Option<usize>,
    pub mode: Option<BlendMode>,
    /// Mixed precision (autocast to float16) for the windows; only used on CUDA.
    pub amp: bool,
}

impl Default for InferOptions {
    fn default() -> Self {
        Self {
            overlap: None,
            sw_batch_size: None,
            mode: None,
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

/// A segmentation, with the class probabilities on the input grid when asked for.
#[derive(Debug)]
pub struct Prediction {
    pub mask: Volume<u8>,
    /// `[C, k, j, i]` float on the CPU: the activated outputs as the `invert` step left
    /// them (before discretisation), when the pipeline inverts probabilities.
    pub probabilities: Option<Tensor>,
    pub latencies: Latencies,
}

/// The sliding window a model's pipeline and a request's options describe.
pub fn sliding_window(model: &Model, opts: &InferOptions) -> SlidingWindow {
    let i = &model.config.pipeline.inferer;
    SlidingWindow {
        roi_size: tensor_order(model.config.roi_size),
        overlap: opts.overlap.unwrap_or(i.overlap),
        sw_batch_size: opts.sw_batch_size.unwrap_or(i.sw_batch_size).max(1),
        mode: opts.mode.unwrap_or(i.mode),
        sigma_scale: i.sigma_scale,
        padding: i.padding,
    }
}

/// Segments an in-memory volume; the mask has the input's dims and affine. The `write`
/// latency is left at 0.
pub fn segment(
    model: &Model,
    image: &Volume<f32>,
    opts: &InferOptions,
) -> Result<(Volume<u8>, Latencies)> {
    let p = predict(model, image, opts, false)?;
    Ok((p.mask, p.latencies))
}

/// [`segment`], keeping the inverted probabilities when `keep_probabilities`.
pub fn predict(
    model: &Model,
    image: &Volume<f32>,
    opts: &InferOptions,
    keep_probabilities: bool,
) -> Result<Prediction> {
    let start = Instant::now();
    let mut lat = Latencies::default();
    let device = model.device();
    let prep = prepare(image, None, &model.config, device)?;
    lat.pre = sync_elapsed(device, start);

    let t = Instant::now();
    let sw = sliding_window(model, opts);
    let amp = opts.amp && device.is_cuda();
    let logits = tch::no_grad(|| {
        crate::with_amp(amp, || {
            sw.run(&prep.image, |x| model.forward(x, Mode::EVAL))
        })
    })?;
    lat.infer = sync_elapsed(device, t);

    let t = Instant::now();
    let (labels, probabilities) = tch::no_grad(|| {
        postprocess(
            &model.config.pipeline.post,
            &prep,
            logits,
            keep_probabilities,
        )
    })?;
    lat.invert = sync_elapsed(device, t);

    let t = Instant::now();
    let flat = labels
        .to_kind(Kind::Uint8)
        .to_device(Device::Cpu)
        .flatten(0, -1);
    let mut data = Vec::<u8>::try_from(&flat)?;
    if data.len() != image.len() {
        return Err(RunnerError::invalid(
            "inverted mask does not match the input voxel count",
        ));
    }
    // Connected components run on the host; steps after inversion see the input grid.
    for s in model
        .config
        .pipeline
        .post
        .iter()
        .skip_while(|s| !matches!(s, PostStep::Invert { .. }))
    {
        if let PostStep::KeepLargestComponent {
            applied_labels,
            independent,
            connectivity,
        } = s
        {
            let [i, j, k] = image.dims;
            keep_largest(
                &mut data,
                [k, j, i],
                applied_labels,
                *independent,
                *connectivity,
            );
        }
    }
    let mask = image.with_data(data);
    lat.post = t.elapsed().as_secs_f64();
    lat.total = start.elapsed().as_secs_f64();
    Ok(Prediction {
        mask,
        probabilities: probabilities.map(|p| p.squeeze_dim(0).to_device(Device::Cpu)),
        latencies: lat,
    })
}

/// Runs the post steps up to the host-side ones: returns `[1, 1, k, j, i]` labels on
/// the input grid (and the inverted probabilities when kept). Components before the
/// inversion are taken here, on the network's grid.
fn postprocess(
    post: &[PostStep],
    prep: &Prepared,
    logits: Tensor,
    keep_probabilities: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let standard = [
        PostStep::Softmax,
        PostStep::Invert { nearest: false },
        PostStep::Argmax,
    ];
    if !keep_probabilities && post.len() >= 3 && post[..3] == standard {
        return Ok((labels_on_grid(prep, &logits), None));
    }
    let mut t = logits;
    let (mut is_labels, mut inverted, mut probs) = (false, false, None);
    for s in post {
        match s {
            PostStep::Softmax => t = t.softmax(1, Kind::Float),
            PostStep::Sigmoid => t = t.sigmoid(),
            PostStep::Invert { nearest } => {
                t = prep.invert(&t, *nearest || is_labels);
                inverted = true;
                if keep_probabilities && !is_labels {
                    probs = Some(t.shallow_clone());
                }
            }
            PostStep::Argmax => {
                t = t.argmax(1, true);
                is_labels = true;
            }
            PostStep::Threshold { value } => {
                t = t.narrow(1, 0, 1).ge(*value).to_kind(Kind::Int64);
                is_labels = true;
            }
            // After the inversion the caller does it on the host, on the final mask.
            PostStep::KeepLargestComponent { .. } if inverted => {}
            PostStep::KeepLargestComponent {
                applied_labels,
                independent,
                connectivity,
            } => {
                let size = t.size();
                let host = t.to_kind(Kind::Uint8).to_device(Device::Cpu).flatten(0, -1);
                let mut data = Vec::<u8>::try_from(&host)?;
                let dims = [size[2] as usize, size[3] as usize, size[4] as usize];
                keep_largest(&mut data, dims, applied_labels, *independent, *connectivity);
                t = Tensor::from_slice(&data)
                    .view(size.as_slice())
                    .to_kind(Kind::Int64)
                    .to_device(t.device());
            }
        }
    }
    Ok((t, probs))
}

/// The runner's standard post-processing (softmax → invert → argmax) without
/// materialising what it need not: class labels on the input grid from window logits
/// `[1, classes, …]` on the network's grid.
pub(crate) fn labels_on_grid(prep: &Prepared, logits: &Tensor) -> Tensor {
    let classes = logits.size()[1];
    let size: i64 = logits.size()[2..].iter().product();
    let full = size * classes * 8; // generous: the input grid may be finer
    if classes == 2 && full / 2 <= MAX_INVERT_ELEMENTS {
        // Two classes: the argmax is "p1 > p0", i.e. p1 > ½ with p1 = σ(l1 − l0), and
        // linear resampling commutes with p1 − p0 = 2·p1 − 1, so resampling p1 alone
        // decides every voxel as resampling both channels would, at half the work.
        let fg = (logits.select(1, 1) - logits.select(1, 0)).sigmoid();
        prep.invert(&fg.unsqueeze(1), false)
            .gt(0.5)
            .to_kind(Kind::Uint8)
    } else if full <= MAX_INVERT_ELEMENTS {
        channel_argmax(&prep.invert(&logits.softmax(1, Kind::Float), false))
    } else {
        prep.invert(&logits.argmax(1, true), true)
    }
}

/// `argmax(1, keepdim)` of a `[1, C, …]` tensor as C − 1 element-wise comparisons
/// (the first maximum wins, as in argmax): libtorch's CPU argmax over the channel axis
/// is not vectorised and takes about 100 ms on a click's region, this a few.
fn channel_argmax(t: &Tensor) -> Tensor {
    let mut best = t.narrow(1, 0, 1);
    let mut labels = best.zeros_like().to_kind(Kind::Int64);
    for c in 1..t.size()[1] {
        let candidate = t.narrow(1, c, 1);
        let better = candidate.gt_tensor(&best);
        labels = labels.masked_fill(&better, c);
        best = best.maximum(&candidate);
    }
    labels
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
pub(crate) mod tests {
    use super::*;
    use crate::config::{Intensity, ModelConfig};
    use crate::pipeline::Pipeline;
    use crate::unet::UNetConfig;
    use std::collections::BTreeMap;

    pub(crate) fn tiny_config(roi: [i64; 3]) -> ModelConfig {
        ModelConfig {
            model_type: Default::default(),
            guidance: Default::default(),
            labels: BTreeMap::from([("background".into(), 0), ("spleen".into(), 1)]),
            spacing: [2.0, 2.0, 2.0],
            intensity: Intensity::spleen_ct(),
            roi_size: roi,
            network: UNetConfig {
                spatial_dims: 3,
                in_channels: 1,
                out_channels: 2,
                channels: vec![4, 8],
                strides: vec![2],
                num_res_units: 1,
                norm: Default::default(),
                dropout: 0.0,
            }
            .into(),
            format: Default::default(),
            layout: Default::default(),
            pipeline: Pipeline::default(),
        }
    }

    #[test]
    fn one_window_covering_the_volume_equals_one_forward_pass() {
        tch::manual_seed(3);
        let model = Model::new(tiny_config([16, 12, 8]), Device::Cpu).unwrap();
        let x = Tensor::randn([1, 1, 8, 12, 16], (Kind::Float, Device::Cpu));
        let direct = tch::no_grad(|| model.forward(&x, Mode::EVAL)).unwrap();
        let sw = SlidingWindow::new([8, 12, 16]);
        let windowed = tch::no_grad(|| sw.run(&x, |w| model.forward(w, Mode::EVAL))).unwrap();
        assert!(windowed.allclose(&direct, 1e-5, 1e-5, false));
    }

    #[test]
    fn fast_standard_postprocessing_equals_the_step_by_step_one() {
        tch::manual_seed(6);
        let (image, _) = crate::synth::case(3, [13, 17, 8], [1.0, 1.3, 2.5]);
        let mut cfg = tiny_config([8, 8, 8]);
        cfg.spacing = [2.0, 1.0, 1.5];
        for classes in [2, 3] {
            let prep = prepare(&image, None, &cfg, Device::Cpu).unwrap();
            let s = prep.image.size();
            let logits =
                Tensor::randn([1, classes, s[2], s[3], s[4]], (Kind::Float, Device::Cpu)) * 3.0;
            let post = Pipeline::default().post;
            let fast = labels_on_grid(&prep, &logits);
            let (slow, probs) = postprocess(&post, &prep, logits.shallow_clone(), true).unwrap();
            assert_eq!(fast.size(), vec![1, 1, 8, 17, 13]);
            assert!(fast.to_kind(Kind::Int64).equal(&slow));
            let probs = probs.unwrap();
            // Probabilities sum to one after the (linear) inversion.
            let total = probs.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            assert!((total - 1.0).abs().max().double_value(&[]) < 1e-5);
            // Both classes occur, so the comparison is not between constant masks.
            assert!(slow.max().int64_value(&[]) == classes - 1);
        }
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
            overlap: Some(0.5),
            ..Default::default()
        };
        let (mask, lat) = segment(&model, &image, &opts).unwrap();
        assert_eq!(mask.dims, image.dims);
        assert_eq!(mask.affine, image.affine);
        assert!(mask.data.iter().all(|&v| v < 2));
        assert!(lat.total >= lat.infer && lat.infer > 0.0);
    }
}
