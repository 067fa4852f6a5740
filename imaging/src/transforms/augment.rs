//! Seeded training augmentation: balanced random crops, flips, intensity shifts.
//!
//! Everything draws from a caller-supplied [`rand::Rng`]; pass a
//! `rand_chacha::ChaCha8Rng::seed_from_u64(seed)` and a training run is reproducible
//! bit for bit. Functions that must treat an image and its label identically (crop
//! boxes, flip axes) return the random decision so that the caller applies it to both.

use rand::Rng;

use super::crop::BoundingBox;
use crate::{ImageError, Volume};

/// Chooses crop boxes whose centres are foreground with probability
/// `pos / (pos + neg)`, like MONAI's `RandCropByPosNegLabeld`.
///
/// Foreground is label > 0, background label == 0. The centre voxel is drawn uniformly
/// from the chosen class (from the other class when the chosen one is empty) and the
/// box is shifted to lie inside the volume. Voxel indices are kept as `u32`, 4 bytes
/// per voxel, built once per label and reused for every draw.
#[derive(Debug, Clone)]
pub struct PosNegSampler {
    dims: [usize; 3],
    roi: [usize; 3],
    pos_fraction: f64,
    foreground: Vec<u32>,
    background: Vec<u32>,
}

impl PosNegSampler {
    /// Indexes `label`. `roi` must fit inside the label (pad first with
    /// [`super::pad_to_min_size`]); `pos` and `neg` are non-negative, not both zero.
    pub fn new(
        label: &Volume<f32>,
        roi: [usize; 3],
        pos: f64,
        neg: f64,
    ) -> Result<Self, ImageError> {
        if roi.contains(&0) || (0..3).any(|a| roi[a] > label.dims[a]) {
            return Err(ImageError::InvalidArgument(format!(
                "crop roi {roi:?} must be non-empty and fit in dims {:?}; pad the volume first",
                label.dims
            )));
        }
        if !(pos >= 0.0 && neg >= 0.0 && pos + neg > 0.0 && (pos + neg).is_finite()) {
            return Err(ImageError::InvalidArgument(format!(
                "pos {pos} and neg {neg} must be non-negative and not both zero"
            )));
        }
        if u32::try_from(label.len()).is_err() {
            return Err(ImageError::InvalidArgument(
                "label has more than 2^32 voxels".into(),
            ));
        }
        let foreground_count = label.data.iter().filter(|&&v| v > 0.0).count();
        let mut foreground = Vec::with_capacity(foreground_count);
        let mut background = Vec::with_capacity(label.len() - foreground_count);
        for (i, &v) in label.data.iter().enumerate() {
            if v > 0.0 {
                foreground.push(i as u32);
            } else {
                background.push(i as u32);
            }
        }
        Ok(Self {
            dims: label.dims,
            roi,
            pos_fraction: pos / (pos + neg),
            foreground,
            background,
        })
    }

    /// Draws one crop box of size `roi`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> BoundingBox {
        let want_foreground = rng.random_bool(self.pos_fraction);
        let pool = match (
            want_foreground,
            self.foreground.is_empty(),
            self.background.is_empty(),
        ) {
            (true, false, _) | (false, _, true) => &self.foreground,
            _ => &self.background,
        };
        let linear = pool[rng.random_range(0..pool.len())] as usize;
        let [nx, ny, _] = self.dims;
        let centre = [linear % nx, (linear / nx) % ny, linear / (nx * ny)];
        let start: [usize; 3] = std::array::from_fn(|a| {
            centre[a]
                .saturating_sub(self.roi[a] / 2)
                .min(self.dims[a] - self.roi[a])
        });
        BoundingBox {
            start,
            end: std::array::from_fn(|a| start[a] + self.roi[a]),
        }
    }

    /// Draws `n` crop boxes.
    pub fn sample_n<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<BoundingBox> {
        (0..n).map(|_| self.sample(rng)).collect()
    }
}

/// Which axes to flip: each independently with probability `prob` (MONAI's
/// `RandFlipd` per spatial axis). Apply with [`super::flip`] to image and label.
pub fn random_flip_axes<R: Rng + ?Sized>(rng: &mut R, prob: f64) -> [bool; 3] {
    let prob = prob.clamp(0.0, 1.0);
    std::array::from_fn(|_| rng.random_bool(prob))
}

