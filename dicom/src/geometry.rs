//! Slice geometry: ordering slices along their normal, checking that they form one
//! evenly spaced stack, and the voxel-to-patient affine (LPS, then RAS).

use medlabel_imaging::{Affine, IDENTITY};

use crate::DicomError;

/// Direction cosines of two slices may differ by this much and still count as one
/// orientation (scanners write them with 6+ decimals; 1e-4 is about 0.006°).
pub const ORIENTATION_TOLERANCE: f64 = 1e-4;
/// PixelSpacing (mm) of two slices may differ by this much.
pub const PIXEL_SPACING_TOLERANCE: f64 = 1e-4;
/// Two slices closer than this (mm, along the normal) are at the same position.
pub const DUPLICATE_TOLERANCE_MM: f64 = 1e-3;
/// A slice may lie this fraction of the mean slice step away from where even spacing
/// puts it. A single missing slice moves some slices by half a step or more, so 10%
/// catches every missing slice while tolerating positions rounded to 0.01 mm at
/// 0.5 mm spacing, or the odd jittery scanner.
pub const SLICE_SPACING_TOLERANCE: f64 = 0.1;

/// Where one slice (a single-frame instance or one frame) lies.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Placement {
    /// ImagePositionPatient: LPS mm of the centre of the first (top-left) pixel.
    pub position: [f64; 3],
    /// ImageOrientationPatient: row direction (along a row, i.e. increasing column)
    /// then column direction (down a column, increasing row), LPS.
    pub orientation: [f64; 6],
    /// PixelSpacing: row spacing (between rows, along the column direction) then
    /// column spacing (between columns, along the row direction). Mind the order.
    pub pixel_spacing: [f64; 2],
    /// SpacingBetweenSlices, else SliceThickness: used only for a single slice.
    pub thickness: Option<f64>,
    /// How errors name this slice.
    pub label: String,
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// Unit row and column directions of an ImageOrientationPatient, after checking that
/// they are unit length and orthogonal (within 1e-3, what 6-decimal DS values allow).
pub(crate) fn directions(
    orientation: &[f64; 6],
    label: &str,
) -> Result<([f64; 3], [f64; 3]), DicomError> {
    let row = [orientation[0], orientation[1], orientation[2]];
    let col = [orientation[3], orientation[4], orientation[5]];
    let (nr, nc) = (norm(row), norm(col));
    if (nr - 1.0).abs() > 1e-3 || (nc - 1.0).abs() > 1e-3 || dot(row, col).abs() > 1e-3 {
        return Err(DicomError::InvalidAttribute {
            instance: label.to_string(),
            attribute: "ImageOrientationPatient",
            detail: format!("{orientation:?} are not two orthogonal unit vectors"),
        });
    }
    Ok((row.map(|v| v / nr), col.map(|v| v / nc)))
}

/// Orders `slices` along the slice normal (row × column direction, ascending), checks
/// they form one stack, and returns the order and the LPS affine of the stack.
///
/// The affine's third column is the mean step between consecutive positions, not the
/// normal times a spacing: for gantry-tilted CT the step has an in-plane component and
/// the affine is sheared, which places every voxel where the scanner put it.
pub(crate) fn stack(slices: &[Placement]) -> Result<(Vec<usize>, Affine), DicomError> {
    let first = &slices[0];
    let (row, col) = directions(&first.orientation, &first.label)?;
    for s in &slices[1..] {
        let differs = s
            .orientation
            .iter()
            .zip(&first.orientation)
            .any(|(a, b)| (a - b).abs() > ORIENTATION_TOLERANCE);
        if differs {
            return Err(DicomError::InconsistentSeries {
                instance: s.label.clone(),
                detail: format!(
                    "ImageOrientationPatient {:?} differs from {:?} of {}; \
                     a series must have one orientation",
                    s.orientation, first.orientation, first.label
                ),
            });
        }
        let spacing_differs = s
            .pixel_spacing
            .iter()
            .zip(&first.pixel_spacing)
            .any(|(a, b)| (a - b).abs() > PIXEL_SPACING_TOLERANCE);
        if spacing_differs {
            return Err(DicomError::InconsistentSeries {
                instance: s.label.clone(),
                detail: format!(
                    "PixelSpacing {:?} differs from {:?} of {}",
                    s.pixel_spacing, first.pixel_spacing, first.label
                ),
            });
        }
    }
    if first.pixel_spacing.iter().any(|&v| v <= 0.0) {
        return Err(DicomError::InvalidAttribute {
            instance: first.label.clone(),
            attribute: "PixelSpacing",
            detail: format!("{:?} is not positive", first.pixel_spacing),
        });
    }
    let normal = cross(row, col);
    let along: Vec<f64> = slices.iter().map(|s| dot(s.position, normal)).collect();
    let mut order: Vec<usize> = (0..slices.len()).collect();
    order.sort_by(|&a, &b| along[a].total_cmp(&along[b]));
    for pair in order.windows(2) {
        if along[pair[1]] - along[pair[0]] < DUPLICATE_TOLERANCE_MM {
            return Err(DicomError::DuplicatePosition {
                first: slices[pair[0]].label.clone(),
                second: slices[pair[1]].label.clone(),
                position_mm: along[pair[0]],
            });
        }
    }

    let origin = slices[order[0]].position;
    let n = slices.len();
    let step = if n == 1 {
        let thickness = first.thickness.filter(|t| *t > 0.0).unwrap_or(1.0);
        normal.map(|v| v * thickness)
    } else {
        let last = slices[order[n - 1]].position;
        std::array::from_fn(|c| (last[c] - origin[c]) / (n - 1) as f64)
    };
    let tolerance = SLICE_SPACING_TOLERANCE * norm(step);
    for (k, &s) in order.iter().enumerate() {
        let expected: [f64; 3] = std::array::from_fn(|c| origin[c] + k as f64 * step[c]);
        let p = slices[s].position;
        let deviation = norm(std::array::from_fn(|c| p[c] - expected[c]));
        if deviation > tolerance {
            return Err(DicomError::InconsistentSpacing {
                instance: slices[s].label.clone(),
                slice: k,
                deviation_mm: deviation,
                tolerance_mm: tolerance,
            });
        }
    }

    let [row_spacing, col_spacing] = first.pixel_spacing;
    let mut affine = IDENTITY;
    for r in 0..3 {
        affine[r][0] = row[r] * col_spacing;
        affine[r][1] = col[r] * row_spacing;
        affine[r][2] = step[r];
        affine[r][3] = origin[r];
    }
    Ok((order, affine))
}

