//! What an uploaded volume must be before medlabel records it.
//!
//! A garbage label, a truncated gzip, a decompression bomb or a label of another shape
//! than its image used to be saved and to fail much later, in training or scoring, far
//! from the request that caused it. Now an upload is read whole, under
//! [`medlabel_imaging::ReadLimits`], before any event names it, and refused with a 422
//! that says what is wrong:
//! - images must be NIfTI or NRRD volumes that read to the end;
//! - labels must also hold whole-number voxels and lie on their image's grid (dims,
//!   and the affine within [`medlabel_imaging::GRID_TOLERANCE`]). OHIF sends a label
//!   as raw `label.bin` bytes (one `uint8` per voxel, in the image's voxel order), which
//!   becomes a NIfTI label on the image's grid here, as MONAI Label converts it.
//!
//! The image's grid comes from its header alone, so checking a label against a 300 MB
//! CT reads a few KiB of it.

use std::path::Path;

use medlabel_events::datastore::ImageRecord;
use medlabel_events::{BlobRef, Extension, ImageId};
use medlabel_imaging::io::{GRID_PREFIX_BYTES, read_grid_bytes, read_volume_bytes_with_limits};
use medlabel_imaging::{DataType, Grid, ReadLimits, Volume, check_label as label_fits};
use serde_json::json;
use tempfile::TempPath;
use tokio::io::AsyncReadExt;

use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// The extension of OHIF's raw label uploads.
const RAW_LABEL_EXT: &str = ".bin";

fn refused(field: &str, file_name: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::field(FieldError::new(
        "value_error",
        "body",
        field,
        format!("{file_name}: {why}"),
        json!(file_name),
    ))
}

/// Reads `path` (uploaded as `file_name`, format from `ext`) whole, off the async
/// threads.
async fn read_whole(
    path: &Path,
    ext: &Extension,
    field: &str,
    file_name: &str,
) -> Result<Volume<f32>, ApiError> {
    let (path, ext) = (path.to_owned(), ext.as_str().to_owned());
    let read = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path)?;
        Ok::<_, std::io::Error>(read_volume_bytes_with_limits(
            &bytes,
            &ext,
            &ReadLimits::default(),
        ))
    })
    .await
    .map_err(|err| ApiError::Internal(format!("volume check: {err}")))??;
    read.map_err(|err| refused(field, file_name, err))
}

/// Refuses an image upload that is not a readable NIfTI or NRRD volume.
pub async fn check_image(
    path: &Path,
    ext: &Extension,
    field: &str,
    file_name: &str,
) -> Result<(), ApiError> {
    read_whole(path, ext, field, file_name).await.map(drop)
}

/// A label upload that passed [`check_label`]: the file to store and its extension
/// (a converted raw upload is a new NIfTI file; anything else is the upload itself).
pub struct CheckedLabel {
    pub converted: Option<(TempPath, Extension)>,
}

impl CheckedLabel {
    /// The file to store and its extension: the conversion, or `upload` as it came.
    pub fn file<'a>(&'a self, upload: &'a Path, ext: &'a Extension) -> (&'a Path, &'a Extension) {
        match &self.converted {
            Some((path, ext)) => (path, ext),
            None => (upload, ext),
        }
    }
}

/// Refuses a label upload for `image` that is unreadable, holds fractional voxels, or
/// lies on another grid than the image's.
pub async fn check_label(
    state: &AppState,
    image: (&ImageId, &ImageRecord),
    path: &Path,
    ext: &Extension,
    field: &str,
    file_name: &str,
) -> Result<CheckedLabel, ApiError> {
    let (image, record) = image;
    let grid = image_grid(state, record).await;
    if ext.as_str().eq_ignore_ascii_case(RAW_LABEL_EXT) {
        let grid = grid.ok_or_else(|| {
            refused(
                field,
                file_name,
                format!("a raw label needs a NIfTI or NRRD image, and {image} cannot be read"),
            )
        })?;
        let converted = raw_label(state, path, grid, field, file_name).await?;
        return Ok(CheckedLabel {
            converted: Some(converted),
        });
    }
    let label = read_whole(path, ext, field, file_name).await?;
    // An image from before uploads were checked, in a format medlabel cannot read, has
    // no grid to compare with: the label is only checked on its own.
    let grid = grid.unwrap_or_else(|| {
        tracing::warn!(%image, "label checked without its image's grid: the image is unreadable");
        label.grid()
    });
    label_fits(&label, &grid).map_err(|err| {
        refused(
            field,
            file_name,
            format!("not a label of image {image}: {err}"),
        )
    })?;
    Ok(CheckedLabel { converted: None })
}

/// A stored blob as a file in the spool folder, to be checked like an upload (the
/// presigned flow's object reached the blob store without passing through here).
pub async fn spooled(state: &AppState, blob: &BlobRef) -> Result<TempPath, ApiError> {
    let path = tempfile::Builder::new()
        .suffix(blob.ext.as_str())
        .tempfile_in(&state.config.temp_dir)?
        .into_temp_path();
    let mut reader = state.datastore.blob_store().get(blob).await?;
    let mut file = tokio::fs::File::create(&path).await?;
    tokio::io::copy(&mut reader, &mut file).await?;
    Ok(path)
}

/// The grid of an image, from the first bytes of its file; `None` when it cannot be
/// read (an image recorded before uploads were checked).
async fn image_grid(state: &AppState, record: &ImageRecord) -> Option<Grid> {
    let reader = state.datastore.blob_store().get(&record.blob).await.ok()?;
    let mut prefix = Vec::new();
    reader
        .take(GRID_PREFIX_BYTES)
        .read_to_end(&mut prefix)
        .await
        .ok()?;
    read_grid_bytes(&prefix, record.ext.as_str()).ok()
}

/// Turns OHIF's raw label (a `uint8` per voxel of `grid`) into a NIfTI label file.
async fn raw_label(
    state: &AppState,
    path: &Path,
    grid: Grid,
    field: &str,
    file_name: &str,
) -> Result<(TempPath, Extension), ApiError> {
    let voxels: usize = grid.dims.iter().product();
    let size = tokio::fs::metadata(path).await?.len();
    if size != voxels as u64 {
        return Err(refused(
            field,
            file_name,
            format!(
                "a raw label holds one byte per voxel: {voxels} for dims {:?}, but it has {size}",
                grid.dims
            ),
        ));
    }
    let bytes = tokio::fs::read(path).await?;
    let output = tempfile::Builder::new()
        .suffix(".nii.gz")
        .tempfile_in(&state.config.temp_dir)?
        .into_temp_path();
    let target = output.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let data = bytes.into_iter().map(f32::from).collect();
        let volume = Volume::new(data, grid.dims, grid.affine)?;
        medlabel_imaging::nifti::write_nifti(&target, &volume, DataType::U8)
    })
    .await
    .map_err(|err| ApiError::Internal(format!("raw label: {err}")))?
    .map_err(|err| ApiError::Internal(format!("raw label: {err}")))?;
    Ok((
        output,
        Extension::parse(".nii.gz").expect("a valid extension"),
    ))
}
