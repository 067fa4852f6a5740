//! 4×4 voxel-to-world affine arithmetic and the NIfTI quaternion ("qform") encoding.
//!
//! Affines map voxel indices `(i, j, k, 1)` to RAS+ millimetres. Only the upper 3×4 is
//! meaningful; the last row is always `[0, 0, 0, 1]` and is kept that way.

use crate::{Affine, IDENTITY, ImageError};

/// `a · b`.
pub fn mat_mul(a: &Affine, b: &Affine) -> Affine {
    std::array::from_fn(|r| std::array::from_fn(|c| (0..4).map(|k| a[r][k] * b[k][c]).sum()))
}

/// Applies `a` to the point (or continuous voxel index) `p`.
pub fn apply(a: &Affine, p: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|r| a[r][0] * p[0] + a[r][1] * p[1] + a[r][2] * p[2] + a[r][3])
}

/// The inverse of an affine whose last row is `[0, 0, 0, 1]`; a singular (or
/// non-finite) 3×3 part is an [`ImageError::InvalidArgument`].
pub fn invert(a: &Affine) -> Result<Affine, ImageError> {
    let m = |r: usize, c: usize| a[r][c];
    let cof =
        |r0: usize, r1: usize, c0: usize, c1: usize| m(r0, c0) * m(r1, c1) - m(r0, c1) * m(r1, c0);
    let det = m(0, 0) * cof(1, 2, 1, 2) - m(0, 1) * cof(1, 2, 0, 2) + m(0, 2) * cof(1, 2, 0, 1);
    if !det.is_finite() || det.abs() < 1e-12 {
        return Err(ImageError::InvalidArgument(format!(
            "affine is singular (determinant {det})"
        )));
    }
    let inv3 = [
        [cof(1, 2, 1, 2), -cof(0, 2, 1, 2), cof(0, 1, 1, 2)],
        [-cof(1, 2, 0, 2), cof(0, 2, 0, 2), -cof(0, 1, 0, 2)],
        [cof(1, 2, 0, 1), -cof(0, 2, 0, 1), cof(0, 1, 0, 1)],
    ];
    let mut out = IDENTITY;
    for r in 0..3 {
        for c in 0..3 {
            out[r][c] = inv3[r][c] / det;
        }
        out[r][3] = -(0..3).map(|c| out[r][c] * a[c][3]).sum::<f64>();
    }
    Ok(out)
}

/// Largest absolute element-wise difference between two affines.
pub fn max_abs_diff(a: &Affine, b: &Affine) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The NIfTI qform parameters of an affine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct QForm {
    /// Quaternion (b, c, d); `a` is implied non-negative.
    pub quat: [f64; 3],
    /// `pixdim[0]`: −1 when the axes are left-handed (k is flipped), else 1.
    pub qfac: f64,
    /// Voxel sizes (`pixdim[1..=3]`).
    pub spacing: [f64; 3],
    pub offset: [f64; 3],
}

/// Builds the affine NIfTI method 2 describes: rotation from the quaternion, columns
/// scaled by `spacing`, the third by `qfac` too.
pub(crate) fn from_qform(q: &QForm) -> Affine {
    let [mut b, mut c, mut d] = q.quat;
    let sq = b * b + c * c + d * d;
    // Rounding in the float32 header can push 1 − |bcd|² slightly negative; treat such a
    // quaternion as a 180° rotation, as the NIfTI reference code does.
    let a = if 1.0 - sq < 1e-7 {
        let n = sq.sqrt();
        if n > 0.0 {
            b /= n;
            c /= n;
            d /= n;
        }
        0.0
    } else {
        (1.0 - sq).sqrt()
    };
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - b * b - c * c,
        ],
    ];
    let scale = [q.spacing[0], q.spacing[1], q.spacing[2] * q.qfac];
    let mut out = IDENTITY;
    for row in 0..3 {
        for col in 0..3 {
            out[row][col] = r[row][col] * scale[col];
        }
        out[row][3] = q.offset[row];
    }
    out
}

