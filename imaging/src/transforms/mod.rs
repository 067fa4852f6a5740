//! CPU reference transforms for training and inference pre/post-processing.
//!
//! Each transform that changes the voxel grid returns what its inverse needs (an
//! [`Orientation`], the original [`crate::volume::Grid`], a [`BoundingBox`]) so that a
//! prediction made on the transformed grid can be put back on the image's grid with
//! the same dims and affine. A typical inference pipeline:
//! [`orient_to_ras`] → [`resample_to_spacing`] → [`scale_intensity_range`] →
//! [`pad_to_min_size`] → network → [`crop`] → [`resample_to_grid`] (nearest) →
//! [`Orientation::invert`].

mod augment;
mod crop;
mod intensity;
mod metrics;
mod orientation;
mod resample;

pub use augment::{PosNegSampler, random_flip_axes, random_shift_intensity};
pub use crop::{BoundingBox, crop, crop_foreground, foreground_bbox, pad_to_min_size, paste};
pub use intensity::{normalize_intensity, scale_intensity_range};
pub use metrics::{MAX_LABEL_INDEX, dice, dice_per_label, sum_and_slices};
pub use orientation::{AxisMap, Orientation, flip, orient_to_ras, ras_axis_map};
pub use resample::{Interpolation, resample_to_grid, resample_to_spacing};
