//! Training data: image/label pairs brought to the model's grid once, then sampled as
//! random crops with augmentation (MONAI Label's spleen trainer transforms).
//!
//! Per volume: the model's preprocessing ([`crate::pipeline`]), a crop to the
//! image's foreground bounding box (`CropForegroundd`, voxels > 0 after normalisation),
//! and zero padding up to the ROI. Per iteration: `num_samples` crops whose centres are
//! foreground (label > 0) or background voxels in the ratio `pos : neg`
//! (`RandCropByPosNegLabeld`), each flipped along every axis with probability 1/2 and
//! intensity-shifted by U(−0.1, 0.1) with probability 1/2. All randomness comes from one
//! seeded ChaCha stream, so a run is reproducible.

use std::path::{Path, PathBuf};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::{Result, RunnerError};
use crate::pipeline::prepare;
use crate::transforms::tensor_order;

/// One volume pair on the model grid.
#[derive(Debug)]
pub struct Sample {
    pub image_path: PathBuf,
    /// `[1, 1, D, H, W]` float, normalised.
    pub image: Tensor,
    /// `[1, 1, D, H, W]` int64 labels.
    pub label: Tensor,
    /// Linear indices of foreground voxels, for positive crop centres.
    fg: Vec<i64>,
    /// Labels on the CPU as bytes, for rejection-sampling background centres.
    label_host: Vec<u8>,
    size: [i64; 3],
}

/// Augmentation and sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub num_samples: usize,
    pub pos: f64,
    pub neg: f64,
    pub flip_prob: f64,
    pub shift_prob: f64,
    pub shift_offset: f64,
}

impl Sample {
    /// Loads and prepares one pair. `crop_foreground` is for training volumes only;
    /// validation volumes keep their full extent.
    pub fn load(
        image_path: &Path,
        label_path: &Path,
        cfg: &ModelConfig,
        device: Device,
        crop_foreground: bool,
    ) -> Result<Self> {
        let image = crate::io::read_image(image_path)?;
        let label = crate::io::read_image(label_path)?;
        let prep = prepare(&image, Some(&label), cfg, device)?;
        let lab = prep.label.expect("a label was given");
        // Deepgrow trains on any labelled organ, one at a time, against the rest.
        let classes = match cfg.model_type {
            crate::config::ModelType::Deepgrow => 256,
            _ => cfg.network.out_channels(),
        };
        if lab.max().int64_value(&[]) >= classes || lab.min().int64_value(&[]) < 0 {
            return Err(RunnerError::invalid(format!(
                "{}: label values must be in 0..{classes}",
                label_path.display(),
            )));
        }
        let (mut img, mut lab) = (prep.image, lab);
        if crop_foreground {
            (img, lab) = crop_to_foreground(&img, &lab);
        }
        let roi = tensor_order(cfg.roi_size);
        (img, lab) = (pad_to(&img, roi), pad_to(&lab, roi));
        let size: [i64; 3] = std::array::from_fn(|d| img.size()[2 + d]);
        let label_host = Vec::<u8>::try_from(
            &lab.to_kind(Kind::Uint8)
                .to_device(Device::Cpu)
                .flatten(0, -1),
        )?;
        let fg = label_host
            .iter()
            .enumerate()
            .filter(|&(_, &v)| v > 0)
            .map(|(i, _)| i as i64)
            .collect();
        Ok(Self {
            image_path: image_path.to_path_buf(),
            image: img,
            label: lab,
            fg,
            label_host,
            size,
        })
    }

    /// `num_samples` augmented crops stacked as (`[B, 1, roi]` image, `[B, 1, roi]` label).
    pub fn crops(&self, roi: [i64; 3], s: &Sampling, rng: &mut ChaCha8Rng) -> (Tensor, Tensor) {
        let mut imgs = Vec::with_capacity(s.num_samples);
        let mut labs = Vec::with_capacity(s.num_samples);
        for _ in 0..s.num_samples {
            let positive = !self.fg.is_empty() && rng.random::<f64>() * (s.pos + s.neg) < s.pos;
            let centre = if positive {
                self.fg[rng.random_range(0..self.fg.len())]
            } else {
                self.background_voxel(rng)
            };
            let c = [
                centre / (self.size[1] * self.size[2]),
                centre / self.size[2] % self.size[1],
                centre % self.size[2],
            ];
            let start: [i64; 3] =
                std::array::from_fn(|d| (c[d] - roi[d] / 2).clamp(0, self.size[d] - roi[d]));
            let crop = |t: &Tensor| {
                t.narrow(2, start[0], roi[0])
                    .narrow(3, start[1], roi[1])
                    .narrow(4, start[2], roi[2])
            };
            let (mut img, mut lab) = (crop(&self.image), crop(&self.label));
            let flips: Vec<i64> = (2..5)
                .filter(|_| rng.random::<f64>() < s.flip_prob)
                .collect();
            if !flips.is_empty() {
                img = img.flip(flips.as_slice());
                lab = lab.flip(flips.as_slice());
            }
            if rng.random::<f64>() < s.shift_prob {
                img += rng.random_range(-s.shift_offset..=s.shift_offset);
            }
            imgs.push(img);
            labs.push(lab);
        }
        (Tensor::cat(&imgs, 0), Tensor::cat(&labs, 0))
    }

