//! Parsing what clients send: query strings, path segments, JSON bodies and form
//! fields, with every failure reported as FastAPI would (`422` with a `loc`).
//!
//! axum's own extractors reject with plain-text 400s; these keep MONAI Label's error
//! shape and turn every id into a validated type at the edge (design invariant 6).

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use medlabel_events::{ImageId, Info, InvalidId, RunId, Tag};
use serde_json::Value;

use crate::error::{ApiError, FieldError};

/// Largest JSON body (activelearning, train, scoring params) or url-encoded form read.
pub const MAX_JSON_BYTES: usize = 4 << 20;

/// Largest JSON value a client may send as `params`, `info` or a JSON body. Whatever a
/// client sends ends up in one event (at most `MAX_EVENT_BYTES`, 350 KB with its
/// envelope), so the edge refuses what the log could not hold, with room to spare for
/// the request's other fields.
pub const MAX_CLIENT_JSON_BYTES: usize = 64 << 10;

/// Deepest nesting of arrays and objects a client's JSON may have. serde_json refuses
/// to read more than 128 levels, and an event nests a client's value a few levels
/// deeper than the client did (envelope, payload, info): a value accepted at the edge
/// near that bound could be written and then never read again, stopping every reader
/// of the log. MONAI Label's clients send two or three levels.
pub const MAX_CLIENT_JSON_DEPTH: usize = 32;

/// The query string as ordered pairs (the first occurrence of a name wins).
#[derive(Debug, Clone, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(QueryParams::parse(parts.uri.query().unwrap_or("")))
    }
}

impl QueryParams {
    pub fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::field(FieldError::missing("query", name)))
    }

    /// A required image (or label) id.
    pub fn image_id(&self, name: &str) -> Result<ImageId, ApiError> {
        parse_id("query", name, self.required(name)?, ImageId::parse)
    }

    /// A label tag; absent or empty means `final`, as in MONAI Label.
    pub fn tag(&self, name: &str) -> Result<Tag, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(Tag::final_tag()),
            Some(value) => parse_id("query", name, value, Tag::parse),
        }
    }

    /// A label tag MONAI Label requires (its label routes but `PUT /datastore/label`):
    /// absent is 422 at `["query", name]`; empty still means `final`.
    pub fn required_tag(&self, name: &str) -> Result<Tag, ApiError> {
        self.required(name)?;
        self.tag(name)
    }

    /// A boolean as pydantic reads one (`true/false`, `1/0`, `yes/no`, `on/off`).
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => parse_bool(value).ok_or_else(|| {
                ApiError::field(FieldError::new(
                    "bool_parsing",
                    "query",
                    name,
                    "Input should be a valid boolean, unable to interpret input",
                    Value::String(value.to_owned()),
                ))
            }),
        }
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value.trim().parse().map_err(|_| {
                ApiError::field(FieldError::new(
                    "int_parsing",
                    "query",
                    name,
                    "Input should be a valid integer, unable to parse string as an integer",
                    Value::String(value.to_owned()),
                ))
            }),
        }
    }
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// Parses a client-supplied id, reporting a refusal at `location.name`.
pub fn parse_id<T>(
    location: &str,
    name: &str,
    value: &str,
    parse: impl FnOnce(String) -> Result<T, InvalidId>,
) -> Result<T, ApiError> {
    parse(value.to_owned())
        .map_err(|err| ApiError::field(FieldError::invalid_id(location, name, value, &err)))
}

/// The single path parameter of a route (`/session/{id}`, `/infer/{model}`), decoded.
#[derive(Debug, Clone)]
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Segment(value))
            .map_err(|err| {
                ApiError::field(FieldError::new(
                    "value_error",
                    "path",
                    "id",
                    err.body_text(),
                    Value::Null,
                ))
            })
    }
}

impl Segment {
    pub fn run_id(&self) -> Result<RunId, ApiError> {
        parse_id("path", "id", &self.0, RunId::parse)
    }
}

