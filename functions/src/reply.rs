//! Replies that are files: MONAI Label's `FileResponse` and its multipart infer reply.
//!
//! Clients depend on the details: the Python client takes the download's name (and so
//! its suffixes) from `content-disposition`, and crashes without it; Slicer and OHIF go
//! by the content type. Blob bodies are streamed, never read whole.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use medlabel_events::blob::{BlobReader, BlobRef};
use tokio_util::io::ReaderStream;

/// The content type Python's `mimetypes` gives a file name (volumes are opaque bytes).
pub fn content_type(file_name: &str) -> &'static str {
    let lower = file_name.to_ascii_lowercase();
    let ext = lower.rsplit('.').next().unwrap_or("");
    match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "tif" | "tiff" => "image/tiff",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "dcm" => "application/dicom",
        "txt" | "log" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `attachment; filename="x"`, or RFC 5987 `filename*=` for names that need it.
pub fn content_disposition(file_name: &str) -> HeaderValue {
    let plain = file_name
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ');
    let value = if plain {
        format!("attachment; filename=\"{file_name}\"")
    } else {
        let encoded: String = file_name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("attachment; filename*=utf-8''{encoded}")
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Bytes a download stream reads at a time. `ReaderStream`'s default (4 KiB) made a
/// 300 MB CT 75,000 reads, each a trip to tokio's blocking pool for a file, and as many
/// body frames: the local server streamed 4–5× slower than the volume service.
pub(crate) const DOWNLOAD_CHUNK: usize = 256 << 10;

/// Streams a stored blob as a download named `file_name`.
pub fn blob_file(file_name: &str, blob: &BlobRef, reader: BlobReader) -> Response {
    let stream = ReaderStream::with_capacity(reader, DOWNLOAD_CHUNK);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(file_name)),
    );
    headers.insert(header::CONTENT_DISPOSITION, content_disposition(file_name));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(blob.size));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", blob.sha256)) {
        headers.insert(header::ETAG, etag);
    }
    response
}

/// An in-memory file download (generated archives, inference masks).
pub fn bytes_file(file_name: &str, bytes: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(file_name)),
            ),
            (header::CONTENT_DISPOSITION, content_disposition(file_name)),
        ],
        bytes,
    )
        .into_response()
}

/// MONAI Label's default infer reply: a `multipart/form-data` body with the result
/// JSON as part `params` and the mask as part `image` (random hex boundary).
pub fn infer_multipart(params: &serde_json::Value, file_name: &str, mask: Vec<u8>) -> Response {
    let boundary = format!("{:032x}", rand::random::<u128>());
    let safe_name = file_name.replace(['"', '\r', '\n'], "_");
    let mut body = Vec::with_capacity(mask.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\
             Content-Type: application/json\r\n\r\n{params}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{safe_name}\"\r\n\
             Content-Type: {}\r\n\r\n",
            content_type(file_name)
        )
        .as_bytes(),
    );
    body.extend_from_slice(&mask);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&content_type).expect("hex boundary is a valid header"),
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_quote_or_encode() {
        assert_eq!(
            content_disposition("spleen_3.nii.gz"),
            "attachment; filename=\"spleen_3.nii.gz\""
        );
        assert_eq!(
            content_disposition("é.nrrd"),
            "attachment; filename*=utf-8''%C3%A9.nrrd"
        );
        assert_eq!(content_type("a.nii.gz"), "application/octet-stream");
        assert_eq!(content_type("a.PNG"), "image/png");
    }
}
