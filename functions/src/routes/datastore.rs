//! The datastore function: MONAI Label's `/datastore/*` routes over the event-sourced
//! [`Datastore`](medlabel_events::datastore::Datastore).
//!
//! Parameter names follow MONAI Label exactly, quirks included: deletes take `id`,
//! HEAD on a label takes `image` while GET takes `label`, and the Python client uploads
//! with `PUT /datastore/` (the alias). Ids are validated before anything is read or
//! stored; uploads are spooled to disk and stored as blobs before their event.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use medlabel_events::datastore::{DatastoreView, StudiesFolder};
use medlabel_events::event::DataRead;
use medlabel_events::id::split_file_name;
use medlabel_events::{Extension, ImageId, Info, Tag};
use serde_json::{Value, json};
use tokio_util::io::ReaderStream;

use crate::audit;
use crate::context::Ctx;
use crate::downloads::{self, Downloads};
use crate::error::{ApiError, FieldError};
use crate::extract::{
    MAX_JSON_BYTES, QueryParams, is_urlencoded, json_object, parse_id, urlencoded_fields,
};
use crate::multipart::{Upload, read_form, read_upload};
use crate::reply;
use crate::routes::{client_id, image_path, image_volume, model_labels, path_text};
use crate::state::AppState;
use crate::volumes::{check_image, check_label};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/datastore/",
            get(datastore).put(upload_image).delete(remove_image),
        )
        .route(
            "/datastore/image",
            get(download_image)
                .head(image_exists)
                .put(upload_image)
                .delete(remove_image),
        )
        .route(
            "/datastore/image/info",
            get(image_info).put(update_image_info),
        )
        .route(
            "/datastore/label",
            get(download_label)
                .head(label_exists)
                .put(save_label)
                .delete(remove_label),
        )
        .route(
            "/datastore/label/info",
            get(label_info).put(update_label_info),
        )
        .route("/datastore/updatelabelinfo", put(update_label_info_legacy))
        .route("/datastore/dataset", get(dataset))
        .merge(super::upload::router())
}

async fn datastore(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    match query.get("output").unwrap_or("stats") {
        "stats" => Ok(Json(json!(state.datastore.status().await?))),
        "all" => Ok(Json(state.datastore.json().await?)),
        "train" => {
            let list = match &state.studies_folder {
                Some(folder) => {
                    let pairs = {
                        let view = state.datastore.view().await?;
                        studies_datalist(folder, &view)
                    };
                    folder.settled(state.datastore.position()).await;
                    pairs
                }
                None => state.datastore.datalist(&Tag::final_tag()).await?,
            };
            Ok(Json(json!(
                list.into_iter()
                    .map(|(image, label)| json!({"image": image, "label": label}))
                    .collect::<Vec<_>>()
            )))
        }
        other => Err(ApiError::field(FieldError::new(
            "enum",
            "query",
            "output",
            "Input should be 'stats', 'all' or 'train'",
            json!(other),
        ))),
    }
}

/// MONAI Label's `datalist`: the studies-folder files of every image with a final
/// label and of that label.
fn studies_datalist(folder: &StudiesFolder, view: &DatastoreView) -> Vec<(String, String)> {
    let tag = Tag::final_tag();
    view.labeled_images(&tag, &[])
        .iter()
        .filter_map(|id| {
            let record = view.image(id)?;
            let label = record.labels.get(&tag)?.latest();
            Some((
                path_text(&folder.image_path(id, &record.ext)),
                path_text(&folder.label_path(id, &tag, &label.ext)),
            ))
        })
        .collect()
}

/// The id and extension an upload gets: the `image` query when given, otherwise the
/// upload's base name minus its suffixes (MONAI Label's rule).
fn upload_name(upload: &Upload, explicit: Option<&str>) -> Result<(ImageId, Extension), ApiError> {
    let (derived, ext) = split_file_name(&upload.file_name).map_err(|err| {
        ApiError::field(FieldError::invalid_id(
            "body",
            upload.field.as_str(),
            &upload.file_name,
            &err,
        ))
    })?;
    match explicit.filter(|s| !s.is_empty()) {
        Some(id) => Ok((
            crate::extract::parse_id("query", "image", id, ImageId::parse)?,
            ext,
        )),
        None => Ok((derived, ext)),
    }
}

