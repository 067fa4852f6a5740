//! What a web viewer needs beside the API: MONAI Label serves a built OHIF at `/ohif/`
//! and relays DICOMweb to the studies server at `/proxy/dicom/`, so OHIF loads images
//! and labels from one origin.
//!
//! Both depend on the deployment: `medlabel serve --ohif DIR` names a built OHIF
//! (`scripts/run.sh` passes the one the `monailabel` wheel ships; nothing is downloaded
//! at run time), and `--dicomweb URL` or `--studies URL` the DICOMweb server (Orthanc,
//! DCM4CHEE, a cloud healthcare API). Without them the routes answer 503 and say which
//! option is missing.
//!
//! The relay forwards as MONAI Label's does: `qido/`, `wado/` and `stow/` paths get the
//! server's QIDO, WADO and STOW prefixes (a QIDO path to `metadata` the WADO one), and
//! the server's credentials are added. Of the viewer's request headers only those that
//! shape the answer pass: its cookies and its medlabel token are not the PACS's.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use axum::routing::get;
use futures::TryStreamExt;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use crate::error::ApiError;
use crate::state::{AppState, DicomWeb};

/// Request headers a DICOMweb server needs to answer as the viewer asked.
const FORWARDED_REQUEST_HEADERS: [header::HeaderName; 7] = [
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// Reply headers the viewer reads back.
const FORWARDED_REPLY_HEADERS: [header::HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ohif/", get(ohif))
        .route("/ohif/{*path}", get(ohif))
        .route("/proxy/dicom/{*path}", get(proxy_dicom).post(proxy_dicom))
}

/// A file of the built viewer; any other path gets `index.html` (OHIF routes in the
/// browser). `ServeDir` refuses paths that leave the folder.
async fn ohif(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let dir = state.config.ohif_dir.as_ref().ok_or_else(|| {
        ApiError::Unavailable("OHIF is not installed here (medlabel serve --ohif DIR)".into())
    })?;
    let (mut parts, body) = request.into_parts();
    let inner = parts
        .uri
        .path()
        .strip_prefix("/ohif")
        .unwrap_or("/")
        .to_owned();
    parts.uri = inner
        .parse()
        .map_err(|_| ApiError::BadRequest("malformed viewer path".into()))?;
    let files = ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html")));
    let response = files
        .oneshot(Request::from_parts(parts, body))
        .await
        .map_err(|err| ApiError::Internal(format!("serving OHIF: {err}")))?;
    Ok(response.map(Body::new))
}

/// Relays a DICOMweb request: `/proxy/dicom/{qido|wado|stow}/{path}` goes to
/// `{url}/{prefix}/{path}` and `/proxy/dicom/{path}` to `{url}/{path}`, with the query,
/// the forwarded headers and, for a POST (STOW), the body streamed through.
async fn proxy_dicom(
    State(state): State<AppState>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let server = state.config.dicomweb.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "no DICOMweb server is configured (medlabel serve --dicomweb URL)".into(),
        )
    })?;
    let (op, path) = relative_path(&path)?;
    let mut url = server.url_for(op, path);
    if let Some(query) = request.uri().query() {
        url = format!("{url}?{query}");
    }
    let reply = relay(server, method, &url, &headers, request.into_body()).await?;
    let mut response = Response::builder().status(reply.status().as_u16());
    for name in FORWARDED_REPLY_HEADERS {
        if let Some(value) = reply.headers().get(&name) {
            response = response.header(name, value.as_bytes());
        }
    }
    let stream = reply.bytes_stream().map_err(std::io::Error::other);
    response
        .body(Body::from_stream(stream))
        .map_err(|err| ApiError::Internal(format!("relaying DICOMweb: {err}")))
}

/// The operation (`qido`, `wado`, `stow`, or `""`) and the DICOMweb path after it,
/// refusing a segment that could climb out of the server's URL.
fn relative_path(path: &str) -> Result<(&str, &str), ApiError> {
    let (op, rest) = ["qido", "wado", "stow"]
        .into_iter()
        .find_map(|op| Some((op, path.strip_prefix(op)?.strip_prefix('/')?)))
        .unwrap_or(("", path));
    if rest
        .split('/')
        .any(|segment| matches!(segment, ".." | ".") || segment.contains('\\'))
    {
        return Err(ApiError::BadRequest(format!(
            "DICOMweb path {path:?} leaves the server's base URL"
        )));
    }
    Ok((op, rest))
}

/// One HTTP client for every relayed request (connections are reused).
fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .expect("a reqwest client with default TLS")
    })
}

async fn relay(
    server: &DicomWeb,
    method: Method,
    url: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<reqwest::Response, ApiError> {
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|_| ApiError::MethodNotAllowed)?;
    let mut request = http().request(method.clone(), url);
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = headers.get(&name) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    if method == reqwest::Method::POST {
        request = request.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    server.authorize(request).send().await.map_err(|err| {
        ApiError::BadGateway(format!(
            "DICOMweb server {} unreachable: {}",
            server.url,
            crate::dicomweb::describe(err)
        ))
    })
}
