//! The crate's single error type.
//!
//! Every fallible operation returns [`ImageError`]. Messages are written for an API user
//! who uploaded a file ("NIfTI header: dim[2] = -4 is not positive"), because the HTTP
//! functions pass them through as 4xx details.

use std::path::PathBuf;

/// Why reading, writing or transforming a volume failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file system refused (missing file, permissions, disk full).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file name does not end in an extension this crate reads or writes.
    #[error("unsupported file extension in {0:?}: expected .nii, .nii.gz, .nrrd or .seg.nrrd")]
    UnknownFormat(String),
    /// The header is malformed or self-contradictory; the string names the field.
    #[error("{format} header: {detail}")]
    InvalidHeader {
        format: &'static str,
        detail: String,
    },
    /// The header is valid but describes something this crate does not handle
    /// (a 4D volume, an unsupported datatype or encoding, a detached data file).
    #[error("{format}: {detail}")]
    Unsupported {
        format: &'static str,
        detail: String,
    },
    /// The voxel data ended before the header's dims were filled.
    #[error("{format} voxel data truncated: header needs {expected} bytes, found {found}")]
    Truncated {
        format: &'static str,
        expected: u64,
        found: u64,
    },
    /// The data (typically a decompressed gzip stream) is far longer than the header's
    /// dims need: a decompression bomb or a header that lies about the shape.
    #[error(
        "{format} voxel data is longer than the header's dims need ({expected} bytes); \
         refusing oversized or lying input"
    )]
    ExcessData { format: &'static str, expected: u64 },
    /// The header asks for more voxel memory than [`crate::ReadLimits`] allows.
    #[error("volume needs {needed} bytes of voxel memory, over the limit of {limit} bytes")]
    TooLarge { needed: u64, limit: u64 },
    /// The gzip stream itself is corrupt.
    #[error("{format} gzip stream is corrupt: {detail}")]
    Decompress {
        format: &'static str,
        detail: String,
    },
    /// A voxel value cannot be stored in the requested on-disk datatype.
    #[error("voxel value {value} at index {index} does not fit datatype {datatype}")]
    ValueOutOfRange {
        value: f32,
        index: usize,
        datatype: &'static str,
    },
    /// A label holds a voxel that is not a whole number (or not finite): label values
    /// are class indices.
    #[error("a label holds whole numbers, but voxel {index} is {value}")]
    FractionalLabel { index: usize, value: f32 },
    /// Two volumes that must share a voxel grid do not have the same dims.
    #[error("shape mismatch: {a:?} vs {b:?} (dims i, j, k)")]
    ShapeMismatch { a: [usize; 3], b: [usize; 3] },
    /// Same dims, but the voxel-to-world affines differ beyond tolerance.
    #[error("grid mismatch: same dims but affines differ by {max_diff} (tolerance {tolerance})")]
    AffineMismatch { max_diff: f64, tolerance: f64 },
    /// A transform parameter is out of its domain (zero spacing, empty ROI, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ImageError {
    pub(crate) fn header(format: &'static str, detail: impl Into<String>) -> Self {
        Self::InvalidHeader {
            format,
            detail: detail.into(),
        }
    }

    pub(crate) fn unsupported(format: &'static str, detail: impl Into<String>) -> Self {
        Self::Unsupported {
            format,
            detail: detail.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
