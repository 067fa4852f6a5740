//! Multipart uploads, streamed to temporary files under a size limit.
//!
//! Volumes are large (hundreds of MB), so a file part is never held whole in memory:
//! each chunk goes straight to a temporary file in the configured directory, which is
//! deleted when the [`Upload`] is dropped (after the blob store has copied it). The
//! whole body is capped; a request over the cap gets 413 before anything is recorded,
//! and a declared `content-length` over the cap is refused without reading the body.
//!
//! The boundary is taken from `content-type` by hand rather than by a MIME parser: the
//! MONAI Label Python client uses the boundary `----------lImIt_of_THE_fIle_eW_$`,
//! which strict parsers refuse. The client also sends the full local path as the file
//! name; callers reduce it with [`medlabel_events::id::split_file_name`].

use std::collections::BTreeMap;
use std::path::Path;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures::TryStreamExt;
use serde_json::Value;
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, FieldError};
use crate::state::Config;

/// Largest text field (`params`, `info`): metadata, not payload.
pub const MAX_TEXT_FIELD_BYTES: usize = 1 << 20;

/// A file part saved to disk.
#[derive(Debug)]
pub struct Upload {
    /// The form field it came in (`file`, `label`, `files`).
    pub field: String,
    /// The file name the client sent (possibly a full path).
    pub file_name: String,
    pub path: TempPath,
    pub size: u64,
}

/// A parsed multipart form: text fields (first value per name) and saved files.
#[derive(Debug, Default)]
pub struct Form {
    pub fields: BTreeMap<String, String>,
    pub files: Vec<Upload>,
}

impl Form {
    pub fn text(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The first file sent in `field`.
    pub fn file(&self, field: &str) -> Option<&Upload> {
        self.files.iter().find(|f| f.field == field)
    }

    /// The first file sent in `field`, or a 422 naming it.
    pub fn required_file(&self, field: &str) -> Result<&Upload, ApiError> {
        self.file(field)
            .ok_or_else(|| ApiError::field(FieldError::missing("body", field)))
    }
}

/// The boundary of a `multipart/form-data` content type, quoted or not.
pub fn boundary(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let (kind, params) = value.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// Reads a multipart body. Parts named in `file_fields` are saved to files in
/// `temp_dir`; other parts are text (a file part in another field is read as text too,
/// under the text limit, since some clients send `params` as a blob).
pub async fn read_form(
    headers: &HeaderMap,
    body: Body,
    file_fields: &[&str],
    max_bytes: u64,
    temp_dir: &Path,
) -> Result<Form, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_bytes) {
        return Err(ApiError::TooLarge { limit: max_bytes });
    }
    let Some(boundary) = boundary(headers) else {
        let field = file_fields.first().copied().unwrap_or("file");
        return Err(ApiError::field(FieldError::new(
            "missing",
            "body",
            field,
            "Field required (expected a multipart/form-data body)",
            Value::Null,
        )));
    };
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(max_bytes));
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut form = Form::default();
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, max_bytes))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        match file_name {
            Some(file_name) if file_fields.contains(&name.as_str()) => {
                // Write through the handle tempfile opened: reopening the path with
                // O_TRUNC makes ext4 flush the file when it is closed (auto_da_alloc),
                // an I/O per upload that the spool does not need.
                let (file, path) = tempfile::Builder::new()
                    .prefix("upload-")
                    .tempfile_in(temp_dir)?
                    .into_parts();
                let mut file = tokio::fs::File::from_std(file);
                let mut size = 0u64;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(e, max_bytes))?
                {
                    size += chunk.len() as u64;
                    file.write_all(&chunk).await?;
                }
                file.flush().await?;
                form.files.push(Upload {
                    field: name,
                    file_name,
                    path,
                    size,
                });
            }
            _ => {
                let mut text = Vec::new();
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(e, max_bytes))?
                {
                    if text.len() + chunk.len() > MAX_TEXT_FIELD_BYTES {
                        return Err(ApiError::TooLarge {
                            limit: MAX_TEXT_FIELD_BYTES as u64,
                        });
                    }
                    text.extend_from_slice(&chunk);
                }
                let text = String::from_utf8(text).map_err(|_| {
                    ApiError::field(FieldError::new(
                        "string_unicode",
                        "body",
                        &name,
                        "Input should be a valid string (UTF-8)",
                        Value::Null,
                    ))
                })?;
                form.fields.entry(name).or_insert(text);
            }
        }
    }
    Ok(form)
}

/// [`read_form`] under the server's upload limit, spooling to its temp folder: what
/// every upload route reads.
pub async fn read_upload(
    config: &Config,
    headers: &HeaderMap,
    body: Body,
    file_fields: &[&str],
) -> Result<Form, ApiError> {
    read_form(
        headers,
        body,
        file_fields,
        config.max_upload_bytes,
        &config.temp_dir,
    )
    .await
}

fn multipart_error(err: multer::Error, max_bytes: u64) -> ApiError {
    match err {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            ApiError::TooLarge { limit: max_bytes }
        }
        other => ApiError::BadRequest(format!("malformed multipart body: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    #[test]
    fn reads_the_python_clients_boundary() {
        let h = headers("multipart/form-data; boundary=----------lImIt_of_THE_fIle_eW_$");
        assert_eq!(boundary(&h).unwrap(), "----------lImIt_of_THE_fIle_eW_$");
        let h = headers("Multipart/Form-Data; charset=utf-8; boundary=\"a b\"");
        assert_eq!(boundary(&h).unwrap(), "a b");
        assert!(boundary(&headers("application/json")).is_none());
    }

    #[tokio::test]
    async fn streams_files_and_enforces_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let b = "----------lImIt_of_THE_fIle_eW_$";
        let body = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{\"a\":1}}\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/x/y/ct.nii.gz\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n0123456789\r\n--{b}--\r\n"
        );
        let h = headers(&format!("multipart/form-data; boundary={b}"));
        let form = read_form(&h, Body::from(body.clone()), &["file"], 1 << 20, dir.path())
            .await
            .unwrap();
        assert_eq!(form.text("params"), Some("{\"a\":1}"));
        let file = form.required_file("file").unwrap();
        assert_eq!(file.file_name, "/x/y/ct.nii.gz");
        assert_eq!(std::fs::read(&file.path).unwrap(), b"0123456789");
        let err = read_form(&h, Body::from(body), &["file"], 50, dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::TooLarge { limit: 50 }));
    }
}
