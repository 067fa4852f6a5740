//! The info function: `/info/`, the model files, the API docs, and the viewer's
//! routes ([`super::viewer`]). `/info/` lists the runner's models and the scribbles
//! methods ([`crate::scribbles`]).

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
use crate::model_import::{self, ImportError, ModelImporter};
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
    let mut described = state.runner.describe().await?;
    // Scribbles need no model: every app has them, after (and over) its models.
    described.models.extend(crate::scribbles::describe());
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
    let labels = merged_labels(described.models.values());
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

/// MONAI Label's top-level `labels` of an app that names none: every model's labels in
/// model order, each model's by index (a `{name: index}` map) or as listed, each name once.
fn merged_labels<'a>(models: impl Iterator<Item = &'a Value>) -> Vec<String> {
    let mut merged: Vec<String> = Vec::new();
    for model in models {
        let names: Vec<&str> = match &model["labels"] {
            Value::Object(map) => {
                let mut by_index: Vec<(&String, &Value)> = map.iter().collect();
                by_index.sort_by(|a, b| {
                    let index = |v: &Value| v.as_f64().unwrap_or(f64::MAX);
                    index(a.1).total_cmp(&index(b.1))
                });
                by_index
                    .into_iter()
                    .map(|(name, _)| name.as_str())
                    .collect()
            }
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for name in names {
            if !merged.iter().any(|m| m == name) {
                merged.push(name.to_owned());
            }
        }
    }
    merged
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

/// MONAI Label's model upload: the file becomes the model's next version.
///
/// Safetensors (what `GET /model/{name}` hands out) keep the network config, once their
/// header proves them whole and shaped for the network; this needs nothing but the
/// file. A MONAI bundle zip (which may also bring a new model), a TorchScript archive
/// or a PyTorch state dict go through the runner's import, which proves the result
/// loads and answers with one channel per label ([`crate::model_import`]).
async fn upload_model(
    State(state): State<AppState>,
    ctx: Ctx,
    model: Segment,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let name = model_name(&model)?;
    let current = current_model(&state, &name).await.ok();
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
    let published = if is_zip(&upload.path)? {
        let importer = state.config.importer.as_ref().ok_or_else(|| {
            refuse(
                "bundles and TorchScript files are imported by the runner, which this \
                 deployment does not have here; use `medlabel publish-model`"
                    .into(),
            )
        })?;
        import_upload(
            &state,
            &ctx,
            importer,
            &name,
            current.as_ref(),
            &upload.path,
        )
        .await
        .map_err(|e| match e {
            ImportError::Refused(why) => refuse(why),
            other => ApiError::Internal(other.to_string()),
        })?
    } else {
        let current = current.ok_or_else(|| {
            ApiError::NotFound(format!("Model File Name NOT configured for {name}"))
        })?;
        let new_layout =
            weights::layout(std::fs::File::open(&upload.path)?, upload.size).map_err(refuse)?;
        let blobs = state.datastore.blob_store();
        let current_bytes = read_to_vec(blobs.as_ref(), &current.weights).await?;
        let current_layout = weights::layout(&current_bytes[..], current_bytes.len() as u64)
            .map_err(|why| refuse(format!("model {name} is not held as safetensors ({why}); upload a bundle or TorchScript file")))?;
        if let Some(why) = weights::mismatch(&current_layout, &new_layout) {
            return Err(refuse(why));
        }
        let weights = blobs.put_file(&upload.path, &current.weights.ext).await?;
        state
            .models
            .publish(&ctx.write(None), &name, weights, current.config, None, None)
            .await?
    };
    Ok(Json(json!({
        "checksum": published.weights.checksum(),
        "modified_time": published.published_at_ms.div_euclid(1000),
    })))
}

/// Whether the file starts as a zip does (bundles, TorchScript and state dicts all do).
fn is_zip(path: &std::path::Path) -> Result<bool, ApiError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path)?.read(&mut magic)?;
    Ok(read == 4 && magic == *b"PK\x03\x04")
}

/// Imports an uploaded zip with the runner (a weights-only file takes the current
/// model's config) and publishes the folder as `name`'s next version.
async fn import_upload(
    state: &AppState,
    ctx: &Ctx,
    importer: &ModelImporter,
    name: &ModelName,
    current: Option<&PublishedModel>,
    file: &std::path::Path,
) -> Result<PublishedModel, ImportError> {
    let blobs = state.datastore.blob_store();
    let like = match current {
        Some(model) => Some(
            model_import::current_config(blobs.as_ref(), model)
                .await
                .map_err(|e| ImportError::Failed(e.to_string()))?,
        ),
        None => None,
    };
    let folder = importer.import(file, like.as_deref()).await?;
    model_import::publish_folder(
        &state.models,
        blobs.as_ref(),
        &ctx.write(None),
        name,
        &folder.path(),
    )
    .await
    .map_err(|e| ImportError::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::merged_labels;
    use serde_json::json;

    #[test]
    fn top_level_labels_follow_model_order_and_label_indexes() {
        let models = [
            json!({"labels": {"spleen": 1, "aorta": 3, "liver": 2}}),
            json!({"labels": ["kidney", "liver"]}),
        ];
        assert_eq!(
            merged_labels(models.iter()),
            ["spleen", "liver", "aorta", "kidney"]
        );
    }
}
