//! The info function: `/info/`, the model files, the API docs, and the viewer's
//! routes ([`super::viewer`]).

use std::collections::BTreeSet;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use medlabel_events::ModelName;
use medlabel_events::blob::read_to_vec;
use medlabel_events::models::PublishedModel;
use serde_json::{Map, Value, json};

use crate::catalogue;
use crate::context::Ctx;
use crate::downloads;
use crate::error::{ApiError, FieldError};
use crate::extract::{Segment, parse_id};
use crate::multipart::read_upload;
use crate::routes::activelearning::strategies_info;
use crate::state::AppState;
use crate::weights;

/// The MONAI Label version medlabel's API corresponds to.
pub const MONAI_LABEL_VERSION: &str = "0.8.5";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(docs))
        .route("/docs", get(docs))
        .route("/openapi.json", get(openapi))
        .route("/info/", get(info))
        .route("/reload", post(reload))
        .route(
            "/model/{model}",
            get(model_file).put(upload_model).delete(delete_model),
        )
        .route("/model/info/{model}", get(model_info))
        .merge(super::viewer::router())
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
    let (name, description, status, quarantined) = {
        let view = state.datastore.view().await?;
        let quarantined: Vec<_> = view.quarantined().cloned().collect();
        (
            view.name.clone(),
            view.description.clone(),
            view.status(),
            quarantined,
        )
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
    let mut info = json!({
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
    });
    // Events the log holds but no reader could decode: skipped, and shown (only when
    // there are any) so an operator learns of them and where they are.
    if !quarantined.is_empty() {
        info["quarantined_events"] = json!(quarantined);
    }
    Ok(info)
}

async fn info(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(app_info(&state).await?))
}

/// The model's current version, or MONAI Label's 404.
async fn current_model(state: &AppState, name: &ModelName) -> Result<PublishedModel, ApiError> {
    Ok(state.models.current(name).await?)
}

fn model_name(segment: &Segment) -> Result<ModelName, ApiError> {
    parse_id("path", "model", &segment.0, ModelName::parse)
}

async fn model_file(
    State(state): State<AppState>,
    ctx: Ctx,
    model: Segment,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = model_name(&model)?;
    let blob = current_model(&state, &name).await?.weights;
    let file_name = format!("{name}{}", blob.ext);
    // Weights are no patient data: nothing to audit.
    downloads::blob_reply(&state, &ctx, &headers, &file_name, &blob, None, "model").await
}

async fn model_info(
    State(state): State<AppState>,
    model: Segment,
) -> Result<Json<Value>, ApiError> {
    let name = model_name(&model)?;
    let current = current_model(&state, &name).await?;
    let mut info = Map::new();
    info.insert("checksum".into(), json!(current.weights.checksum()));
    info.insert(
        "modified_time".into(),
        json!(current.published_at_ms.div_euclid(1000)),
    );
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
    state.models.delete(&ctx.write(None), &name).await?;
    Ok(Json(json!({})))
}

/// MONAI Label's model upload: the file becomes the model's next version (the
/// network config stays), once its header proves it whole and shaped for the network.
async fn upload_model(
    State(state): State<AppState>,
    ctx: Ctx,
    model: Segment,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let name = model_name(&model)?;
    let current = current_model(&state, &name)
        .await
        .map_err(|_| ApiError::NotFound(format!("Model File Name NOT configured for {name}")))?;
    let form = read_upload(&state.config, &headers, body, &["file"]).await?;
    let upload = form.required_file("file")?;
    let refuse = |why: String| {
        ApiError::field(FieldError::new(
            "value_error",
            "body",
            "file",
            why,
            json!(upload.file_name),
        ))
    };
    let new_layout =
        weights::layout(std::fs::File::open(&upload.path)?, upload.size).map_err(refuse)?;
    let blobs = state.datastore.blob_store();
    let current_bytes = read_to_vec(blobs.as_ref(), &current.weights).await?;
    let current_layout = weights::layout(&current_bytes[..], current_bytes.len() as u64)
        .map_err(|why| ApiError::Internal(format!("model {name}'s current weights: {why}")))?;
    if let Some(why) = weights::mismatch(&current_layout, &new_layout) {
        return Err(refuse(why));
    }
    let weights = blobs.put_file(&upload.path, &current.weights.ext).await?;
    let published = state
        .models
        .publish(&ctx.write(None), &name, weights, current.config, None, None)
        .await?;
    Ok(Json(json!({
        "checksum": published.weights.checksum(),
        "modified_time": published.published_at_ms.div_euclid(1000),
    })))
}
