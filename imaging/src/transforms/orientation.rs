//! Reorienting voxel axes (permutation + flips) without interpolation.
//!
//! [`orient_to_ras`] reorders the voxel axes so that voxel axis `a` runs along world
//! axis `a` in the positive direction (as close as the affine allows: an oblique
//! acquisition stays oblique, only its nearest axis assignment changes). This is the
//! reorientation `monai.transforms.Orientationd(axcodes="RAS")` performs. Voxel values
//! are moved, never resampled, so the inverse restores them bit for bit; the returned
//! [`Orientation`] also keeps the original affine so that it, too, comes back exactly
//! rather than through floating-point round trips.

use crate::volume::Grid;
use crate::{Affine, ImageError, Volume};

/// A reordering of voxel axes: output axis `a` reads input axis `perm[a]`, reversed
/// when `flip[a]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisMap {
    pub perm: [usize; 3],
    pub flip: [bool; 3],
}

impl AxisMap {
    /// The map that changes nothing.
    pub const IDENTITY: AxisMap = AxisMap {
        perm: [0, 1, 2],
        flip: [false; 3],
    };

    /// Whether applying this map would change nothing.
    pub fn is_identity(&self) -> bool {
        *self == Self::IDENTITY
    }

    /// The map that undoes this one.
    pub fn inverse(&self) -> AxisMap {
        let mut inv = Self::IDENTITY;
        for a in 0..3 {
            inv.perm[self.perm[a]] = a;
            inv.flip[self.perm[a]] = self.flip[a];
        }
        inv
    }

    /// Dims after applying the map to a volume of `dims`.
    pub fn output_dims(&self, dims: [usize; 3]) -> [usize; 3] {
        self.perm.map(|p| dims[p])
    }

    /// The affine of the output grid, so that every voxel keeps its world position.
    pub fn output_affine(&self, dims: [usize; 3], affine: &Affine) -> Affine {
        // T maps output indices to input indices; the new affine is `affine · T`.
        let mut t = [[0.0; 4]; 4];
        t[3][3] = 1.0;
        for a in 0..3 {
            let p = self.perm[a];
            if self.flip[a] {
                t[p][a] = -1.0;
                t[p][3] = (dims[p] - 1) as f64;
            } else {
                t[p][a] = 1.0;
            }
        }
        crate::affine::mat_mul(affine, &t)
    }

    /// Applies the map to voxels and affine.
    pub fn apply(&self, vol: &Volume<f32>) -> Volume<f32> {
        let dims = vol.dims;
        let in_stride = [1, dims[0], dims[0] * dims[1]];
        let out_dims = self.output_dims(dims);
        let mut step = [0isize; 3];
        let mut base = 0isize;
        for ((step, &p), &flipped) in step.iter_mut().zip(&self.perm).zip(&self.flip) {
            let s = in_stride[p] as isize;
            if flipped {
                *step = -s;
                base += (dims[p] as isize - 1) * s;
            } else {
                *step = s;
            }
        }
        let mut data = Vec::with_capacity(vol.data.len());
        for z in 0..out_dims[2] as isize {
            for y in 0..out_dims[1] as isize {
                let row = base + z * step[2] + y * step[1];
                if step[0] == 1 {
                    let start = row as usize;
                    data.extend_from_slice(&vol.data[start..start + out_dims[0]]);
                } else {
                    data.extend(
                        (0..out_dims[0] as isize).map(|x| vol.data[(row + x * step[0]) as usize]),
                    );
                }
            }
        }
        Volume {
            data,
            dims: out_dims,
            affine: self.output_affine(dims, &vol.affine),
        }
    }
}

/// The axis map that brings `affine` closest to RAS: the assignment of voxel axes to
/// world axes that maximises the summed absolute direction cosines, with a flip where
/// the assigned cosine is negative. Ties keep the current order.
pub fn ras_axis_map(affine: &Affine) -> AxisMap {
    let mut cos = [[0.0f64; 3]; 3];
    for c in 0..3 {
        let n = (0..3).map(|r| affine[r][c].powi(2)).sum::<f64>().sqrt();
        if n > 0.0 {
            (0..3).for_each(|r| cos[r][c] = affine[r][c] / n);
        }
    }
    const PERMS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let score = |p: &[usize; 3]| (0..3).map(|a| cos[a][p[a]].abs()).sum::<f64>();
    let mut best = PERMS[0];
    for p in &PERMS[1..] {
        if score(p) > score(&best) + 1e-9 {
            best = *p;
        }
    }
    AxisMap {
        perm: best,
        flip: std::array::from_fn(|a| cos[a][best[a]] < 0.0),
    }
}

