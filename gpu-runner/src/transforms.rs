//! Preprocessing and its inverse, on tch tensors so they run on the model's device.
//!
//! Tensors hold a volume as `[.., D, H, W]` = `[.., k, j, i]`, which is the imaging crate's
//! voxel order read row-major. Config arrays (`spacing`, `roi_size`) are in voxel-axis
//! order (i, j, k) = (R, A, S) after orientation, like MONAI's, and are reversed when they
//! meet a tensor shape.
//!
//! Resampling keeps the first and last voxel centres fixed (trilinear with
//! `align_corners`): the output size is `round((n − 1)·spacing / target) + 1`, so the
//! realised spacing is within half a voxel of the target over the whole extent and the
//! inverse (resampling back to `n`) is the exact same geometry. Labels are resampled by
//! nearest neighbour on that same grid, so image and label stay aligned.

use medlabel_imaging::Volume;
use tch::{Device, Kind, Tensor};

use crate::config::Intensity;
use crate::error::{Result, RunnerError};

/// How voxel axes map onto RAS: the axis permutation and flips that make an array's
/// axes run along +R, +A, +S (MONAI `Orientationd(axcodes="RAS")`).
#[derive(Debug, Clone, PartialEq)]
pub struct Orientation {
    /// `axis_of_world[r]` = voxel axis (0 = i, 1 = j, 2 = k) that runs mostly along world axis r.
    axis_of_world: [usize; 3],
    /// `flip[r]`: that voxel axis runs along −r.
    flip: [bool; 3],
}

impl Orientation {
    /// Derives the orientation from an affine by taking, for each voxel axis, the world
    /// axis it has the largest component along (oblique images get the closest RAS).
    pub fn from_affine(affine: &[[f64; 4]; 4]) -> Result<Self> {
        let mut axis_of_world = [usize::MAX; 3];
        let mut flip = [false; 3];
        // Walks the affine's columns (voxel axes); iterators would obscure that.
        #[allow(clippy::needless_range_loop)]
        for c in 0..3 {
            let r = (0..3)
                .max_by(|&a, &b| affine[a][c].abs().total_cmp(&affine[b][c].abs()))
                .unwrap_or(0);
            if affine[r][c] == 0.0 || axis_of_world[r] != usize::MAX {
                return Err(RunnerError::invalid(
                    "affine is degenerate: two voxel axes share a world axis",
                ));
            }
            axis_of_world[r] = c;
            flip[r] = affine[r][c] < 0.0;
        }
        Ok(Self {
            axis_of_world,
            flip,
        })
    }

    /// Voxel-axis sizes or spacings (i, j, k order) re-ordered to the RAS array's axes.
    pub fn permute_ijk<T: Copy>(&self, v: [T; 3]) -> [T; 3] {
        std::array::from_fn(|r| v[self.axis_of_world[r]])
    }

    /// `[.., k, j, i]` → `[.., S, A, R]` (tensor order of the RAS array).
    pub fn to_ras(&self, t: &Tensor) -> Tensor {
        let n = t.dim() as i64;
        let lead: Vec<i64> = (0..n - 3).collect();
        // Tensor dim of voxel axis c is n-1-c; tensor dim of world axis r is n-1-r.
        let mut perm = lead.clone();
        perm.extend((0..3).rev().map(|r| n - 1 - self.axis_of_world[r] as i64));
        let p = t.permute(perm.as_slice());
        let flips: Vec<i64> = (0..3)
            .filter(|&r| self.flip[r])
            .map(|r| n - 1 - r as i64)
            .collect();
        if flips.is_empty() {
            p
        } else {
            p.flip(flips.as_slice())
        }
    }

    /// Inverse of [`Orientation::to_ras`].
    pub fn from_ras(&self, t: &Tensor) -> Tensor {
        let n = t.dim() as i64;
        let flips: Vec<i64> = (0..3)
            .filter(|&r| self.flip[r])
            .map(|r| n - 1 - r as i64)
            .collect();
        let t = if flips.is_empty() {
            t.shallow_clone()
        } else {
            t.flip(flips.as_slice())
        };
        // Output dim of voxel axis c must take the input dim of its world axis.
        let mut perm: Vec<i64> = (0..n - 3).collect();
        for c in (0..3).rev() {
            let r = (0..3).find(|&r| self.axis_of_world[r] == c).unwrap_or(c);
            perm.push(n - 1 - r as i64);
        }
        t.permute(perm.as_slice())
    }
}

