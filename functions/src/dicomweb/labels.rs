//! Labels as DICOM SEG: a label saved through the API goes to the PACS as a SEG, a SEG
//! found in the PACS becomes a label, and an inference can answer with a SEG.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use medlabel_dicom::{
    DicomError, SegReadOptions, SegWriteOptions, Segment, SegmentAlgorithm, SeriesInfo, read_seg,
    write_seg,
};
use medlabel_events::datastore::ImageRecord;
use medlabel_events::{Extension, ImageId, Info, Tag};
use medlabel_imaging::{DataType, Volume};
use serde_json::{Value, json};

use super::Studies;
use super::client::text;
use super::reference::SeriesEntry;
use crate::error::{ApiError, FieldError};

fn refused(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::field(FieldError::new(
        "value_error",
        "body",
        field,
        why.to_string(),
        Value::Null,
    ))
}

/// The segments of a SEG for `mask`: named by the client's `label_info` (`[{name,
/// idx}]`, Slicer) or `label_names` (`{name: idx}`), else by the model's labels
/// (`model_labels`), and every other value in the mask as `label_<value>`, so no
/// labelled voxel is left out.
pub fn segments_for(
    params: &Info,
    model_labels: &BTreeMap<String, Value>,
    mask: &Volume<f32>,
) -> Result<Vec<Segment>, ApiError> {
    let mut named: BTreeMap<u8, String> = BTreeMap::new();
    let mut add = |name: &str, value: &Value| -> Result<(), ApiError> {
        let Some(value) = value.as_u64() else {
            return Ok(());
        };
        if name == "background" || value == 0 {
            return Ok(());
        }
        let value = u8::try_from(value).map_err(|_| {
            refused(
                "params",
                format!("label {name:?} has value {value}; a DICOM SEG holds values 1 to 255"),
            )
        })?;
        named.entry(value).or_insert_with(|| name.to_owned());
        Ok(())
    };
    if let Some(list) = params.get("label_info").and_then(Value::as_array) {
        for entry in list {
            if let Some(name) = entry["name"].as_str() {
                add(name, &entry["idx"])?;
            }
        }
    }
    if let Some(names) = params.get("label_names").and_then(Value::as_object) {
        for (name, value) in names {
            add(name, value)?;
        }
    }
    for (name, value) in model_labels {
        add(name, value)?;
    }
    let mut present = [false; 256];
    for &v in &mask.data {
        if v > 0.0 && v <= 255.0 {
            present[v as usize] = true;
        }
    }
    let name = |value: u8| {
        named
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("label_{value}"))
    };
    let segments: Vec<Segment> = (1..=255u8)
        .filter(|&v| present[v as usize])
        .map(|value| Segment {
            value,
            label: name(value),
        })
        .collect();
    if !segments.is_empty() {
        return Ok(segments);
    }
    // An empty mask (nothing found) is still an answer: a SEG needs a segment, so it
    // gets the named ones, or one, each without a voxel.
    let values: Vec<u8> = match named.keys().copied().collect::<Vec<_>>() {
        none if none.is_empty() => vec![1],
        values => values,
    };
    Ok(values
        .into_iter()
        .map(|value| Segment {
            value,
            label: name(value),
        })
        .collect())
}

/// Keeps a SEG series out of the poller's hands until the label it belongs to is
/// recorded (or its save failed); dropping it lets the poller see the series again.
pub struct SegGuard {
    series: String,
    stowing: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl SegGuard {
    /// The SEG's SeriesInstanceUID.
    pub fn series(&self) -> &str {
        &self.series
    }
}

impl Drop for SegGuard {
    fn drop(&mut self) {
        self.stowing
            .lock()
            .expect("stowing set")
            .remove(&self.series);
    }
}

/// Reads a label file whole; `name` (a file name or extension) picks the format, since
/// uploads and runner results are spooled under names without one.
async fn read_label(path: &Path, name: &str) -> Result<Volume<f32>, ApiError> {
    let (path, name) = (path.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|err| err.to_string())?;
        medlabel_imaging::io::read_volume_bytes(&bytes, &name).map_err(|err| err.to_string())
    })
    .await
    .map_err(|err| ApiError::Internal(format!("reading a label: {err}")))?
    .map_err(|err| refused("label", err))
}

