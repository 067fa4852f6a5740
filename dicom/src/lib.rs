//! DICOM for medlabel, in pure Rust: a series of instances to a
//! [`Volume<f32>`](medlabel_imaging::Volume), a label volume to a DICOM SEG and back,
//! and synthetic series for tests. The DICOMweb datastore (QIDO/WADO/STOW) builds on
//! this; this crate does no I/O.
//!
//! # Geometry
//!
//! DICOM places pixels in the patient's LPS space (+x Left, +y Posterior, +z Superior);
//! medlabel volumes, like NIfTI, use RAS+. The conversion flips x and y
//! ([`flip_lps_ras`]), nothing else.
//!
//! * **Voxel axes.** `i` runs along an image row (increasing column, ImageOrientation's
//!   first vector), `j` down a column (increasing row, its second vector), `k` along the
//!   slice normal `row × column`. `data[i + cols · (j + rows · k)]` is therefore each
//!   frame's pixel data as stored, slice after slice: no transposition.
//! * **Spacing.** PixelSpacing is (row spacing, column spacing): the distance between
//!   rows comes first and scales `j`, the distance between columns scales `i`.
//! * **Slice order.** Slices are sorted by the projection of ImagePositionPatient on
//!   the normal, ascending: never by InstanceNumber or file order, which scanners and
//!   PACS number either way. So `k = 0` is the most inferior slice of a standard axial
//!   series, whatever order the instances arrive in.
//! * **Slice step.** The affine's third column is the mean step between consecutive
//!   positions, (last − first) / (n − 1); every slice must lie within
//!   [`SLICE_SPACING_TOLERANCE`] (10%) of the step from where even spacing puts it, so a
//!   missing slice or variable spacing is an error, not a silently stretched volume.
//!   Gantry-tilted CT gives a sheared affine, which is the true geometry. A single
//!   slice uses SpacingBetweenSlices, else SliceThickness, else 1 mm.
//! * **Consistency.** One SeriesInstanceUID, one size, one orientation (within
//!   [`ORIENTATION_TOLERANCE`]) and one PixelSpacing (within
//!   [`PIXEL_SPACING_TOLERANCE`]) per series, and no two slices within
//!   [`DUPLICATE_TOLERANCE_MM`] of each other (a multi-phase series must be split by
//!   the caller).
//!
//! Enhanced multi-frame instances (CT, MR, PET) contribute one slice per frame, placed
//! by PlanePositionSequence, PlaneOrientationSequence and PixelMeasuresSequence from the
//! frame's PerFrameFunctionalGroupsSequence item or else the shared one; several such
//! instances, or a mix with single-frame ones, stack like any other slices.
//!
//! # Values
//!
//! Stored values are masked to BitsStored (at HighBit), sign-extended when
//! PixelRepresentation is 1, then rescaled: `value · RescaleSlope + RescaleIntercept`,
//! per instance or, for enhanced instances, per frame (PixelValueTransformationSequence).
//! CT comes out in HU, exactly for integer HU. BitsAllocated 8, 16 and 32 are read;
//! 32-bit values beyond 2^24 round in `f32`. MONOCHROME1 is **not** inverted: it only
//! tells a viewer to display high values dark, and inverting would turn the physical
//! values the model was trained on into something else. Colour (SamplesPerPixel ≠ 1,
//! RGB, YBR, PALETTE COLOR) is refused.
//!
//! # Transfer syntaxes
//!
//! Read: implicit VR little endian, explicit VR little endian, deflated explicit VR
//! little endian, and through dicom-rs' pure-Rust codecs JPEG baseline/extended
//! (1.2.840.10008.1.2.4.50/.51; jpeg-decoder has no 12-bit DCT, so 12-bit extended
//! frames fail to decode), JPEG lossless (.57) and lossless SV1 (.70) (jpeg-decoder),
//! RLE lossless (.5), and JPEG 2000 (.90/.91, openjp2, a Rust port of OpenJPEG; HTJ2K
//! .201–.203 go to the same decoder, which has a high-throughput block decoder, but are
//! untested here). Everything else, e.g. explicit VR big endian, JPEG-LS, JPEG XL and
//! video, is refused with [`DicomError::UnsupportedTransferSyntax`] naming the UID.
//! SEGs are written in explicit VR little endian.
//!
//! # Untrusted input
//!
//! Instances come from a PACS or an upload, so nothing is allocated from an unchecked
//! header. Before dicom-rs sees a file, a walk over its structure checks that every
//! element length (nested ones too) fits its container and locates the pixel data;
//! dicom-rs then parses only the header, and pixel data is converted in place. Deflated
//! data sets inflate at most to the voxel limit. The volume's size is checked against
//! [`ReadLimits`](medlabel_imaging::ReadLimits) (2 GiB by default) and native pixel data
//! against the header's needs before the volume is allocated. Each failure is a
//! [`DicomError`] naming the instance (input position and SOPInstanceUID).
//!
//! # DICOM SEG
//!
//! [`write_seg`] writes a binary Segmentation on the source grid, one frame per
//! (segment, slice) that holds the segment, referencing the source instances;
//! [`read_seg`] places a binary or fractional SEG back on the source grid. Their docs
//! say exactly what is written and read.
//!
//! # Performance
//!
//! A 512 × 512 × 300 CT series (300 uncompressed instances, 157 MB) converts in about
//! 0.33 s on one core of the 2-core dev box (`cargo bench -p medlabel-dicom`).

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
