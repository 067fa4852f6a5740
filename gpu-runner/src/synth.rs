//! Synthetic CT-like cases for tests, benchmarks, the starter model and `make-sample`.
//!
//! Each case is a body ellipse of soft tissue (40 HU) in air (−1000 HU) with a brighter
//! ellipsoidal "spleen" (label 1, 110 HU) on the patient's left and an unlabelled larger
//! "liver" (70 HU) on the right, plus Gaussian noise (σ 15 HU). Organ centres and radii
//! vary with the seed, so a model has to find the organ, not memorise a place. The
//! affine is RAS with the given spacing and the volume centred on the origin.

use std::path::Path;

use medlabel_imaging::{IDENTITY, Volume};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, RunnerError};

/// One image and its spleen mask on the same grid.
pub fn case(seed: u64, dims: [usize; 3], spacing: [f64; 3]) -> (Volume<f32>, Volume<u8>) {
    labelled_case(seed, dims, spacing, false)
}

/// [`case`], with the liver labelled too (2) when `liver`: the same image, for
/// multi-label (DeepEdit) models.
pub fn labelled_case(
    seed: u64,
    dims: [usize; 3],
    spacing: [f64; 3],
    liver: bool,
) -> (Volume<f32>, Volume<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut affine = IDENTITY;
    for a in 0..3 {
        affine[a][a] = spacing[a];
        affine[a][3] = -(dims[a] as f64 - 1.0) * spacing[a] / 2.0;
    }
    // Physical half-extent per axis; organs are placed in fractions of it.
    let half: [f64; 3] = std::array::from_fn(|a| dims[a] as f64 * spacing[a] / 2.0);
    let mut jitter = |lo: f64, hi: f64| rng.random_range(lo..hi);
    let spleen_c = [
        half[0] * jitter(0.25, 0.45),
        half[1] * jitter(-0.3, 0.1),
        half[2] * jitter(-0.2, 0.2),
    ];
    let spleen_r = [
        half[0] * jitter(0.15, 0.25),
        half[1] * jitter(0.15, 0.3),
        half[2] * jitter(0.2, 0.35),
    ];
    let liver_c = [
        -half[0] * jitter(0.25, 0.4),
        half[1] * jitter(-0.2, 0.2),
        half[2] * jitter(-0.1, 0.2),
    ];
    let liver_r = [
        half[0] * jitter(0.25, 0.35),
        half[1] * jitter(0.3, 0.45),
        half[2] * jitter(0.3, 0.45),
    ];
    let inside = |p: [f64; 3], c: [f64; 3], r: [f64; 3]| {
        (0..3).map(|a| ((p[a] - c[a]) / r[a]).powi(2)).sum::<f64>() <= 1.0
    };
    let n = dims.iter().product();
    let (mut img, mut lab) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let p: [f64; 3] =
                    std::array::from_fn(|a| affine[a][a] * [i, j, k][a] as f64 + affine[a][3]);
                let body =
                    (p[0] / (half[0] * 0.9)).powi(2) + (p[1] / (half[1] * 0.75)).powi(2) <= 1.0;
                let spleen = body && inside(p, spleen_c, spleen_r);
                let in_liver = !spleen && body && inside(p, liver_c, liver_r);
                let hu = if spleen {
                    110.0
                } else if in_liver {
                    70.0
                } else if body {
                    40.0
                } else {
                    -1000.0
                };
                // Box–Muller noise from the same stream keeps cases reproducible.
                let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
                let noise = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * 15.0;
                img.push((hu + noise) as f32);
                lab.push(if spleen {
                    1
                } else if liver && in_liver {
                    2
                } else {
                    0
                });
            }
        }
    }
    let image = Volume {
        data: img,
        dims,
        affine,
    };
    let label = image.with_data(lab);
    (image, label)
}

