//! The auth function. Authentication itself is API Gateway's JWT authorizer (see
//! [`crate::context`]); these routes only report it, as MONAI Label's do.
//!
//! With auth off (no [`AuthConfig`](crate::state::AuthConfig)) every route answers 404,
//! as MONAI Label mounts `/auth` only when auth is on; clients read that as "disabled".

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::error::ApiError;
use crate::state::{AppState, AuthConfig};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/", get(settings))
        .route("/auth/token", post(token))
        .route("/auth/token/valid", get(valid))
}

fn enabled(state: &AppState) -> Result<&AuthConfig, ApiError> {
    state
        .config
        .auth
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("Not Found".into()))
}

async fn settings(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let auth = enabled(&state)?;
    Ok(Json(json!({
        "enabled": true,
        "client_id": auth.client_id,
        "realm": auth.realm,
    })))
}

/// Tokens come from the identity provider directly; medlabel holds no passwords.
async fn token(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let auth = enabled(&state)?;
    Err(ApiError::NotFound(format!(
        "medlabel does not issue tokens; obtain one from realm {} (client {})",
        auth.realm, auth.client_id
    )))
}

async fn valid(State(state): State<AppState>, ctx: Ctx) -> Result<Json<Value>, ApiError> {
    enabled(&state)?;
    Ok(Json(json!({
        "username": ctx.user,
        "email": null,
        "name": ctx.user,
        "roles": [],
    })))
}
