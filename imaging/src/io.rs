//! Format dispatch on file names: `.nii`, `.nii.gz`, `.nrrd`, `.seg.nrrd`.
//!
//! Matching is case-insensitive on the trailing suffix, the way MONAI Label's
//! datastore matches `*.nii.gz *.nii *.nrrd`.

use std::path::Path;

use crate::{DataType, Grid, ImageError, ReadLimits, Volume, nifti, nrrd};

/// A volume file format, as decided by the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.nii`
    Nifti,
    /// `.nii.gz`
    NiftiGz,
    /// `.nrrd` and `.seg.nrrd`
    Nrrd,
}

impl Format {
    /// The format of a file name or bare extension (`"a.nii.gz"`, `".nrrd"`, `"nii"`).
    pub fn from_name(name: &str) -> Result<Self, ImageError> {
        let lower = name.trim().to_ascii_lowercase();
        let dotted = if lower.starts_with('.') {
            lower
        } else {
            format!(".{lower}")
        };
        if dotted.ends_with(".nii.gz") {
            Ok(Self::NiftiGz)
        } else if dotted.ends_with(".nii") {
            Ok(Self::Nifti)
        } else if dotted.ends_with(".nrrd") {
            Ok(Self::Nrrd)
        } else {
            Err(ImageError::UnknownFormat(name.to_string()))
        }
    }

    /// The canonical extension, with its leading dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Nifti => ".nii",
            Self::NiftiGz => ".nii.gz",
            Self::Nrrd => ".nrrd",
        }
    }
}

/// How much of a file's start is read to find its grid: a NIfTI header needs a few
/// hundred bytes (inflated or not), and NRRD headers written by Slicer, MONAI Label and
/// this crate stay far below this.
pub const GRID_PREFIX_BYTES: u64 = 64 << 10;

/// Reads only the voxel grid of the volume file at `path` ([`read_grid_bytes`] on its
/// first [`GRID_PREFIX_BYTES`]).
pub fn read_grid(path: impl AsRef<Path>) -> Result<Grid, ImageError> {
    use std::io::Read;
    let path = path.as_ref();
    let mut prefix = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(GRID_PREFIX_BYTES).read_to_end(&mut prefix))
        .map_err(|e| ImageError::io(path, e))?;
    read_grid_bytes(&prefix, &path.to_string_lossy())
}

/// Reads only the voxel grid (dims and affine) from the first bytes of a volume file
/// named `name` (its extension picks the format); nothing past the header is read, so
/// this costs the same for a 300 MB CT as for a tiny label.
pub fn read_grid_bytes(prefix: &[u8], name: &str) -> Result<Grid, ImageError> {
    match Format::from_name(name)? {
        Format::Nifti | Format::NiftiGz => nifti::read_grid_bytes(prefix),
        Format::Nrrd => nrrd::read_grid_bytes(prefix),
    }
}

/// Reads a volume, choosing the reader from the path's extension.
pub fn read_volume(path: impl AsRef<Path>) -> Result<Volume<f32>, ImageError> {
    read_volume_with_limits(path, &ReadLimits::default())
}

/// [`read_volume`] with explicit limits.
pub fn read_volume_with_limits(
    path: impl AsRef<Path>,
    limits: &ReadLimits,
) -> Result<Volume<f32>, ImageError> {
    let path = path.as_ref();
    let format = Format::from_name(&path.to_string_lossy())?;
    let bytes = std::fs::read(path).map_err(|e| ImageError::io(path, e))?;
    read_format(&bytes, format, limits)
}

/// Reads a volume from memory; `ext` is a file name or extension that picks the format.
pub fn read_volume_bytes(bytes: &[u8], ext: &str) -> Result<Volume<f32>, ImageError> {
    read_volume_bytes_with_limits(bytes, ext, &ReadLimits::default())
}

/// [`read_volume_bytes`] with explicit limits.
pub fn read_volume_bytes_with_limits(
    bytes: &[u8],
    ext: &str,
    limits: &ReadLimits,
) -> Result<Volume<f32>, ImageError> {
    read_format(bytes, Format::from_name(ext)?, limits)
}

