//! The inference service: what `POST /infer/{model}` decides, apart from HTTP.
//!
//! The image comes from a session (unknown ids are ignored, as in MONAI Label), a
//! datastore id, or an uploaded file, in that order. Models run in the runner: uploaded
//! files reach it as blobs (a URI it can read), never as paths on this host. Scribbles
//! methods ([`scribbles`]) run here, on the image and the `label` upload. The result
//! carries MONAI Label's result JSON (the model's own `label_names`, `centroids`), an
//! NRRD mask gzip-encoded only when `result_compress` asks for it, and with
//! `save_label` the mask is saved to the datastore under `label_tag` (default
//! `original`) with info `{model, params}`. How the reply is shaped (`output`) is the
//! handler's business.

use medlabel_events::blob::{BlobRef, read_to_vec};
use medlabel_events::datastore::ImageRecord;
use medlabel_events::id::split_file_name;
use medlabel_events::{Extension, ImageId, Info, ModelName, RunId, Tag};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::error::{ApiError, FieldError};
use crate::extract::{parse_bool, parse_id};
use crate::multipart::Upload;
use crate::routes::{blob_uri, client_id, image_volume};
use crate::runner::{InferRequest, InferResult};
use crate::scribbles;
use crate::state::AppState;

/// One inference as a client asked for it.
pub struct InferCommand<'a> {
    pub model: ModelName,
    /// A session id as given; an id that names no live session is ignored.
    pub session: Option<RunId>,
    pub image: Option<ImageId>,
    /// The uploaded image (`file`).
    pub file: Option<&'a Upload>,
    /// The uploaded `label`: a scribbles labelmap, or a mask a model takes as input.
    pub label: Option<&'a Upload>,
    /// The request's `params`.
    pub params: Info,
}

/// What an inference produced.
pub struct Inferred {
    /// The mask file and MONAI Label's result JSON.
    pub result: InferResult,
    /// The datastore image it ran on, when it ran on one.
    pub image: Option<(ImageId, ImageRecord)>,
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

/// Where the image of an inference is: stored (a session's or a datastore image's
/// blob) or uploaded with the request.
enum ImageSource<'a> {
    Stored(BlobRef),
    Uploaded(&'a Upload),
}

/// Runs `command` (see the module docs).
pub async fn infer(
    state: &AppState,
    ctx: &Ctx,
    command: InferCommand<'_>,
) -> Result<Inferred, ApiError> {
    let InferCommand {
        model,
        session,
        image,
        file,
        label,
        mut params,
    } = command;
    // A scribbles method is no model: it has no labels of its own to report.
    let labels = if scribbles::is_method(model.as_str()) {
        None
    } else {
        let Some(described) = state.runner.describe().await?.models.remove(model.as_str()) else {
            return Err(ApiError::NotFound(format!("Model '{model}' NOT Found")));
        };
        Some(described["labels"].clone())
    };
    let save_label = params.get("save_label").is_some_and(is_true);
    let label_tag = match params.get("label_tag").and_then(Value::as_str) {
        Some(tag) if !tag.is_empty() => parse_id("body", "label_tag", tag, Tag::parse)?,
        _ => Tag::original(),
    };
    let (source, datastore_image) =
        resolve_image(state, ctx, session, image, file, &params).await?;

    let mut result = match labels {
        None => run_scribbles(state, source, label, &params).await?,
        Some(_) => {
            let image_uri = match source {
                ImageSource::Stored(blob) => blob_uri(state, &blob).await?,
                ImageSource::Uploaded(upload) => upload_uri(state, upload).await?,
            };
            let label = match label {
                Some(upload) => Some(upload_uri(state, upload).await?),
                None => None,
            };
            params.insert("model".into(), json!(model));
            let image_param = match &datastore_image {
                Some((id, _)) => id.to_string(),
                None => image_uri.clone(),
            };
            params.insert("image".into(), json!(image_param));
            let request = InferRequest {
                model: model.to_string(),
                image: image_uri,
                params: params.clone(),
                label,
            };
            state.runner.infer(request).await?
        }
    };
    // MONAI Label's result JSON: the model's own labels, as `/info/` lists them, and
    // `centroids` (empty unless the model finds some).
    if let Some(labels) = labels {
        result.params.insert("label_names".into(), labels);
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
    Ok(Inferred {
        result,
        image: datastore_image,
    })
}

/// A JSON flag as MONAI Label's clients send it: a boolean or its string.
pub(crate) fn is_true(value: &Value) -> bool {
    value
        .as_bool()
        .unwrap_or_else(|| value.as_str().and_then(parse_bool).unwrap_or(false))
}

/// Resolves the image: session, then datastore id, then uploaded file. Returns the
/// datastore id and record when the image is one.
async fn resolve_image<'a>(
    state: &AppState,
    ctx: &Ctx,
    session: Option<RunId>,
    image: Option<ImageId>,
    file: Option<&'a Upload>,
    params: &Info,
) -> Result<(ImageSource<'a>, Option<(ImageId, ImageRecord)>), ApiError> {
    if let Some(session) = session {
        let write = ctx.write_step(client_id(params), "session");
        if let Ok(session) = state.sessions.touch(&write, &session).await {
            return Ok((ImageSource::Stored(session.blob), None));
        }
    }
    if let Some(id) = image {
        let record = image_volume(state, &id).await?;
        return Ok((ImageSource::Stored(record.blob.clone()), Some((id, record))));
    }
    match file {
        Some(upload) => Ok((ImageSource::Uploaded(upload), None)),
        None => Err(no_image()),
    }
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

/// A scribbles method ([`scribbles`]), run here on the image and the `label` upload;
/// nothing is stored, so a refused request leaves no trace.
async fn run_scribbles(
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
    let compress = params.get("result_compress").is_some_and(is_true);
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&file)?;
        let recoded = medlabel_imaging::nrrd::recode_nrrd_bytes(&bytes, compress)
            .map_err(|err| ApiError::Internal(format!("the runner's NRRD result: {err}")))?;
        if let std::borrow::Cow::Owned(recoded) = recoded {
            std::fs::write(&file, recoded)?;
        }
        Ok::<_, ApiError>(())
    })
    .await
    .map_err(|err| ApiError::Internal(format!("NRRD re-encoding failed: {err}")))?
}
