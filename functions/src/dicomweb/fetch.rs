//! Fetching a series and making it the image's volume.

use std::path::Path;
use std::sync::Arc;

use medlabel_dicom::{DicomError, SeriesInfo, series_to_volume};
use medlabel_events::blob::read_to_vec;
use medlabel_events::datastore::{DatastoreError, ImageRecord};
use medlabel_events::{Extension, ImageId};
use medlabel_imaging::DataType;
use serde_json::json;

use super::Studies;
use super::reference::{SEARCH_FIELDS, SeriesEntry, read_reference, reference_ext};
use super::slices;
use crate::error::{ApiError, FieldError};

/// The fetched volume's format: uncompressed NIfTI, since compressing a 150 MB CT would
/// cost more time than the fetch, and the runner reads either.
const VOLUME_EXT: &str = ".nii";

impl Studies {
    /// The image as a volume clients and the runner can read. An image that awaits its
    /// fetch is fetched, converted and recorded first; an id the datastore does not
    /// know is looked up on the server first (a series stored since the last poll).
    pub async fn volume(&self, image: &ImageId) -> Result<ImageRecord, ApiError> {
        let record = match self.datastore.require_image(image).await {
            Ok(record) => record,
            Err(DatastoreError::ImageNotFound(_)) => self.discover(image).await?,
            Err(err) => return Err(err.into()),
        };
        if !record.awaits_fetch() {
            return Ok(record);
        }
        let lock = {
            let mut fetching = self.fetching.lock().await;
            fetching.entry(image.clone()).or_default().clone()
        };
        let fetched = {
            let _one_fetch = lock.lock().await;
            self.fetch(image).await
        };
        let mut fetching = self.fetching.lock().await;
        if Arc::strong_count(&lock) == 2 {
            fetching.remove(image);
        }
        fetched
    }

    /// Looks a series up by QIDO-RS and records it as an image.
    async fn discover(&self, image: &ImageId) -> Result<ImageRecord, ApiError> {
        let filter = [("SeriesInstanceUID".to_owned(), image.to_string())];
        let found = self.client.search_series(&filter, &SEARCH_FIELDS).await?;
        let entry = found
            .iter()
            .filter_map(|o| SeriesEntry::from_qido(o, &self.client.server().url))
            .find(|e| e.series == image.as_str() && e.modality != "SEG")
            .ok_or_else(|| ApiError::NotFound(format!("Image NOT Found: {image}")))?;
        self.record_series(&entry).await?;
        Ok(self.datastore.image(image).await?)
    }

    /// Records `entry` as an image, unless the datastore holds it with this reference.
    pub(super) async fn record_series(&self, entry: &SeriesEntry) -> Result<bool, ApiError> {
        let bytes = entry.reference();
        let sha = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(&bytes))
        };
        let id = entry.image_id();
        let current = {
            let view = self.datastore.view().await?;
            view.image(&id)
                .and_then(|r| r.series_reference().map(|b| b.sha256.clone()))
        };
        if current.as_deref() == Some(sha.as_str()) {
            return Ok(false);
        }
        let blob = self
            .datastore
            .blob_store()
            .put_bytes(bytes, &reference_ext())
            .await?;
        let ctx = self.write(&format!("image:{id}:{sha}"));
        self.datastore
            .add_image_blob(&ctx, &id, blob, entry.info.clone())
            .await?;
        Ok(true)
    }

    /// Retrieves the series of `image`, converts it and records the volume.
    async fn fetch(&self, image: &ImageId) -> Result<ImageRecord, ApiError> {
        // Read again under the lock: another request may have fetched it meanwhile.
        let record = self.datastore.image(image).await?;
        if !record.awaits_fetch() {
            return Ok(record);
        }
        let source = record.blob.clone();
        let reference = read_to_vec(self.datastore.blob_store().as_ref(), &source).await?;
        let (study, series) = read_reference(&reference)
            .ok_or_else(|| ApiError::Internal(format!("series reference of {image} unreadable")))?;
        let started = std::time::Instant::now();
        let instances = self.client.retrieve_series(&study, &series).await?;
        let retrieved = started.elapsed();
        let output = tempfile::Builder::new()
            .suffix(VOLUME_EXT)
            .tempfile_in(&self.spool)?
            .into_temp_path();
        let target = output.to_path_buf();
        let info = tokio::task::spawn_blocking(move || convert(instances, &target))
            .await
            .map_err(|err| ApiError::Internal(format!("converting a series: {err}")))?
            .map_err(|err| unconvertible(image, err))?;
        if info.series_instance_uid != image.as_str() {
            return Err(ApiError::BadGateway(format!(
                "DICOMweb server {} returned series {} for {image}",
                self.client.server().url,
                info.series_instance_uid
            )));
        }
        let blobs = self.datastore.blob_store();
        let ext = Extension::parse(VOLUME_EXT).expect("a valid extension");
        let blob = blobs.put_file(&output, &ext).await?;
        let map = blobs
            .put_bytes(
                slices::to_json(&info),
                &Extension::parse(".json").expect("valid"),
            )
            .await?;
        let ctx = self.write(&format!("fetch:{image}:{}", source.sha256));
        let record = self
            .datastore
            .record_fetched(&ctx, image, &source, blob, map)
            .await?;
        tracing::info!(
            %image,
            slices = info.slices.len(),
            retrieve_ms = retrieved.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "series fetched and converted"
        );
        Ok(record)
    }

    /// The slice map of a fetched image.
    pub(super) async fn series_info(&self, record: &ImageRecord) -> Result<SeriesInfo, ApiError> {
        let fetched = record
            .fetched
            .as_ref()
            .ok_or_else(|| ApiError::Internal("the image was not fetched from DICOMweb".into()))?;
        let bytes = read_to_vec(self.datastore.blob_store().as_ref(), &fetched.slices).await?;
        slices::from_json(&bytes)
            .map_err(|err| ApiError::Internal(format!("slice map unreadable: {err}")))
    }
}

/// Why a series cannot be an image: the PACS holds it, but medlabel cannot read it.
fn unconvertible(image: &ImageId, err: ConvertError) -> ApiError {
    ApiError::field(FieldError::new(
        "value_error",
        "query",
        "image",
        format!("series {image} cannot be converted to a volume: {err}"),
        json!(image),
    ))
}

#[derive(Debug, thiserror::Error)]
enum ConvertError {
    #[error(transparent)]
    Dicom(#[from] DicomError),
    #[error("writing the volume: {0}")]
    Write(String),
}

/// Converts the instances and writes the volume to `out`: 16-bit integers when every
/// value is one (CT in HU), else 32-bit floats, so the voxels are the series' values.
fn convert(instances: Vec<Vec<u8>>, out: &Path) -> Result<SeriesInfo, ConvertError> {
    let series = series_to_volume(&instances)?;
    drop(instances);
    let integral = series
        .volume
        .data
        .iter()
        .all(|&v| v.fract() == 0.0 && (f32::from(i16::MIN)..=f32::from(i16::MAX)).contains(&v));
    let datatype = if integral {
        DataType::I16
    } else {
        DataType::F32
    };
    medlabel_imaging::nifti::write_nifti(out, &series.volume, datatype)
        .map_err(|err| ConvertError::Write(err.to_string()))?;
    Ok(series.info)
}
