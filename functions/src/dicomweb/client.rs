//! The DICOMweb calls the datastore makes: QIDO-RS series searches, WADO-RS series
//! retrieval and metadata, STOW-RS storage. Every request carries the server's
//! credentials; no error carries them (the URL has none, and reqwest's errors are
//! stripped of their URL before they are shown).

use std::time::Duration;

use serde_json::Value;

use super::multipart;
use crate::error::ApiError;
use crate::state::DicomWeb;

/// The DICOM JSON media type QIDO-RS and WADO-RS metadata answer with.
const DICOM_JSON: &str = "application/dicom+json";

/// Instances as stored, whatever their transfer syntax: converting is medlabel's job,
/// and a PACS asked to transcode may refuse or lose precision.
const INSTANCES_AS_STORED: &str =
    "multipart/related; type=\"application/dicom\"; transfer-syntax=*";

/// Results asked for per QIDO-RS page; a shorter page is the last.
const PAGE: usize = 1000;

/// Why a DICOMweb call failed.
#[derive(Debug, thiserror::Error)]
pub enum DicomWebError {
    #[error("DICOMweb server {server} unreachable: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("DICOMweb server {server} answered {status} to {what}: {detail}")]
    Status {
        server: String,
        status: u16,
        what: String,
        detail: String,
    },
    #[error("DICOMweb server {server} sent {what} that cannot be read: {detail}")]
    Malformed {
        server: String,
        what: String,
        detail: String,
    },
}

impl From<DicomWebError> for ApiError {
    fn from(err: DicomWebError) -> Self {
        match err {
            DicomWebError::Status { status: 404, .. } => ApiError::NotFound(err.to_string()),
            _ => ApiError::BadGateway(err.to_string()),
        }
    }
}

/// A DICOMweb client for one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    server: DicomWeb,
}

/// An error's message and its causes, without the URL reqwest adds.
pub fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

impl Client {
    pub fn new(server: DicomWeb) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a reqwest client with default TLS");
        Self { http, server }
    }

    pub fn server(&self) -> &DicomWeb {
        &self.server
    }

    fn unreachable(&self, err: reqwest::Error) -> DicomWebError {
        DicomWebError::Unreachable {
            server: self.server.url.clone(),
            detail: describe(err),
        }
    }

    fn malformed(&self, what: &str, detail: impl std::fmt::Display) -> DicomWebError {
        DicomWebError::Malformed {
            server: self.server.url.clone(),
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    /// Sends a request and checks its status; `what` names it in errors.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, DicomWebError> {
        let response = self
            .server
            .authorize(request)
            .send()
            .await
            .map_err(|err| self.unreachable(err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(DicomWebError::Status {
            server: self.server.url.clone(),
            status: status.as_u16(),
            what: what.into(),
            detail: body.chars().take(300).collect::<String>().trim().to_owned(),
        })
    }

    async fn json(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Value, DicomWebError> {
        let response = self
            .send(request.header("accept", DICOM_JSON), what)
            .await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|err| self.unreachable(err))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // 204 or an empty body: no matches.
            return Ok(Value::Array(Vec::new()));
        }
        serde_json::from_slice(&bytes).map_err(|err| self.malformed(what, err))
    }

    /// QIDO-RS `series` search with `filter` (`(attribute, value)` pairs) and the
    /// attributes in `fields` included, every page of it.
    pub async fn search_series(
        &self,
        filter: &[(String, String)],
        fields: &[&str],
    ) -> Result<Vec<Value>, DicomWebError> {
        let mut all = Vec::new();
        loop {
            let mut query: Vec<(String, String)> = filter.to_vec();
            query.extend(
                fields
                    .iter()
                    .map(|f| ("includefield".into(), (*f).to_owned())),
            );
            query.push(("limit".into(), PAGE.to_string()));
            query.push(("offset".into(), all.len().to_string()));
            let request = self
                .http
                .get(self.server.url_for("qido", "series"))
                .query(&query);
            let page = match self.json(request, "a series search").await? {
                Value::Array(page) => page,
                other => {
                    return Err(
                        self.malformed("a series search", format!("not a list: {other:.80}"))
                    );
                }
            };
            let last = page.len() < PAGE;
            all.extend(page);
            if last {
                return Ok(all);
            }
        }
    }

    /// WADO-RS metadata of a series: one DICOM JSON object per instance.
    pub async fn series_metadata(
        &self,
        study: &str,
        series: &str,
    ) -> Result<Vec<Value>, DicomWebError> {
        let path = format!("studies/{study}/series/{series}/metadata");
        let request = self.http.get(self.server.url_for("wado", &path));
        match self.json(request, "series metadata").await? {
            Value::Array(instances) => Ok(instances),
            other => Err(self.malformed("series metadata", format!("not a list: {other:.80}"))),
        }
    }

    /// WADO-RS retrieval of a series: its instances' Part 10 bytes, as stored.
    pub async fn retrieve_series(
        &self,
        study: &str,
        series: &str,
    ) -> Result<Vec<Vec<u8>>, DicomWebError> {
        let path = format!("studies/{study}/series/{series}");
        let request = self
            .http
            .get(self.server.url_for("wado", &path))
            .header("accept", INSTANCES_AS_STORED);
        let response = self.send(request, "a series retrieval").await?;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let boundary = multipart::boundary(&content_type).ok_or_else(|| {
            self.malformed(
                "a series retrieval",
                format!("content type {content_type:?} is not multipart/related with a boundary"),
            )
        })?;
        let body = response
            .bytes()
            .await
            .map_err(|err| self.unreachable(err))?;
        let parts = multipart::split(&body, &boundary)
            .map_err(|detail| self.malformed("a series retrieval", detail))?;
        Ok(parts.into_iter().map(<[u8]>::to_vec).collect())
    }

    /// STOW-RS: stores `file` (a Part 10 instance); fails unless the server stored it.
    pub async fn store(&self, file: &[u8]) -> Result<(), DicomWebError> {
        let (body, content_type) = multipart::related_dicom(&[file]);
        let request = self
            .http
            .post(self.server.url_for("stow", "studies"))
            .header("content-type", content_type)
            .body(body);
        let reply = self.json(request, "storing an instance").await?;
        // FailedSOPSequence lists what the server refused.
        if let Some(failed) = reply.get("00081198").and_then(|s| s["Value"].as_array())
            && !failed.is_empty()
        {
            let reason = failed[0]["00081197"]["Value"][0].clone();
            return Err(self.malformed(
                "a reply to storing an instance",
                format!("the instance was refused (FailureReason {reason})"),
            ));
        }
        Ok(())
    }
}

/// The first value of attribute `tag` (`"0020000E"`) of a DICOM JSON object, as text.
pub fn text(object: &Value, tag: &str) -> Option<String> {
    let value = &object.get(tag)?["Value"][0];
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        // Person names: their alphabetic form.
        Value::Object(name) => name.get("Alphabetic")?.as_str().map(str::to_owned),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}
