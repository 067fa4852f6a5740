//! The route catalogue: every route medlabel serves, as data.
//!
//! One table feeds four things that must agree with the routers: the OpenAPI document
//! (`/openapi.json`), the offline docs page (`/docs`, which loads nothing external),
//! MONAI Label's trailing-slash redirects (FastAPI answers a path that only matches
//! with the other spelling with 307), and the role each route asks for when
//! authentication is on (MONAI Label's `RBAC(...)` of the same route; medlabel's own
//! routes get the role of the MONAI Label route they extend). A test checks that every
//! entry is routed and every route has an entry.

use medlabel_auth::{Access, Role};
use serde_json::{Map, Value, json};

/// What a route's request body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    None,
    /// A JSON object of params.
    Json,
    /// `multipart/form-data` with these fields (files and text).
    Multipart(&'static [&'static str]),
    /// Form fields, url-encoded or multipart.
    Form(&'static [&'static str]),
}

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    /// The path as FastAPI declares it (`{name}` marks a path parameter).
    pub path: &'static str,
    /// The function (Lambda) that serves it.
    pub function: &'static str,
    pub summary: &'static str,
    pub query: &'static [&'static str],
    pub payload: Payload,
    /// What the caller must hold when authentication is on.
    pub access: Access,
}

const fn route(
    method: &'static str,
    path: &'static str,
    function: &'static str,
    summary: &'static str,
    query: &'static [&'static str],
    payload: Payload,
    access: Access,
) -> Route {
    Route {
        method,
        path,
        function,
        summary,
        query,
        payload,
        access,
    }
}

use Access::{Authenticated, Public};
use Payload::{Form, Json, Multipart, None as NoBody};

const USER: Access = Access::Role(Role::User);
const ANNOTATOR: Access = Access::Role(Role::Annotator);
const ADMIN: Access = Access::Role(Role::Admin);

