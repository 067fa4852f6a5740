//! How file routes deliver a stored file: streamed through this server, or a `307` to a
//! short-lived presigned URL of the object store, so the bytes go from S3 to the client.
//!
//! A Lambda behind API Gateway can answer at most 6 MB (about 4.5 MB of binary once
//! base64-encoded), so in the cloud a CT can only reach a client by a redirect. Not
//! every client follows one: 3D Slicer downloads the next sample with `urllib`
//! (`Python-urllib/…`), and browsers (OHIF) and `requests` follow redirects, but the
//! `monailabel` client's `download_label` (which Slicer also uses for labels) calls
//! `http.client`, which sends no `User-Agent` and does not follow, and neither do curl
//! without `-L` or Java's HTTP client. So a redirect goes only to clients known to
//! follow it ([`follows_redirects`]); the others get the bytes from a server that can
//! stream them: the local server, or the container service that takes the file routes
//! in the cloud (`docs/deploy.md`). A Lambda that meets such a client can answer small
//! files itself and redirects for the rest, the only answer that can work at all.
//!
//! The presigned answer names the file as a direct reply would (S3's
//! `response-content-disposition`), and handing out the URL is a read of patient data,
//! recorded first ([`crate::audit`]).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use medlabel_events::blob::{BlobRef, DownloadAs};
use medlabel_events::event::DataRead;

use crate::audit;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::reply;
use crate::state::AppState;

/// How long a download redirect stays valid: S3 checks the signature when the request
/// starts, so a large file may take longer than this to arrive.
pub const REDIRECT_TTL: Duration = Duration::from_secs(300);

/// The largest file a Lambda answers inline: 6 MB of response, base64-encoded, less room
/// for the headers.
pub const LAMBDA_MAX_INLINE: u64 = 4 << 20;

/// How this server delivers stored files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downloads {
    /// Stream every file (the local server).
    Stream,
    /// Redirect clients that follow redirects, stream to the others (the container
    /// service in the cloud).
    RedirectFollowers,
    /// Redirect clients that follow redirects, and every file over `max_inline` bytes;
    /// answer smaller files inline to the others (a Lambda function).
    Redirect { max_inline: u64 },
}

/// Whether the client behind `headers` is known to follow a `307` for a GET:
/// Python's `urllib` (3D Slicer's downloads), `requests`, and browsers.
pub fn follows_redirects(headers: &HeaderMap) -> bool {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ["Python-urllib/", "python-requests/", "Mozilla/"]
        .iter()
        .any(|known| agent.starts_with(known))
}

impl Downloads {
    /// Whether a file of `size` bytes goes to this client as a redirect (when the blob
    /// store can presign one).
    pub fn redirects(self, headers: &HeaderMap, size: u64) -> bool {
        match self {
            Downloads::Stream => false,
            Downloads::RedirectFollowers => follows_redirects(headers),
            Downloads::Redirect { max_inline } => follows_redirects(headers) || size > max_inline,
        }
    }
}

/// A stored file as the reply to a file route: a redirect to a presigned URL or the
/// streamed bytes, by [`Downloads`]. `read` is what the audit trail records.
pub async fn blob_reply(
    state: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    file_name: &str,
    blob: &BlobRef,
    read: Option<DataRead>,
    step: &str,
) -> Result<Response, ApiError> {
    let blobs = state.datastore.blob_store();
    if state.config.downloads.redirects(headers, blob.size) {
        let download = DownloadAs {
            content_type: reply::content_type(file_name).to_owned(),
            content_disposition: reply::content_disposition(file_name)
                .to_str()
                .unwrap_or("attachment")
                .to_owned(),
        };
        if let Some(url) = blobs
            .presign_get(blob, REDIRECT_TTL, Some(&download))
            .await?
        {
            if let Some(read) = read {
                audit::record(state, ctx, read, true, step).await?;
            }
            return Ok(redirect(&url));
        }
    }
    let audited = async {
        match read {
            Some(read) => audit::record(state, ctx, read, false, step).await,
            None => Ok(()),
        }
    };
    let (reader, ()) =
        tokio::try_join!(async { Ok::<_, ApiError>(blobs.get(blob).await?) }, audited)?;
    Ok(reply::blob_file(file_name, blob, reader))
}

/// `307` to `url`; no cache may keep it, since it expires.
fn redirect(url: &str) -> Response {
    let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(url) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(value: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(header::USER_AGENT, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn only_clients_that_follow_are_redirected() {
        let slicer = agent(Some("Python-urllib/3.9"));
        let browser = agent(Some("Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"));
        let http_client = agent(None);
        let curl = agent(Some("curl/8.5.0"));
        let lambda = Downloads::Redirect {
            max_inline: LAMBDA_MAX_INLINE,
        };
        for (headers, follows) in [
            (&slicer, true),
            (&browser, true),
            (&agent(Some("python-requests/2.34.2")), true),
            (&http_client, false),
            (&curl, false),
            (&agent(Some("Java-http-client/21")), false),
        ] {
            assert_eq!(follows_redirects(headers), follows, "{headers:?}");
            assert_eq!(Downloads::RedirectFollowers.redirects(headers, 1), follows);
            assert!(!Downloads::Stream.redirects(headers, 1 << 30));
            // A Lambda answers small files to everyone and redirects the rest.
            assert_eq!(lambda.redirects(headers, LAMBDA_MAX_INLINE), follows);
            assert!(lambda.redirects(headers, LAMBDA_MAX_INLINE + 1));
        }
    }
}
