//! Resampling onto another voxel grid: trilinear for images, nearest for labels.
//!
//! Every output voxel centre is mapped into the source volume through
//! `inverse(source affine) · target affine` and sampled there. Positions outside the
//! source take the nearest edge voxel (edge replication), so a grid that overhangs the
//! source by a fraction of a voxel, as rounding of dims makes it, gets no dark rim.
//! When that mapping is axis-aligned (always true for [`resample_to_spacing`] and for
//! its inverse), per-axis index and weight tables replace per-voxel arithmetic.
//!
//! The inverse of `resample_to_spacing(v, s, _)` is `resample_to_grid(r, &v.grid(), _)`:
//! same dims and affine as `v` by construction.

use crate::affine::{invert, mat_mul};
use crate::volume::Grid;
use crate::{Affine, ImageError, Volume};

/// How to sample between voxel centres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// Trilinear: for intensities and probabilities.
    Linear,
    /// Nearest voxel: for label maps, so no new label values appear.
    Nearest,
}

/// Resamples to voxel size `spacing` (mm along i, j, k), keeping orientation and the
/// world position of voxel (0, 0, 0). New dims are `round(dims · old / new)`, at
/// least 1.
pub fn resample_to_spacing(
    vol: &Volume<f32>,
    spacing: [f64; 3],
    interp: Interpolation,
) -> Result<Volume<f32>, ImageError> {
    if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(ImageError::InvalidArgument(format!(
            "target spacing {spacing:?} must be positive and finite"
        )));
    }
    let old = vol.spacing();
    if old.contains(&0.0) {
        return Err(ImageError::InvalidArgument(
            "source affine has a zero-length axis".into(),
        ));
    }
    let mut affine = vol.affine;
    let mut dims = [0; 3];
    for c in 0..3 {
        let scale = spacing[c] / old[c];
        (0..3).for_each(|r| affine[r][c] *= scale);
        dims[c] = ((vol.dims[c] as f64 / scale).round() as usize).max(1);
    }
    resample_to_grid(vol, &Grid { dims, affine }, interp)
}

/// Resamples `vol` onto `grid` (any dims and affine).
pub fn resample_to_grid(
    vol: &Volume<f32>,
    grid: &Grid,
    interp: Interpolation,
) -> Result<Volume<f32>, ImageError> {
    if vol.is_empty() || vol.data.len() != vol.dims.iter().product::<usize>() {
        return Err(ImageError::InvalidArgument(format!(
            "source volume dims {:?} do not match its {} voxels",
            vol.dims,
            vol.len()
        )));
    }
    if grid.dims.contains(&0) {
        return Err(ImageError::InvalidArgument(format!(
            "target dims {:?} contain 0",
            grid.dims
        )));
    }
    let m = mat_mul(&invert(&vol.affine)?, &grid.affine);
    let data = if is_axis_aligned(&m) {
        separable(vol, grid.dims, &m, interp)
    } else {
        general(vol, grid.dims, &m, interp)
    };
    Ok(Volume {
        data,
        dims: grid.dims,
        affine: grid.affine,
    })
}

fn is_axis_aligned(m: &Affine) -> bool {
    (0..3).all(|r| (0..3).all(|c| r == c || m[r][c].abs() < 1e-9))
}

/// Sampling along one axis: the two neighbours and the weight of the second.
#[derive(Clone, Copy)]
struct Tap {
    lo: usize,
    hi: usize,
    w: f32,
}

fn tap(pos: f64, len: usize, interp: Interpolation) -> Tap {
    let p = pos.clamp(0.0, (len - 1) as f64);
    match interp {
        Interpolation::Nearest => {
            let i = p.round() as usize;
            Tap {
                lo: i,
                hi: i,
                w: 0.0,
            }
        }
        Interpolation::Linear => {
            let lo = p.floor() as usize;
            Tap {
                lo,
                hi: (lo + 1).min(len - 1),
                w: (p - lo as f64) as f32,
            }
        }
    }
}

#[inline]
fn lerp(a: f32, b: f32, w: f32) -> f32 {
    a + (b - a) * w
}

fn separable(vol: &Volume<f32>, out: [usize; 3], m: &Affine, interp: Interpolation) -> Vec<f32> {
    let [nx, ny, _] = vol.dims;
    let taps: [Vec<Tap>; 3] = std::array::from_fn(|a| {
        (0..out[a])
            .map(|n| tap(m[a][a] * n as f64 + m[a][3], vol.dims[a], interp))
            .collect()
    });
    let src = &vol.data;
    let mut data = Vec::with_capacity(out.iter().product());
    for tz in &taps[2] {
        for ty in &taps[1] {
            let rows = [
                (ty.lo + ny * tz.lo) * nx,
                (ty.hi + ny * tz.lo) * nx,
                (ty.lo + ny * tz.hi) * nx,
                (ty.hi + ny * tz.hi) * nx,
            ];
            if interp == Interpolation::Nearest {
                let row = &src[rows[0]..rows[0] + nx];
                data.extend(taps[0].iter().map(|tx| row[tx.lo]));
                continue;
            }
            let [r00, r10, r01, r11] = rows.map(|r| &src[r..r + nx]);
            data.extend(taps[0].iter().map(|tx| {
                let x = |r: &[f32]| lerp(r[tx.lo], r[tx.hi], tx.w);
                lerp(lerp(x(r00), x(r10), ty.w), lerp(x(r01), x(r11), ty.w), tz.w)
            }));
        }
    }
    data
}