/// Every route, grouped by function.
pub const ROUTES: &[Route] = &[
    route("GET", "/", "info", "API docs", &[], NoBody, Public),
    route("GET", "/docs", "info", "API docs", &[], NoBody, Public),
    route(
        "GET",
        "/openapi.json",
        "info",
        "OpenAPI document",
        &[],
        NoBody,
        Public,
    ),
    route(
        "GET",
        "/info/",
        "info",
        "App info: models, strategies, datastore status",
        &[],
        NoBody,
        USER,
    ),
    route(
        "POST",
        "/reload",
        "info",
        "Reload the app (no-op)",
        &[],
        NoBody,
        ADMIN,
    ),
    route(
        "GET",
        "/model/{model}",
        "info",
        "Download the current model weights",
        &[],
        NoBody,
        ADMIN,
    ),
    route(
        "GET",
        "/model/info/{model}",
        "info",
        "Checksum and time of the current model",
        &[],
        NoBody,
        ADMIN,
    ),
    route(
        "PUT",
        "/model/{model}",
        "info",
        "Upload new weights for the model's network as its next version",
        &[],
        Multipart(&["file"]),
        ANNOTATOR,
    ),
    route(
        "DELETE",
        "/model/{model}",
        "info",
        "Retire the current model",
        &[],
        NoBody,
        ANNOTATOR,
    ),
    route(
        "GET",
        "/datastore/",
        "datastore",
        "Datastore stats, full JSON or train list",
        &["output"],
        NoBody,
        USER,
    ),
    route(
        "PUT",
        "/datastore/",
        "datastore",
        "Upload an image (alias used by the Python client)",
        &["image"],
        Multipart(&["file", "params"]),
        ANNOTATOR,
    ),
    route(
        "DELETE",
        "/datastore/",
        "datastore",
        "Remove an image and its labels",
        &["id"],
        NoBody,
        ADMIN,
    ),
    route(
        "PUT",
        "/datastore/image",
        "datastore",
        "Upload an image",
        &["image"],
        Multipart(&["file", "params"]),
        ANNOTATOR,
    ),
    route(
        "DELETE",
        "/datastore/image",
        "datastore",
        "Remove an image and its labels",
        &["id"],
        NoBody,
        ADMIN,
    ),
    route(
        "HEAD",
        "/datastore/image",
        "datastore",
        "Whether an image exists (optionally with a checksum)",
        &["image", "check_sum"],
        NoBody,
        USER,
    ),
    route(
        "GET",
        "/datastore/image",
        "datastore",
        "Download an image",
        &["image", "check_sum"],
        NoBody,
        USER,
    ),
    route(
        "GET",
        "/datastore/image/info",
        "datastore",
        "Image info",
        &["image"],
        NoBody,
        USER,
    ),
    route(
        "PUT",
        "/datastore/image/info",
        "datastore",
        "Merge into image info",
        &["image"],
        Form(&["info"]),
        ANNOTATOR,
    ),
    route(
        "PUT",
        "/datastore/label",
        "datastore",
        "Save a label",
        &["image", "tag"],
        Multipart(&["label", "params"]),
        ANNOTATOR,
    ),
    route(
        "DELETE",
        "/datastore/label",
        "datastore",
        "Remove a label",
        &["id", "tag"],
        NoBody,
        ADMIN,
    ),
    route(
        "HEAD",
        "/datastore/label",
        "datastore",
        "Whether an image has a label under a tag",
        &["image", "tag"],
        NoBody,
        USER,
    ),
    route(
        "GET",
        "/datastore/label",
        "datastore",
        "Download a label",
        &["label", "tag"],
        NoBody,
        USER,
    ),
    route(
        "GET",
        "/datastore/label/info",
        "datastore",
        "Label info",
        &["label", "tag"],
        NoBody,
        USER,
    ),
    route(
        "PUT",
        "/datastore/label/info",
        "datastore",
        "Merge into label info",
        &["label", "tag"],
        Form(&["info"]),
        ANNOTATOR,
    ),
    route(
        "PUT",
        "/datastore/updatelabelinfo",
        "datastore",
        "Merge into label info (deprecated)",
        &["label", "tag"],
        Form(&["params"]),
        ANNOTATOR,
    ),
    route(
        "POST",
        "/datastore/upload",
        "datastore",
        "Presigned PUT URL for a large upload, or part URLs with ?parts=N (object stores)",
        &["parts"],
        NoBody,
        ANNOTATOR,
    ),
    route(
        "POST",
        "/datastore/upload/{upload}/complete",
        "datastore",
        "Join the parts of a multipart upload from their ETags",
        &[],
        Json,
        ANNOTATOR,
    ),
    route(
        "POST",
        "/datastore/upload/{upload}/image",
        "datastore",
        "Record a finished presigned upload as an image",
        &["image", "ext"],
        Json,
        ANNOTATOR,
    ),
    route(
        "POST",
        "/datastore/upload/{upload}/label",
        "datastore",
        "Record a finished presigned upload as a label",
        &["image", "tag", "ext"],
        Json,
        ANNOTATOR,
    ),
    route(
        "DELETE",
        "/activelearning/lease/{image}",
        "activelearning",
        "Give a leased image back before the lease ends",
        &["client_id"],
        NoBody,
        USER,
    ),
    route(
        "GET",
        "/datastore/dataset",
        "datastore",
        "Download final-labelled cases as dataset.zip",
        &["limit_cases"],
        NoBody,
        ANNOTATOR,
    ),
    route(
        "PUT",
        "/session/",
        "session",
        "Create an upload session",
        &["uncompress", "expiry"],
        Multipart(&["files"]),
        USER,
    ),
    route(
        "GET",
        "/session/{id}",
        "session",
        "Get a session (or its file with image=true)",
        &["update_ts", "image"],
        NoBody,
        USER,
    ),
    route(
        "DELETE",
        "/session/{id}",
        "session",
        "Remove a session",
        &[],
        NoBody,
        USER,
    ),
    route(
        "POST",
        "/activelearning/{strategy}",
        "activelearning",
        "Next sample by strategy",
        &[],
        Json,
        USER,
    ),
    route(
        "POST",
        "/scoring/{method}",
        "activelearning",
        "Run a scoring method",
        &["run_sync"],
        Json,
        ANNOTATOR,
    ),
    route(
        "POST",
        "/scoring/",
        "activelearning",
        "Run every scoring method (deprecated)",
        &[],
        Json,
        ANNOTATOR,
    ),
    route(
        "GET",
        "/scoring/",
        "activelearning",
        "Scoring task status",
        &["all", "check_if_running"],
        NoBody,
        USER,
    ),
    route(
        "DELETE",
        "/scoring/",
        "activelearning",
        "Stop scoring",
        &[],
        NoBody,
        ANNOTATOR,
    ),
    route(
        "POST",
        "/infer/{model}",
        "infer",
        "Run inference",
        &["image", "session_id", "output"],
        Multipart(&["params", "file", "label"]),
        USER,
    ),
    route(
        "POST",
        "/infer/wsi/{model}",
        "infer",
        "Whole-slide inference (WSIInput as the JSON body); no served model reads slides",
        &["image", "session_id", "output"],
        Json,
        USER,
    ),
    route(
        "POST",
        "/infer/wsi_v2/{model}",
        "infer",
        "Whole-slide inference (WSIInput as the form field wsi); no served model reads slides",
        &["image", "session_id", "output"],
        Multipart(&["wsi", "file"]),
        USER,
    ),
    route(
        "POST",
        "/batch/infer/{model}",
        "infer",
        "Run batch inference",
        &["images", "run_sync"],
        Json,
        ADMIN,
    ),
    route(
        "GET",
        "/batch/infer",
        "infer",
        "Batch inference status",
        &["all", "check_if_running"],
        NoBody,
        USER,
    ),
    route(
        "DELETE",
        "/batch/infer",
        "infer",
        "Stop batch inference",
        &[],
        NoBody,
        ADMIN,
    ),
    route(
        "POST",
        "/train/{model}",
        "train",
        "Start training",
        &["run_sync", "enqueue"],
        Json,
        ADMIN,
    ),
    route(
        "POST",
        "/train/",
        "train",
        "Train every model (deprecated)",
        &[],
        Json,
        ADMIN,
    ),
    route(
        "GET",
        "/train/",
        "train",
        "Training status",
        &["all", "check_if_running"],
        NoBody,
        USER,
    ),
    route(
        "DELETE",
        "/train/",
        "train",
        "Stop training",
        &[],
        NoBody,
        ADMIN,
    ),
    route(
        "GET",
        "/auth/",
        "auth",
        "Auth settings (404 when auth is off)",
        &[],
        NoBody,
        Public,
    ),
    route(
        "POST",
        "/auth/token",
        "auth",
        "Password grant: a bearer token for username and password",
        &[],
        Form(&["username", "password"]),
        Public,
    ),
    route(
        "GET",
        "/auth/token/valid",
        "auth",
        "The caller's identity",
        &[],
        NoBody,
        Authenticated,
    ),
    route(
        "GET",
        "/logs/",
        "logs",
        "Recent server log lines",
        &["lines", "html", "text", "refresh"],
        NoBody,
        ADMIN,
    ),
    route(
        "GET",
        "/logs/audit",
        "logs",
        "Who read which patient data, and when (DataRead events)",
        &["after", "limit"],
        NoBody,
        ADMIN,
    ),
    route(
        "GET",
        "/logs/gpu",
        "logs",
        "nvidia-smi on the API's host (503 where there is none)",
        &[],
        NoBody,
        ADMIN,
    ),
    route(
        "GET",
        "/ohif/",
        "info",
        "The OHIF viewer configured with --ohif (503 without one)",
        &[],
        NoBody,
        USER,
    ),
    route(
        "GET",
        "/ohif/{path}",
        "info",
        "A file of the OHIF viewer; other paths get its index.html",
        &[],
        NoBody,
        USER,
    ),
    route(
        "GET",
        "/proxy/dicom/{path}",
        "info",
        "DICOMweb (QIDO/WADO) relayed to the --dicomweb server",
        &[],
        NoBody,
        USER,
    ),
    route(
        "POST",
        "/proxy/dicom/{path}",
        "info",
        "DICOMweb STOW relayed to the --dicomweb server",
        &[],
        NoBody,
        USER,
    ),
];

