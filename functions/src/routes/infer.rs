//! The infer function: interactive inference and batch inference, through the runner.
//!
//! The image comes from a session (`session_id`; unknown ids are ignored, as in MONAI
//! Label), a datastore id (`image`), or an uploaded `file`, in that order. Models run
//! in the runner: uploaded files reach it as blobs (a URI it can read), never as paths
//! on this host. Scribbles methods ([`scribbles`]) run here, on the image and the
//! `label` upload, and store nothing but what `save_label` asks for.
//! With `save_label` the mask is saved to the datastore under `label_tag` (default
//! `original`) with info `{model, params}`. The reply follows `output`: `json`, `image`,
//! or (default) MONAI Label's multipart `params` + `image`. The whole-slide routes are in
//! [`wsi`].

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use medlabel_events::blob::{BlobRef, read_to_vec};
use medlabel_events::datastore::ImageRecord;
use medlabel_events::event::JobKind;
use medlabel_events::id::split_file_name;
use medlabel_events::{Extension, ImageId, Info, ModelName, RunId, Tag};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::error::{ApiError, FieldError};
use crate::extract::{QueryParams, Segment, json_body, json_object, parse_bool, parse_id};
use crate::multipart::{Form, Upload, read_upload};
use crate::reply;
use crate::routes::train::{stop, task_status};
use crate::routes::{blob_uri, client_id, image_volume, model_labels, wsi};
use crate::runner::{InferRequest, InferResult};
use crate::scribbles;
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

/// MONAI Label's answer to an inference with neither an image, a file nor a session.
pub(crate) fn no_image() -> ApiError {
    ApiError::field(FieldError::new(
        "missing",
        "query",
        "image",
        "Neither Image nor File not Session ID input is provided",
        Value::Null,
    ))
}

/// Stores an uploaded file as a blob and returns a URI the runner can read.
async fn upload_uri(state: &AppState, upload: &Upload) -> Result<String, ApiError> {
    let ext = split_file_name(&upload.file_name)
        .map(|(_, ext)| ext)
        .unwrap_or_else(|_| Extension::parse("").expect("empty extension is valid"));
    let blob = state
        .datastore
        .blob_store()
        .put_file(&upload.path, &ext)
        .await?;
    blob_uri(state, &blob).await
}

/// Where the image of an inference is: stored (a session's or a datastore image's
/// blob) or uploaded with the request.
enum ImageSource<'a> {
    Stored(BlobRef),
    Uploaded(&'a Upload),
}