/// Decomposes an affine into qform parameters. Shear cannot be represented by a
/// quaternion; it is dropped here (the sform still carries the exact affine).
pub(crate) fn to_qform(a: &Affine) -> QForm {
    let mut spacing = [1.0; 3];
    let mut r = [[0.0; 3]; 3];
    for c in 0..3 {
        let n = (0..3).map(|row| a[row][c] * a[row][c]).sum::<f64>().sqrt();
        if n > 0.0 && n.is_finite() {
            spacing[c] = n;
            (0..3).for_each(|row| r[row][c] = a[row][c] / n);
        } else {
            r[c][c] = 1.0;
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    (0..3).for_each(|row| r[row][2] *= qfac);
    let trace = r[0][0] + r[1][1] + r[2][2];
    // Pick the numerically largest quaternion component first (Shepperd's method).
    let (qa, qb, qc, qd) = if trace > 0.0 {
        let s = (trace + 1.0).sqrt() * 2.0;
        (
            0.25 * s,
            (r[2][1] - r[1][2]) / s,
            (r[0][2] - r[2][0]) / s,
            (r[1][0] - r[0][1]) / s,
        )
    } else if r[0][0] > r[1][1] && r[0][0] > r[2][2] {
        let s = (1.0 + r[0][0] - r[1][1] - r[2][2]).sqrt() * 2.0;
        (
            (r[2][1] - r[1][2]) / s,
            0.25 * s,
            (r[0][1] + r[1][0]) / s,
            (r[0][2] + r[2][0]) / s,
        )
    } else if r[1][1] > r[2][2] {
        let s = (1.0 + r[1][1] - r[0][0] - r[2][2]).sqrt() * 2.0;
        (
            (r[0][2] - r[2][0]) / s,
            (r[0][1] + r[1][0]) / s,
            0.25 * s,
            (r[1][2] + r[2][1]) / s,
        )
    } else {
        let s = (1.0 + r[2][2] - r[0][0] - r[1][1]).sqrt() * 2.0;
        (
            (r[1][0] - r[0][1]) / s,
            (r[0][2] + r[2][0]) / s,
            (r[1][2] + r[2][1]) / s,
            0.25 * s,
        )
    };
    let sign = if qa < 0.0 { -1.0 } else { 1.0 };
    QForm {
        quat: [qb * sign, qc * sign, qd * sign],
        qfac,
        spacing,
        offset: [a[0][3], a[1][3], a[2][3]],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotated_lps() -> Affine {
        // 20° about z, then LPS flip of x and y, spacing (0.7, 0.8, 2.5), odd origin.
        let (s, c) = 20f64.to_radians().sin_cos();
        let sp = [0.7, 0.8, 2.5];
        let rot = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let flip = [-1.0, -1.0, 1.0];
        let mut a = IDENTITY;
        for r in 0..3 {
            for col in 0..3 {
                a[r][col] = flip[r] * rot[r][col] * sp[col];
            }
        }
        a[0][3] = 120.5;
        a[1][3] = -33.0;
        a[2][3] = 7.25;
        a
    }

    #[test]
    fn invert_gives_identity_product() {
        let a = rotated_lps();
        let inv = invert(&a).unwrap();
        assert!(max_abs_diff(&mat_mul(&a, &inv), &IDENTITY) < 1e-12);
        let p = [3.0, -4.0, 5.5];
        let back = apply(&inv, apply(&a, p));
        assert!((0..3).all(|i| (back[i] - p[i]).abs() < 1e-12));
        let mut singular = a;
        (0..3).for_each(|r| singular[r][2] = 0.0);
        assert!(invert(&singular).is_err());
    }

    #[test]
    fn qform_round_trips_rotations_and_left_handed_axes() {
        let mut left_handed = rotated_lps();
        (0..3).for_each(|r| left_handed[r][2] = -left_handed[r][2]);
        let diag = [
            [-2.0, 0.0, 0.0, 1.0],
            [0.0, 3.0, 0.0, 2.0],
            [0.0, 0.0, -4.0, 3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        for a in [rotated_lps(), left_handed, diag, IDENTITY] {
            let q = to_qform(&a);
            let back = from_qform(&q);
            assert!(max_abs_diff(&a, &back) < 1e-9, "{a:?} -> {q:?} -> {back:?}");
        }
        assert_eq!(to_qform(&rotated_lps()).qfac, 1.0);
        assert_eq!(to_qform(&left_handed).qfac, -1.0);
    }
}
