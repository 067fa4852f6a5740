//! Cropping, pasting back, and padding: sub-grids described by a [`BoundingBox`].
//!
//! A crop keeps voxel size and orientation and moves the origin to the box's first
//! voxel, so cropped voxels keep their world positions. [`paste`] is the inverse of
//! [`crop`] and [`crop`] the inverse of [`pad_to_min_size`]; both inverses take the box
//! the forward operation returned.

use crate::affine::apply;
use crate::volume::Grid;
use crate::{ImageError, Volume};

/// A half-open box of voxels: `start[a] <= index[a] < end[a]` on each axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BoundingBox {
    pub start: [usize; 3],
    pub end: [usize; 3],
}

impl BoundingBox {
    /// The box covering a whole volume of `dims`.
    pub fn full(dims: [usize; 3]) -> Self {
        Self {
            start: [0; 3],
            end: dims,
        }
    }

    /// Voxels per axis.
    pub fn size(&self) -> [usize; 3] {
        std::array::from_fn(|a| self.end[a].saturating_sub(self.start[a]))
    }

    fn check_within(&self, dims: [usize; 3]) -> Result<(), ImageError> {
        if (0..3).any(|a| self.start[a] >= self.end[a] || self.end[a] > dims[a]) {
            return Err(ImageError::InvalidArgument(format!(
                "box {:?}..{:?} is empty or outside dims {dims:?}",
                self.start, self.end
            )));
        }
        Ok(())
    }
}

/// The bounding box of voxels `> threshold`, grown by `margin` voxels on every side
/// and clipped to the volume; `None` when no voxel exceeds the threshold.
pub fn foreground_bbox(vol: &Volume<f32>, threshold: f32, margin: usize) -> Option<BoundingBox> {
    let [nx, ny, _] = vol.dims;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for (row_index, row) in vol.data.chunks_exact(nx.max(1)).enumerate() {
        let Some(first) = row.iter().position(|&v| v > threshold) else {
            continue;
        };
        let last = row.iter().rposition(|&v| v > threshold).unwrap_or(first);
        let (j, k) = (row_index % ny, row_index / ny);
        for (a, (l, h)) in [(first, last), (j, j), (k, k)].into_iter().enumerate() {
            lo[a] = lo[a].min(l);
            hi[a] = hi[a].max(h);
        }
    }
    if lo[0] == usize::MAX {
        return None;
    }
    Some(BoundingBox {
        start: lo.map(|l| l.saturating_sub(margin)),
        end: std::array::from_fn(|a| (hi[a] + 1 + margin).min(vol.dims[a])),
    })
}

/// The voxels inside `bbox`, with the affine moved to the box's first voxel.
pub fn crop(vol: &Volume<f32>, bbox: &BoundingBox) -> Result<Volume<f32>, ImageError> {
    bbox.check_within(vol.dims)?;
    let size = bbox.size();
    let mut data = Vec::with_capacity(size.iter().product());
    for k in bbox.start[2]..bbox.end[2] {
        for j in bbox.start[1]..bbox.end[1] {
            let row = vol.index(0, j, k);
            data.extend_from_slice(&vol.data[row + bbox.start[0]..row + bbox.end[0]]);
        }
    }
    Ok(Volume {
        data,
        dims: size,
        affine: shifted_affine(vol, bbox.start.map(|s| s as f64)),
    })
}

/// Inverse of [`crop`]: a volume on `original` filled with `fill`, with `cropped`
/// written back at `bbox`.
pub fn paste(
    cropped: &Volume<f32>,
    bbox: &BoundingBox,
    original: &Grid,
    fill: f32,
) -> Result<Volume<f32>, ImageError> {
    bbox.check_within(original.dims)?;
    if cropped.dims != bbox.size() {
        return Err(ImageError::ShapeMismatch {
            a: cropped.dims,
            b: bbox.size(),
        });
    }
    let mut out = Volume::filled(original.dims, original.affine, fill);
    let n = cropped.dims[0];
    for (row_index, row) in cropped.data.chunks_exact(n).enumerate() {
        let (j, k) = (row_index % cropped.dims[1], row_index / cropped.dims[1]);
        let at = out.index(bbox.start[0], bbox.start[1] + j, bbox.start[2] + k);
        out.data[at..at + n].copy_from_slice(row);
    }
    Ok(out)
}

/// Crops to [`foreground_bbox`]; when nothing exceeds `threshold` the whole volume is
/// kept. Returns the box for [`paste`].
pub fn crop_foreground(
    vol: &Volume<f32>,
    threshold: f32,
    margin: usize,
) -> Result<(Volume<f32>, BoundingBox), ImageError> {
    let bbox = foreground_bbox(vol, threshold, margin).unwrap_or(BoundingBox::full(vol.dims));
    Ok((crop(vol, &bbox)?, bbox))
}

