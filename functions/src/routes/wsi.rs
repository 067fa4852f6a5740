//! Whole-slide (pathology) inference: `POST /infer/wsi/{model}` (JSON body, deprecated in
//! MONAI Label) and `POST /infer/wsi_v2/{model}` (multipart: a `wsi` JSON string and an
//! optional `file`), both part of the infer function.
//!
//! medlabel's runner segments 3D volumes and has no slide reader, so no model it serves
//! can take a region of a slide. These routes check a request as MONAI Label does (the
//! `output`, the `WSIInput` region, the image) and then refuse it plainly: an unknown
//! model is 404, as for `/infer/{model}`; a served one is 422 saying why. Nothing runs
//! and nothing is recorded.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use medlabel_events::{ImageId, Info, ModelName};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, FieldError};
use crate::extract::{QueryParams, Segment, json_body, json_object, parse_id};
use crate::inference::no_image;
use crate::multipart::read_upload;
use crate::state::AppState;

/// MONAI Label's `WSIInput`: which region of which pyramid level to segment, in tiles.
/// Missing fields take MONAI Label's defaults; unknown ones are ignored, as there.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct WsiInput {
    level: u32,
    location: [u64; 2],
    size: [u64; 2],
    tile_size: [u64; 2],
    min_poly_area: f64,
    params: Info,
}

impl Default for WsiInput {
    fn default() -> Self {
        Self {
            level: 0,
            location: [0, 0],
            size: [2048, 2048],
            tile_size: [1024, 1024],
            min_poly_area: 80.0,
            params: Info::new(),
        }
    }
}

/// `POST /infer/wsi/{model}`: the region comes as the JSON body.
pub async fn infer_wsi(
    State(state): State<AppState>,
    model: Segment,
    query: QueryParams,
    body: Body,
) -> Result<Response, ApiError> {
    let model = served_model(&state, &model, &query).await?;
    let input = wsi_input(json_body(body).await?)?;
    refuse(&state, &model, &query, &input, false).await
}

/// `POST /infer/wsi_v2/{model}`: the region comes as the multipart field `wsi`.
pub async fn infer_wsi_v2(
    State(state): State<AppState>,
    model: Segment,
    query: QueryParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let model = served_model(&state, &model, &query).await?;
    let form = read_upload(&state.config, &headers, body, &["file"]).await?;
    let input = wsi_input(json_object(
        "body",
        "wsi",
        form.text("wsi").unwrap_or("{}"),
    )?)?;
    refuse(&state, &model, &query, &input, form.file("file").is_some()).await
}

/// The model named in the path, if the runner serves it (404 otherwise), after checking
/// the `output` the reply should take.
async fn served_model(
    state: &AppState,
    model: &Segment,
    query: &QueryParams,
) -> Result<(ModelName, Value), ApiError> {
    let model = parse_id("path", "model", &model.0, ModelName::parse)?;
    match query.get("output") {
        None | Some("" | "asap" | "dsa" | "json") => {}
        Some(other) => {
            return Err(ApiError::field(FieldError::new(
                "enum",
                "query",
                "output",
                "Input should be 'asap', 'dsa' or 'json'",
                json!(other),
            )));
        }
    }
    let description = state.runner.describe().await?.models.remove(model.as_str());
    match description {
        Some(description) => Ok((model, description)),
        None => Err(ApiError::NotFound(format!("Model '{model}' NOT Found"))),
    }
}

fn wsi_input(fields: Info) -> Result<WsiInput, ApiError> {
    let invalid = |message: String, fields: Info| {
        ApiError::field(FieldError::new(
            "value_error",
            "body",
            "wsi",
            message,
            Value::Object(fields),
        ))
    };
    let input: WsiInput = match serde_json::from_value(Value::Object(fields.clone())) {
        Ok(input) => input,
        Err(err) => return Err(invalid(format!("Invalid WSIInput: {err}"), fields)),
    };
    if input.size.contains(&0) || input.tile_size.contains(&0) {
        return Err(invalid(
            "Invalid WSIInput: size and tile_size must be positive".into(),
            fields,
        ));
    }
    if !(input.min_poly_area.is_finite() && input.min_poly_area >= 0.0) {
        return Err(invalid(
            "Invalid WSIInput: min_poly_area must be a finite number ≥ 0".into(),
            fields,
        ));
    }
    Ok(input)
}

/// Checks the slide the request names, then says why no served model can segment it.
async fn refuse(
    state: &AppState,
    (model, description): &(ModelName, Value),
    query: &QueryParams,
    input: &WsiInput,
    uploaded: bool,
) -> Result<Response, ApiError> {
    let image = query.get("image").filter(|s| !s.is_empty());
    let session = query.get("session_id").filter(|s| !s.is_empty());
    match image {
        Some(id) => {
            let id = parse_id("query", "image", id, ImageId::parse)?;
            state.datastore.image(&id).await?;
        }
        None if !uploaded && session.is_none() => return Err(no_image()),
        None => {}
    }
    let dimension = description
        .get("dimension")
        .and_then(Value::as_u64)
        .map_or_else(|| "volumes".to_owned(), |d| format!("{d}D volumes"));
    Err(ApiError::field(FieldError::new(
        "value_error",
        "path",
        "model",
        format!(
            "Model '{model}' segments {dimension}; medlabel has no whole-slide reader, so it \
             cannot segment the level-{} region at {:?} of size {:?}",
            input.level, input.location, input.size
        ),
        json!(model),
    )))
}
