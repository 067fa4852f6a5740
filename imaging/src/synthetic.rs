//! Deterministic synthetic CT-like cases for tests and demo training.
//!
//! A case is air (−1000 HU) around a body ellipsoid (0 HU) holding a "spleen"
//! ellipsoid (label 1, +60 HU) on the subject's left (low `i`) and, optionally, a
//! "liver" ellipsoid (label 2, +100 HU) on the right, plus Gaussian noise. Organ centres and radii are
//! drawn per seed from ranges that keep each organ (essentially) inside the body, clear
//! of the other organ, and over a thousand voxels large at 64³, so a small UNet
//! separates them quickly.
//! The affine is RAS-diagonal with the configured spacing and the volume centred on the
//! world origin. The same seed and config always give the same volumes, on any machine.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{DataType, IDENTITY, ImageError, Volume, nifti};

/// Label value of the spleen.
pub const SPLEEN: f32 = 1.0;
/// Label value of the liver.
pub const LIVER: f32 = 2.0;

const AIR_HU: f32 = -1000.0;
const BODY_HU: f32 = 0.0;
const SPLEEN_HU: f32 = 60.0;
const LIVER_HU: f32 = 100.0;

/// Shape and content of generated cases.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticConfig {
    /// Voxels along i, j, k (each at least 16).
    pub dims: [usize; 3],
    /// Isotropic voxel size in mm.
    pub spacing: f64,
    /// Standard deviation of the added Gaussian noise, in HU.
    pub noise_sd: f32,
    /// Whether to add the liver (label 2).
    pub with_liver: bool,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            dims: [64, 64, 64],
            spacing: 1.5,
            noise_sd: 10.0,
            with_liver: false,
        }
    }
}

/// An axis-aligned ellipsoid in voxel coordinates.
struct Ellipsoid {
    centre: [f64; 3],
    radii: [f64; 3],
}

impl Ellipsoid {
    #[inline]
    fn contains(&self, p: [f64; 3]) -> bool {
        (0..3)
            .map(|a| ((p[a] - self.centre[a]) / self.radii[a]).powi(2))
            .sum::<f64>()
            <= 1.0
    }

    /// Centre drawn from `lo..hi` fractions of `dims` per axis, radii from
    /// `rlo..rhi` fractions.
    fn random(
        rng: &mut ChaCha8Rng,
        dims: [usize; 3],
        lo: [f64; 3],
        hi: [f64; 3],
        rlo: f64,
        rhi: f64,
    ) -> Self {
        Self {
            centre: std::array::from_fn(|a| rng.random_range(lo[a]..hi[a]) * dims[a] as f64),
            radii: std::array::from_fn(|a| rng.random_range(rlo..rhi) * dims[a] as f64),
        }
    }
}