fn general(vol: &Volume<f32>, out: [usize; 3], m: &Affine, interp: Interpolation) -> Vec<f32> {
    let [nx, ny, _] = vol.dims;
    let src = &vol.data;
    let at = |x: usize, y: usize, z: usize| src[x + nx * (y + ny * z)];
    let mut data = Vec::with_capacity(out.iter().product());
    for k in 0..out[2] {
        for j in 0..out[1] {
            let (j, k) = (j as f64, k as f64);
            let row: [f64; 3] = std::array::from_fn(|r| m[r][1] * j + m[r][2] * k + m[r][3]);
            data.extend((0..out[0]).map(|i| {
                let i = i as f64;
                let [tx, ty, tz] =
                    std::array::from_fn(|r| tap(row[r] + m[r][0] * i, vol.dims[r], interp));
                if interp == Interpolation::Nearest {
                    return at(tx.lo, ty.lo, tz.lo);
                }
                let x = |y, z| lerp(at(tx.lo, y, z), at(tx.hi, y, z), tx.w);
                lerp(
                    lerp(x(ty.lo, tz.lo), x(ty.hi, tz.lo), ty.w),
                    lerp(x(ty.lo, tz.hi), x(ty.hi, tz.hi), ty.w),
                    tz.w,
                )
            }));
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IDENTITY;

    fn ramp(dims: [usize; 3], affine: Affine) -> Volume<f32> {
        let mut data = Vec::new();
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    data.push((i + 10 * j + 100 * k) as f32);
                }
            }
        }
        Volume { data, dims, affine }
    }

    #[test]
    fn linear_resampling_of_a_ramp_is_exact_inside() {
        // A linear function is reproduced exactly by trilinear interpolation.
        let vol = ramp([9, 9, 9], IDENTITY);
        let half = resample_to_spacing(&vol, [0.5, 2.0, 1.0], Interpolation::Linear).unwrap();
        assert_eq!(half.dims, [18, 5, 9]);
        assert_eq!(half.spacing(), [0.5, 2.0, 1.0]);
        // Output voxel (3, 2, 4) sits at source (1.5, 4, 4).
        assert!((half.get(3, 2, 4) - (1.5 + 40.0 + 400.0)).abs() < 1e-4);
        // Beyond the last source voxel the edge value is repeated.
        assert_eq!(half.get(17, 0, 0), 8.0);
    }

    #[test]
    fn nearest_keeps_label_values_and_general_path_matches_separable() {
        let mut lab = ramp([6, 5, 4], IDENTITY);
        lab.data
            .iter_mut()
            .for_each(|v| *v = (*v as u32 % 3) as f32);
        let r = resample_to_spacing(&lab, [0.7, 1.3, 0.9], Interpolation::Nearest).unwrap();
        assert!(r.data.iter().all(|v| [0.0, 1.0, 2.0].contains(v)));

        // A rotation by 90° about z is not axis-aligned in the sense of `is_axis_aligned`
        // and must give the same values as permuting axes by hand.
        let vol = ramp([4, 3, 2], IDENTITY);
        let rot = [
            [0.0, -1.0, 0.0, 2.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let grid = Grid {
            dims: [3, 4, 2],
            affine: rot,
        };
        for interp in [Interpolation::Linear, Interpolation::Nearest] {
            let r = resample_to_grid(&vol, &grid, interp).unwrap();
            // Output (i, j, k) is world (2 − j, i, k) = source voxel (2 − j, i, k).
            for k in 0..2 {
                for j in 0..4 {
                    for i in 0..3 {
                        assert_eq!(
                            r.get(i, j, k),
                            vol.get(2 - j.min(2), i, k),
                            "{interp:?} {i} {j} {k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let vol = ramp([2, 2, 2], IDENTITY);
        assert!(resample_to_spacing(&vol, [0.0, 1.0, 1.0], Interpolation::Linear).is_err());
        assert!(resample_to_spacing(&vol, [f64::NAN, 1.0, 1.0], Interpolation::Linear).is_err());
        let grid = Grid {
            dims: [0, 1, 1],
            affine: IDENTITY,
        };
        assert!(resample_to_grid(&vol, &grid, Interpolation::Linear).is_err());
        let mut singular = vol.clone();
        singular.affine[2][2] = 0.0;
        assert!(resample_to_grid(&singular, &vol.grid(), Interpolation::Linear).is_err());
    }
}
