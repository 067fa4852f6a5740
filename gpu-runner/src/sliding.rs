//! Sliding-window inference (MONAI `sliding_window_inference`).
//!
//! The image is padded symmetrically up to the window size where it is smaller, windows
//! are placed with MONAI's `dense_patch_slices` rule (step `roi·(1 − overlap)`, the last
//! window shifted back to end at the border), evaluated `sw_batch_size` at a time, and
//! their outputs accumulated with an importance map: all ones (`constant`) or a Gaussian
//! centred on the window with σ = `sigma_scale · roi` per axis, normalised to a maximum of
//! 1e-3 (`gaussian`, MONAI's `compute_importance_map`: centred at `(roi − 1) / 2`, not
//! normalised). The sum is divided by the accumulated weights, so every voxel gets a
//! convex combination of the window outputs that cover it.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, RunnerError};

/// Window blending mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BlendMode {
    Constant,
    #[default]
    Gaussian,
}

/// How an image smaller than the window is padded (MONAI's `padding_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Zeros.
    #[default]
    Constant,
    /// The border voxel repeated.
    Replicate,
}

/// Sliding-window parameters; sizes in tensor order (D, H, W).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlidingWindow {
    pub roi_size: [i64; 3],
    /// Fraction of a window shared with its neighbour, in [0, 1).
    pub overlap: f64,
    pub sw_batch_size: usize,
    pub mode: BlendMode,
    pub sigma_scale: f64,
    pub padding: PadMode,
}

