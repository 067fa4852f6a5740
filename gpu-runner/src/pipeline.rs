//! A model's pre- and post-processing as an ordered list of steps, the subset of MONAI
//! transforms the runner implements natively (on tch tensors, on the model's device).
//!
//! The default pipeline is what every model did before bundles: orientation to RAS,
//! resampling to the config's `spacing`, its `intensity` step; sliding-window logits;
//! softmax, inversion to the input grid, argmax. An imported bundle gets its own list,
//! in the bundle's order ([`crate::bundle`] maps MONAI's transforms onto these steps).
//! Values with their own config fields (`spacing`, `intensity`, `roi_size`) are not
//! repeated here: a step refers to them.
//!
//! [`prepare`] runs the pre steps and records how to undo the geometric ones (crop,
//! resampling, orientation), which `Invert` replays backwards like MONAI's `Invertd`.

use medlabel_imaging::Volume;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::{Result, RunnerError};
use crate::sliding::{BlendMode, PadMode};
use crate::transforms::{
    Orientation, apply_intensity, resample, resampled_size, step, tensor_order, volume_to_tensor,
};

/// The steps around the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    #[serde(default = "default_pre")]
    pub pre: Vec<PreStep>,
    #[serde(default)]
    pub inferer: Inferer,
    #[serde(default = "default_post")]
    pub post: Vec<PostStep>,
}

fn default_pre() -> Vec<PreStep> {
    vec![
        PreStep::Orientation,
        PreStep::Spacing {
            mode: Interp::Bilinear,
        },
        PreStep::Intensity,
    ]
}

fn default_post() -> Vec<PostStep> {
    vec![
        PostStep::Softmax,
        PostStep::Invert { nearest: false },
        PostStep::Argmax,
    ]
}

impl Default for Pipeline {
    fn default() -> Self {
        Self {
            pre: default_pre(),
            inferer: Inferer::default(),
            post: default_post(),
        }
    }
}

/// Interpolation of a resampling step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interp {
    #[default]
    Bilinear,
    Nearest,
}

/// A preprocessing step (MONAI's name in brackets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum PreStep {
    /// Axes to R, A, S (`Orientationd(axcodes="RAS")`).
    Orientation,
    /// Resample to the config's `spacing` (`Spacingd(pixdim, mode)`).
    Spacing {
        #[serde(default)]
        mode: Interp,
    },
    /// The config's `intensity` (`ScaleIntensityRanged`, `NormalizeIntensityd`, …).
    Intensity,
    /// Crop to the bounding box of voxels > 0 (`CropForegroundd` with its default
    /// `select_fn`): widened by `margin`, grown to multiples of `k_divisible` around its
    /// centre (zero-padded where that passes the border), clipped to the image when
    /// `allow_smaller`.
    CropForeground {
        #[serde(default)]
        margin: [i64; 3],
        #[serde(default = "ones")]
        k_divisible: [i64; 3],
        #[serde(default)]
        allow_smaller: bool,
    },
}

fn ones() -> [i64; 3] {
    [1; 3]
}

/// Sliding-window settings besides the window size (the config's `roi_size`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Inferer {
    pub sw_batch_size: usize,
    pub overlap: f64,
    pub mode: BlendMode,
    pub sigma_scale: f64,
    /// How an image smaller than the window is padded.
    pub padding: PadMode,
}

impl Default for Inferer {
    /// The runner's defaults (MONAI Label's infer settings, Gaussian blending).
    fn default() -> Self {
        Self {
            sw_batch_size: 1,
            overlap: 0.25,
            mode: BlendMode::Gaussian,
            sigma_scale: 0.125,
            padding: PadMode::Constant,
        }
    }
}

/// A postprocessing step (MONAI's name in brackets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum PostStep {
    /// `Activationsd(softmax=True)` over the channels.
    Softmax,
    /// `Activationsd(sigmoid=True)`.
    Sigmoid,
    /// Back to the input's grid (`Invertd`); labels are always resampled by nearest.
    Invert {
        #[serde(default)]
        nearest: bool,
    },
    /// `AsDiscreted(argmax=True)`.
    Argmax,
    /// `AsDiscreted(threshold=value)` on a single output channel: label 1 where ≥ value.
    Threshold { value: f64 },
    /// `KeepLargestConnectedComponentd` (empty `applied_labels`: every label;
    /// `connectivity` 1, 2 or 3, MONAI's default 3).
    KeepLargestComponent {
        #[serde(default)]
        applied_labels: Vec<u8>,
        #[serde(default = "yes")]
        independent: bool,
        #[serde(default = "full")]
        connectivity: u8,
    },
}

fn yes() -> bool {
    true
}
fn full() -> u8 {
    3
}

