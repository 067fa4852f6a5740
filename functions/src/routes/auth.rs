//! The auth function: MONAI Label's `/auth/` routes, which 3D Slicer's login uses.
//!
//! `GET /auth/` tells a client whether to log in; `POST /auth/token` takes MONAI Label's
//! OAuth2 password form (`username`, `password`, `grant_type=password`) and answers
//! `{"access_token", "token_type"}`, issued by medlabel (`--auth builtin`) or relayed
//! from the identity provider (`--auth oidc`); `GET /auth/token/valid` describes the
//! bearer of a valid token. With auth off every route answers 404, as MONAI Label mounts
//! `/auth` only when auth is on; clients read that as "disabled".

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use medlabel_auth::Authenticator;
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::error::{ApiError, FieldError};
use crate::extract::{MAX_JSON_BYTES, is_urlencoded, urlencoded_fields};
use crate::multipart::read_form;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/", get(settings))
        .route("/auth/token", post(token))
        .route("/auth/token/valid", get(valid))
}

fn enabled(state: &AppState) -> Result<&Authenticator, ApiError> {
    state
        .config
        .auth
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("Not Found".into()))
}

async fn settings(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(enabled(&state)?.settings()))
}

/// The password grant (FastAPI's `OAuth2PasswordRequestForm`: url-encoded or multipart).
async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let auth = enabled(&state)?;
    let field = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let fields: Vec<(String, String)> = if is_urlencoded(&headers) {
        let form = urlencoded_fields(body).await?;
        ["username", "password", "grant_type"]
            .into_iter()
            .filter_map(|name| form.get(name).map(|v| (name.to_owned(), v.to_owned())))
            .collect()
    } else {
        let form = read_form(
            &headers,
            body,
            &[],
            MAX_JSON_BYTES as u64,
            &state.config.temp_dir,
        )
        .await?;
        form.fields.into_iter().collect()
    };
    let username = field(&fields, "username")
        .ok_or_else(|| ApiError::field(FieldError::missing("body", "username")))?;
    let password = field(&fields, "password")
        .ok_or_else(|| ApiError::field(FieldError::missing("body", "password")))?;
    if let Some(grant) = field(&fields, "grant_type").filter(|g| g != "password") {
        return Err(ApiError::field(FieldError::new(
            "string_pattern_mismatch",
            "body",
            "grant_type",
            "String should match pattern '^password$'",
            json!(grant),
        )));
    }
    let reply = auth.login(&username, &password).await?;
    Ok(Json(json!(reply)))
}

/// MONAI Label's `User`: `{"username", "email", "name", "roles"}`.
async fn valid(State(state): State<AppState>, ctx: Ctx) -> Result<Json<Value>, ApiError> {
    enabled(&state)?;
    let principal = ctx
        .principal
        .ok_or_else(|| ApiError::Unauthorized("Not authenticated".into()))?;
    Ok(Json(json!({
        "username": principal.username,
        "email": principal.email,
        "name": principal.name,
        "roles": principal.roles,
    })))
}
