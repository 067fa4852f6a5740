//! What medlabel records about a series it found by QIDO-RS, before fetching it.
//!
//! An image is recorded with a small JSON blob, the series reference, as its content
//! (extension [`SERIES_REFERENCE_EXT`]): the study, the series and the attributes that
//! say whether it changed in the PACS (instance count, patient and study attributes).
//! The same series read the same way gives the same bytes, so the same blob: a poll that
//! finds nothing new records nothing, and a series that changed (more instances
//! arrived) gets a new reference and is recorded, and later fetched, again.

use std::collections::BTreeMap;

use medlabel_events::datastore::SERIES_REFERENCE_EXT;
use medlabel_events::{Extension, ImageId, Info};
use serde_json::{Value, json};

use super::client::text;

/// Attributes a series search asks for beyond the defaults: what OHIF and Slicer read
/// from next sample and image info.
pub const SEARCH_FIELDS: [&str; 6] = [
    "00100020", // PatientID
    "00080020", // StudyDate
    "00080030", // StudyTime
    "00080060", // Modality
    "0008103E", // SeriesDescription
    "00201209", // NumberOfSeriesRelatedInstances
];

/// A series as its QIDO-RS result describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesEntry {
    pub study: String,
    pub series: String,
    pub modality: String,
    /// The image info medlabel records: MONAI Label's DICOMweb fields.
    pub info: Info,
    /// NumberOfSeriesRelatedInstances, when the server reports it.
    pub instances: Option<String>,
}

impl SeriesEntry {
    /// Reads one QIDO-RS result; `None` without study and series UIDs or with a series
    /// UID that cannot be an image id.
    pub fn from_qido(object: &Value, base_url: &str) -> Option<Self> {
        let study = text(object, "0020000D")?;
        let series = text(object, "0020000E")?;
        ImageId::parse(series.as_str()).ok()?;
        let field = |tag| text(object, tag).unwrap_or_else(|| "UNK".into());
        let retrieve_url = text(object, "00081190")
            .unwrap_or_else(|| format!("{base_url}/studies/{study}/series/{series}"));
        let modality = field("00080060");
        let info = json!({
            "StudyInstanceUID": study,
            "SeriesInstanceUID": series,
            "Modality": modality,
            "StudyDate": field("00080020"),
            "StudyTime": field("00080030"),
            "PatientID": field("00100020"),
            "SeriesDescription": text(object, "0008103E").unwrap_or_default(),
            "RetrieveURL": retrieve_url,
        });
        Some(Self {
            study,
            series,
            modality,
            info: info.as_object().cloned().unwrap_or_default(),
            instances: text(object, "00201209"),
        })
    }

    pub fn image_id(&self) -> ImageId {
        ImageId::parse(self.series.as_str()).expect("checked when read")
    }

    /// The reference's bytes: canonical JSON (sorted keys), without the RetrieveURL,
    /// which names the server as this process reached it, not the series.
    pub fn reference(&self) -> Vec<u8> {
        let mut doc: BTreeMap<&str, Value> = self
            .info
            .iter()
            .filter(|(key, _)| key.as_str() != "RetrieveURL")
            .map(|(key, value)| (key.as_str(), value.clone()))
            .collect();
        doc.insert("NumberOfSeriesRelatedInstances", json!(self.instances));
        serde_json::to_vec(&doc).expect("JSON of strings")
    }
}

/// The extension of series reference blobs.
pub fn reference_ext() -> Extension {
    Extension::parse(SERIES_REFERENCE_EXT).expect("a valid extension")
}

/// The study and series UIDs a stored reference names.
pub fn read_reference(bytes: &[u8]) -> Option<(String, String)> {
    let doc: Value = serde_json::from_slice(bytes).ok()?;
    Some((
        doc["StudyInstanceUID"].as_str()?.to_owned(),
        doc["SeriesInstanceUID"].as_str()?.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_series_gives_the_same_reference_wherever_it_is_reached() {
        let qido = |url: &str, count: u32| {
            json!({
                "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
                "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
                "00080060": {"vr": "CS", "Value": ["CT"]},
                "00100020": {"vr": "LO", "Value": ["P7"]},
                "00201209": {"vr": "IS", "Value": [count]},
                "00081190": {"vr": "UR", "Value": [url]},
            })
        };
        let a = SeriesEntry::from_qido(&qido("http://a/x", 10), "http://a").unwrap();
        let b = SeriesEntry::from_qido(&qido("http://b/y", 10), "http://b").unwrap();
        let c = SeriesEntry::from_qido(&qido("http://a/x", 11), "http://a").unwrap();
        assert_eq!(a.reference(), b.reference());
        assert_ne!(a.reference(), c.reference(), "more instances arrived");
        assert_eq!(a.info["PatientID"], "P7");
        assert_eq!(a.info["StudyDate"], "UNK");
        assert_eq!(a.info["RetrieveURL"], "http://a/x");
        assert_eq!(
            read_reference(&a.reference()),
            Some(("1.2.3".into(), "1.2.3.4".into()))
        );
    }
}