/// Writes a MONAI Label studies folder: `dir/<id>.nii.gz` images and
/// `dir/labels/final/<id>.nii.gz` labels for `cases` cases; returns the (image, label)
/// paths.
pub fn write_studies(
    dir: &Path,
    cases: usize,
    seed: u64,
    dims: [usize; 3],
    spacing: [f64; 3],
) -> Result<Vec<(std::path::PathBuf, std::path::PathBuf)>> {
    write_labelled_studies(dir, cases, seed, dims, spacing, false)
}

/// [`write_studies`], with the liver labelled too when `liver`.
pub fn write_labelled_studies(
    dir: &Path,
    cases: usize,
    seed: u64,
    dims: [usize; 3],
    spacing: [f64; 3],
    liver: bool,
) -> Result<Vec<(std::path::PathBuf, std::path::PathBuf)>> {
    let labels = dir.join("labels").join("final");
    std::fs::create_dir_all(&labels).map_err(|e| RunnerError::io(&labels, e))?;
    (0..cases)
        .map(|c| {
            let (image, label) = labelled_case(seed.wrapping_add(c as u64), dims, spacing, liver);
            let name = format!("spleen_{c:03}.nii.gz");
            let (ip, lp) = (dir.join(&name), labels.join(&name));
            medlabel_imaging::nifti::write_nifti(&ip, &image, medlabel_imaging::DataType::I16)?;
            crate::io::write_mask(&lp, &label)?;
            Ok((ip, lp))
        })
        .collect()
}

/// The (image, label) pairs of a studies folder: every image at the top level that has a
/// label of the same name under `labels/final/`.
pub fn studies_datalist(dir: &Path) -> Result<Vec<(std::path::PathBuf, std::path::PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| RunnerError::io(dir, e))?;
    let mut pairs = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| RunnerError::io(dir, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if path.is_file() && (name.ends_with(".nii.gz") || name.ends_with(".nii")) {
            let label = dir.join("labels").join("final").join(&name);
            if label.is_file() {
                pairs.push((path, label));
            }
        }
    }
    pairs.sort();
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_reproducible_and_labelled() {
        let (a, la) = case(5, [24, 20, 16], [3.0, 3.0, 4.0]);
        let (b, _) = case(5, [24, 20, 16], [3.0, 3.0, 4.0]);
        let (c, _) = case(6, [24, 20, 16], [3.0, 3.0, 4.0]);
        assert_eq!(a, b);
        assert_ne!(a.data, c.data);
        let fg = la.data.iter().filter(|&&v| v == 1).count();
        assert!(fg > 20 && fg < la.len() / 4, "{fg}");
        // Spleen voxels are brighter on average than the rest of the body.
        let mean = |pred: &dyn Fn(usize) -> bool| {
            let v: Vec<f32> = (0..a.len())
                .filter(|&i| pred(i))
                .map(|i| a.data[i])
                .collect();
            v.iter().sum::<f32>() / v.len() as f32
        };
        assert!(
            mean(&|i| la.data[i] == 1) > mean(&|i| la.data[i] == 0 && a.data[i] > -500.0) + 40.0
        );
    }

    #[test]
    fn the_liver_variant_labels_the_liver_on_the_same_image() {
        let (a, la) = case(5, [24, 20, 16], [3.0, 3.0, 4.0]);
        let (b, lb) = labelled_case(5, [24, 20, 16], [3.0, 3.0, 4.0], true);
        assert_eq!(a, b);
        assert!(
            la.data
                .iter()
                .zip(&lb.data)
                .all(|(&x, &y)| x == y || (x, y) == (0, 2))
        );
        let liver = lb.data.iter().filter(|&&v| v == 2).count();
        assert!(
            liver > la.data.iter().filter(|&&v| v == 1).count(),
            "{liver}"
        );
    }

    #[test]
    fn studies_folder_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_studies(dir.path(), 2, 1, [8, 8, 8], [2.0; 3]).unwrap();
        assert_eq!(studies_datalist(dir.path()).unwrap(), written);
    }
}
