//! DICOM for medlabel (docs TBD)

mod attrs;
mod encode;
mod error;
mod geometry;
mod parse;
mod pixels;
mod seg;
mod series;
pub mod synthetic;

pub use encode::new_uid;
pub use error::DicomError;
pub use geometry::{
    DUPLICATE_TOLERANCE_MM, ORIENTATION_TOLERANCE, PIXEL_SPACING_TOLERANCE,
    SLICE_SPACING_TOLERANCE, flip_lps_ras,
};
pub use seg::{
    DecodedSeg, SegReadOptions, SegWriteOptions, Segment, SegmentAlgorithm, WrittenSeg, read_seg,
    write_seg,
};
pub use series::{Series, SeriesInfo, SliceRef, series_to_volume, series_to_volume_with_limits};
