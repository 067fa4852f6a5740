//! `multipart/related` bodies (RFC 2387), as WADO-RS answers with instances and STOW-RS
//! takes them: parts separated by `--boundary` lines, each with its own headers.

use memchr::memmem;

/// The `boundary` parameter of a `multipart/related` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let media = params.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/related") {
        return None;
    }
    params.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

/// The bodies of the parts of `body`, in order; an error says what is malformed.
pub fn split<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, String> {
    let delimiter = format!("--{boundary}");
    let first = memmem::find(body, delimiter.as_bytes())
        .ok_or_else(|| format!("no part starts with the boundary {boundary:?}"))?;
    // Each part ends where a CRLF and the next delimiter begin.
    let next = format!("\r\n--{boundary}");
    let finder = memmem::Finder::new(next.as_bytes());
    let mut parts = Vec::new();
    let mut at = first + delimiter.len();
    loop {
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        let headers_end =
            memmem::find(&body[at..], b"\r\n\r\n").ok_or("a part has no end of headers")? + at + 4;
        let end = finder
            .find(&body[headers_end..])
            .ok_or("a part is not closed by the boundary")?
            + headers_end;
        parts.push(&body[headers_end..end]);
        at = end + next.len();
    }
}

/// A `multipart/related` body of DICOM files, and its content type.
pub fn related_dicom(files: &[&[u8]]) -> (Vec<u8>, String) {
    let boundary = format!("medlabel-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::with_capacity(files.iter().map(|f| f.len() + 128).sum());
    for file in files {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(b"Content-Type: application/dicom\r\n\r\n");
        body.extend_from_slice(file);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type =
        format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    (body, content_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_parts_that_contain_boundary_like_bytes() {
        let files: [&[u8]; 3] = [b"DICM one", b"two\r\n--not-the-boundary\r\n", b""];
        let (body, content_type) = related_dicom(&files);
        let boundary = boundary(&content_type).unwrap();
        assert_eq!(split(&body, &boundary).unwrap(), files.to_vec());
    }

    #[test]
    fn reads_quoted_boundaries_and_refuses_truncated_bodies() {
        assert_eq!(
            boundary("multipart/related; type=\"application/dicom\"; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("application/dicom+json"), None);
        let body = b"--x\r\nContent-Type: application/dicom\r\n\r\nhalf a file";
        assert!(split(body, "x").is_err());
        assert!(split(b"no delimiter at all", "x").is_err());
    }
}
