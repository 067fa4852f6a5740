//! The train function: start, watch and stop training, delegated to the runner.
//!
//! Also home of the task helpers scoring and batch inference share: MONAI Label runs
//! the three task kinds the same way (one at a time per kind, in-memory task dicts).

use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use medlabel_events::Info;
use medlabel_events::event::JobKind;
use serde_json::{Map, Value, json};

use crate::context::Ctx;
use crate::error::ApiError;
use crate::extract::{QueryParams, Segment, json_body};
use crate::runner::TaskQuery;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/train/{model}", post(train)).route(
        "/train/",
        post(train_all).get(train_status).delete(stop_training),
    )
}

async fn train(
    State(state): State<AppState>,
    ctx: Ctx,
    model: Segment,
    query: QueryParams,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let mut params = json_body(body).await?;
    for flag in ["run_sync", "enqueue"] {
        if query.bool(flag, false)? {
            params.insert(flag.into(), json!(true));
        }
    }
    Ok(Json(
        state
            .runner
            .start(&ctx.write(None), JobKind::Train, &model.0, params)
            .await?,
    ))
}

async fn train_all(
    State(state): State<AppState>,
    ctx: Ctx,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let params = json_body(body).await?;
    let models = state
        .runner
        .describe()
        .await?
        .trainers
        .into_keys()
        .collect();
    Ok(Json(
        run_all(&state, &ctx, JobKind::Train, models, params).await,
    ))
}

async fn train_status(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    task_status(&state, JobKind::Train, &query).await
}

async fn stop_training(State(state): State<AppState>, ctx: Ctx) -> Result<Json<Value>, ApiError> {
    stop(&state, &ctx, JobKind::Train).await
}

/// MONAI Label's deprecated "run every trainer / method": each gets `params[name]`
/// merged over the shared params, and the reply is `{name: {"result", "detail"}}`.
pub(crate) async fn run_all(
    state: &AppState,
    ctx: &Ctx,
    kind: JobKind,
    names: Vec<String>,
    params: Info,
) -> Value {
    let mut reply = Map::new();
    for name in names {
        let mut own = params.clone();
        if let Some(Value::Object(specific)) = params.get(&name) {
            for (k, v) in specific {
                own.insert(k.clone(), v.clone());
            }
        }
        let write = ctx.write_step(None, &name);
        let entry = match state.runner.start(&write, kind, &name, own).await {
            Ok(task) => json!({"result": task, "detail": null}),
            Err(err) => json!({"result": null, "detail": err.to_string()}),
        };
        reply.insert(name, entry);
    }
    Value::Object(reply)
}

pub(crate) async fn task_status(
    state: &AppState,
    kind: JobKind,
    query: &QueryParams,
) -> Result<Json<Value>, ApiError> {
    let task_query = TaskQuery {
        all: query.bool("all", false)?,
        check_if_running: query.bool("check_if_running", false)?,
    };
    Ok(Json(state.runner.status(kind, task_query).await?))
}

pub(crate) async fn stop(
    state: &AppState,
    ctx: &Ctx,
    kind: JobKind,
) -> Result<Json<Value>, ApiError> {
    let stopped = state.runner.stop(&ctx.write(None), kind).await?;
    Ok(Json(stopped.unwrap_or(Value::Null)))
}