impl Studies {
    /// Writes the label file at `path` (on `record`'s grid) as a SEG, with `segments`,
    /// and builds it in memory; `algorithm` says who drew it.
    async fn seg_bytes(
        &self,
        record: &ImageRecord,
        mask: Volume<f32>,
        segments: Vec<Segment>,
        options: SegWriteOptions,
    ) -> Result<medlabel_dicom::WrittenSeg, ApiError> {
        let info = self.series_info(record).await?;
        tokio::task::spawn_blocking(move || write_seg(&mask, &info, &segments, &options))
            .await
            .map_err(|err| ApiError::Internal(format!("writing a SEG: {err}")))?
            .map_err(|err| refused("label", err))
    }

    /// Stores the label at `path` (its format named by `name`) in the PACS as a SEG of `record`'s series (by STOW-RS)
    /// and returns the info the label is recorded with (the SEG's UIDs) and a guard to
    /// hold until it is recorded.
    pub async fn store_label(
        &self,
        record: &ImageRecord,
        (path, name): (&Path, &str),
        params: &Info,
        model_labels: &BTreeMap<String, Value>,
    ) -> Result<(Info, SegGuard), ApiError> {
        let mask = read_label(path, name).await?;
        let segments = segments_for(params, model_labels, &mask)?;
        let options = SegWriteOptions {
            algorithm: SegmentAlgorithm::Manual,
            series_description: "medlabel final label".into(),
            ..SegWriteOptions::default()
        };
        let seg = self
            .seg_bytes(record, mask, segments.clone(), options)
            .await?;
        self.stowing
            .lock()
            .expect("stowing set")
            .insert(seg.series_instance_uid.clone());
        let guard = SegGuard {
            series: seg.series_instance_uid.clone(),
            stowing: self.stowing.clone(),
        };
        self.client.store(&seg.bytes).await?;
        let mut info = Info::new();
        for key in ["StudyInstanceUID", "Modality", "PatientID"] {
            if let Some(value) = record.info.get(key) {
                info.insert(key.into(), value.clone());
            }
        }
        info.insert("SeriesInstanceUID".into(), json!(seg.series_instance_uid));
        info.insert("label_names".into(), label_names(&segments));
        Ok((info, guard))
    }

    /// An inference result at `path` (its format named by `name`) as a SEG of `record`'s series, its segments named
    /// after the model's labels.
    pub async fn result_seg(
        &self,
        record: &ImageRecord,
        (path, name): (&Path, &str),
        params: &Info,
        model: &str,
        model_labels: &BTreeMap<String, Value>,
    ) -> Result<Vec<u8>, ApiError> {
        let mask = read_label(path, name).await?;
        let segments = segments_for(params, model_labels, &mask)?;
        let options = SegWriteOptions {
            algorithm: SegmentAlgorithm::Automatic { name: model.into() },
            series_description: format!("medlabel {model}"),
            ..SegWriteOptions::default()
        };
        Ok(self.seg_bytes(record, mask, segments, options).await?.bytes)
    }

    /// Records the SEG series `entry` as the `final` label of the image it references.
    /// `model_labels` maps segment names to label values where they match.
    pub(super) async fn import_seg(
        &self,
        entry: &SeriesEntry,
        model_labels: &BTreeMap<String, Value>,
    ) -> Result<(), ImportError> {
        use ImportError::{Failed, Refused};
        let metadata = self
            .client
            .series_metadata(&entry.study, &entry.series)
            .await
            .map_err(|err| Failed(err.to_string()))?;
        let referenced = metadata
            .first()
            .and_then(|m| m.get("00081115"))
            .and_then(|seq| seq["Value"].as_array())
            .and_then(|items| items.first())
            .and_then(|item| text(item, "0020000E"))
            .ok_or_else(|| Refused("the SEG has no ReferencedSeriesSequence".into()))?;
        let image = ImageId::parse(referenced.as_str())
            .map_err(|err| Refused(format!("referenced series {referenced:?}: {err}")))?;
        let record = self.volume(&image).await.map_err(|err| match err {
            ApiError::NotFound(_) => Refused(format!(
                "the SEG references series {referenced}, which is not an image of this datastore"
            )),
            ApiError::Validation(_) => Refused(format!("its image {referenced}: {err}")),
            other => Failed(format!("its image {referenced}: {other}")),
        })?;
        let files = self
            .client
            .retrieve_series(&entry.study, &entry.series)
            .await
            .map_err(|err| Failed(err.to_string()))?;
        let seg = files
            .into_iter()
            .next()
            .ok_or_else(|| Refused("the SEG series has no instance".into()))?;
        let info = self
            .series_info(&record)
            .await
            .map_err(|e| Failed(e.to_string()))?;
        let values: HashMap<String, u8> = model_labels
            .iter()
            .filter_map(|(name, v)| Some((name.clone(), u8::try_from(v.as_u64()?).ok()?)))
            .collect();
        let decoded = tokio::task::spawn_blocking(move || decode(&seg, &info, &values))
            .await
            .map_err(|err| Failed(err.to_string()))?
            .map_err(|err| Refused(format!("the SEG cannot be read onto its image: {err}")))?;
        let mask = Volume {
            data: decoded.mask.data.iter().map(|&v| f32::from(v)).collect(),
            dims: decoded.mask.dims,
            affine: decoded.mask.affine,
        };
        let bytes = medlabel_imaging::nifti::write_nifti_bytes(&mask, DataType::U8, true)
            .map_err(|err| Failed(err.to_string()))?;
        let blob = self
            .datastore
            .blob_store()
            .put_bytes(bytes, &Extension::parse(".nii.gz").expect("valid"))
            .await
            .map_err(|err| Failed(err.to_string()))?;
        let mut info = Info::new();
        for key in ["StudyInstanceUID", "Modality", "PatientID"] {
            if let Some(value) = record.info.get(key) {
                info.insert(key.into(), value.clone());
            }
        }
        info.insert("SeriesInstanceUID".into(), json!(entry.series));
        info.insert("label_names".into(), label_names(&decoded.segments));
        let ctx = self.write(&format!("seg:{}", entry.series));
        self.datastore
            .save_label_blob(&ctx, &image, &Tag::final_tag(), blob, info)
            .await
            .map_err(|err| Failed(err.to_string()))?;
        Ok(())
    }
}

