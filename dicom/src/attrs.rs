//! Typed access to header attributes, with errors that name the instance and the
//! attribute.

use dicom_core::Tag;
use dicom_core::header::HasLength;
use dicom_object::InMemDicomObject;

use crate::DicomError;

/// A header and the label errors use for it.
#[derive(Clone, Copy)]
pub(crate) struct Attrs<'a> {
    pub obj: &'a InMemDicomObject,
    pub label: &'a str,
}

impl<'a> Attrs<'a> {
    pub fn new(obj: &'a InMemDicomObject, label: &'a str) -> Self {
        Self { obj, label }
    }

    /// Same label, another data set (a sequence item).
    pub fn with(&self, obj: &'a InMemDicomObject) -> Self {
        Self {
            obj,
            label: self.label,
        }
    }

    fn invalid(&self, attribute: &'static str, detail: impl Into<String>) -> DicomError {
        DicomError::InvalidAttribute {
            instance: self.label.to_string(),
            attribute,
            detail: detail.into(),
        }
    }

    pub fn missing(&self, attribute: &'static str) -> DicomError {
        DicomError::MissingAttribute {
            instance: self.label.to_string(),
            attribute,
        }
    }

    /// The string value without DICOM padding; empty when absent.
    pub fn string(&self, tag: Tag) -> String {
        self.obj
            .get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    }

    /// A required string (UIDs, Modality).
    pub fn required_string(&self, tag: Tag, name: &'static str) -> Result<String, DicomError> {
        let s = self.string(tag);
        if s.is_empty() {
            return Err(self.missing(name));
        }
        Ok(s)
    }

    /// A required unsigned integer.
    pub fn required_u32(&self, tag: Tag, name: &'static str) -> Result<u32, DicomError> {
        self.optional_u32(tag, name)?
            .ok_or_else(|| self.missing(name))
    }

    /// An unsigned integer that may be absent or empty.
    pub fn optional_u32(&self, tag: Tag, name: &'static str) -> Result<Option<u32>, DicomError> {
        match self.obj.get(tag) {
            None => Ok(None),
            Some(e) if e.is_empty() => Ok(None),
            Some(e) => e
                .to_int::<u32>()
                .map(Some)
                .map_err(|err| self.invalid(name, format!("is not an unsigned integer: {err}"))),
        }
    }

    /// `n` decimal numbers (DS/FD), or `None` when absent.
    pub fn floats<const N: usize>(
        &self,
        tag: Tag,
        name: &'static str,
    ) -> Result<Option<[f64; N]>, DicomError> {
        let Some(e) = self.obj.get(tag).filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let values = e
            .to_multi_float64()
            .map_err(|err| self.invalid(name, format!("is not numeric: {err}")))?;
        let values: [f64; N] = values.try_into().map_err(|v: Vec<f64>| {
            self.invalid(name, format!("has {} values, expected {N}", v.len()))
        })?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(self.invalid(name, format!("{values:?} is not finite")));
        }
        Ok(Some(values))
    }

    /// Like [`Self::floats`] but required.
    pub fn required_floats<const N: usize>(
        &self,
        tag: Tag,
        name: &'static str,
    ) -> Result<[f64; N], DicomError> {
        self.floats(tag, name)?.ok_or_else(|| self.missing(name))
    }

    /// The items of a sequence (empty when absent).
    pub fn items(&self, tag: Tag) -> &'a [InMemDicomObject] {
        self.obj.get(tag).and_then(|e| e.items()).unwrap_or(&[])
    }

    /// The first item of a sequence.
    pub fn item(&self, tag: Tag) -> Option<Attrs<'a>> {
        self.items(tag).first().map(|obj| self.with(obj))
    }
}
