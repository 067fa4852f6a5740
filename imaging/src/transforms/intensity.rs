//! Intensity transforms: windowing and z-score normalisation, in place.
//!
//! Statistics are accumulated in `f64` so that 16 M voxels of CT (values ~1000) keep
//! their precision; the per-voxel work stays in `f32`.

use crate::{ImageError, Volume};

/// Linear windowing, like MONAI's `ScaleIntensityRanged`: maps `[a_min, a_max]` onto
/// `[b_min, b_max]`, i.e. `(v − a_min) / (a_max − a_min) · (b_max − b_min) + b_min`,
/// then clamps to `[b_min, b_max]` when `clip`. The typical CT window is
/// `(-57, 164, 0, 1, true)`. `a_min == a_max` is an error.
pub fn scale_intensity_range(
    vol: &mut Volume<f32>,
    a_min: f32,
    a_max: f32,
    b_min: f32,
    b_max: f32,
    clip: bool,
) -> Result<(), ImageError> {
    let width = a_max - a_min;
    if !(width.is_finite() && width != 0.0 && b_min.is_finite() && b_max.is_finite()) {
        return Err(ImageError::InvalidArgument(format!(
            "intensity window [{a_min}, {a_max}] → [{b_min}, {b_max}] is degenerate or not finite"
        )));
    }
    let scale = (b_max - b_min) / width;
    let (lo, hi) = (b_min.min(b_max), b_min.max(b_max));
    if clip {
        vol.data
            .iter_mut()
            .for_each(|v| *v = ((*v - a_min) * scale + b_min).clamp(lo, hi));
    } else {
        vol.data
            .iter_mut()
            .for_each(|v| *v = (*v - a_min) * scale + b_min);
    }
    Ok(())
}

/// Z-score normalisation like MONAI's `NormalizeIntensityd`: `(v − mean) / std` with
/// the population standard deviation (a zero std is replaced by 1). With `nonzero`,
/// mean and std come from the non-zero voxels only and zeros stay zero. Returns the
/// `(mean, std)` used; an all-zero volume with `nonzero` is left unchanged.
pub fn normalize_intensity(vol: &mut Volume<f32>, nonzero: bool) -> (f64, f64) {
    let selected = |v: f32| !nonzero || v != 0.0;
    let (mut n, mut sum) = (0u64, 0.0f64);
    for &v in vol.data.iter().filter(|&&v| selected(v)) {
        n += 1;
        sum += f64::from(v);
    }
    if n == 0 {
        return (0.0, 1.0);
    }
    let mean = sum / n as f64;
    // Two passes: the one-pass formula cancels badly for CT (mean² ≫ variance).
    let var = vol
        .data
        .iter()
        .filter(|&&v| selected(v))
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    let std = if var > 0.0 { var.sqrt() } else { 1.0 };
    let (m, inv) = (mean as f32, (1.0 / std) as f32);
    vol.data
        .iter_mut()
        .filter(|v| selected(**v))
        .for_each(|v| *v = (*v - m) * inv);
    (mean, std)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IDENTITY;

    fn vol(values: &[f32]) -> Volume<f32> {
        Volume {
            data: values.to_vec(),
            dims: [values.len(), 1, 1],
            affine: IDENTITY,
        }
    }

    #[test]
    fn windowing_matches_hand_computed_values() {
        let mut v = vol(&[-1000.0, -57.0, 53.5, 164.0, 400.0]);
        scale_intensity_range(&mut v, -57.0, 164.0, 0.0, 1.0, true).unwrap();
        // (53.5 + 57) / 221 = 0.5
        assert_eq!(v.data, [0.0, 0.0, 0.5, 1.0, 1.0]);
        let mut v = vol(&[-1000.0, 400.0]);
        scale_intensity_range(&mut v, -57.0, 164.0, 0.0, 1.0, false).unwrap();
        assert!((v.data[0] - (-943.0 / 221.0)).abs() < 1e-6);
        assert!((v.data[1] - (457.0 / 221.0)).abs() < 1e-6);
        // Reversed output range still clips to it.
        let mut v = vol(&[0.0, 10.0, 20.0]);
        scale_intensity_range(&mut v, 0.0, 10.0, 1.0, -1.0, true).unwrap();
        assert_eq!(v.data, [1.0, -1.0, -1.0]);
        assert!(scale_intensity_range(&mut v, 3.0, 3.0, 0.0, 1.0, true).is_err());
    }

    #[test]
    fn zscore_matches_hand_computed_values() {
        // mean 5, population variance ((−3)² + (−1)² + 1² + 3²)/4 = 5.
        let mut v = vol(&[2.0, 4.0, 6.0, 8.0]);
        let (mean, std) = normalize_intensity(&mut v, false);
        assert_eq!(mean, 5.0);
        assert!((std - 5f64.sqrt()).abs() < 1e-12);
        let s = 5f32.sqrt();
        let want = [-3.0 / s, -1.0 / s, 1.0 / s, 3.0 / s];
        assert!(
            v.data.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{:?}",
            v.data
        );

        // Non-zero only: stats from {2, 4} (mean 3, std 1); zeros untouched.
        let mut v = vol(&[0.0, 2.0, 0.0, 4.0]);
        assert_eq!(normalize_intensity(&mut v, true), (3.0, 1.0));
        assert_eq!(v.data, [0.0, -1.0, 0.0, 1.0]);

        // Constant input: std replaced by 1.
        let mut v = vol(&[7.0, 7.0]);
        assert_eq!(normalize_intensity(&mut v, false), (7.0, 1.0));
        assert_eq!(v.data, [0.0, 0.0]);
    }
}
