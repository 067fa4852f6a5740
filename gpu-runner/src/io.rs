//! Image files in and masks out, through the imaging crate's format dispatch
//! (`.nii`, `.nii.gz`, `.nrrd`, `.seg.nrrd`, chosen by extension).

use std::path::Path;

use medlabel_imaging::{DataType, Volume, io};

use crate::error::Result;

/// Reads an image as float voxels with its affine.
pub fn read_image(path: &Path) -> Result<Volume<f32>> {
    Ok(io::read_volume(path)?)
}

/// Reads an image from memory; `ext` (e.g. `.nii.gz`) picks the format.
pub fn read_image_bytes(bytes: &[u8], ext: &str) -> Result<Volume<f32>> {
    Ok(io::read_volume_bytes(bytes, ext)?)
}

/// Writes a label map as uint8 in the format of the path's extension, with the
/// volume's affine.
pub fn write_mask(path: &Path, mask: &Volume<u8>) -> Result<()> {
    Ok(io::write_volume(path, &mask_as_f32(mask), DataType::U8)?)
}

/// Encodes a label map as uint8 in the format `ext` names, an NRRD gzip-encoded only
/// when `compress` (the request's `result_compress`).
pub fn mask_bytes(mask: &Volume<u8>, ext: &str, compress: bool) -> Result<Vec<u8>> {
    Ok(io::write_result_bytes(
        &mask_as_f32(mask),
        ext,
        DataType::U8,
        compress,
    )?)
}

fn mask_as_f32(mask: &Volume<u8>) -> Volume<f32> {
    mask.with_data(mask.data.iter().map(|&v| f32::from(v)).collect())
}