/// Output tensor size (`[D, H, W]`) that resamples `size` (tensor order) from `spacing`
/// to `target` (both tensor order) keeping the end voxel centres fixed.
pub fn resampled_size(size: [i64; 3], spacing: [f64; 3], target: [f64; 3]) -> [i64; 3] {
    std::array::from_fn(|d| {
        if size[d] <= 1 {
            size[d].max(1)
        } else {
            (((size[d] - 1) as f64 * spacing[d] / target[d]).round() as i64 + 1).max(2)
        }
    })
}

/// Trilinear resampling of `[N, C, D, H, W]` to `size` with fixed end voxel centres.
pub fn resample_linear(t: &Tensor, size: [i64; 3]) -> Tensor {
    if t.size()[2..] == size {
        return t.shallow_clone();
    }
    t.upsample_trilinear3d(size.as_slice(), true, None, None, None)
}

/// Nearest-neighbour resampling on the grid of [`resample_linear`] (for label maps).
pub fn resample_nearest(t: &Tensor, size: [i64; 3]) -> Tensor {
    let mut out = t.shallow_clone();
    let n = t.dim() as i64;
    for (d, &m) in size.iter().enumerate() {
        let dim = n - 3 + d as i64;
        let len = out.size()[dim as usize];
        if len == m {
            continue;
        }
        let scale = if m > 1 {
            (len - 1) as f64 / (m - 1) as f64
        } else {
            0.0
        };
        let idx = Tensor::arange(m, (Kind::Double, out.device())) * scale;
        let idx = idx.round().to_kind(Kind::Int64).clamp(0, len - 1);
        out = out.index_select(dim, &idx);
    }
    out
}

/// Applies the intensity normalisation to a float tensor.
pub fn apply_intensity(t: &Tensor, intensity: &Intensity) -> Tensor {
    match *intensity {
        Intensity::Ct {
            a_min,
            a_max,
            b_min,
            b_max,
            clip,
        } => {
            let scaled = (t - a_min) * ((b_max - b_min) / (a_max - a_min)) + b_min;
            if clip {
                scaled.clamp(b_min.min(b_max), b_min.max(b_max))
            } else {
                scaled
            }
        }
        Intensity::Mr => {
            let mean = t.mean(Kind::Float);
            let std = t.std(true).clamp_min(1e-8);
            (t - mean) / std
        }
    }
}

/// A volume as a `[1, 1, D, H, W]` float tensor on `device`.
pub fn volume_to_tensor<T: Copy + Into<f64>>(v: &Volume<T>, device: Device) -> Tensor {
    let data: Vec<f32> = v.data.iter().map(|&x| x.into() as f32).collect();
    let [i, j, k] = v.dims.map(|d| d as i64);
    Tensor::from_slice(&data)
        .reshape([1, 1, k, j, i])
        .to_device(device)
}

/// Everything inference needs to go from an input volume to the network's grid and back.
#[derive(Debug)]
pub struct Prepared {
    /// `[1, 1, D, H, W]` normalised image at model spacing, RAS, on the model's device.
    pub image: Tensor,
    pub orientation: Orientation,
    /// Tensor size of the RAS-oriented image before resampling.
    pub ras_size: [i64; 3],
}

/// Orientation → spacing → intensity for an image (MONAI Label's pre-transforms).
pub fn prepare_image(
    v: &Volume<f32>,
    spacing: [f64; 3],
    intensity: &Intensity,
    device: Device,
) -> Result<Prepared> {
    if v.is_empty() {
        return Err(RunnerError::invalid("image has no voxels"));
    }
    let orientation = Orientation::from_affine(&v.affine)?;
    let t = orientation.to_ras(&volume_to_tensor(v, device));
    let ras_size: [i64; 3] = std::array::from_fn(|d| t.size()[2 + d]);
    let size = resampled_size(
        ras_size,
        tensor_order(orientation.permute_ijk(v.spacing())),
        tensor_order(spacing),
    );
    let image = apply_intensity(&resample_linear(&t.contiguous(), size), intensity);
    Ok(Prepared {
        image,
        orientation,
        ras_size,
    })
}

