//! What a web viewer needs beside the API: MONAI Label serves a built OHIF at `/ohif/`
//! and relays DICOMweb to the studies server at `/proxy/dicom/`, so OHIF loads images
//! and labels from one origin.
//!
//! Both depend on the deployment: `medlabel serve --ohif DIR` names a built OHIF (no
//! viewer ships with medlabel, and nothing is downloaded at run time), and
//! `--dicomweb URL` the DICOMweb server (Orthanc, DCM4CHEE, a cloud healthcare API).
//! Without them the routes answer 503 and say which option is missing.

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
const FORWARDED_REQUEST_HEADERS: [header::HeaderName; 3] =
    [header::ACCEPT, header::CONTENT_TYPE, header::CONTENT_LENGTH];

/// Reply headers the viewer reads back.
const FORWARDED_REPLY_HEADERS: [header::HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
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

/// Relays a DICOMweb request: `/proxy/dicom/{qido|wado|stow}/{path}` and
/// `/proxy/dicom/{path}` go to `{url}/{path}` with the query, the viewer's `Accept` and,
/// for a STOW upload, the body streamed through.
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
    let path = relative_path(&path)?;
    let mut url = format!("{}/{path}", server.url.trim_end_matches('/'));
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

/// The DICOMweb path under the server's URL: the operation prefix (`qido`, `wado`,
/// `stow`) dropped, and no segment that could climb out of it.
fn relative_path(path: &str) -> Result<&str, ApiError> {
    let rest = ["qido/", "wado/", "stow/"]
        .iter()
        .find_map(|op| path.strip_prefix(op))
        .unwrap_or(path);
    if rest
        .split('/')
        .any(|segment| matches!(segment, ".." | ".") || segment.contains('\\'))
    {
        return Err(ApiError::BadRequest(format!(
            "DICOMweb path {path:?} leaves the server's base URL"
        )));
    }
    Ok(rest)
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
    let mut request = reqwest::Client::new().request(method.clone(), url);
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = headers.get(&name) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    if let Some((user, password)) = &server.credentials {
        request = request.basic_auth(user, Some(password));
    }
    if method == reqwest::Method::POST {
        request = request.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    request.send().await.map_err(|err| {
        ApiError::BadGateway(format!("DICOMweb server {} unreachable: {err}", server.url))
    })
}