/// One (image, label) pair for `seed`. Dims below 16 are an error.
pub fn generate_case(
    seed: u64,
    config: &SyntheticConfig,
) -> Result<(Volume<f32>, Volume<f32>), ImageError> {
    let dims = config.dims;
    if dims.iter().any(|&d| d < 16) || !(config.spacing.is_finite() && config.spacing > 0.0) {
        return Err(ImageError::InvalidArgument(format!(
            "synthetic dims {dims:?} must each be at least 16 and spacing {} positive",
            config.spacing
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let body = Ellipsoid::random(
        &mut rng,
        dims,
        [0.47, 0.47, 0.47],
        [0.53, 0.53, 0.53],
        0.40,
        0.46,
    );
    // Spleen on the low-i side (i ≤ 0.49 of the width), liver on the high-i side
    // (i ≥ 0.51): they never overlap. Radii ≥ 0.11 of the width keep the spleen above
    // ~1400 voxels at 64³.
    let spleen = Ellipsoid::random(
        &mut rng,
        dims,
        [0.28, 0.38, 0.38],
        [0.34, 0.62, 0.62],
        0.11,
        0.15,
    );
    let liver = Ellipsoid::random(
        &mut rng,
        dims,
        [0.66, 0.40, 0.40],
        [0.72, 0.60, 0.60],
        0.12,
        0.15,
    );

    let mut affine = IDENTITY;
    for a in 0..3 {
        affine[a][a] = config.spacing;
        affine[a][3] = -(dims[a] as f64 - 1.0) / 2.0 * config.spacing;
    }
    let mut noise = Noise {
        state: rng.random(),
        spare: None,
    };
    let n = dims.iter().product();
    let mut image = Vec::with_capacity(n);
    let mut label = Vec::with_capacity(n);
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let p = [i as f64, j as f64, k as f64];
                let (hu, lab) = if config.with_liver && liver.contains(p) {
                    (LIVER_HU, LIVER)
                } else if spleen.contains(p) {
                    (SPLEEN_HU, SPLEEN)
                } else if body.contains(p) {
                    (BODY_HU, 0.0)
                } else {
                    (AIR_HU, 0.0)
                };
                image.push(hu + config.noise_sd * noise.standard_normal());
                label.push(lab);
            }
        }
    }
    Ok((
        Volume {
            data: image,
            dims,
            affine,
        },
        Volume {
            data: label,
            dims,
            affine,
        },
    ))
}

/// Gaussian noise from SplitMix64 + Box–Muller, seeded from the case's ChaCha stream.
///
/// Millions of samples per case: the generator lives in this crate so that it runs at
/// this crate's opt-level 3 even in dev builds, where `rand_chacha` (opt-level 0) is
/// ~50× slower per sample.
struct Noise {
    state: u64,
    spare: Option<f32>,
}

impl Noise {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn standard_normal(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let r = (-2.0 * (1.0 - self.unit()).ln()).sqrt(); // 1 − u ∈ (0, 1]: finite ln
        let (sin, cos) = (std::f64::consts::TAU * self.unit()).sin_cos();
        self.spare = Some((r * sin) as f32);
        (r * cos) as f32
    }
}

/// Writes `n` cases (seeds `first_seed..first_seed + n`) into `dir` in MONAI Label's
/// studies layout: images as `<id>.nii.gz` (int16 HU) and labels as
/// `labels/final/<id>.nii.gz` (uint8). Ids are `case_000`, `case_001`, ...; returns
/// them in order.
pub fn write_dataset(
    dir: impl AsRef<Path>,
    n: usize,
    first_seed: u64,
    config: &SyntheticConfig,
) -> Result<Vec<String>, ImageError> {
    let dir = dir.as_ref();
    let labels = dir.join("labels").join("final");
    std::fs::create_dir_all(&labels).map_err(|e| ImageError::io(&labels, e))?;
    (0..n)
        .map(|i| {
            let id = format!("case_{i:03}");
            let (image, label) = generate_case(first_seed + i as u64, config)?;
            nifti::write_nifti(dir.join(format!("{id}.nii.gz")), &image, DataType::I16)?;
            nifti::write_nifti(labels.join(format!("{id}.nii.gz")), &label, DataType::U8)?;
            Ok(id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_where(image: &Volume<f32>, label: &Volume<f32>, want: f32) -> (f64, usize) {
        let vals: Vec<f64> = image
            .data
            .iter()
            .zip(&label.data)
            .filter(|(_, l)| **l == want)
            .map(|(v, _)| f64::from(*v))
            .collect();
        (
            vals.iter().sum::<f64>() / vals.len().max(1) as f64,
            vals.len(),
        )
    }

    #[test]
    fn cases_are_deterministic_and_seed_dependent() {
        let cfg = SyntheticConfig::default();
        let (a, la) = generate_case(3, &cfg).unwrap();
        let (b, lb) = generate_case(3, &cfg).unwrap();
        assert_eq!((&a, &la), (&b, &lb));
        let (c, lc) = generate_case(4, &cfg).unwrap();
        assert_ne!(a.data, c.data);
        assert_ne!(la.data, lc.data);
        assert_eq!(a.spacing(), [1.5; 3]);
        assert!(
            generate_case(
                1,
                &SyntheticConfig {
                    dims: [8, 64, 64],
                    ..cfg
                }
            )
            .is_err()
        );
    }

    #[test]
    fn organs_are_large_and_have_their_intensity() {
        let cfg = SyntheticConfig {
            with_liver: true,
            ..SyntheticConfig::default()
        };
        for seed in 0..5 {
            let (img, lab) = generate_case(seed, &cfg).unwrap();
            let (spleen_hu, spleen_n) = mean_where(&img, &lab, SPLEEN);
            let (liver_hu, liver_n) = mean_where(&img, &lab, LIVER);
            assert!(
                spleen_n > 1500 && liver_n > 1500,
                "seed {seed}: {spleen_n} {liver_n}"
            );
            assert!((spleen_hu - 60.0).abs() < 2.0, "{spleen_hu}");
            assert!((liver_hu - 100.0).abs() < 2.0, "{liver_hu}");
            // Corners are air.
            assert!(img.get(0, 0, 0) < -900.0 && lab.get(0, 0, 0) == 0.0);
        }
    }
}
