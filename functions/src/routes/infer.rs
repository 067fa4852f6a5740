//! The infer function: interactive inference and batch inference, through the runner.
//!
//! `POST /infer/{model}` reads the request (`image`, `session_id`, the multipart
//! `params`, `file` and `label`), hands it to the inference service
//! ([`crate::inference`]), which decides everything else, and shapes the reply as
//! `output` asks: `json`, `image`, `dicom_seg` (a DICOMweb datastore's image), or
//! (default) MONAI Label's multipart `params` + `image`. The whole-slide routes are in
//! [`wsi`].

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use medlabel_events::event::JobKind;
use medlabel_events::{ImageId, Info, ModelName, RunId};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::error::{ApiError, FieldError};
use crate::extract::{QueryParams, Segment, json_body, json_object, parse_id};
use crate::inference::{self, InferCommand, Inferred};
use crate::multipart::{Form, read_upload};
use crate::reply;
use crate::routes::train::{stop, task_status};
use crate::routes::{model_labels, wsi};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/infer/{model}", post(infer))
        .route("/infer/wsi/{model}", post(wsi::infer_wsi))
        .route("/infer/wsi_v2/{model}", post(wsi::infer_wsi_v2))
        .route("/batch/infer/{model}", post(batch_infer))
        .route("/batch/infer", get(batch_status).delete(batch_stop))
}

/// The replies MONAI Label's `output` parameter selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Json,
    Image,
    All,
    /// The mask as a DICOM SEG of the image's series (a DICOMweb datastore's image).
    DicomSeg,
}

fn output(query: &QueryParams) -> Result<Output, ApiError> {
    match query.get("output") {
        None | Some("") | Some("all") => Ok(Output::All),
        Some("json") => Ok(Output::Json),
        Some("image") => Ok(Output::Image),
        Some("dicom_seg") => Ok(Output::DicomSeg),
        Some(other) => Err(ApiError::field(FieldError::new(
            "enum",
            "query",
            "output",
            "Input should be 'image', 'json', 'all' or 'dicom_seg'",
            json!(other),
        ))),
    }
}

async fn infer(
    State(state): State<AppState>,
    ctx: Ctx,
    model: Segment,
    query: QueryParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let model = parse_id("path", "model", &model.0, ModelName::parse)?;
    let output = output(&query)?;
    if output == Output::DicomSeg && state.studies.is_none() {
        return Err(ApiError::field(FieldError::new(
            "value_error",
            "query",
            "output",
            "DICOM SEG output needs a DICOMweb datastore (medlabel serve --studies URL)",
            json!("dicom_seg"),
        )));
    }
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/"));
    let form = if is_multipart {
        read_upload(&state.config, &headers, body, &["file", "label"]).await?
    } else {
        Form::default()
    };
    let image = match query.get("image").filter(|s| !s.is_empty()) {
        Some(id) => Some(parse_id("query", "image", id, ImageId::parse)?),
        None => None,
    };
    let command = InferCommand {
        model: model.clone(),
        // An id that is not one is as unknown as an id of no session: ignored.
        session: query.get("session_id").and_then(|s| RunId::parse(s).ok()),
        image,
        file: form.file("file"),
        label: form.file("label"),
        params: json_object("body", "params", form.text("params").unwrap_or("{}"))?,
    };
    let Inferred { result, image } = inference::infer(&state, &ctx, command).await?;

    if output == Output::DicomSeg {
        let (Some(studies), Some(file)) = (&state.studies, &result.file) else {
            return Err(ApiError::Internal(
                "the runner returned no result file".into(),
            ));
        };
        let Some((image, record)) = image.filter(|(_, r)| r.fetched.is_some()) else {
            return Err(ApiError::field(FieldError::new(
                "value_error",
                "query",
                "image",
                "DICOM SEG output needs an image of the DICOMweb datastore",
                Value::Null,
            )));
        };
        let labels = model_labels(&state, Some(model.as_str())).await;
        let seg = studies
            .result_seg(
                &record,
                (file, &result.file_name),
                &result.params,
                model.as_str(),
                &labels,
            )
            .await?;
        return Ok(reply::bytes_file(&format!("{image}.dcm"), seg));
    }
    let result_json = Value::Object(result.params);
    match (output, result.file) {
        (Output::Json, _) | (Output::All, None) => Ok(Json(result_json).into_response()),
        (Output::Image, None) | (Output::DicomSeg, _) => Err(ApiError::Internal(
            "the runner returned no result file".into(),
        )),
        (Output::Image, Some(file)) => {
            let bytes = tokio::fs::read(&file).await?;
            Ok(reply::bytes_file(&result.file_name, bytes))
        }
        (Output::All, Some(file)) => {
            let bytes = tokio::fs::read(&file).await?;
            Ok(reply::infer_multipart(
                &result_json,
                &result.file_name,
                bytes,
            ))
        }
    }
}

/// MONAI Label's batch-infer defaults when the request has no body.
fn batch_defaults() -> Info {
    match json!({"device": "cuda", "multi_gpu": true, "gpus": "all", "logging": "WARNING",
                 "save_label": true, "label_tag": "original", "max_workers": 1,
                 "max_batch_size": 0})
    {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

async fn batch_infer(
    State(state): State<AppState>,
    ctx: Ctx,
    model: Segment,
    query: QueryParams,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let model = parse_id("path", "model", &model.0, ModelName::parse)?;
    let images = query.get("images").unwrap_or("all");
    if !["all", "labeled", "unlabeled"].contains(&images) {
        return Err(ApiError::field(FieldError::new(
            "enum",
            "query",
            "images",
            "Input should be 'all', 'labeled' or 'unlabeled'",
            json!(images),
        )));
    }
    let mut params = json_body(body).await?;
    if params.is_empty() {
        params = batch_defaults();
    }
    params.insert("images".into(), json!(images));
    if query.bool("run_sync", false)? {
        params.insert("run_sync".into(), json!(true));
    }
    Ok(Json(
        state
            .runner
            .start(
                &ctx.write(None),
                JobKind::BatchInfer,
                model.as_str(),
                params,
            )
            .await?,
    ))
}

async fn batch_status(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    task_status(&state, JobKind::BatchInfer, &query).await
}

async fn batch_stop(State(state): State<AppState>, ctx: Ctx) -> Result<Json<Value>, ApiError> {
    stop(&state, &ctx, JobKind::BatchInfer).await
}