impl SlidingWindow {
    /// MONAI Label's defaults for a window size: overlap 0.25, Gaussian σ = 0.125·roi.
    pub fn new(roi_size: [i64; 3]) -> Self {
        Self {
            roi_size,
            overlap: 0.25,
            sw_batch_size: 1,
            mode: BlendMode::Gaussian,
            sigma_scale: 0.125,
            padding: PadMode::Constant,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.roi_size.iter().any(|&r| r <= 0) || self.sw_batch_size == 0 {
            return Err(RunnerError::invalid(
                "sliding window: roi_size and sw_batch_size must be positive",
            ));
        }
        if !(0.0..1.0).contains(&self.overlap) {
            return Err(RunnerError::invalid(
                "sliding window: overlap must be in [0, 1)",
            ));
        }
        Ok(())
    }

    /// Start offsets of the windows along each axis for an image of `size`.
    pub fn window_starts(&self, size: [i64; 3]) -> [Vec<i64>; 3] {
        std::array::from_fn(|d| {
            let (n, r) = (size[d], self.roi_size[d]);
            let interval = if r == n {
                r
            } else {
                ((r as f64 * (1.0 - self.overlap)) as i64).max(1)
            };
            let mut starts = Vec::new();
            let mut s = 0;
            loop {
                starts.push(s.min(n - r).max(0));
                if s + r >= n {
                    break;
                }
                s += interval;
            }
            starts
        })
    }

    /// The `[D, H, W]` importance map for one window, as float on `device`.
    pub fn importance_map(&self, device: Device) -> Tensor {
        match self.mode {
            BlendMode::Constant => Tensor::ones(self.roi_size.as_slice(), (Kind::Float, device)),
            BlendMode::Gaussian => {
                let axis = |d: usize| {
                    let r = self.roi_size[d];
                    let sigma = (self.sigma_scale * r as f64).max(1e-6);
                    let x = Tensor::arange(r, (Kind::Float, device)) - (r - 1) as f64 / 2.0;
                    (-(&x * &x) / (2.0 * sigma * sigma)).exp()
                };
                let m =
                    axis(0).view([-1, 1, 1]) * axis(1).view([1, -1, 1]) * axis(2).view([1, 1, -1]);
                m.clamp_min(1e-3)
            }
        }
    }

    /// Runs `f` (a `[B, C_in, roi]` → `[B, C_out, roi]` network) over `image`
    /// (`[1, C_in, D, H, W]`) and returns the blended `[1, C_out, D, H, W]` output in
    /// float32 on the image's device.
    pub fn run(
        &self,
        image: &Tensor,
        mut f: impl FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.validate()?;
        let shape = image.size();
        if shape.len() != 5 || shape[0] != 1 {
            return Err(RunnerError::invalid(format!(
                "sliding window wants [1, C, D, H, W], got {shape:?}"
            )));
        }
        let orig: [i64; 3] = [shape[2], shape[3], shape[4]];
        // Symmetric zero padding up to the window size, as MONAI does (pad order is W, H, D).
        let pad: [(i64, i64); 3] = std::array::from_fn(|d| {
            let diff = (self.roi_size[d] - orig[d]).max(0);
            (diff / 2, diff - diff / 2)
        });
        let widths = [pad[2].0, pad[2].1, pad[1].0, pad[1].1, pad[0].0, pad[0].1];
        let padded = if pad.iter().all(|&(a, b)| a + b == 0) {
            image.shallow_clone()
        } else if self.padding == PadMode::Replicate {
            image.replication_pad3d(widths)
        } else {
            image.constant_pad_nd(widths)
        };
        let size: [i64; 3] = std::array::from_fn(|d| orig[d] + pad[d].0 + pad[d].1);
        let starts = self.window_starts(size);
        let mut windows = Vec::new();
        for &z in &starts[0] {
            for &y in &starts[1] {
                for &x in &starts[2] {
                    windows.push([z, y, x]);
                }
            }
        }
        let device = image.device();
        let weight = self.importance_map(device);
        let [rz, ry, rx] = self.roi_size;
        let mut out: Option<Tensor> = None;
        let count = Tensor::zeros(size.as_slice(), (Kind::Float, device));
        for chunk in windows.chunks(self.sw_batch_size) {
            let crops: Vec<Tensor> = chunk
                .iter()
                .map(|&[z, y, x]| padded.narrow(2, z, rz).narrow(3, y, ry).narrow(4, x, rx))
                .collect();
            let pred = f(&Tensor::cat(&crops, 0))?.to_kind(Kind::Float);
            let ps = pred.size();
            if ps.len() != 5 || ps[0] != chunk.len() as i64 || ps[2..] != self.roi_size {
                return Err(RunnerError::invalid(format!(
                    "network returned {ps:?} for windows of {:?}",
                    self.roi_size
                )));
            }
            let acc = out.get_or_insert_with(|| {
                Tensor::zeros([1, ps[1], size[0], size[1], size[2]], (Kind::Float, device))
            });
            for (b, &[z, y, x]) in chunk.iter().enumerate() {
                let mut dst = acc.narrow(2, z, rz).narrow(3, y, ry).narrow(4, x, rx);
                let _ = dst.g_add_(&(pred.narrow(0, b as i64, 1) * &weight));
                let mut c = count.narrow(0, z, rz).narrow(1, y, ry).narrow(2, x, rx);
                let _ = c.g_add_(&weight);
            }
        }
        let out = out.ok_or_else(|| RunnerError::invalid("sliding window: no windows"))?;
        let blended = out / count;
        Ok(blended
            .narrow(2, pad[0].0, orig[0])
            .narrow(3, pad[1].0, orig[1])
            .narrow(4, pad[2].0, orig[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts_follow_dense_patch_slices() {
        let sw = SlidingWindow::new([96, 96, 32]);
        let s = sw.window_starts([200, 96, 100]);
        // Step int(96·0.75) = 72: 0, 72, then the last one pulled back to 200 − 96 = 104.
        assert_eq!(s[0], vec![0, 72, 104]);
        assert_eq!(s[1], vec![0]);
        assert_eq!(s[2], vec![0, 24, 48, 68]);
    }

    #[test]
    fn gaussian_map_peaks_at_centre_and_is_floored() {
        let mut sw = SlidingWindow::new([9, 9, 9]);
        let m = sw.importance_map(Device::Cpu);
        assert_eq!(m.double_value(&[4, 4, 4]), 1.0);
        // Even sizes centre between two voxels, as MONAI does: symmetric, below 1.
        sw.roi_size = [8, 8, 8];
        let even = sw.importance_map(Device::Cpu);
        assert_eq!(even.double_value(&[3, 3, 3]), even.double_value(&[4, 4, 4]));
        assert!(even.double_value(&[3, 3, 3]) < 1.0);
        sw.roi_size = [9, 9, 9];
        assert!(m.double_value(&[0, 0, 0]) < m.double_value(&[2, 2, 2]));
        sw.sigma_scale = 0.01;
        assert!((sw.importance_map(Device::Cpu).double_value(&[0, 0, 0]) - 1e-3).abs() < 1e-9);
    }

    #[test]
    fn constant_output_survives_blending_at_overlaps() {
        // Whatever the weights, a network that outputs a constant must blend to it.
        for mode in [BlendMode::Gaussian, BlendMode::Constant] {
            let sw = SlidingWindow {
                roi_size: [8, 8, 8],
                overlap: 0.5,
                sw_batch_size: 3,
                mode,
                sigma_scale: 0.125,
                padding: PadMode::Replicate,
            };
            let image = Tensor::zeros([1, 1, 13, 20, 6], (Kind::Float, Device::Cpu));
            let out = sw
                .run(&image, |x| {
                    Ok(Tensor::full(
                        [x.size()[0], 2, 8, 8, 8],
                        3.5,
                        (Kind::Float, Device::Cpu),
                    ))
                })
                .unwrap();
            assert_eq!(out.size(), vec![1, 2, 13, 20, 6]);
            let err = (out - 3.5).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{mode:?}: {err}");
        }
    }

    #[test]
    fn blending_is_the_weighted_average_of_windows() {
        // An output equal to the window's own start index shows the exact weights.
        let sw = SlidingWindow {
            roi_size: [4, 1, 1],
            overlap: 0.5,
            sw_batch_size: 1,
            mode: BlendMode::Constant,
            sigma_scale: 0.125,
            padding: PadMode::Constant,
        };
        let image = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([1, 1, 6, 1, 1]);
        let out = sw
            .run(&image, |x| {
                Ok(x.min().expand([1, 1, 4, 1, 1], false).contiguous())
            })
            .unwrap();
        // Windows start at 0 and 2: voxels 2, 3 average 0 and 2.
        let v = Vec::<f32>::try_from(out.flatten(0, -1)).unwrap();
        assert_eq!(v, vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
    }
}