impl Pipeline {
    /// Whether this is the default pipeline (then `config.json` leaves it out).
    pub fn is_standard(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the preprocessing is the runner's own (orientation to RAS, spacing,
    /// intensity), whatever the inferer and postprocessing.
    pub fn has_standard_pre(&self) -> bool {
        self.pre == default_pre()
    }

    /// Checks the order rules the executor relies on, for a network of `out` channels.
    pub fn validate(&self, out: i64) -> Result<()> {
        let err = |m: String| Err(RunnerError::invalid(format!("pipeline: {m}")));
        for (i, s) in self.pre.iter().enumerate() {
            let same = |o: &PreStep| std::mem::discriminant(o) == std::mem::discriminant(s);
            if self.pre[..i].iter().any(same) {
                return err(format!("{s:?} appears twice in pre"));
            }
            if let PreStep::CropForeground {
                margin,
                k_divisible,
                ..
            } = s
                && (margin.iter().any(|&m| m < 0) || k_divisible.iter().any(|&k| k < 1))
            {
                return err("crop_foreground needs margin ≥ 0 and k_divisible ≥ 1".into());
            }
        }
        let i = &self.inferer;
        if i.sw_batch_size == 0 || !(0.0..1.0).contains(&i.overlap) || i.sigma_scale <= 0.0 {
            return err(
                "inferer needs sw_batch_size ≥ 1, overlap in [0, 1), sigma_scale > 0".into(),
            );
        }
        let pos = |f: &dyn Fn(&PostStep) -> bool| self.post.iter().position(f);
        let count = |f: &dyn Fn(&PostStep) -> bool| self.post.iter().filter(|s| f(s)).count();
        let discrete = |s: &PostStep| matches!(s, PostStep::Argmax | PostStep::Threshold { .. });
        let activation = |s: &PostStep| matches!(s, PostStep::Softmax | PostStep::Sigmoid);
        if count(&discrete) != 1 || count(&|s| matches!(s, PostStep::Invert { .. })) != 1 {
            return err("post needs exactly one argmax/threshold and one invert".into());
        }
        if count(&activation) > 1 {
            return err("post has more than one activation".into());
        }
        let d = pos(&discrete).expect("counted above");
        if pos(&activation).is_some_and(|a| a > d) {
            return err("the activation must come before argmax/threshold".into());
        }
        if pos(&|s| matches!(s, PostStep::KeepLargestComponent { .. })).is_some_and(|k| k < d) {
            return err("keep_largest_component works on labels: put it after argmax".into());
        }
        match &self.post[d] {
            PostStep::Argmax if out < 2 => err("argmax needs at least two output channels".into()),
            PostStep::Threshold { .. } if out != 1 => err(format!(
                "threshold gives one label map only for one output channel, the network has {out}"
            )),
            _ => Ok(()),
        }
    }
}

/// A geometric preprocessing step as it was applied, so it can be undone.
#[derive(Debug, Clone)]
enum Undo {
    Orientation(Orientation),
    /// Resampled from `size` to `to` (tensor order); sampling back steps by `step`.
    Resample {
        size: [i64; 3],
        to: [i64; 3],
        step: [f64; 3],
    },
    /// Cropped from `size` starting at `start` (negative: padded).
    Crop {
        size: [i64; 3],
        start: [i64; 3],
    },
}

/// An image on the network's grid, and the way back to the input's.
#[derive(Debug)]
pub struct Prepared {
    /// `[1, C, D, H, W]` float on the model's device.
    pub image: Tensor,
    /// `[1, 1, D, H, W]` int64 labels on the same grid, when a label map was given.
    pub label: Option<Tensor>,
    undo: Vec<Undo>,
}

/// Runs the pre steps on `image` (and the geometric ones, by nearest neighbour, on an
/// aligned `label` map).
pub fn prepare(
    image: &Volume<f32>,
    label: Option<&Volume<f32>>,
    cfg: &ModelConfig,
    device: Device,
) -> Result<Prepared> {
    if image.is_empty() {
        return Err(RunnerError::invalid("image has no voxels"));
    }
    if let Some(l) = label
        && l.dims != image.dims
    {
        return Err(RunnerError::invalid(format!(
            "label dims {:?} differ from image dims {:?}",
            l.dims, image.dims
        )));
    }
    let mut img = volume_to_tensor(image, device);
    let mut lab = label.map(|l| volume_to_tensor(l, device));
    // Voxel spacing along the current tensor axes.
    let mut spacing = tensor_order(image.spacing());
    let mut undo = Vec::new();
    let size = |t: &Tensor| -> [i64; 3] { std::array::from_fn(|d| t.size()[2 + d]) };
    for s in &cfg.pipeline.pre {
        match s {
            PreStep::Orientation => {
                let o = Orientation::from_affine(&image.affine)?;
                img = o.to_ras(&img).contiguous();
                lab = lab.map(|l| o.to_ras(&l).contiguous());
                // Spacing per tensor axis follows the axes (it may already be resampled).
                spacing = tensor_order(o.permute_ijk(tensor_order(spacing)));
                undo.push(Undo::Orientation(o));
            }
            PreStep::Spacing { mode } => {
                let mut target = tensor_order(cfg.spacing);
                if cfg.dimension() == 2 {
                    // A 2D model keeps the slices as they are (MONAI's 2D DeepGrow
                    // resamples in-plane only); orientation put S on axis 0.
                    target[0] = spacing[0];
                }
                let from = size(&img);
                let to = resampled_size(from, spacing, target);
                let fwd = step(spacing, target);
                img = resample(&img, to, fwd, *mode == Interp::Nearest);
                lab = lab.map(|l| resample(&l, to, fwd, true));
                undo.push(Undo::Resample {
                    size: from,
                    to,
                    step: step(target, spacing),
                });
                spacing = target;
            }
            PreStep::Intensity => img = apply_intensity(&img, &cfg.intensity),
            PreStep::CropForeground {
                margin,
                k_divisible,
                allow_smaller,
            } => {
                let from = size(&img);
                let Some(start_end) = foreground_box(
                    &img,
                    tensor_order(*margin),
                    tensor_order(*k_divisible),
                    *allow_smaller,
                ) else {
                    continue; // nothing > 0: keep the whole image rather than none
                };
                img = crop_pad(&img, start_end);
                lab = lab.map(|l| crop_pad(&l, start_end));
                undo.push(Undo::Crop {
                    size: from,
                    start: start_end.map(|(s, _)| s),
                });
            }
        }
    }
    Ok(Prepared {
        image: img,
        label: lab.map(|l| l.round().to_kind(Kind::Int64)),
        undo,
    })
}

impl Prepared {
    /// Where voxel position `p` (tensor order) of the input image, of `size` voxels
    /// (tensor order), lies on the network's grid (tensor order, fractional): how a
    /// click follows the image through the geometric steps.
    pub fn to_grid(&self, p: [f64; 3], size: [i64; 3]) -> [f64; 3] {
        let (mut p, mut size) = (p, size);
        for u in &self.undo {
            match u {
                Undo::Orientation(o) => {
                    let ras = o.point_to_ras(tensor_order(p), tensor_order(size));
                    p = tensor_order(ras);
                    size = tensor_order(o.permute_ijk(tensor_order(size)));
                }
                // Output voxel j samples input position j·(target / spacing).
                Undo::Resample { to, step, .. } => {
                    p = std::array::from_fn(|d| p[d] * step[d]);
                    size = *to;
                }
                Undo::Crop { start, .. } => {
                    p = std::array::from_fn(|d| p[d] - start[d] as f64);
                }
            }
        }
        p
    }