/// What [`orient_to_ras`] did, to undo it exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Orientation {
    /// The map that was applied.
    pub map: AxisMap,
    /// The grid before reorientation.
    pub original: Grid,
}

impl Orientation {
    /// Puts a volume on the RAS grid (e.g. a prediction) back on the original grid:
    /// voxels moved back, dims and affine exactly the original ones. A volume whose
    /// dims are not the reoriented dims is an [`ImageError::ShapeMismatch`].
    pub fn invert(&self, vol: &Volume<f32>) -> Result<Volume<f32>, ImageError> {
        let expected = self.map.output_dims(self.original.dims);
        if vol.dims != expected {
            return Err(ImageError::ShapeMismatch {
                a: vol.dims,
                b: expected,
            });
        }
        let mut out = self.map.inverse().apply(vol);
        out.affine = self.original.affine;
        Ok(out)
    }
}

/// Reorients `vol` to RAS (see the module doc) and returns how to undo it.
pub fn orient_to_ras(vol: &Volume<f32>) -> (Volume<f32>, Orientation) {
    let map = ras_axis_map(&vol.affine);
    let record = Orientation {
        map,
        original: vol.grid(),
    };
    if map.is_identity() {
        return (vol.clone(), record);
    }
    (map.apply(vol), record)
}

/// Reverses the voxel order along the axes marked `true` (the affine follows, so the
/// anatomy stays where it was in world space). Used for flip augmentation.
pub fn flip(vol: &Volume<f32>, axes: [bool; 3]) -> Volume<f32> {
    AxisMap {
        perm: [0, 1, 2],
        flip: axes,
    }
    .apply(vol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IDENTITY;
    use crate::affine::{apply, max_abs_diff};

    fn lps_permuted() -> Volume<f32> {
        // i runs along −y (posterior), j along −x (left), k along +z: a permuted LPS
        // acquisition with anisotropic spacing.
        let affine = [
            [0.0, -0.8, 0.0, 50.0],
            [-1.5, 0.0, 0.0, 60.0],
            [0.0, 0.0, 3.0, -10.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let dims = [4, 3, 2];
        Volume {
            data: (0..24).map(|v| v as f32).collect(),
            dims,
            affine,
        }
    }

    #[test]
    fn orientation_moves_voxels_to_ras_and_keeps_world_positions() {
        let vol = lps_permuted();
        let (ras, record) = orient_to_ras(&vol);
        assert_eq!(record.map.perm, [1, 0, 2]);
        assert_eq!(record.map.flip, [true, true, false]);
        assert_eq!(ras.dims, [3, 4, 2]);
        // Diagonal, positive.
        for r in 0..3 {
            for c in 0..3 {
                assert_eq!(ras.affine[r][c] > 0.0, r == c, "{:?}", ras.affine);
            }
        }
        // Every voxel's value sits at the same world point before and after.
        for k in 0..vol.dims[2] {
            for j in 0..vol.dims[1] {
                for i in 0..vol.dims[0] {
                    let w = apply(&vol.affine, [i as f64, j as f64, k as f64]);
                    let idx = apply(&crate::affine::invert(&ras.affine).unwrap(), w);
                    let [x, y, z] = idx.map(|v| v.round() as usize);
                    assert_eq!(ras.get(x, y, z), vol.get(i, j, k));
                }
            }
        }
        let back = record.invert(&ras).unwrap();
        assert_eq!(back, vol);
        assert!(record.invert(&vol).is_err());
    }

    #[test]
    fn ras_input_is_left_alone_and_flip_round_trips() {
        let vol = Volume {
            data: (0..24).map(|v| v as f32).collect(),
            dims: [2, 3, 4],
            affine: IDENTITY,
        };
        let (same, record) = orient_to_ras(&vol);
        assert!(record.map.is_identity());
        assert_eq!(same, vol);
        let f = flip(&vol, [true, false, true]);
        assert_eq!(f.get(0, 0, 0), vol.get(1, 0, 3));
        assert_eq!(flip(&f, [true, false, true]).data, vol.data);
        assert!(max_abs_diff(&flip(&f, [true, false, true]).affine, &vol.affine) < 1e-12);
    }

    #[test]
    fn inverse_map_composes_to_identity() {
        let m = AxisMap {
            perm: [2, 0, 1],
            flip: [true, false, true],
        };
        let vol = Volume {
            data: (0..60).map(|v| v as f32).collect(),
            dims: [3, 4, 5],
            affine: IDENTITY,
        };
        assert_eq!(m.inverse().apply(&m.apply(&vol)).data, vol.data);
        assert_eq!(m.inverse().inverse(), m);
    }
}