/// Converts between DICOM's LPS and NIfTI's RAS world coordinates: x and y change
/// sign. The same flip converts either way.
pub fn flip_lps_ras(affine: &Affine) -> Affine {
    let mut out = *affine;
    for row in &mut out[..2] {
        for v in row {
            *v = -*v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(z: f64, label: &str) -> Placement {
        Placement {
            position: [-100.0, -120.0, z],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            pixel_spacing: [0.8, 0.6],
            thickness: Some(2.5),
            label: label.into(),
        }
    }

    #[test]
    fn orders_by_normal_not_input_and_uses_row_column_spacing() {
        let slices = [
            placement(10.0, "a"),
            placement(4.0, "b"),
            placement(7.0, "c"),
        ];
        let (order, a) = stack(&slices).unwrap();
        assert_eq!(order, [1, 2, 0]);
        // i runs along the row direction with the column spacing (PixelSpacing[1]).
        assert_eq!(a[0], [0.6, 0.0, 0.0, -100.0]);
        assert_eq!(a[1], [0.0, 0.8, 0.0, -120.0]);
        assert_eq!(a[2], [0.0, 0.0, 3.0, 4.0]);
    }

    #[test]
    fn single_slice_uses_thickness_along_the_normal() {
        let (_, a) = stack(&[placement(3.0, "a")]).unwrap();
        assert_eq!(a[2], [0.0, 0.0, 2.5, 3.0]);
    }

    #[test]
    fn rejects_gaps_duplicates_and_mixed_orientations() {
        let gap = [
            placement(0.0, "a"),
            placement(1.0, "b"),
            placement(3.0, "c"),
        ];
        assert!(matches!(
            stack(&gap),
            Err(DicomError::InconsistentSpacing { slice: 1, .. })
        ));
        let dup = [
            placement(0.0, "a"),
            placement(1.0, "b"),
            placement(1.0, "c"),
        ];
        assert!(matches!(
            stack(&dup),
            Err(DicomError::DuplicatePosition { .. })
        ));
        let mut tilted = placement(1.0, "b");
        tilted.orientation[4] = 0.99;
        tilted.orientation[5] = 0.141;
        assert!(matches!(
            stack(&[placement(0.0, "a"), tilted]),
            Err(DicomError::InconsistentSeries { .. })
        ));
        let mut not_unit = placement(0.0, "a");
        not_unit.orientation[0] = 2.0;
        assert!(matches!(
            stack(&[not_unit]),
            Err(DicomError::InvalidAttribute { .. })
        ));
    }

    #[test]
    fn small_jitter_is_tolerated() {
        let slices = [
            placement(0.0, "a"),
            placement(1.004, "b"),
            placement(2.0, "c"),
        ];
        assert!(stack(&slices).is_ok());
    }

    #[test]
    fn lps_ras_flip_is_its_own_inverse() {
        let (_, a) = stack(&[placement(0.0, "a"), placement(2.0, "b")]).unwrap();
        let ras = flip_lps_ras(&a);
        assert_eq!(ras[0][3], 100.0);
        assert_eq!(ras[1][1], -0.8);
        assert_eq!(flip_lps_ras(&ras), a);
    }
}