    /// Takes a `[1, C, …]` tensor on the network's grid back to the input's grid and
    /// voxel order (`[1, C, k, j, i]`), undoing the geometric steps in reverse.
    pub fn invert(&self, t: &Tensor, nearest: bool) -> Tensor {
        self.undo
            .iter()
            .rev()
            .fold(t.shallow_clone(), |t, u| match u {
                Undo::Orientation(o) => o.from_ras(&t).contiguous(),
                Undo::Resample { size, step, .. } => resample(&t, *size, *step, nearest),
                Undo::Crop { size, start } => {
                    let cur: [i64; 3] = std::array::from_fn(|d| t.size()[2 + d]);
                    // Negative padding crops what the forward step padded.
                    let pad: [(i64, i64); 3] =
                        std::array::from_fn(|d| (start[d], size[d] - start[d] - cur[d]));
                    t.constant_pad_nd([pad[2].0, pad[2].1, pad[1].0, pad[1].1, pad[0].0, pad[0].1])
                }
            })
    }
}

/// MONAI's `CropForeground` box (tensor order, `(start, end)` per axis, possibly beyond
/// the image), or `None` when no voxel is > 0.
fn foreground_box(
    img: &Tensor,
    margin: [i64; 3],
    k: [i64; 3],
    allow_smaller: bool,
) -> Option<[(i64, i64); 3]> {
    let mask = img.gt(0.0).any_dims([0i64, 1].as_slice(), false);
    let size: [i64; 3] = std::array::from_fn(|d| mask.size()[d]);
    let mut out = [(0, 0); 3];
    for (d, o) in out.iter_mut().enumerate() {
        let others: Vec<i64> = (0..3).filter(|&x| x != d as i64).collect();
        let idx = mask.any_dims(others.as_slice(), false).nonzero();
        if idx.size()[0] == 0 {
            return None;
        }
        let (lo, hi) = (idx.min().int64_value(&[]), idx.max().int64_value(&[]));
        let (mut s, mut e) = (lo - margin[d], hi + margin[d] + 1);
        if allow_smaller {
            (s, e) = (s.max(0), e.min(size[d]));
        }
        let len = e - s;
        let want = (len + k[d] - 1) / k[d] * k[d];
        s -= (want - len).div_euclid(2);
        *o = (s, s + want);
    }
    Some(out)
}

/// Crops `[N, C, D, H, W]` to `box_` (tensor order), zero-padding where it passes the
/// border.
fn crop_pad(t: &Tensor, box_: [(i64, i64); 3]) -> Tensor {
    let size: [i64; 3] = std::array::from_fn(|d| t.size()[2 + d]);
    let pad: [(i64, i64); 3] = std::array::from_fn(|d| (-box_[d].0, box_[d].1 - size[d]));
    t.constant_pad_nd([pad[2].0, pad[2].1, pad[1].0, pad[1].1, pad[0].0, pad[0].1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_rules_are_checked() {
        let mut p = Pipeline::default();
        assert!(p.validate(2).is_ok());
        p.post.swap(0, 2); // argmax before softmax
        assert!(
            p.validate(2)
                .unwrap_err()
                .to_string()
                .contains("activation")
        );
        let mut p = Pipeline::default();
        p.post.retain(|s| !matches!(s, PostStep::Invert { .. }));
        assert!(p.validate(2).is_err());
        let mut p = Pipeline::default();
        p.post[2] = PostStep::Threshold { value: 0.5 };
        assert!(p.validate(2).unwrap_err().to_string().contains("threshold"));
        assert!(p.validate(1).is_ok());
    }

    #[test]
    fn a_click_follows_its_voxel_onto_the_network_grid() {
        // LPS and anisotropic: one bright voxel at (i, j, k) = (13, 5, 6).
        let dims = [20usize, 16, 10];
        let mut affine = medlabel_imaging::IDENTITY;
        (affine[0][0], affine[1][1], affine[2][2]) = (-1.0, -2.0, 3.0);
        let mut data = vec![0f32; 20 * 16 * 10];
        data[(6 * 16 + 5) * 20 + 13] = 1000.0;
        let image = Volume { data, dims, affine };
        let cfg = ModelConfig {
            spacing: [2.0, 2.0, 3.0],
            ..ModelConfig::spleen()
        };
        let prep = prepare(&image, None, &cfg, Device::Cpu).unwrap();
        let at = prep.to_grid([6.0, 5.0, 13.0], [10, 16, 20]);
        assert_eq!(at, [6.0, 10.0, 3.0]);
        let grid = prep.image.squeeze();
        let brightest = grid.argmax(None, false).int64_value(&[]);
        let [_, h, w] = [grid.size()[0], grid.size()[1], grid.size()[2]];
        assert_eq!(
            [brightest / (h * w), brightest / w % h, brightest % w],
            at.map(|v| v as i64)
        );
    }

    #[test]
    fn crop_box_follows_monai_and_inverts() {
        let img = Tensor::zeros([1, 1, 10, 10, 10], (Kind::Float, Device::Cpu));
        let _ = img
            .narrow(2, 2, 3)
            .narrow(3, 4, 1)
            .narrow(4, 0, 10)
            .fill_(1.0);
        // margin 1 and k 4: D 2..5 → 1..6 (5) → 8 centred: 0..8; H 4 → 3..6 → 4 long: 3..7;
        // W 0..10 → -1..11 (12): already a multiple of 4.
        let b = foreground_box(&img, [1, 1, 1], [4, 4, 4], false).unwrap();
        assert_eq!(b, [(0, 8), (3, 7), (-1, 11)]);
        let c = crop_pad(&img, b);
        assert_eq!(c.size(), vec![1, 1, 8, 4, 12]);
        assert_eq!(c.sum(Kind::Float).double_value(&[]), 30.0);
        let p = Prepared {
            image: c.shallow_clone(),
            label: None,
            undo: vec![Undo::Crop {
                size: [10, 10, 10],
                start: b.map(|(s, _)| s),
            }],
        };
        assert!(p.invert(&c, false).equal(&img));
        // allow_smaller clips the margin at the border instead.
        let b = foreground_box(&img, [3, 0, 1], [1, 1, 1], true).unwrap();
        assert_eq!(b, [(0, 8), (4, 5), (0, 10)]);
    }
}
