//! The crate's single error type.
//!
//! Messages name the instance (its position in the input and, once known, its
//! SOPInstanceUID) and the attribute at fault, because the datastore passes them on
//! to the annotator who picked the series.

/// Why a series could not be converted, or a SEG written or read.
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    /// The bytes are not a DICOM Part 10 file (no `DICM` magic).
    #[error("{instance}: not a DICOM file ({detail})")]
    NotDicom { instance: String, detail: String },
    /// The file's structure is broken: an element runs past its container, an item
    /// tag is missing, the file meta group cannot be parsed.
    #[error("{instance}: malformed DICOM: {detail}")]
    Malformed { instance: String, detail: String },
    /// The transfer syntax is known but not decodable here (big endian, JPEG-LS,
    /// JPEG XL, video...), or not known at all (`name` is then "unknown").
    #[error("{instance}: transfer syntax {uid} ({name}) is not supported")]
    UnsupportedTransferSyntax {
        instance: String,
        uid: String,
        name: String,
    },
    /// A required attribute is absent.
    #[error("{instance}: missing {attribute}")]
    MissingAttribute {
        instance: String,
        attribute: &'static str,
    },
    /// An attribute is present but unreadable or out of range.
    #[error("{instance}: {attribute} {detail}")]
    InvalidAttribute {
        instance: String,
        attribute: &'static str,
        detail: String,
    },
    /// A valid image this crate does not convert (colour, 1-bit, legacy multi-frame).
    #[error("{instance}: {detail}")]
    Unsupported { instance: String, detail: String },
    /// The instance has no top-level PixelData element.
    #[error("{instance}: no PixelData")]
    MissingPixelData { instance: String },
    /// Native pixel data shorter than Rows × Columns × frames × bytes per sample.
    #[error("{instance}: pixel data has {found} bytes, the header needs {expected}")]
    PixelDataTooShort {
        instance: String,
        expected: u64,
        found: u64,
    },
    /// A compressed frame could not be decoded.
    #[error("{instance}: frame {frame} cannot be decoded: {detail}")]
    Decode {
        instance: String,
        frame: u32,
        detail: String,
    },
    /// The instances do not form one volume (different series, sizes, orientations).
    #[error("{instance}: {detail}")]
    InconsistentSeries { instance: String, detail: String },
    /// Slice positions are not evenly spaced (a missing slice, variable spacing).
    #[error(
        "{instance}: slice {slice} lies {deviation_mm:.4} mm from where even spacing puts it \
         (tolerance {tolerance_mm:.4} mm); the series has missing slices or variable spacing"
    )]
    InconsistentSpacing {
        instance: String,
        slice: usize,
        deviation_mm: f64,
        tolerance_mm: f64,
    },
    /// Two slices at the same position (duplicates, or several phases in one series).
    #[error("{first} and {second} are both at {position_mm:.4} mm along the slice normal")]
    DuplicatePosition {
        first: String,
        second: String,
        position_mm: f64,
    },
    /// The headers ask for more voxel memory than the limit allows; nothing was
    /// allocated.
    #[error("series needs {needed} bytes of voxel memory, over the limit of {limit} bytes")]
    TooLarge { needed: u64, limit: u64 },
    /// No instances were given.
    #[error("the series has no instances")]
    EmptySeries,
    /// A SEG references another series than the one it is read onto.
    #[error("the SEG references series {referenced:?}, not the source series {source_series}")]
    SeriesMismatch {
        referenced: Vec<String>,
        source_series: String,
    },
    /// A SEG that is not a usable Segmentation (wrong SOP class, frames off the source
    /// grid, unknown segment numbers).
    #[error("invalid SEG: {0}")]
    InvalidSeg(String),
    /// Arguments to [`crate::write_seg`] that cannot produce a valid SEG.
    #[error("{0}")]
    InvalidArgument(String),
    /// dicom-rs failed to encode the SEG (a bug, not bad input).
    #[error("encoding the SEG failed: {0}")]
    Encode(String),
}

/// How errors name an instance: its index in the input and, once read, its
/// SOPInstanceUID.
pub(crate) fn instance_label(index: usize, sop_instance_uid: Option<&str>) -> String {
    match sop_instance_uid {
        Some(uid) if !uid.is_empty() => format!("instance {index} ({uid})"),
        _ => format!("instance {index}"),
    }
}