fn params_field(form: &crate::multipart::Form, name: &str) -> Result<Info, ApiError> {
    json_object("body", name, form.text(name).unwrap_or("{}"))
}

async fn upload_image(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    // Validate the explicit id before reading a possibly huge body.
    if let Some(id) = query.get("image").filter(|s| !s.is_empty()) {
        crate::extract::parse_id("query", "image", id, ImageId::parse)?;
    }
    let form = read_upload(&state.config, &headers, body, &["file"]).await?;
    let upload = form.required_file("file")?;
    let (image, ext) = upload_name(upload, query.get("image"))?;
    let info = params_field(&form, "params")?;
    check_image(&upload.path, &ext, "file", &upload.file_name).await?;
    let write = ctx.write(client_id(&info));
    let id = state
        .datastore
        .add_image(&write, &image, &upload.path, &ext, info)
        .await?;
    Ok(Json(json!({"image": id})))
}

async fn remove_image(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let image = query.image_id("id")?;
    state
        .datastore
        .remove_image(&ctx.write(None), &image)
        .await?;
    Ok(Json(json!({})))
}

/// Accepts MONAI Label's `SHA256:<hex>` and the bare hex its clients send.
fn checksum_matches(expected: &str, sha256: &str) -> bool {
    let hex = expected
        .strip_prefix("SHA256:")
        .or_else(|| expected.strip_prefix("sha256:"))
        .unwrap_or(expected);
    hex.eq_ignore_ascii_case(sha256)
}

async fn image_exists(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let image = query.image_id("image")?;
    let found = state
        .datastore
        .view()
        .await?
        .image(&image)
        .is_some_and(|r| {
            query
                .get("check_sum")
                .filter(|s| !s.is_empty())
                .is_none_or(|sum| checksum_matches(sum, &r.blob.sha256))
        });
    if found {
        Ok(Json(json!({})).into_response())
    } else {
        Err(ApiError::NotFound(
            "Image NOT Found or is a directory".into(),
        ))
    }
}

async fn download_image(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let image = query.image_id("image")?;
    let record = image_volume(&state, &image)
        .await
        .map_err(|err| match err {
            ApiError::NotFound(_) => ApiError::NotFound("Image NOT Found or is a directory".into()),
            other => other,
        })?;
    let read = DataRead::Image {
        image: image.clone(),
    };
    downloads::blob_reply(
        &state,
        &ctx,
        &headers,
        &record.file_name(&image),
        &record.blob,
        Some(read),
        "image",
    )
    .await
}

/// Image info with `path`, where MONAI Label gives the file's place in the studies
/// folder; `{}` for an unknown image.
async fn image_info(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let image = query.image_id("image")?;
    let Some(record) = state.datastore.view().await?.image(&image).cloned() else {
        return Ok(Json(json!({})));
    };
    let mut info = record.info.clone();
    let path = image_path(&state, &ctx, &image, &record).await?;
    info.insert("path".into(), json!(path));
    Ok(Json(Value::Object(info)))
}

/// A form field sent url-encoded or as multipart (FastAPI's `Form` takes both).
async fn form_field(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    name: &str,
) -> Result<Info, ApiError> {
    let text = if is_urlencoded(headers) {
        urlencoded_fields(body).await?.get(name).map(str::to_owned)
    } else {
        let form = read_form(
            headers,
            body,
            &[],
            MAX_JSON_BYTES as u64,
            &state.config.temp_dir,
        )
        .await?;
        form.text(name).map(str::to_owned)
    };
    let text = text.ok_or_else(|| ApiError::field(FieldError::missing("body", name)))?;
    json_object("body", name, &text)
}

async fn update_image_info(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let image = query.image_id("image")?;
    let mut info = form_field(&state, &headers, body, "info").await?;
    let write = ctx.write(client_id(&info));
    // MONAI Label records who changed the image info, over whatever the client sent.
    info.insert("user".into(), json!(ctx.user));
    state
        .datastore
        .update_image_info(&write, &image, info)
        .await?;
    Ok(Json(Value::Null))
}

