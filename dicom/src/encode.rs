//! Building data sets: UIDs, decimal strings, element shorthands, Part 10 output.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use crate::DicomError;

/// ImplementationClassUID of files medlabel writes (a fixed 2.25 UUID-derived UID).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.153479186254470935214616390426427390937";
/// ImplementationVersionName of files medlabel writes.
pub const IMPLEMENTATION_VERSION_NAME: &str = "MEDLABEL_0_1";

/// A new globally unique UID: `2.25.` and a random UUID as a decimal integer (ITU-T
/// X.667), which needs no registered organisation root.
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

/// `x` as a DICOM Decimal String: at most 16 characters, as precise as fits.
pub(crate) fn ds(x: f64) -> String {
    let x = if x == 0.0 { 0.0 } else { x }; // no "-0"
    let shortest = x.to_string();
    if shortest.len() <= 16 {
        return shortest;
    }
    for decimals in (0..=15).rev() {
        let s = format!("{x:.decimals$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    // Beyond 1e15 mm nothing is a real coordinate; scientific notation still fits.
    format!("{x:.6e}")
}

/// Several decimals as one multi-valued DS element.
pub(crate) fn ds_elem(tag: Tag, values: &[f64]) -> DataElement<InMemDicomObject> {
    DataElement::new(
        tag,
        VR::DS,
        PrimitiveValue::Strs(values.iter().map(|&v| ds(v)).collect()),
    )
}

/// A string element (UI, CS, LO, PN, DA, TM, SH, IS, ...).
pub(crate) fn str_elem(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

/// A US element.
pub(crate) fn us_elem(tag: Tag, value: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

/// A sequence of items.
pub(crate) fn seq_elem(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// An item of elements.
pub(crate) fn item(
    elements: impl IntoIterator<Item = DataElement<InMemDicomObject>>,
) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

/// A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning).
pub(crate) fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    use dicom_dictionary_std::tags;
    item([
        str_elem(tags::CODE_VALUE, VR::SH, value),
        str_elem(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        str_elem(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// The data set as a Part 10 file (preamble, meta group) in `transfer_syntax`, which
/// must be one dicom-rs writes natively (implicit or explicit VR little endian).
pub(crate) fn part10(obj: InMemDicomObject, transfer_syntax: &str) -> Result<Vec<u8>, DicomError> {
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(transfer_syntax)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
        )
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    let mut out = Vec::new();
    file.write_all(&mut out)
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_16_chars_and_keep_precision() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(-125.0), "-125");
        let third = 1.0f64 / 3.0;
        assert_eq!(ds(third), "0.33333333333333");
        let v = -123.456_789_012_345_6;
        let s = ds(v);
        assert!(s.len() <= 16, "{s}");
        assert!((s.parse::<f64>().unwrap() - v).abs() < 1e-11, "{s}");
        let cos = 20f64.to_radians().cos();
        assert!((ds(cos).parse::<f64>().unwrap() - cos).abs() < 1e-14);
        assert!(ds(1e300).len() <= 16);
    }

    #[test]
    fn uids_are_fresh_and_valid() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        assert!(a.len() <= 64 && a.starts_with("2.25."));
        assert!(a[5..].bytes().all(|c| c.is_ascii_digit()));
        assert!(!a[5..].starts_with('0') || a.len() == 6);
    }
}
