//! The one error type every handler returns, rendered in MONAI Label's error shapes.
//!
//! MONAI Label answers explicit errors with `{"detail": "<text>"}` and validation
//! failures with FastAPI's `{"detail": [{"type", "loc", "msg", "input"}]}`; clients
//! show `detail` to the user. Where MONAI Label lets an exception escape as a bare 500
//! (unknown image on delete, unknown model, malformed `params`), medlabel answers with
//! the 4xx the situation deserves, in the same shape. A 500 carries the request id, so
//! a user's report can be matched to the log line that explains it.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use medlabel_events::datastore::DatastoreError;
use medlabel_events::models::ModelError;
use medlabel_events::session::SessionError;
use medlabel_events::{BlobError, InvalidId, StoreError};
use serde_json::{Value, json};

use crate::request_id;
use crate::runner::RunnerError;

/// One entry of a FastAPI-style validation error.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// Pydantic's error type: `missing`, `value_error`, `json_invalid`, `bool_parsing`...
    pub kind: &'static str,
    /// Where the bad value was: `["query", "image"]`, `["body", "params"]`, `["path", "id"]`.
    pub loc: [String; 2],
    pub msg: String,
    pub input: Value,
}

impl FieldError {
    pub fn new(
        kind: &'static str,
        location: &str,
        name: &str,
        msg: impl Into<String>,
        input: Value,
    ) -> Self {
        Self {
            kind,
            loc: [location.to_owned(), name.to_owned()],
            msg: msg.into(),
            input,
        }
    }

    /// A required field that was not sent.
    pub fn missing(location: &str, name: &str) -> Self {
        Self::new("missing", location, name, "Field required", Value::Null)
    }

