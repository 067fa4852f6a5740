//! The in-memory volume every other module works on, and its voxel grid.

use crate::ImageError;
use crate::affine::max_abs_diff;

/// A 4×4 affine from voxel indices (i, j, k, 1) to RAS+ world coordinates in mm,
/// the convention of NIfTI and nibabel.
pub type Affine = [[f64; 4]; 4];

/// The identity affine: 1 mm voxels, origin at voxel (0, 0, 0).
pub const IDENTITY: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// A 3D scalar volume with its geometry.
///
/// Voxels are stored with `i` fastest (NIfTI's on-disk order):
/// `data[i + dims[0] * (j + dims[1] * k)]`. Read as a row-major array this is shape
/// `[dims[2], dims[1], dims[0]]`, i.e. (D, H, W), which is how tensors see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T = f32> {
    pub data: Vec<T>,
    pub dims: [usize; 3],
    pub affine: Affine,
}

impl<T: Copy> Volume<T> {
    /// A volume of `dims` filled with `value`.
    pub fn filled(dims: [usize; 3], affine: Affine, value: T) -> Self {
        Self {
            data: vec![value; dims[0] * dims[1] * dims[2]],
            dims,
            affine,
        }
    }

    /// Linear index of voxel (i, j, k).
    #[inline]
    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        i + self.dims[0] * (j + self.dims[1] * k)
    }

    #[inline]
    pub fn get(&self, i: usize, j: usize, k: usize) -> T {
        self.data[self.index(i, j, k)]
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Voxel size in mm along i, j, k (the column norms of the affine).
    pub fn spacing(&self) -> [f64; 3] {
        let a = &self.affine;
        std::array::from_fn(|c| (a[0][c].powi(2) + a[1][c].powi(2) + a[2][c].powi(2)).sqrt())
    }

    /// Same geometry, new voxel values.
    pub fn with_data<U>(&self, data: Vec<U>) -> Volume<U> {
        assert_eq!(data.len(), self.data.len(), "voxel count must not change");
        Volume {
            data,
            dims: self.dims,
            affine: self.affine,
        }
    }
}

/// A voxel grid without voxels: what a transform needs to put data back where it was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    pub dims: [usize; 3],
    pub affine: Affine,
}

impl<T> Volume<T> {
    /// A volume from parts (e.g. a network output copied out of a tensor), checking
    /// that `data` holds exactly `dims[0] · dims[1] · dims[2]` voxels, none of the dims
    /// zero, and that the affine is finite.
    pub fn new(data: Vec<T>, dims: [usize; 3], affine: Affine) -> Result<Self, ImageError> {
        let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if dims.contains(&0) || expected != Some(data.len()) {
            return Err(ImageError::InvalidArgument(format!(
                "dims {dims:?} do not match {} voxels",
                data.len()
            )));
        }
        if affine.iter().flatten().any(|v| !v.is_finite()) {
            return Err(ImageError::InvalidArgument(
                "affine has non-finite values".into(),
            ));
        }
        Ok(Self { data, dims, affine })
    }

    /// This volume's grid.
    pub fn grid(&self) -> Grid {
        Grid {
            dims: self.dims,
            affine: self.affine,
        }
    }
}

/// Affine entries (mm) may differ by this much and still count as the same grid: the
/// sform is stored as float32, so a label saved by another tool from the same image
/// differs in the last bits of origins of a few hundred mm.
pub const GRID_TOLERANCE: f64 = 1e-3;

/// Checks that `a` and `b` share dims and (within [`GRID_TOLERANCE`]) affine, e.g. a
/// label against its image. Fails with [`ImageError::ShapeMismatch`] or
/// [`ImageError::AffineMismatch`].
pub fn check_same_grid<A, B>(a: &Volume<A>, b: &Volume<B>) -> Result<(), ImageError> {
    a.grid().check_same(&b.grid())
}

/// Checks that `label` can be a label of an image on `image`'s grid: whole-number,
/// finite voxels ([`ImageError::FractionalLabel`]) on that grid.
pub fn check_label(label: &Volume<f32>, image: &Grid) -> Result<(), ImageError> {
    if let Some((index, &value)) = label
        .data
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite() || v.fract() != 0.0)
    {
        return Err(ImageError::FractionalLabel { index, value });
    }
    image.check_same(&label.grid())
}

impl Grid {
    /// Checks that `other` has these dims and (within [`GRID_TOLERANCE`]) this affine,
    /// as [`check_same_grid`] does for volumes.
    pub fn check_same(&self, other: &Grid) -> Result<(), ImageError> {
        if self.dims != other.dims {
            return Err(ImageError::ShapeMismatch {
                a: self.dims,
                b: other.dims,
            });
        }
        let max_diff = max_abs_diff(&self.affine, &other.affine);
        if max_diff.is_nan() || max_diff > GRID_TOLERANCE {
            return Err(ImageError::AffineMismatch {
                max_diff,
                tolerance: GRID_TOLERANCE,
            });
        }
        Ok(())
    }
}

/// Checks only that `a` and `b` have the same dims ([`ImageError::ShapeMismatch`]).
pub fn check_same_dims<A, B>(a: &Volume<A>, b: &Volume<B>) -> Result<(), ImageError> {
    if a.dims != b.dims {
        return Err(ImageError::ShapeMismatch {
            a: a.dims,
            b: b.dims,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_voxel_count_and_affine() {
        assert!(Volume::new(vec![0u8; 24], [2, 3, 4], IDENTITY).is_ok());
        assert!(Volume::new(vec![0u8; 23], [2, 3, 4], IDENTITY).is_err());
        assert!(Volume::new(Vec::<u8>::new(), [0, 3, 4], IDENTITY).is_err());
        assert!(Volume::new(vec![0u8; 1], [usize::MAX, 2, 1], IDENTITY).is_err());
        let mut bad = IDENTITY;
        bad[0][3] = f64::NAN;
        assert!(Volume::new(vec![0u8; 1], [1, 1, 1], bad).is_err());
    }

    #[test]
    fn grids_compare_dims_then_affine() {
        let a = Volume::filled([2, 3, 4], IDENTITY, 0u8);
        let mut b = Volume::filled([2, 3, 4], IDENTITY, 1.0f32);
        assert!(check_same_grid(&a, &b).is_ok());
        b.affine[0][3] = 5e-4;
        assert!(check_same_grid(&a, &b).is_ok());
        b.affine[0][3] = 0.01;
        assert!(matches!(
            check_same_grid(&a, &b),
            Err(ImageError::AffineMismatch { .. })
        ));
        assert!(check_same_dims(&a, &b).is_ok());
        let c = Volume::filled([2, 4, 3], IDENTITY, 0u8);
        let err = check_same_grid(&a, &c).unwrap_err();
        assert!(err.to_string().contains("[2, 3, 4] vs [2, 4, 3]"), "{err}");
    }
}
