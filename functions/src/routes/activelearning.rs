//! The activelearning function: next-sample strategies and scoring.
//!
//! A next-sample call hands the caller an image and leases it to the caller (the
//! authenticated user; with auth off, the client instance; see
//! `medlabel_events::datastore::Strategy`): two annotators are never handed the
//! same image while a lease holds, and asking again returns the leased image. A retried
//! request (same request id) records nothing and answers with the same image, since the
//! client already holds its lease. Scoring is delegated to the runner.

use axum::body::Body;
use axum::extract::State;
use axum::routing::{delete, post};
use axum::{Json, Router};
use medlabel_events::ImageId;
use medlabel_events::datastore::{Handout, Strategy};
use medlabel_events::event::JobKind;
use serde_json::{Map, Value, json};

use crate::context::Ctx;
use crate::error::ApiError;
use crate::extract::{QueryParams, Segment, json_body};
use crate::routes::train::{run_all, stop, task_status};
use crate::routes::{client_id, image_path};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/activelearning/{strategy}", post(next_sample))
        .route("/activelearning/lease/{image}", delete(release))
        .route("/scoring/{method}", post(score))
        .route(
            "/scoring/",
            post(score_all).get(scoring_status).delete(stop_scoring),
        )
}

/// `strategies` as `/info/` lists them.
pub fn strategies_info() -> Value {
    Value::Object(
        Strategy::all()
            .iter()
            .map(|(name, description)| ((*name).to_owned(), json!({"description": description})))
            .collect::<Map<String, Value>>(),
    )
}

async fn next_sample(
    State(state): State<AppState>,
    ctx: Ctx,
    name: Segment,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let Some(strategy) = Strategy::parse(&name.0) else {
        return Err(ApiError::NotFound(format!(
            "Strategy '{}' NOT Found",
            name.0
        )));
    };
    let params = json_body(body).await?;
    // Leases belong to the authenticated user; with auth off to the client instance,
    // without one to the user.
    let client = ctx.holder(client_id(&params));
    let write = ctx.write(client_id(&params));
    let picker = &state.picker;
    let Some(handout) = state
        .datastore
        .next_sample(&write, strategy, &name.0, &client, picker.lease, &|n| {
            picker.below(n)
        })
        .await?
    else {
        return Ok(Json(json!({})));
    };
    let Handout {
        image,
        record,
        weight,
    } = handout;
    let mut reply = Map::new();
    reply.insert("id".into(), json!(image));
    let path = image_path(&state, &ctx, &image, &record).await?;
    reply.insert("path".into(), json!(path));
    reply.insert("weight".into(), json!(weight));
    reply.insert("checksum".into(), json!(record.blob.checksum()));
    for (key, value) in record.info {
        reply.entry(key).or_insert(value);
    }
    Ok(Json(Value::Object(reply)))
}

/// Gives a leased image back before its lease runs out (medlabel's addition to the
/// API): `{"released": bool}`.
async fn release(
    State(state): State<AppState>,
    ctx: Ctx,
    image: Segment,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let image = crate::extract::parse_id("path", "image", &image.0, ImageId::parse)?;
    let client = ctx.holder(query.get("client_id"));
    let released = state
        .datastore
        .release_lease(&ctx.write(query.get("client_id")), &image, &client)
        .await?;
    Ok(Json(json!({ "released": released })))
}

async fn score(
    State(state): State<AppState>,
    ctx: Ctx,
    method: Segment,
    query: QueryParams,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let mut params = json_body(body).await?;
    if query.bool("run_sync", false)? {
        params.insert("run_sync".into(), json!(true));
    }
    Ok(Json(
        state
            .runner
            .start(&ctx.write(None), JobKind::Scoring, &method.0, params)
            .await?,
    ))
}

async fn score_all(
    State(state): State<AppState>,
    ctx: Ctx,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let params = json_body(body).await?;
    let methods = state.runner.describe().await?.scoring.into_keys().collect();
    Ok(Json(
        run_all(&state, &ctx, JobKind::Scoring, methods, params).await,
    ))
}

async fn scoring_status(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    task_status(&state, JobKind::Scoring, &query).await
}

async fn stop_scoring(State(state): State<AppState>, ctx: Ctx) -> Result<Json<Value>, ApiError> {
    stop(&state, &ctx, JobKind::Scoring).await
}