/// Whether `path` matches the declared `pattern` segment by segment.
pub fn matches(pattern: &str, path: &str) -> bool {
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) => {
                let param = p.starts_with('{') && p.ends_with('}');
                if !(param && !s.is_empty() || p == s) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// What the route declared as `pattern` (a router's matched path) asks for `method`:
/// a HEAD without its own entry is its GET, and the router's catch-all `{*path}` is the
/// table's `{path}`. A route missing from the table asks for admin, so forgetting an
/// entry fails closed.
pub fn access(method: &str, pattern: &str) -> Access {
    let pattern = pattern.replace("{*", "{");
    let find = |method: &str| {
        ROUTES
            .iter()
            .find(|r| r.method == method && r.path == pattern)
            .map(|r| r.access)
    };
    find(method)
        .or_else(|| (method == "HEAD").then(|| find("GET")).flatten())
        .unwrap_or(ADMIN)
}

/// Whether any route is declared at `path` (for any method).
pub fn is_declared(path: &str) -> bool {
    ROUTES.iter().any(|r| matches(r.path, path))
}

/// The other spelling of `path` (with or without the trailing slash) if that one is
/// declared: where FastAPI redirects with 307.
pub fn slash_redirect(path: &str) -> Option<String> {
    if path == "/" {
        return None;
    }
    let other = match path.strip_suffix('/') {
        Some(stripped) => stripped.to_owned(),
        None => format!("{path}/"),
    };
    is_declared(&other).then_some(other)
}

/// The OpenAPI 3.1 document of [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let mut parameters: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(
            r.query
                .iter()
                .map(|name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}})),
        );
        let summary = match r.access {
            Access::Role(role) => format!("|RBAC: {role}| - {}", r.summary),
            _ => r.summary.to_owned(),
        };
        let mut operation = json!({
            "summary": summary,
            "tags": [r.function],
            "operationId": format!("{}_{}", r.method.to_ascii_lowercase(), r.path),
            "parameters": parameters,
            "responses": {"200": {"description": "Successful Response"}},
        });
        let form_schema = |fields: &[&str]| {
            let properties: Map<String, Value> = fields
                .iter()
                .map(|f| ((*f).to_owned(), json!({"type": "string"})))
                .collect();
            json!({"type": "object", "properties": properties})
        };
        let body = match r.payload {
            Payload::None => None,
            Payload::Json => Some(json!({"application/json": {"schema": {"type": "object"}}})),
            Payload::Multipart(fields) => {
                Some(json!({"multipart/form-data": {"schema": form_schema(fields)}}))
            }
            Payload::Form(fields) => Some(json!({
                "application/x-www-form-urlencoded": {"schema": form_schema(fields)},
                "multipart/form-data": {"schema": form_schema(fields)},
            })),
        };
        if let Some(content) = body {
            operation["requestBody"] = json!({"content": content});
        }
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "medlabel", "version": env!("CARGO_PKG_VERSION"),
                 "description": "MONAI Label compatible REST API"},
        "paths": paths,
    })
}