async fn save_label(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let image = query.image_id("image")?;
    let tag = query.tag("tag")?;
    // Refuse an unknown image before reading the upload (the label is checked against
    // the image's grid: a DICOMweb series is fetched for that).
    let record = image_volume(&state, &image).await?;
    let form = read_upload(&state.config, &headers, body, &["label"]).await?;
    let upload = form.required_file("label")?;
    let (_, ext) = upload_name(upload, None)?;
    let info = params_field(&form, "params")?;
    let checked = check_label(
        &state,
        (&image, &record),
        &upload.path,
        &ext,
        "label",
        &upload.file_name,
    )
    .await?;
    let (file, ext) = checked.file(&upload.path, &ext);
    let write = ctx.write(client_id(&info));
    // `{"annotator_tag": true}` keeps this annotator's label apart from everyone's:
    // under a tag named after the annotator, for agreement scoring and a reviewer's
    // `final`. With auth on the annotator is the authenticated user, and the tag stays
    // theirs (below); with auth off, the client instance (or the user).
    let annotator_tag = info.get("annotator_tag").and_then(Value::as_bool) == Some(true);
    let tag = match (annotator_tag, &ctx.principal) {
        (true, Some(_)) => parse_id("body", "annotator_tag", ctx.user.as_str(), Tag::parse)?,
        (true, None) => {
            let owner = client_id(&info)
                .map(str::to_owned)
                .unwrap_or_else(|| ctx.user.to_string());
            parse_id("body", "client_id", &owner, Tag::parse)?
        }
        (false, _) => tag,
    };
    if ctx.principal.is_some() {
        check_annotator_tag(&state, &ctx, &image, &tag).await?;
    }
    // A final label of a DICOMweb series goes to the PACS as a DICOM SEG first; the
    // guard keeps the poller from recording that SEG again until this label is.
    let mut info = info;
    let mut _seg = None;
    if let Some(studies) = &state.studies
        && record.fetched.is_some()
        && tag == Tag::final_tag()
    {
        let labels = model_labels(&state, None).await;
        let (seg_info, guard) = studies
            .store_label(&record, (file, ext.as_str()), &info, &labels)
            .await?;
        info.extend(seg_info);
        _seg = Some(guard);
    }
    state
        .datastore
        .save_label(&write, &image, &tag, file, ext, info)
        .await?;
    Ok(Json(json!({"image": image, "label": image})))
}

/// With auth on, a label saved with `annotator_tag` belongs to the subject who saved its
/// first version: nobody else may save over it, whatever tag name they send (a renamed
/// account or a namesake from the identity provider included).
async fn check_annotator_tag(
    state: &AppState,
    ctx: &Ctx,
    image: &ImageId,
    tag: &Tag,
) -> Result<(), ApiError> {
    let view = state.datastore.view().await?;
    let Some(first) = view.label(image, tag).and_then(|l| l.versions.first()) else {
        return Ok(());
    };
    let owned = first.info.get("annotator_tag").and_then(Value::as_bool) == Some(true);
    if owned && !first.saved_by.same_caller(&ctx.actor(None)) {
        return Err(ApiError::Forbidden(format!(
            "Label tag \"{tag}\" belongs to another annotator"
        )));
    }
    Ok(())
}

async fn remove_label(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let image = query.image_id("id")?;
    let tag = query.required_tag("tag")?;
    state
        .datastore
        .remove_label(&ctx.write(None), &image, &tag)
        .await?;
    Ok(Json(json!({})))
}

async fn label_exists(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let image = query.image_id("image")?;
    let tag = query.required_tag("tag")?;
    if state.datastore.view().await?.label(&image, &tag).is_some() {
        Ok(Json(json!({})))
    } else {
        Err(ApiError::NotFound(
            "Label NOT Found or is a directory".into(),
        ))
    }
}