fn read_format(
    bytes: &[u8],
    format: Format,
    limits: &ReadLimits,
) -> Result<Volume<f32>, ImageError> {
    match format {
        Format::Nifti => nifti::read_nifti_bytes_with_limits(bytes, false, limits),
        Format::NiftiGz => nifti::read_nifti_bytes_with_limits(bytes, true, limits),
        Format::Nrrd => nrrd::read_nrrd_bytes_with_limits(bytes, limits),
    }
}

/// Writes a volume in the format its path's extension names, voxels stored as
/// `datatype`. NRRD is written gzip-encoded.
pub fn write_volume(
    path: impl AsRef<Path>,
    volume: &Volume<f32>,
    datatype: DataType,
) -> Result<(), ImageError> {
    let path = path.as_ref();
    let bytes = write_volume_bytes(volume, &path.to_string_lossy(), datatype)?;
    std::fs::write(path, bytes).map_err(|e| ImageError::io(path, e))
}

/// Encodes a volume in the format `ext` (a file name or extension) names. For raw
/// (uncompressed) NRRD call [`nrrd::write_nrrd_bytes`] directly.
pub fn write_volume_bytes(
    volume: &Volume<f32>,
    ext: &str,
    datatype: DataType,
) -> Result<Vec<u8>, ImageError> {
    match Format::from_name(ext)? {
        Format::Nifti => nifti::write_nifti_bytes(volume, datatype, false),
        Format::NiftiGz => nifti::write_nifti_bytes(volume, datatype, true),
        Format::Nrrd => nrrd::write_nrrd_bytes(volume, datatype, true),
    }
}

/// [`write_volume_bytes`] for an inference result: an NRRD is gzip-encoded only when
/// `compress` asks for it (MONAI Label's `result_compress`; Slicer and OHIF read raw
/// NRRD), so whoever sends it on need not re-encode it.
pub fn write_result_bytes(
    volume: &Volume<f32>,
    ext: &str,
    datatype: DataType,
    compress: bool,
) -> Result<Vec<u8>, ImageError> {
    match Format::from_name(ext)? {
        Format::Nrrd => nrrd::write_nrrd_bytes(volume, datatype, compress),
        _ => write_volume_bytes(volume, ext, datatype),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_raw_nrrd_unless_compression_is_asked_for() {
        let volume = Volume::filled([4, 3, 2], crate::IDENTITY, 1.0f32);
        let encoding = |ext: &str, compress: bool| {
            let bytes = write_result_bytes(&volume, ext, DataType::U8, compress).unwrap();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let back = read_volume_bytes(&bytes, ext).unwrap();
            assert_eq!(back.data, volume.data, "{ext} {compress}");
            ["raw", "gzip"]
                .into_iter()
                .find(|e| text.contains(&format!("encoding: {e}\n")))
        };
        assert_eq!(encoding(".nrrd", false), Some("raw"));
        assert_eq!(encoding("label.seg.nrrd", true), Some("gzip"));
        // NIfTI follows its extension whatever is asked.
        let gz = write_result_bytes(&volume, ".nii.gz", DataType::U8, false).unwrap();
        assert_eq!(gz[..2], [0x1f, 0x8b]);
    }

    #[test]
    fn formats_from_names() {
        assert_eq!(
            Format::from_name("spleen_3.nii.gz").unwrap(),
            Format::NiftiGz
        );
        assert_eq!(Format::from_name("A.NII").unwrap(), Format::Nifti);
        assert_eq!(Format::from_name("nii.gz").unwrap(), Format::NiftiGz);
        assert_eq!(Format::from_name(".seg.nrrd").unwrap(), Format::Nrrd);
        assert_eq!(Format::from_name("x.nrrd").unwrap(), Format::Nrrd);
        for bad in ["x.png", "x.gz", "xnii", "", "x.nii.gz.bak"] {
            assert!(
                matches!(Format::from_name(bad), Err(ImageError::UnknownFormat(_))),
                "{bad}"
            );
        }
    }
}
