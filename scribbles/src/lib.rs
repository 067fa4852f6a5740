//! MONAI Label's "Histogram+GraphCut" scribbles segmentation, in pure Rust.
//!
//! TODO crate docs

pub mod graphcut;
pub mod histogram;
pub mod maxflow;
mod params;
mod segment;

use medlabel_imaging::ImageError;

pub use params::{LabelInfo, ScribblesParams};
pub use segment::segment;

/// Why [`segment`] refused. Messages name the offending input, for an HTTP 4xx body.
#[derive(Debug, thiserror::Error)]
pub enum ScribblesError {
    /// A parameter is outside its domain.
    #[error("invalid parameter {name} = {value}: expected {expected}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The scribbles' dims differ from the image's, or their affines differ beyond
    /// [`medlabel_imaging::GRID_TOLERANCE`].
    #[error("the scribbles are not on the image's voxel grid: {0}")]
    GridMismatch(ImageError),
    /// The ROI, clipped to the image, selects no voxel.
    #[error(
        "roi {roi:?} selects no voxel of the image (dims {dims:?}): each pair \
         [start, end) must overlap 0..dim on its axis"
    )]
    EmptyRoi { roi: [i64; 6], dims: [usize; 3] },
    /// No voxel carries the foreground scribbles label (and no ROI was given).
    #[error("no foreground scribbles: no voxel has the foreground scribbles label {label}")]
    NoForeground { label: u32 },
    /// No voxel carries the background scribbles label and no ROI leaves voxels outside.
    #[error(
        "no background scribbles: no voxel has the background scribbles label {label} \
         and no roi leaves part of the image outside"
    )]
    NoBackground { label: u32 },
    /// A volume is malformed (data not matching dims, a degenerate affine).
    #[error(transparent)]
    Image(#[from] ImageError),
}