async fn download_label(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let image = query.image_id("label")?;
    let tag = query.required_tag("tag")?;
    let record = state.datastore.label(&image, &tag).await?;
    let latest = record.latest();
    let read = DataRead::Label {
        image: image.clone(),
        tag,
        version: latest.version,
    };
    downloads::blob_reply(
        &state,
        &ctx,
        &headers,
        &format!("{image}{}", latest.ext),
        &latest.blob,
        Some(read),
        "label",
    )
    .await
}

async fn label_info(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let image = query.image_id("label")?;
    let tag = query.required_tag("tag")?;
    let info = state.datastore.get_label_info(&image, &tag).await?;
    Ok(Json(Value::Object(info.unwrap_or_default())))
}

async fn update_label(
    state: AppState,
    ctx: Ctx,
    query: QueryParams,
    headers: HeaderMap,
    body: Body,
    field: &str,
) -> Result<Json<Value>, ApiError> {
    let image = query.image_id("label")?;
    let tag = query.required_tag("tag")?;
    let mut info = form_field(&state, &headers, body, field).await?;
    let write = ctx.write(client_id(&info));
    // MONAI Label records who changed the label info, over whatever the client sent.
    info.insert("user".into(), json!(ctx.user));
    state
        .datastore
        .update_label_info(&write, &image, &tag, info)
        .await?;
    Ok(Json(Value::Null))
}

async fn update_label_info(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    update_label(state, ctx, query, headers, body, "info").await
}

async fn update_label_info_legacy(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    update_label(state, ctx, query, headers, body, "params").await
}

/// `dataset.zip` of the final-labelled cases, built for this request. A Lambda cannot
/// answer a large archive: it stores it as a blob and hands it out like a stored file
/// (the unreferenced blob goes with the next sweep); servers that stream send it.
async fn dataset(
    State(state): State<AppState>,
    ctx: Ctx,
    query: QueryParams,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let limit = usize::try_from(query.int("limit_cases", 0)?)
        .ok()
        .filter(|n| *n > 0);
    let dir = tempfile::Builder::new()
        .prefix("dataset-")
        .tempdir_in(&state.config.temp_dir)?;
    let path = state
        .datastore
        .get_dataset_archive(dir.path(), limit)
        .await?;
    // What the archive holds: the final-labelled cases of the view it was built from,
    // at most `limit` of them.
    let (position, labeled) = {
        let view = state.datastore.view().await?;
        let labeled = view.status().completed;
        (view.position, labeled)
    };
    let read = DataRead::Dataset {
        cases: limit.map_or(labeled, |n| labeled.min(n as u64)),
        as_of_position: position,
        limit: limit.map(|n| n as u64),
    };
    if let Downloads::Redirect { .. } = state.config.downloads {
        let zip = Extension::parse(".zip").expect("a valid extension");
        let blob = state.datastore.blob_store().put_file(&path, &zip).await?;
        return downloads::blob_reply(
            &state,
            &ctx,
            &request_headers,
            "dataset.zip",
            &blob,
            Some(read),
            "dataset",
        )
        .await;
    }
    let (file, ()) = tokio::try_join!(
        async { Ok::<_, ApiError>(tokio::fs::File::open(&path).await?) },
        audit::record(&state, &ctx, read, false, "dataset"),
    )?;
    let size = file.metadata().await?.len();
    // The open handle keeps the bytes readable after the directory is removed.
    drop(dir);
    let stream = ReaderStream::with_capacity(file, reply::DOWNLOAD_CHUNK);
    let mut response = Body::from_stream(stream).into_response();
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/zip"),
    );
    headers.insert(
        axum::http::header::CONTENT_DISPOSITION,
        reply::content_disposition("dataset.zip"),
    );
    headers.insert(axum::http::header::CONTENT_LENGTH, size.into());
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::checksum_matches;

    #[test]
    fn checksums_accept_both_notations() {
        let hex = "ab".repeat(32);
        assert!(checksum_matches(&hex, &hex));
        assert!(checksum_matches(&format!("SHA256:{hex}"), &hex));
        assert!(checksum_matches(&hex.to_uppercase(), &hex));
        assert!(!checksum_matches("SHA256:00", &hex));
    }
}
