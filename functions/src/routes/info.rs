//! The info function: `/info/`, the model files, the API docs.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use medlabel_events::blob::BlobRef;
use medlabel_events::event::{Event, NewEvent};
use medlabel_events::store::ExpectedVersion;
use medlabel_events::{ModelName, StreamId};
use serde_json::{Map, Value, json};

use crate::catalogue;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::extract::{Segment, parse_id};
use crate::reply;
use crate::routes::activelearning::strategies_info;
use crate::state::AppState;

/// The MONAI Label version medlabel's API corresponds to.
pub const MONAI_LABEL_VERSION: &str = "0.8.5";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(docs))
        .route("/docs", get(docs))
        .route("/openapi.json", get(openapi))
        .route("/info/", get(info))
        .route("/reload", post(reload))
        .route("/model/{model}", get(model_file).delete(delete_model))
        .route("/model/info/{model}", get(model_info))
}

async fn docs() -> Html<String> {
    Html(catalogue::docs_html())
}

async fn openapi() -> Json<Value> {
    Json(catalogue::openapi())
}

async fn reload() -> Json<Value> {
    Json(json!({}))
}

/// MONAI Label's app info, recomputed per call.
pub async fn app_info(state: &AppState) -> Result<Value, ApiError> {
    let described = state.runner.describe().await?;
    let (name, description, status) = {
        let view = state.datastore.view().await?;
        (view.name.clone(), view.description.clone(), view.status())
    };
    let mut labels = BTreeSet::new();
    for model in described.models.values() {
        match &model["labels"] {
            Value::Object(map) => labels.extend(map.keys().cloned()),
            Value::Array(items) => {
                labels.extend(items.iter().filter_map(Value::as_str).map(str::to_owned))
            }
            _ => {}
        }
    }
    let app_name = if name == "new-dataset" {
        state.config.app_name.clone()
    } else {
        name
    };
    let app_description = if description == "New Dataset" {
        state.config.app_description.clone()
    } else {
        description
    };
    Ok(json!({
        "name": app_name,
        "description": app_description,
        "version": MONAI_LABEL_VERSION,
        "labels": labels,
        "models": described.models,
        "trainers": described.trainers,
        "strategies": strategies_info(),
        "scoring": described.scoring,
        "train_stats": described.train_stats,
        "datastore": status,
    }))
}

async fn info(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(app_info(&state).await?))
}

/// The model's current weights, from its stream: the latest `ModelPublished` unless a
/// `ModelDeleted` came after it. Returns the stream version too.
async fn current_model(
    state: &AppState,
    name: &ModelName,
) -> Result<(BlobRef, i64, u64), ApiError> {
    let events = state
        .datastore
        .event_store()
        .read_stream(&StreamId::model(name), 1)
        .await?;
    let mut current = None;
    let mut version = 0;
    for recorded in &events {
        version = recorded.sequence;
        match &recorded.event {
            Event::ModelPublished { weights, .. } => {
                current = Some((weights.clone(), recorded.timestamp_ms))
            }
            Event::ModelDeleted { .. } => current = None,
            _ => {}
        }
    }
    current
        .map(|(blob, ts)| (blob, ts, version))
        .ok_or_else(|| ApiError::NotFound(format!("Model File NOT Found for {name}")))
}

fn model_name(segment: &Segment) -> Result<ModelName, ApiError> {
    parse_id("path", "model", &segment.0, ModelName::parse)
}

async fn model_file(State(state): State<AppState>, model: Segment) -> Result<Response, ApiError> {
    let name = model_name(&model)?;
    let (blob, _, _) = current_model(&state, &name).await?;
    let reader = state.datastore.blob_store().get(&blob).await?;
    Ok(reply::blob_file(
        &format!("{name}{}", blob.ext),
        &blob,
        reader,
    ))
}

async fn model_info(
    State(state): State<AppState>,
    model: Segment,
) -> Result<Json<Value>, ApiError> {
    let name = model_name(&model)?;
    let (blob, ts, _) = current_model(&state, &name).await?;
    let mut info = Map::new();
    info.insert("checksum".into(), json!(blob.checksum()));
    info.insert("modified_time".into(), json!(ts.div_euclid(1000)));
    if let Some(stats) = state
        .runner
        .describe()
        .await?
        .train_stats
        .get(name.as_str())
    {
        info.insert("train_stats".into(), stats.clone());
    }
    Ok(Json(Value::Object(info)))
}

async fn delete_model(
    State(state): State<AppState>,
    ctx: Ctx,
    model: Segment,
) -> Result<impl IntoResponse, ApiError> {
    let name = model_name(&model)?;
    let (_, _, version) = current_model(&state, &name).await?;
    let event = NewEvent {
        event: Event::ModelDeleted {
            model: name.clone(),
        },
        actor: ctx.actor(None),
        timestamp_ms: state.datastore.clock().now_ms(),
    };
    state
        .datastore
        .event_store()
        .append(
            &StreamId::model(&name),
            ExpectedVersion::Exact(version),
            vec![event],
            &ctx.request_id,
        )
        .await?;
    Ok(Json(json!({})))
}