/// Parses `text` as a JSON object (MONAI Label's `params` and `info` form fields).
pub fn json_object(location: &str, name: &str, text: &str) -> Result<Info, ApiError> {
    let invalid = |msg: String| {
        ApiError::field(FieldError::new(
            "json_invalid",
            location,
            name,
            msg,
            Value::String(text.chars().take(256).collect()),
        ))
    };
    if text.trim().is_empty() {
        return Ok(Info::new());
    }
    if text.len() > MAX_CLIENT_JSON_BYTES {
        return Err(invalid(format!(
            "JSON value of {} bytes is larger than the {MAX_CLIENT_JSON_BYTES}-byte limit",
            text.len()
        )));
    }
    // Checked on the text, before parsing: serde_json's own limit (128) is too deep for
    // what the log must read back, and a too-deep value is refused without building it.
    if let Some(depth) = nesting_beyond(text, MAX_CLIENT_JSON_DEPTH) {
        return Err(invalid(format!(
            "JSON value nests deeper than {MAX_CLIENT_JSON_DEPTH} levels (at least {depth})"
        )));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Info::new()),
        Ok(_) => Err(invalid("Input should be a JSON object".into())),
        Err(err) => Err(invalid(format!("JSON decode error: {err}"))),
    }
}

/// The nesting depth of arrays and objects in `text` once it passes `limit`, or `None`
/// when it never does. Brackets inside strings do not count; the text need not be valid
/// JSON (the parser judges that afterwards).
fn nesting_beyond(text: &str, limit: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Reads a small body whole, refusing more than `limit` bytes with 413.
pub async fn read_small_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge {
            limit: limit as u64,
        })
}

/// A JSON body holding a params object; an empty body is `{}`.
pub async fn json_body(body: Body) -> Result<Info, ApiError> {
    let bytes = read_small_body(body, MAX_JSON_BYTES).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        ApiError::field(FieldError::new(
            "json_invalid",
            "body",
            "body",
            "body is not UTF-8",
            Value::Null,
        ))
    })?;
    json_object("body", "body", text)
}

/// Whether the request body is `application/x-www-form-urlencoded`.
pub fn is_urlencoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

/// The fields of a url-encoded form body.
pub async fn urlencoded_fields(body: Body) -> Result<QueryParams, ApiError> {
    let bytes = read_small_body(body, MAX_JSON_BYTES).await?;
    Ok(QueryParams(
        form_urlencoded::parse(&bytes).into_owned().collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_and_checked() {
        let q = QueryParams::parse("image=%2e%2e&tag=&ok=spleen_3&flag=YES&n=x");
        assert!(matches!(q.image_id("image"), Err(ApiError::Validation(_))));
        assert_eq!(q.tag("tag").unwrap(), Tag::final_tag());
        assert_eq!(q.image_id("ok").unwrap().as_str(), "spleen_3");
        assert!(q.bool("flag", false).unwrap());
        assert!(q.int("n", 0).is_err());
        assert!(
            matches!(q.required("absent"), Err(ApiError::Validation(e)) if e[0].kind == "missing")
        );
    }

    #[test]
    fn params_must_be_json_objects() {
        assert!(json_object("body", "params", "").unwrap().is_empty());
        assert_eq!(json_object("body", "params", r#"{"a":1}"#).unwrap()["a"], 1);
        for bad in ["{", "[1]", "\"s\""] {
            assert!(
                json_object("body", "params", bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    /// `{"a": [[...[1]...]]}` with `depth` levels of arrays and objects in all.
    fn nested(depth: usize) -> String {
        format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    #[test]
    fn json_deeper_than_the_limit_is_refused_before_parsing() {
        assert!(json_object("body", "info", &nested(MAX_CLIENT_JSON_DEPTH)).is_ok());
        let refused = json_object("body", "info", &nested(MAX_CLIENT_JSON_DEPTH + 1));
        assert!(
            matches!(&refused, Err(ApiError::Validation(e)) if e[0].msg.contains("deeper than 32")),
            "{refused:?}"
        );
        // serde_json alone would have accepted this one, and the log could not read it back.
        assert!(json_object("body", "info", &nested(125)).is_err());
        // Brackets inside strings are text, not nesting.
        let text = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(100), "{".repeat(100));
        assert_eq!(json_object("body", "info", &text).unwrap().len(), 1);
    }

    #[test]
    fn json_larger_than_the_limit_is_refused() {
        let fits = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_CLIENT_JSON_BYTES - 8));
        assert_eq!(fits.len(), MAX_CLIENT_JSON_BYTES);
        assert!(json_object("body", "params", &fits).is_ok());
        let over = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_CLIENT_JSON_BYTES - 7));
        assert!(json_object("body", "params", &over).is_err());
    }
}