    /// A client-supplied id that is unsafe or malformed.
    pub fn invalid_id(location: &str, name: &str, value: &str, err: &InvalidId) -> Self {
        Self::new(
            "value_error",
            location,
            name,
            format!("Value error, {err}"),
            Value::String(value.chars().take(256).collect()),
        )
    }
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: unknown image, label, session, model, task, strategy or path.
    #[error("{0}")]
    NotFound(String),
    /// 422: a parameter is missing or malformed.
    #[error("invalid request: {0:?}")]
    Validation(Vec<FieldError>),
    /// 400: the body cannot be parsed at all (a broken multipart stream).
    #[error("{0}")]
    BadRequest(String),
    /// 401: the caller is not authenticated.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the request may not be served (a foreign `Host`, a missing role, another
    /// annotator's tag).
    #[error("{0}")]
    Forbidden(String),
    /// 405: known path, wrong method (the `Allow` header is set by the router).
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    /// 409: the write kept losing version races; retrying later will work.
    #[error("{0}")]
    Conflict(String),
    /// 413: the request body is larger than the configured limit.
    #[error("request body is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    /// 429: a task of this kind is already running.
    #[error("{0}")]
    TaskRunning(String),
    /// 500: anything else; the detail is logged, the client gets the request id.
    #[error("{0}")]
    Internal(String),
    /// 502: a server medlabel relays to (a DICOMweb server) failed or is unreachable.
    #[error("{0}")]
    BadGateway(String),
    /// 503: this deployment lacks what the route needs (a GPU, a configured viewer).
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TaskRunning(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A single validation failure.
    pub fn field(error: FieldError) -> Self {
        ApiError::Validation(vec![error])
    }

    fn body(&self) -> Value {
        match self {
            ApiError::Validation(errors) => json!({
                "detail": errors
                    .iter()
                    .map(|e| json!({"type": e.kind, "loc": e.loc, "msg": e.msg, "input": e.input}))
                    .collect::<Vec<_>>()
            }),
            ApiError::Internal(_) => {
                let id = request_id::current().unwrap_or_default();
                json!({"detail": format!("Internal Server Error (request id {id})"), "request_id": id})
            }
            other => json!({"detail": other.to_string()}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), error = %self, "request refused");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict { .. } => ApiError::Conflict(err.to_string()),
            StoreError::EventTooLarge { .. } | StoreError::AppendTooLarge { .. } => {
                ApiError::field(FieldError::new(
                    "value_error",
                    "body",
                    "params",
                    err.to_string(),
                    Value::Null,
                ))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(err: BlobError) -> Self {
        match err {
            BlobError::TooLarge { limit, .. } => ApiError::TooLarge { limit },
            BlobError::UploadNotFound(id) => ApiError::NotFound(format!("Upload {id} NOT Found")),
            BlobError::InvalidUpload { ref id, .. } => ApiError::field(FieldError::new(
                "value_error",
                "path",
                "upload_id",
                err.to_string(),
                json!(id),
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<DatastoreError> for ApiError {
    fn from(err: DatastoreError) -> Self {
        match err {
            DatastoreError::ImageNotFound(_)
            | DatastoreError::LabelNotFound { .. }
            | DatastoreError::NothingToArchive => ApiError::NotFound(err.to_string()),
            DatastoreError::InvalidId(ref invalid) => ApiError::field(FieldError::new(
                "value_error",
                "body",
                "id",
                format!("Value error, {invalid}"),
                Value::Null,
            )),
            DatastoreError::InvalidInput(msg) => ApiError::field(FieldError::new(
                "value_error",
                "body",
                "params",
                msg,
                Value::Null,
            )),
            DatastoreError::Contended(_) | DatastoreError::RequestIdReused(_) => {
                ApiError::Conflict(err.to_string())
            }
            DatastoreError::Store(store) => store.into(),
            DatastoreError::Blob(blob) => blob.into(),
            DatastoreError::Io(io) => ApiError::Internal(io.to_string()),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::NotFound(_) => ApiError::NotFound(err.to_string()),
            SessionError::Contended(_) | SessionError::RequestIdReused(_) => {
                ApiError::Conflict(err.to_string())
            }
            SessionError::Store(store) => store.into(),
            SessionError::Blob(blob) => blob.into(),
        }
    }
}

impl From<ModelError> for ApiError {
    fn from(err: ModelError) -> Self {
        match err {
            ModelError::NotFound(_) => ApiError::NotFound(err.to_string()),
            ModelError::Contended(_) | ModelError::RequestIdReused(_) => {
                ApiError::Conflict(err.to_string())
            }
            ModelError::Store(store) => store.into(),
        }
    }
}

impl From<RunnerError> for ApiError {
    fn from(err: RunnerError) -> Self {
        match err {
            RunnerError::UnknownModel(_)
            | RunnerError::UnknownMethod(_)
            | RunnerError::NoTasks(_)
            | RunnerError::NotRunning(_) => ApiError::NotFound(err.to_string()),
            RunnerError::AlreadyRunning(_) => ApiError::TaskRunning(err.to_string()),
            RunnerError::LabelRejected(msg) => ApiError::field(FieldError::new(
                "value_error",
                "body",
                "label",
                msg,
                Value::Null,
            )),
            RunnerError::Failed(msg) => ApiError::Internal(msg),
            RunnerError::Unavailable(msg) => ApiError::Unavailable(msg),
        }
    }
}

impl From<medlabel_auth::AuthError> for ApiError {
    fn from(err: medlabel_auth::AuthError) -> Self {
        use medlabel_auth::AuthError;
        match err {
            AuthError::NotAuthenticated | AuthError::InvalidToken(_) | AuthError::BadLogin => {
                ApiError::Unauthorized(err.to_string())
            }
            AuthError::Forbidden(_) => ApiError::Forbidden(err.to_string()),
            AuthError::Upstream(msg) => ApiError::BadGateway(msg),
            AuthError::Internal(msg) => ApiError::Internal(msg),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(err: std::io::Error) -> Self {
        ApiError::Internal(err.to_string())
    }
}