/// With probability `prob`, adds one offset drawn uniformly from
/// `[-max_offset, max_offset]` to every voxel (MONAI's `RandShiftIntensityd`).
/// Returns the offset applied, if any.
pub fn random_shift_intensity<R: Rng + ?Sized>(
    vol: &mut Volume<f32>,
    max_offset: f32,
    prob: f64,
    rng: &mut R,
) -> Option<f32> {
    if !rng.random_bool(prob.clamp(0.0, 1.0)) {
        return None;
    }
    let m = max_offset.abs();
    let offset = if m > 0.0 {
        rng.random_range(-m..=m)
    } else {
        0.0
    };
    vol.data.iter_mut().for_each(|v| *v += offset);
    Some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IDENTITY;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A 20³ label whose only foreground is the 3³ cube at 10..13.
    fn label() -> Volume<f32> {
        let mut v = Volume::filled([20, 20, 20], IDENTITY, 0.0f32);
        for k in 10..13 {
            for j in 10..13 {
                for i in 10..13 {
                    let at = v.index(i, j, k);
                    v.data[at] = 1.0;
                }
            }
        }
        v
    }

    fn contains_foreground(b: &BoundingBox) -> bool {
        (0..3).all(|a| b.start[a] < 13 && b.end[a] > 10)
    }

    #[test]
    fn crops_are_seeded_inside_and_balanced() {
        let sampler = PosNegSampler::new(&label(), [6, 6, 6], 1.0, 1.0).unwrap();
        let boxes = |seed| sampler.sample_n(&mut ChaCha8Rng::seed_from_u64(seed), 400);
        let a = boxes(1);
        assert_eq!(a, boxes(1));
        assert_ne!(a, boxes(2));
        assert!(
            a.iter()
                .all(|b| b.size() == [6, 6, 6] && b.end.iter().all(|&e| e <= 20))
        );
        // Foreground is 27 of 8000 voxels: uniform crops would rarely hit it, while
        // pos:neg 1:1 makes at least half of them contain it.
        let hits = a.iter().filter(|b| contains_foreground(b)).count();
        assert!(
            (200..=300).contains(&hits),
            "{hits} of 400 crops contain foreground"
        );

        let all_pos = PosNegSampler::new(&label(), [6, 6, 6], 1.0, 0.0).unwrap();
        let b = all_pos.sample_n(&mut ChaCha8Rng::seed_from_u64(3), 50);
        assert!(b.iter().all(contains_foreground));
    }

    #[test]
    fn empty_class_falls_back_and_bad_arguments_fail() {
        let empty = Volume::filled([8, 8, 8], IDENTITY, 0.0f32);
        let s = PosNegSampler::new(&empty, [4, 4, 4], 1.0, 0.0).unwrap();
        assert_eq!(
            s.sample(&mut ChaCha8Rng::seed_from_u64(0)).size(),
            [4, 4, 4]
        );
        assert!(PosNegSampler::new(&empty, [9, 4, 4], 1.0, 1.0).is_err());
        assert!(PosNegSampler::new(&empty, [4, 0, 4], 1.0, 1.0).is_err());
        assert!(PosNegSampler::new(&empty, [4, 4, 4], 0.0, 0.0).is_err());
        assert!(PosNegSampler::new(&empty, [4, 4, 4], -1.0, 2.0).is_err());
    }

    #[test]
    fn flips_and_shifts_are_seeded() {
        let flips = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..32)
                .map(|_| random_flip_axes(&mut rng, 0.5))
                .collect::<Vec<_>>()
        };
        assert_eq!(flips(5), flips(5));
        assert_ne!(flips(5), flips(6));
        assert!(flips(5).iter().flatten().any(|&f| f) && flips(5).iter().flatten().any(|&f| !f));

        let shift = |seed| {
            let mut v = Volume::filled([2, 2, 2], IDENTITY, 1.0f32);
            let off =
                random_shift_intensity(&mut v, 0.1, 1.0, &mut ChaCha8Rng::seed_from_u64(seed))
                    .unwrap();
            assert!(v.data.iter().all(|&x| x == 1.0 + off));
            off
        };
        assert_eq!(shift(9), shift(9));
        assert_ne!(shift(9), shift(10));
        assert!(shift(9).abs() <= 0.1);
        let mut v = Volume::filled([2, 2, 2], IDENTITY, 1.0f32);
        assert_eq!(
            random_shift_intensity(&mut v, 0.1, 0.0, &mut ChaCha8Rng::seed_from_u64(1)),
            None
        );
        assert!(v.data.iter().all(|&x| x == 1.0));
    }
}