/// Resolves the image: session, then datastore id, then uploaded file. Returns the
/// datastore id and record when the image is one.
async fn resolve_image<'a>(
    state: &AppState,
    ctx: &Ctx,
    query: &QueryParams,
    form: &'a Form,
    params: &Info,
) -> Result<(ImageSource<'a>, Option<(ImageId, ImageRecord)>), ApiError> {
    if let Some(session) = query
        .get("session_id")
        .filter(|s| !s.is_empty())
        .and_then(|s| RunId::parse(s).ok())
    {
        let write = ctx.write_step(client_id(params), "session");
        if let Ok(session) = state.sessions.touch(&write, &session).await {
            return Ok((ImageSource::Stored(session.blob), None));
        }
    }
    if let Some(id) = query.get("image").filter(|s| !s.is_empty()) {
        let id = parse_id("query", "image", id, ImageId::parse)?;
        let record = image_volume(state, &id).await?;
        return Ok((ImageSource::Stored(record.blob.clone()), Some((id, record))));
    }
    match form.file("file") {
        Some(upload) => Ok((ImageSource::Uploaded(upload), None)),
        None => Err(no_image()),
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
    // A scribbles method is no model: it has no labels of its own to report.
    let described = if scribbles::is_method(model.as_str()) {
        None
    } else {
        let Some(described) = state.runner.describe().await?.models.remove(model.as_str()) else {
            return Err(ApiError::NotFound(format!("Model '{model}' NOT Found")));
        };
        Some(described)
    };
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/"));
    let form = if is_multipart {
        read_upload(&state.config, &headers, body, &["file", "label"]).await?
    } else {
        Form::default()
    };
    let mut params = json_object("body", "params", form.text("params").unwrap_or("{}"))?;
    let save_label = params.get("save_label").is_some_and(|v| {
        v.as_bool()
            .unwrap_or_else(|| v.as_str().and_then(parse_bool).unwrap_or(false))
    });
    let label_tag = match params.get("label_tag").and_then(Value::as_str) {
        Some(tag) if !tag.is_empty() => parse_id("body", "label_tag", tag, Tag::parse)?,
        _ => Tag::original(),
    };
    let (image, datastore_image) = resolve_image(&state, &ctx, &query, &form, &params).await?;

    let mut result = if described.is_none() {
        infer_scribbles(&state, image, form.file("label"), &params).await?
    } else {
        let image_uri = match image {
            ImageSource::Stored(blob) => blob_uri(&state, &blob).await?,
            ImageSource::Uploaded(upload) => upload_uri(&state, upload).await?,
        };
        let label = match form.file("label") {
            Some(upload) => Some(upload_uri(&state, upload).await?),
            None => None,
        };
        params.insert("model".into(), json!(model));
        params.insert(
            "image".into(),
            json!(
                datastore_image
                    .as_ref()
                    .map(|(id, _)| id.to_string())
                    .unwrap_or_else(|| image_uri.clone())
            ),
        );
        let request = InferRequest {
            model: model.to_string(),
            image: image_uri,
            params: params.clone(),
            label,
        };
        state.runner.infer(request).await?
    };
    // MONAI Label's result JSON: the model's own labels, as `/info/` lists them, and
    // `centroids` (empty unless the model finds some).
    if let Some(described) = &described {
        result
            .params
            .insert("label_names".into(), described["labels"].clone());
    }
    result
        .params
        .entry("centroids")
        .or_insert_with(|| json!({}));
    if let Some(file) = &result.file {
        encode_nrrd_as_asked(file, &result.file_name, &params).await?;
    }

    if save_label && let (Some((image, _)), Some(file)) = (&datastore_image, &result.file) {
        let ext = split_file_name(&result.file_name)
            .map(|(_, ext)| ext)
            .unwrap_or_else(|_| Extension::parse("").expect("empty extension is valid"));
        let mut info = Info::new();
        info.insert("model".into(), json!(model));
        info.insert("params".into(), Value::Object(result.params.clone()));
        let write = ctx.write_step(client_id(&params), "label");
        state
            .datastore
            .save_label(&write, image, &label_tag, file, &ext, info)
            .await?;
    }

    if output == Output::DicomSeg {
        let (Some(studies), Some(file)) = (&state.studies, &result.file) else {
            return Err(ApiError::Internal(
                "the runner returned no result file".into(),
            ));
        };
        let Some((image, record)) = datastore_image.filter(|(_, r)| r.fetched.is_some()) else {
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

/// A scribbles method ([`scribbles`]), run here on the image and the `label` upload;
/// nothing is stored, so a refused request leaves no trace.
async fn infer_scribbles(
    state: &AppState,
    image: ImageSource<'_>,
    label: Option<&Upload>,
    params: &Info,
) -> Result<InferResult, ApiError> {
    let label = label.ok_or_else(|| {
        ApiError::field(FieldError::new(
            "missing",
            "body",
            "label",
            "a scribbles method needs the scribbles labelmap as the `label` upload",
            Value::Null,
        ))
    })?;
    let image = match image {
        ImageSource::Stored(blob) => scribbles::VolumeFile {
            bytes: read_to_vec(state.datastore.blob_store().as_ref(), &blob).await?,
            name: blob.ext.as_str().to_owned(),
        },
        ImageSource::Uploaded(upload) => scribbles::VolumeFile {
            bytes: tokio::fs::read(&upload.path).await?,
            name: upload.file_name.clone(),
        },
    };
    let label = scribbles::VolumeFile {
        bytes: tokio::fs::read(&label.path).await?,
        name: label.file_name.clone(),
    };
    let request = params.clone();
    let segmented = tokio::task::spawn_blocking(move || scribbles::run(&image, &label, &request))
        .await
        .map_err(|err| ApiError::Internal(format!("scribbles: {err}")))??;
    let ext = &segmented.ext;
    let file = tempfile::Builder::new()
        .prefix("label")
        .suffix(ext)
        .tempfile_in(&state.config.temp_dir)?
        .into_temp_path();
    tokio::fs::write(&file, &segmented.mask).await?;
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("label{ext}"));
    Ok(InferResult {
        file: Some(file),
        file_name,
        params: segmented.params,
    })
}

/// An NRRD result is gzip-encoded only when `result_compress` asks for it, as MONAI
/// Label writes it (OHIF asks for raw NRRD; Slicer, asking nothing, gets raw too).
async fn encode_nrrd_as_asked(
    file: &std::path::Path,
    file_name: &str,
    params: &Info,
) -> Result<(), ApiError> {
    if !file_name.to_ascii_lowercase().ends_with(".nrrd") {
        return Ok(());
    }
    let compress = params.get("result_compress").is_some_and(|v| {
        v.as_bool()
            .unwrap_or_else(|| v.as_str().and_then(parse_bool).unwrap_or(false))
    });
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&file)?;
        let recoded = medlabel_imaging::nrrd::recode_nrrd_bytes(&bytes, compress)
            .map_err(|err| ApiError::Internal(format!("the runner's NRRD result: {err}")))?;
        if recoded != bytes {
            std::fs::write(&file, recoded)?;
        }
        Ok::<_, ApiError>(())
    })
    .await
    .map_err(|err| ApiError::Internal(format!("NRRD re-encoding failed: {err}")))?
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