    /// A random background voxel; falls back to any voxel if the volume is all foreground.
    fn background_voxel(&self, rng: &mut ChaCha8Rng) -> i64 {
        let n = self.label_host.len();
        for _ in 0..64 {
            let i = rng.random_range(0..n);
            if self.label_host[i] == 0 {
                return i as i64;
            }
        }
        rng.random_range(0..n) as i64
    }
}

/// Crops image and label to the bounding box of image voxels > 0.
fn crop_to_foreground(img: &Tensor, lab: &Tensor) -> (Tensor, Tensor) {
    let mask = img.gt(0.0).squeeze_dim(0).squeeze_dim(0);
    let mut bounds = [(0i64, 0i64); 3];
    for (d, b) in bounds.iter_mut().enumerate() {
        let others: Vec<i64> = (0..3).filter(|&o| o != d as i64).collect();
        let any = mask.any_dims(others.as_slice(), false);
        let idx = any.nonzero();
        if idx.size()[0] == 0 {
            return (img.shallow_clone(), lab.shallow_clone());
        }
        *b = (idx.min().int64_value(&[]), idx.max().int64_value(&[]) + 1);
    }
    let crop = |t: &Tensor| {
        t.narrow(2, bounds[0].0, bounds[0].1 - bounds[0].0)
            .narrow(3, bounds[1].0, bounds[1].1 - bounds[1].0)
            .narrow(4, bounds[2].0, bounds[2].1 - bounds[2].0)
    };
    (crop(img), crop(lab))
}

/// Zero-pads `[N, C, D, H, W]` symmetrically so each spatial size is at least `size`.
pub fn pad_to(t: &Tensor, size: [i64; 3]) -> Tensor {
    let s = t.size();
    let pad: [(i64, i64); 3] = std::array::from_fn(|d| {
        let diff = (size[d] - s[2 + d]).max(0);
        (diff / 2, diff - diff / 2)
    });
    if pad.iter().all(|&(a, b)| a + b == 0) {
        return t.shallow_clone();
    }
    t.constant_pad_nd([pad[2].0, pad[2].1, pad[1].0, pad[1].1, pad[0].0, pad[0].1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn sample(size: [i64; 3], fg_box: [(i64, i64); 3]) -> Sample {
        let label = Tensor::zeros(
            [1, 1, size[0], size[1], size[2]],
            (Kind::Int64, Device::Cpu),
        );
        let _ = label
            .narrow(2, fg_box[0].0, fg_box[0].1 - fg_box[0].0)
            .narrow(3, fg_box[1].0, fg_box[1].1 - fg_box[1].0)
            .narrow(4, fg_box[2].0, fg_box[2].1 - fg_box[2].0)
            .fill_(1);
        let label_host = Vec::<u8>::try_from(&label.to_kind(Kind::Uint8).flatten(0, -1)).unwrap();
        let fg = label_host
            .iter()
            .enumerate()
            .filter(|&(_, &v)| v > 0)
            .map(|(i, _)| i as i64)
            .collect();
        Sample {
            image_path: PathBuf::new(),
            image: label.to_kind(Kind::Float),
            label,
            fg,
            label_host,
            size,
        }
    }

    #[test]
    fn positive_crops_contain_foreground_and_negative_centres_do_not() {
        let s = sample([20, 20, 20], [(14, 16), (2, 4), (9, 11)]);
        let sampling = Sampling {
            num_samples: 8,
            pos: 1.0,
            neg: 0.0,
            flip_prob: 0.5,
            shift_prob: 0.0,
            shift_offset: 0.1,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (img, lab) = s.crops([8, 8, 8], &sampling, &mut rng);
        assert_eq!(img.size(), vec![8, 1, 8, 8, 8]);
        // Every positive crop holds the whole 2×2×2 object (flips keep it inside).
        let per_crop = lab.sum_dim_intlist([1i64, 2, 3, 4].as_slice(), false, Kind::Int64);
        assert!(per_crop.eq(8).all().int64_value(&[]) == 1, "{per_crop}");
        // Image and label were flipped together.
        assert!(
            img.eq_tensor(&lab.to_kind(Kind::Float))
                .all()
                .int64_value(&[])
                == 1
        );
        let neg = Sampling {
            pos: 0.0,
            neg: 1.0,
            ..sampling
        };
        let (_, lab) = s.crops([2, 2, 2], &neg, &mut rng);
        assert!(lab.sum(Kind::Int64).int64_value(&[]) < 8 * 8);
    }

    #[test]
    fn foreground_crop_and_padding() {
        let img = Tensor::zeros([1, 1, 10, 10, 10], (Kind::Float, Device::Cpu));
        let _ = img
            .narrow(2, 2, 3)
            .narrow(3, 4, 1)
            .narrow(4, 0, 10)
            .fill_(1.0);
        let (c, l) = crop_to_foreground(&img, &img.to_kind(Kind::Int64));
        assert_eq!(c.size(), vec![1, 1, 3, 1, 10]);
        assert_eq!(l.size(), c.size());
        let p = pad_to(&c, [4, 4, 4]);
        assert_eq!(p.size(), vec![1, 1, 4, 4, 10]);
        assert_eq!(p.sum(Kind::Float).double_value(&[]), 30.0);
    }
}