/// Pads symmetrically with `value` to at least `min_dims` per axis (the extra voxel of
/// an odd difference goes after), as MONAI's `SpatialPad` does before sliding-window
/// inference. Returns the padded volume and the box where the input sits in it, for
/// [`crop`] to undo the padding.
pub fn pad_to_min_size(
    vol: &Volume<f32>,
    min_dims: [usize; 3],
    value: f32,
) -> Result<(Volume<f32>, BoundingBox), ImageError> {
    let dims: [usize; 3] = std::array::from_fn(|a| vol.dims[a].max(min_dims[a]));
    let before: [usize; 3] = std::array::from_fn(|a| (dims[a] - vol.dims[a]) / 2);
    let bbox = BoundingBox {
        start: before,
        end: std::array::from_fn(|a| before[a] + vol.dims[a]),
    };
    let grid = Grid {
        dims,
        affine: shifted_affine(vol, before.map(|b| -(b as f64))),
    };
    Ok((paste(vol, &bbox, &grid, value)?, bbox))
}

/// The affine whose voxel (0, 0, 0) is `vol`'s voxel `offset`.
fn shifted_affine(vol: &Volume<f32>, offset: [f64; 3]) -> crate::Affine {
    let mut a = vol.affine;
    let origin = apply(&vol.affine, offset);
    (0..3).for_each(|r| a[r][3] = origin[r]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> Volume<f32> {
        let affine = [
            [2.0, 0.0, 0.0, 10.0],
            [0.0, -1.0, 0.0, 20.0],
            [0.0, 0.0, 3.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let mut v = Volume::filled([10, 8, 6], affine, 0.0f32);
        for (i, j, k) in [(3, 2, 1), (5, 4, 2), (4, 6, 3)] {
            let at = v.index(i, j, k);
            v.data[at] = 1.0;
        }
        v
    }

    #[test]
    fn foreground_box_with_margin_crop_and_paste_back() {
        let v = vol();
        let bbox = foreground_bbox(&v, 0.5, 1).unwrap();
        assert_eq!(
            bbox,
            BoundingBox {
                start: [2, 1, 0],
                end: [7, 8, 5]
            }
        );
        let (c, b2) = crop_foreground(&v, 0.5, 1).unwrap();
        assert_eq!(b2, bbox);
        assert_eq!(c.dims, [5, 7, 5]);
        assert_eq!(c.get(1, 1, 1), 1.0);
        // Voxel (0,0,0) of the crop is voxel (2,1,0) of the original: 10+4, 20−1, 30.
        assert_eq!(
            [c.affine[0][3], c.affine[1][3], c.affine[2][3]],
            [14.0, 19.0, 30.0]
        );
        let back = paste(&c, &bbox, &v.grid(), 0.0).unwrap();
        assert_eq!(back, v);
        assert!(foreground_bbox(&v, 1.0, 0).is_none());
        let (whole, full) = crop_foreground(&v, 1.0, 0).unwrap();
        assert_eq!((whole.dims, full), (v.dims, BoundingBox::full(v.dims)));
    }

    #[test]
    fn padding_is_symmetric_and_undone_by_crop() {
        let v = vol();
        let (p, bbox) = pad_to_min_size(&v, [13, 4, 6], -1.0).unwrap();
        assert_eq!(p.dims, [13, 8, 6]);
        assert_eq!(bbox.start, [1, 0, 0]);
        assert_eq!(p.get(0, 0, 0), -1.0);
        assert_eq!(p.get(12, 7, 5), -1.0);
        assert_eq!(p.get(4, 2, 1), 1.0);
        // One voxel of padding before i moves the origin back by one voxel (2 mm).
        assert_eq!(p.affine[0][3], 8.0);
        assert_eq!(crop(&p, &bbox).unwrap(), v);
    }

    #[test]
    fn bad_boxes_are_errors() {
        let v = vol();
        let outside = BoundingBox {
            start: [0, 0, 0],
            end: [11, 1, 1],
        };
        assert!(crop(&v, &outside).is_err());
        let empty = BoundingBox {
            start: [2, 0, 0],
            end: [2, 1, 1],
        };
        assert!(crop(&v, &empty).is_err());
        let small = crop(
            &v,
            &BoundingBox {
                start: [0; 3],
                end: [2, 2, 2],
            },
        )
        .unwrap();
        let wrong = BoundingBox {
            start: [0; 3],
            end: [3, 2, 2],
        };
        assert!(matches!(
            paste(&small, &wrong, &v.grid(), 0.0),
            Err(ImageError::ShapeMismatch { .. })
        ));
    }
}