fn access_text(access: Access) -> &'static str {
    match access {
        Access::Public => "none",
        Access::Authenticated => "any token",
        Access::Role(role) => role.name(),
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page listing the routes (no scripts, nothing fetched).
pub fn docs_html() -> String {
    let mut rows = String::new();
    for r in ROUTES {
        rows.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            r.method,
            escape_html(r.path),
            r.function,
            access_text(r.access),
            escape_html(&r.query.join(", ")),
            escape_html(r.summary),
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>medlabel API</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:left;\
         border-bottom:1px solid #ddd}}</style></head><body><h1>medlabel API</h1>\
         <p>MONAI Label compatible. Machine-readable: <a href=\"/openapi.json\">/openapi.json</a>.</p>\
         <table><tr><th>Method</th><th>Path</th><th>Function</th><th>Role (auth on)</th><th>Query</th><th>Summary</th></tr>\n\
         {rows}</table></body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_follow_declared_spelling() {
        assert_eq!(slash_redirect("/info").as_deref(), Some("/info/"));
        assert_eq!(slash_redirect("/train").as_deref(), Some("/train/"));
        assert_eq!(
            slash_redirect("/datastore/image/").as_deref(),
            Some("/datastore/image")
        );
        assert_eq!(
            slash_redirect("/session/abc/").as_deref(),
            Some("/session/abc")
        );
        assert_eq!(slash_redirect("/session").as_deref(), Some("/session/"));
        assert_eq!(slash_redirect("/nothing"), None);
        assert!(!matches("/session/{id}", "/session/"));
    }

    #[test]
    fn roles_follow_monai_label() {
        assert_eq!(access("GET", "/info/"), USER);
        assert_eq!(access("HEAD", "/datastore/image"), USER);
        assert_eq!(access("DELETE", "/datastore/label"), ADMIN);
        assert_eq!(access("PUT", "/datastore/label"), ANNOTATOR);
        assert_eq!(access("GET", "/datastore/dataset"), ANNOTATOR);
        assert_eq!(access("POST", "/train/{model}"), ADMIN);
        assert_eq!(access("POST", "/auth/token"), Public);
        assert_eq!(access("GET", "/auth/token/valid"), Authenticated);
        // HEAD of a GET route is that route; an undeclared route fails closed.
        assert_eq!(access("HEAD", "/info/"), USER);
        assert_eq!(access("GET", "/ohif/{*path}"), USER);
        assert_eq!(access("GET", "/undeclared"), ADMIN);
    }

    #[test]
    fn openapi_lists_every_route() {
        let doc = openapi();
        for r in ROUTES {
            assert!(
                doc["paths"][r.path][r.method.to_ascii_lowercase()].is_object(),
                "{} {} missing",
                r.method,
                r.path
            );
        }
    }
}
