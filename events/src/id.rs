//! Validated names that clients send and that end up in file paths and storage keys.
//!
//! Invariant 6 of the design: nothing a client sends is joined into a path or a key
//! unchecked. Every such name is parsed into one of these types at the edge, so the rest
//! of the code cannot hold an unchecked one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a client-supplied name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} {value:?} contains {what}, which is not allowed")]
    Forbidden {
        kind: &'static str,
        value: String,
        what: &'static str,
    },
}

/// Longest id accepted: the usual file-name limit, so an id always fits one path segment.
pub const MAX_ID_BYTES: usize = 255;

/// Checks a name that will become one path segment or one key segment.
fn check_segment(kind: &'static str, value: &str, max: usize) -> Result<(), InvalidId> {
    let forbidden = |what| InvalidId::Forbidden {
        kind,
        value: value.chars().take(64).collect(),
        what,
    };
    if value.is_empty() {
        return Err(InvalidId::Empty { kind });
    }
    if value.len() > max {
        return Err(InvalidId::TooLong {
            kind,
            len: value.len(),
            max,
        });
    }
    if value.contains('/') {
        return Err(forbidden("'/'"));
    }
    if value.contains('\\') {
        return Err(forbidden("'\\'"));
    }
    if value.contains("..") {
        return Err(forbidden("'..'"));
    }
    if value.contains('\0') {
        return Err(forbidden("a NUL byte"));
    }
    if value.chars().any(char::is_control) {
        return Err(forbidden("a control character"));
    }
    if value == "." || value.starts_with('.') {
        return Err(forbidden("a leading '.'"));
    }
    if value.trim() != value {
        return Err(forbidden("leading or trailing whitespace"));
    }
    Ok(())
}

macro_rules! segment_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a client-supplied name, refusing anything unsafe as a path segment.
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
                let value = value.into();
                check_segment($kind, &value, MAX_ID_BYTES)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, InvalidId> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

segment_id!(
    /// An image's id: its file name without the extension (`spleen_3` for
    /// `spleen_3.nii.gz`), as MONAI Label names it. A label has its image's id.
    ImageId,
    "image id"
);
segment_id!(
    /// A label tag: `final` (the annotator's accepted label), `original` (the
    /// model's proposal), or any other name, such as one annotator's own tag.
    Tag,
    "label tag"
);
segment_id!(
    /// A model's name, as listed under `models` in `/info/`.
    ModelName,
    "model name"
);
segment_id!(
    /// Who acted: a user name from the auth layer (`admin` when auth is off).
    UserName,
    "user name"
);
segment_id!(
    /// An opaque identifier a client sends to tell its instances apart (Slicer,
    /// OHIF and the Python client each send one).
    ClientId,
    "client id"
);
segment_id!(
    /// A session, training run or job identifier (a UUID when medlabel makes one).
    RunId,
    "run id"
);

impl Tag {
    /// The tag of the label an annotator accepted; "labeled" means having one.
    pub fn final_tag() -> Self {
        Self("final".into())
    }
    /// The tag under which model proposals are saved.
    pub fn original() -> Self {
        Self("original".into())
    }
}

impl UserName {
    /// The caller when authentication is off, as in MONAI Label.
    pub fn admin() -> Self {
        Self("admin".into())
    }
}

impl RunId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

/// A file extension as MONAI Label computes it: everything from the first dot of the
/// file name (`.nii.gz`), each suffix short and alphanumeric.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Extension(String);

/// Extensions MONAI Label's datastore recognises (`MONAI_LABEL_DATASTORE_FILE_EXT`).
pub const KNOWN_EXTENSIONS: &[&str] = &[
    ".nii.gz",
    ".nii",
    ".nrrd",
    ".seg.nrrd",
    ".jpg",
    ".png",
    ".tif",
    ".svs",
    ".xml",
    ".zip",
];

impl Extension {
    /// Parses an extension such as `.nii.gz`; empty means "no extension".
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
        let value = value.into();
        let invalid = |what| InvalidId::Forbidden {
            kind: "file extension",
            value: value.chars().take(64).collect(),
            what,
        };
        if value.is_empty() {
            return Ok(Self(value));
        }
        if !value.starts_with('.') {
            return Err(invalid("no leading '.'"));
        }
        if value.len() > 32 {
            return Err(InvalidId::TooLong {
                kind: "file extension",
                len: value.len(),
                max: 32,
            });
        }
        for suffix in value[1..].split('.') {
            if suffix.is_empty() || suffix.len() > 16 {
                return Err(invalid("an empty or over-long suffix"));
            }
            if !suffix.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(invalid("a character other than letters and digits"));
            }
        }
        Ok(Self(value.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Extension {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, InvalidId> {
        Self::parse(value)
    }
}

impl From<Extension> for String {
    fn from(ext: Extension) -> String {
        ext.0
    }
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits an uploaded file name into an image id and an extension the way MONAI Label
/// does: the client sends its full local path, so only the last path component counts
/// (either separator); a known extension wins, otherwise everything after the first dot.
pub fn split_file_name(name: &str) -> Result<(ImageId, Extension), InvalidId> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let lower = base.to_ascii_lowercase();
    if let Some(known) = KNOWN_EXTENSIONS
        .iter()
        .filter(|ext| lower.ends_with(*ext) && lower.len() > ext.len())
        .max_by_key(|ext| ext.len())
    {
        let id = &base[..base.len() - known.len()];
        return Ok((ImageId::parse(id)?, Extension::parse(*known)?));
    }
    match base.find('.') {
        Some(dot) if dot > 0 => Ok((
            ImageId::parse(&base[..dot])?,
            Extension::parse(&base[dot..])?,
        )),
        _ => Ok((ImageId::parse(base)?, Extension::parse("")?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_traversal_and_oversized_ids() {
        for bad in [
            "",
            "a/b",
            "a\\b",
            "..",
            "../etc",
            "x..y",
            "nul\0byte",
            ".hidden",
            "tab\tid",
            " padded",
        ] {
            assert!(ImageId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(
            ImageId::parse("x".repeat(256)),
            Err(InvalidId::TooLong { len: 256, .. })
        ));
        assert!(ImageId::parse("x".repeat(255)).is_ok());
        assert_eq!(
            ImageId::parse("spleen_3.v2").unwrap().as_str(),
            "spleen_3.v2"
        );
    }

    #[test]
    fn splits_file_names_like_monai_label() {
        let (id, ext) = split_file_name("/home/me/data/spleen_3.nii.gz").unwrap();
        assert_eq!((id.as_str(), ext.as_str()), ("spleen_3", ".nii.gz"));
        let (id, ext) = split_file_name("a.b.nii.gz").unwrap();
        assert_eq!((id.as_str(), ext.as_str()), ("a.b", ".nii.gz"));
        let (id, ext) = split_file_name("C:\\scans\\ct.NRRD").unwrap();
        assert_eq!((id.as_str(), ext.as_str()), ("ct", ".nrrd"));
        let (id, ext) = split_file_name("label.bin").unwrap();
        assert_eq!((id.as_str(), ext.as_str()), ("label", ".bin"));
        assert!(split_file_name("../..").is_err());
    }

    #[test]
    fn extensions_are_checked() {
        assert!(Extension::parse(".nii.gz").is_ok());
        assert!(Extension::parse("nii").is_err());
        assert!(Extension::parse("./x").is_err());
        assert!(Extension::parse(".a..b").is_err());
    }
}
