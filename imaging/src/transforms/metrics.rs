//! Label comparison and the numbers MONAI Label's scoring methods store.
//!
//! Differences from MONAI Label's Python, on purpose: `dice` binarises both labels
//! (`> 0`) instead of multiplying raw label values, so a multi-label map scores its
//! overlap rather than products of label indices (identical for 0/1 labels); and
//! [`sum_and_slices`] counts foreground voxels rather than summing label values. Its
//! slices are MONAI Label's: along the first axis of the (i, j, k) array MONAI's loader
//! gives, i.e. along `i`.

use std::collections::BTreeMap;

use crate::volume::check_same_dims;
use crate::{ImageError, Volume};

/// Largest label index [`dice_per_label`] accepts, which bounds its count tables.
pub const MAX_LABEL_INDEX: u32 = 65_535;

/// Dice of the foregrounds: `2·|y ∩ ŷ| / (|y| + |ŷ|)` with foreground = value > 0,
/// and 1.0 when both are empty (MONAI Label's convention). Dims must match.
pub fn dice(y: &Volume<f32>, y_pred: &Volume<f32>) -> Result<f64, ImageError> {
    check_same_dims(y, y_pred)?;
    let (mut both, mut ny, mut np) = (0u64, 0u64, 0u64);
    for (&a, &b) in y.data.iter().zip(&y_pred.data) {
        let (a, b) = (a > 0.0, b > 0.0);
        ny += u64::from(a);
        np += u64::from(b);
        both += u64::from(a && b);
    }
    Ok(ratio(both, ny + np))
}

/// Dice per label index: for each index > 0 present in either volume, the dice of
/// `y == index` against `ŷ == index`. Values are rounded to the nearest integer;
/// negative or non-finite values count as background; an index above
/// [`MAX_LABEL_INDEX`] is an error.
pub fn dice_per_label(
    y: &Volume<f32>,
    y_pred: &Volume<f32>,
) -> Result<BTreeMap<u32, f64>, ImageError> {
    check_same_dims(y, y_pred)?;
    let index = |v: f32| -> Result<usize, ImageError> {
        let r = v.round();
        if r.is_nan() || r <= 0.0 {
            return Ok(0);
        }
        if r > MAX_LABEL_INDEX as f32 {
            return Err(ImageError::InvalidArgument(format!(
                "label value {v} is above the supported maximum index {MAX_LABEL_INDEX}"
            )));
        }
        Ok(r as usize)
    };
    let mut count_y = vec![0u64; 1];
    let mut count_p = vec![0u64; 1];
    let mut both = vec![0u64; 1];
    for (&a, &b) in y.data.iter().zip(&y_pred.data) {
        let (a, b) = (index(a)?, index(b)?);
        let need = a.max(b) + 1;
        if need > count_y.len() {
            for table in [&mut count_y, &mut count_p, &mut both] {
                table.resize(need, 0);
            }
        }
        count_y[a] += 1;
        count_p[b] += 1;
        if a == b {
            both[a] += 1;
        }
    }
    Ok((1..count_y.len())
        .filter(|&l| count_y[l] + count_p[l] > 0)
        .map(|l| (l as u32, ratio(both[l], count_y[l] + count_p[l])))
        .collect())
}

fn ratio(both: u64, total: u64) -> f64 {
    if total == 0 {
        1.0
    } else {
        2.0 * both as f64 / total as f64
    }
}

/// MONAI Label's `sum` score of a label: (number of voxels > 0, number of slices
/// along `i`, the first array axis, that contain any voxel > 0).
pub fn sum_and_slices(label: &Volume<f32>) -> (u64, u64) {
    let width = label.dims[0];
    if width == 0 {
        return (0, 0);
    }
    let mut occupied = vec![false; width];
    let mut sum = 0;
    for row in label.data.chunks_exact(width) {
        for (i, &v) in row.iter().enumerate() {
            if v > 0.0 {
                sum += 1;
                occupied[i] = true;
            }
        }
    }
    (sum, occupied.iter().filter(|&&o| o).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IDENTITY;

    fn vol(dims: [usize; 3], values: Vec<f32>) -> Volume<f32> {
        Volume {
            data: values,
            dims,
            affine: IDENTITY,
        }
    }

    #[test]
    fn dice_against_independent_counts() {
        // Two overlapping boxes in 10³: y = [2,6)³ (64 voxels), ŷ = [4,8)×[2,6)×[2,6)
        // (64 voxels); overlap [4,6)×[2,6)×[2,6) = 2·4·4 = 32 voxels → dice 0.5.
        let in_box = |i: usize, j: usize, k: usize, x0: usize| {
            (x0..x0 + 4).contains(&i) && (2..6).contains(&j) && (2..6).contains(&k)
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        for k in 0..10 {
            for j in 0..10 {
                for i in 0..10 {
                    a.push(if in_box(i, j, k, 2) { 1.0 } else { 0.0 });
                    // Label value 2 must count like 1 after binarisation.
                    b.push(if in_box(i, j, k, 4) { 2.0 } else { 0.0 });
                }
            }
        }
        let (y, p) = (vol([10; 3], a), vol([10; 3], b));
        assert_eq!(dice(&y, &p).unwrap(), 0.5);
        assert_eq!(dice(&y, &y).unwrap(), 1.0);
        let empty = vol([10; 3], vec![0.0; 1000]);
        assert_eq!(dice(&empty, &empty).unwrap(), 1.0);
        assert_eq!(dice(&y, &empty).unwrap(), 0.0);
        let other = vol([10, 10, 5], vec![0.0; 500]);
        assert!(matches!(
            dice(&y, &other),
            Err(ImageError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn per_label_dice_and_sum_slices() {
        // y:  1 1 2 2 0 0 | ŷ: 1 0 2 2 2 3 (one slice of 6)
        let y = vol([6, 1, 1], vec![1.0, 1.0, 2.0, 2.0, 0.0, 0.0]);
        let p = vol([6, 1, 1], vec![1.0, 0.0, 2.0, 2.0, 2.0, 3.0]);
        let d = dice_per_label(&y, &p).unwrap();
        assert_eq!(d.len(), 3);
        assert!((d[&1] - 2.0 / 3.0).abs() < 1e-12); // 2·1 / (2 + 1)
        assert!((d[&2] - 0.8).abs() < 1e-12); // 2·2 / (2 + 3)
        assert_eq!(d[&3], 0.0);
        let huge = vol([1, 1, 1], vec![1e6]);
        assert!(dice_per_label(&huge, &huge).is_err());

        // Slices along i: i=0 holds voxels at k=0 and k=2 (value 5 counts once), i=1 one
        // at k=0; a box over i in [3, 9) of a 12-wide volume spans 6 slices.
        let label = vol(
            [2, 2, 3],
            vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0],
        );
        assert_eq!(sum_and_slices(&label), (3, 2));
        let mut data = vec![0.0; 12 * 4 * 5];
        for k in 1..4 {
            for j in 0..4 {
                for i in 3..9 {
                    data[i + 12 * (j + 4 * k)] = 1.0;
                }
            }
        }
        assert_eq!(sum_and_slices(&vol([12, 4, 5], data)), (6 * 4 * 3, 6));
    }
}
