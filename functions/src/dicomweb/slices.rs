//! The slice map of a fetched series: [`SeriesInfo`] as a JSON blob.
//!
//! A DICOM SEG names the instance (and frame) of every slice it covers, and copies the
//! patient and study attributes of its source. None of that is in the NIfTI volume the
//! series became, and fetching the whole series again to learn it would cost as much as
//! the first fetch, so it is stored beside the volume when the series is converted.

use medlabel_dicom::{SeriesInfo, SliceRef};
use medlabel_imaging::Grid;
use serde_json::{Value, json};

/// The JSON a [`SeriesInfo`] is stored as.
pub fn to_json(info: &SeriesInfo) -> Vec<u8> {
    let slices: Vec<Value> = info
        .slices
        .iter()
        .map(|s| json!([s.sop_class_uid, s.sop_instance_uid, s.frame_number]))
        .collect();
    let doc = json!({
        "study_instance_uid": info.study_instance_uid,
        "series_instance_uid": info.series_instance_uid,
        "frame_of_reference_uid": info.frame_of_reference_uid,
        "modality": info.modality,
        "patient_id": info.patient_id,
        "patient_name": info.patient_name,
        "patient_birth_date": info.patient_birth_date,
        "patient_sex": info.patient_sex,
        "study_date": info.study_date,
        "study_time": info.study_time,
        "study_id": info.study_id,
        "accession_number": info.accession_number,
        "referring_physician_name": info.referring_physician_name,
        "rows": info.rows,
        "columns": info.columns,
        "dims": info.grid.dims,
        // Bit patterns: JSON's decimal floats need not read back to the same f64.
        "affine": info.grid.affine.map(|row| row.map(f64::to_bits)),
        "slices": slices,
    });
    serde_json::to_vec(&doc).expect("JSON of plain values")
}

/// Reads what [`to_json`] wrote.
pub fn from_json(bytes: &[u8]) -> Result<SeriesInfo, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let text = |key: &str| -> Result<String, String> {
        doc[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{key} missing"))
    };
    let number = |key: &str| -> Result<usize, String> {
        doc[key]
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| format!("{key} missing"))
    };
    let dims: [usize; 3] =
        serde_json::from_value(doc["dims"].clone()).map_err(|e| e.to_string())?;
    let bits: [[u64; 4]; 4] =
        serde_json::from_value(doc["affine"].clone()).map_err(|e| e.to_string())?;
    let affine = bits.map(|row| row.map(f64::from_bits));
    let slices = doc["slices"]
        .as_array()
        .ok_or("slices missing")?
        .iter()
        .map(|s| {
            Ok(SliceRef {
                sop_class_uid: s[0].as_str().ok_or("SOPClassUID missing")?.to_owned(),
                sop_instance_uid: s[1].as_str().ok_or("SOPInstanceUID missing")?.to_owned(),
                frame_number: s[2].as_u64().map(|n| n as u32),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(SeriesInfo {
        study_instance_uid: text("study_instance_uid")?,
        series_instance_uid: text("series_instance_uid")?,
        frame_of_reference_uid: text("frame_of_reference_uid")?,
        modality: text("modality")?,
        patient_id: text("patient_id")?,
        patient_name: text("patient_name")?,
        patient_birth_date: text("patient_birth_date")?,
        patient_sex: text("patient_sex")?,
        study_date: text("study_date")?,
        study_time: text("study_time")?,
        study_id: text("study_id")?,
        accession_number: text("accession_number")?,
        referring_physician_name: text("referring_physician_name")?,
        rows: number("rows")?,
        columns: number("columns")?,
        slices,
        grid: Grid { dims, affine },
    })
}

#[cfg(test)]
mod tests {
    use medlabel_dicom::series_to_volume;
    use medlabel_dicom::synthetic::{SyntheticCt, synthetic_ct_multiframe};

    #[test]
    fn round_trips_a_converted_series() {
        let spec = SyntheticCt::default();
        let series = series_to_volume(&[synthetic_ct_multiframe(&spec, false)]).unwrap();
        let back = super::from_json(&super::to_json(&series.info)).unwrap();
        assert_eq!(back, series.info);
        assert!(back.slices.iter().all(|s| s.frame_number.is_some()));
    }
}