/// The same orientation and resampling for a label map aligned with `image`; returns a
/// `[1, 1, D, H, W]` Int64 tensor matching [`prepare_image`]'s output size.
pub fn prepare_label(
    label: &Volume<f32>,
    image: &Volume<f32>,
    spacing: [f64; 3],
    device: Device,
) -> Result<Tensor> {
    if label.dims != image.dims {
        return Err(RunnerError::invalid(format!(
            "label dims {:?} differ from image dims {:?}",
            label.dims, image.dims
        )));
    }
    let orientation = Orientation::from_affine(&image.affine)?;
    let t = orientation.to_ras(&volume_to_tensor(label, device));
    let ras_size: [i64; 3] = std::array::from_fn(|d| t.size()[2 + d]);
    let size = resampled_size(
        ras_size,
        tensor_order(orientation.permute_ijk(image.spacing())),
        tensor_order(spacing),
    );
    Ok(resample_nearest(&t, size).round().to_kind(Kind::Int64))
}

/// (i, j, k)-ordered triple → tensor (D, H, W) order.
pub fn tensor_order<T: Copy>(v: [T; 3]) -> [T; 3] {
    [v[2], v[1], v[0]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affine(cols: [[f64; 3]; 3]) -> [[f64; 4]; 4] {
        let mut a = [[0.0; 4]; 4];
        for c in 0..3 {
            for r in 0..3 {
                a[r][c] = cols[c][r];
            }
        }
        a[3][3] = 1.0;
        a
    }

    #[test]
    fn orientation_round_trips_and_reaches_ras() {
        // i runs along −A, j along +S, k along −R (LPS-ish and permuted).
        let a = affine([[0.0, -2.0, 0.0], [0.0, 0.0, 3.0], [-1.0, 0.0, 0.0]]);
        let o = Orientation::from_affine(&a).unwrap();
        let t = Tensor::arange(4 * 3 * 2, (Kind::Float, Device::Cpu)).reshape([1, 1, 4, 3, 2]);
        let ras = o.to_ras(&t);
        // RAS array axes: R ← k (size 4), A ← i (size 2), S ← j (size 3); tensor order S, A, R.
        assert_eq!(ras.size(), vec![1, 1, 3, 2, 4]);
        assert_eq!(o.permute_ijk([10, 20, 30]), [30, 10, 20]);
        // Voxel (i=0, j=0, k=0) is the most +R (k flipped) and most +A (i flipped) corner.
        let v000 = t.double_value(&[0, 0, 0, 0, 0]);
        assert_eq!(ras.double_value(&[0, 0, 0, 1, 3]), v000);
        assert!(o.from_ras(&ras).equal(&t));
    }

    #[test]
    fn degenerate_affine_is_an_error() {
        let a = affine([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]);
        assert!(Orientation::from_affine(&a).is_err());
    }

    #[test]
    fn resampling_keeps_end_voxels_and_inverts() {
        assert_eq!(
            resampled_size([11, 21, 5], [2.0, 1.0, 1.0], [1.0, 2.0, 1.0]),
            [21, 11, 5]
        );
        let t = Tensor::arange(11, (Kind::Float, Device::Cpu))
            .reshape([1, 1, 11, 1, 1])
            .expand([1, 1, 11, 2, 2], false);
        let up = resample_linear(&t, [21, 2, 2]);
        // Linear data stays linear: value at output d is d/2.
        assert!((up.double_value(&[0, 0, 7, 0, 0]) - 3.5).abs() < 1e-5);
        let back = resample_linear(&up, [11, 2, 2]);
        assert!(back.allclose(&t, 1e-5, 1e-5, false));
        let lab = Tensor::from_slice(&[0i64, 0, 1, 1, 2]).reshape([1, 1, 5, 1, 1]);
        let near = resample_nearest(&lab, [9, 1, 1]);
        assert_eq!(
            Vec::<i64>::try_from(near.flatten(0, -1)).unwrap(),
            vec![0, 0, 0, 1, 1, 1, 1, 2, 2]
        );
    }

    #[test]
    fn ct_window_matches_scale_intensity_range() {
        let t = Tensor::from_slice(&[-1000.0f32, -57.0, 53.5, 164.0, 400.0]);
        let out = apply_intensity(&t, &Intensity::spleen_ct());
        let v = Vec::<f32>::try_from(out).unwrap();
        assert_eq!(v[0], 0.0);
        assert!((v[2] - 0.5).abs() < 1e-6);
        assert_eq!(v[4], 1.0);
        let z = apply_intensity(&Tensor::from_slice(&[1.0f32, 2.0, 3.0]), &Intensity::Mr);
        assert!(z.mean(Kind::Float).double_value(&[]).abs() < 1e-6);
    }
}