/// Why a SEG series was not recorded as a label.
#[derive(Debug)]
pub(super) enum ImportError {
    /// Its content cannot become a label: asking again gives the same answer.
    Refused(String),
    /// The server or the store failed: the next poll tries again.
    Failed(String),
}

/// Decodes a SEG, naming values by `values` when every segment's name is in it, else
/// by segment number.
fn decode(
    seg: &[u8],
    info: &SeriesInfo,
    values: &HashMap<String, u8>,
) -> Result<medlabel_dicom::DecodedSeg, DicomError> {
    if !values.is_empty() {
        let options = SegReadOptions {
            label_values: Some(values),
            ..SegReadOptions::default()
        };
        if let Ok(decoded) = read_seg(seg, info, &options) {
            return Ok(decoded);
        }
    }
    read_seg(seg, info, &SegReadOptions::default())
}

/// `{name: value}` of the segments, as MONAI Label's `label_names`.
fn label_names(segments: &[Segment]) -> Value {
    Value::Object(
        segments
            .iter()
            .map(|s| (s.label.clone(), json!(s.value)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(values: &[f32]) -> Volume<f32> {
        let affine = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        Volume::new(values.to_vec(), [values.len(), 1, 1], affine).unwrap()
    }

    fn named(segments: &[Segment]) -> Vec<(u8, &str)> {
        segments
            .iter()
            .map(|s| (s.value, s.label.as_str()))
            .collect()
    }

    #[test]
    fn segments_are_the_values_present_named_by_client_then_model() {
        let params: Info = json!({"label_info": [{"name": "spleen", "idx": 1}]})
            .as_object()
            .cloned()
            .unwrap();
        let model = BTreeMap::from([
            ("background".to_owned(), json!(0)),
            ("spleen".to_owned(), json!(2)),
            ("liver".to_owned(), json!(3)),
        ]);
        let segments = segments_for(&params, &model, &mask(&[0.0, 1.0, 3.0, 7.0])).unwrap();
        assert_eq!(
            named(&segments),
            [(1, "spleen"), (3, "liver"), (7, "label_7")]
        );
    }

    #[test]
    fn an_empty_mask_still_names_a_segment_and_big_values_are_refused() {
        let model = BTreeMap::from([("spleen".to_owned(), json!(1))]);
        let empty = mask(&[0.0, 0.0]);
        assert_eq!(
            named(&segments_for(&Info::new(), &model, &empty).unwrap()),
            [(1, "spleen")]
        );
        let none = BTreeMap::new();
        assert_eq!(
            named(&segments_for(&Info::new(), &none, &empty).unwrap()),
            [(1, "label_1")]
        );
        let big = BTreeMap::from([("aorta".to_owned(), json!(300))]);
        let err = segments_for(&Info::new(), &big, &empty).unwrap_err();
        assert!(format!("{err:?}").contains("1 to 255"), "{err:?}");
    }
}
