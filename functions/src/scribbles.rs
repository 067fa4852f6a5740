//! Scribbles methods: MONAI Label's `Histogram+GraphCut`, answered in this process.
//!
//! An annotator paints foreground and background strokes into a labelmap (Slicer's
//! Scribbles panel sends it as the `label` upload of `POST /infer/{method}`, with
//! `roi`, `label_info` and `selected_label_name` in `params`); the method returns a
//! 0/1 mask of the object on the image's grid ([`medlabel_scribbles`]).
//!
//! It runs here, in the infer function, not in the GPU runner: it needs no model, no
//! torch and no GPU (pure Rust, one thread, 30–60 ms on a 256 × 256 × 128 CT at
//! MONAI Label's defaults, its graph bounded to 2²⁰ nodes ≈ 60 MiB), so the runner
//! would only add a hop, a copy of both volumes and a dependency on a warm endpoint. A
//! deployment without any model or runner (Lambda included) serves scribbles from the
//! first minute, which is what scribbles are for.
//!
//! `/info/` lists each method as MONAI Label's radiology app does: `type: scribbles`,
//! `dimension: 3`, `config` with the request keys it honours. The task has no labels,
//! so the stroke values are MONAI Label's defaults for that case, background 2 and
//! foreground 3, which a `label_info` entry named `background_scribbles` or
//! `foreground_scribbles` (as Slicer sends) overrides. Only `lamda`, `sigma`, `num_bins`,
//! `roi` and `label_info` are read from a request, as in MONAI Label; the window,
//! `pix_dim` and the graph budget are the method's own, so a client cannot make the
//! graph (and the memory it takes) larger.
//!
//! MONAI Label's other scribbles method, `GMM+GraphCut`, is not offered.

use std::collections::BTreeMap;
use std::time::Instant;

use medlabel_imaging::io::{read_volume_bytes_with_limits, write_result_bytes};
use medlabel_imaging::{DataType, ReadLimits, Volume};
use medlabel_scribbles::{ScribblesError, ScribblesParams, segment};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, FieldError};

/// MONAI Label's name for the histogram-likelihood graph cut.
pub const HISTOGRAM_GRAPHCUT: &str = "Histogram+GraphCut";

/// The keys of a request that reach [`ScribblesParams`].
const REQUEST_KEYS: [&str; 5] = ["lamda", "sigma", "num_bins", "roi", "label_info"];

/// OHIF's raw label upload: one `uint8` per voxel, in the image's voxel order.
const RAW_LABEL_EXT: &str = ".bin";

/// Whether `name` is a scribbles method (it then shadows any model of that name, as
/// MONAI Label's app registers scribbles after its models).
pub fn is_method(name: &str) -> bool {
    name == HISTOGRAM_GRAPHCUT
}

/// The scribbles methods, as `/info/` lists them under `models`.
pub fn describe() -> BTreeMap<String, Value> {
    let defaults = ScribblesParams::default();
    BTreeMap::from([(
        HISTOGRAM_GRAPHCUT.to_owned(),
        json!({
            "type": "scribbles",
            "labels": [],
            "dimension": 3,
            "description": "A post processing step with histogram-based GraphCut for Generic segmentation",
            "config": {"lamda": defaults.lamda, "sigma": defaults.sigma, "num_bins": defaults.num_bins},
        }),
    )])
}

/// A volume as it came: its bytes and a file name or extension that says the format.
pub struct VolumeFile {
    pub bytes: Vec<u8>,
    pub name: String,
}

/// What a scribbles request produced: the encoded mask and MONAI Label's result JSON.
pub struct Segmented {
    /// The mask, encoded as `ext`.
    pub mask: Vec<u8>,
    pub ext: String,
    pub params: Map<String, Value>,
}

/// Runs the method on `image` with the `scribbles` labelmap; the mask is encoded as
/// `result_extension` (default `.nii.gz`). Blocking: call it off the async threads.
/// Every refusal is a 422 naming the field at fault, before any result exists.
pub fn run(
    image: &VolumeFile,
    scribbles: &VolumeFile,
    request: &Map<String, Value>,
) -> Result<Segmented, ApiError> {
    let start = Instant::now();
    let params = params(request)?;
    let ext = result_extension(request)?;
    let limits = ReadLimits::default();
    let image = read_volume_bytes_with_limits(&image.bytes, &image.name, &limits)
        .map_err(|err| refused("query", "image", format!("the image cannot be read: {err}")))?;
    let scribbles = read_scribbles(scribbles, &image, &limits)?;
    let pre = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mask = segment(&image, &scribbles, &params).map_err(scribbles_error)?;
    let infer = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let bbox = bounding_box(&mask);
    let compress = request
        .get("result_compress")
        .is_some_and(crate::inference::is_true);
    let encoded = write_result_bytes(
        &mask.with_data(mask.data.iter().map(|&m| f32::from(m)).collect()),
        &ext,
        DataType::U8,
        compress,
    )
    .map_err(|err| ApiError::Internal(format!("scribbles mask: {err}")))?;
    let write = start.elapsed().as_secs_f64();

    let round = |s: f64| (s * 100.0).round() / 100.0;
    let Value::Object(result) = json!({
        "bbox": bbox,
        "label_names": [],
        "latencies": {
            "pre": round(pre), "infer": round(infer), "invert": 0.0, "post": 0.0,
            "write": round(write), "total": round(pre + infer + write), "transform": null,
        },
        "centroids": {},
    }) else {
        unreachable!("a JSON object literal")
    };
    Ok(Segmented {
        mask: encoded,
        ext,
        params: result,
    })
}

/// The request's [`ScribblesParams`]: [`REQUEST_KEYS`] over the method's defaults.
fn params(request: &Map<String, Value>) -> Result<ScribblesParams, ApiError> {
    let honoured: Map<String, Value> = request
        .iter()
        .filter(|(key, _)| REQUEST_KEYS.contains(&key.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let params: ScribblesParams = serde_json::from_value(Value::Object(honoured))
        .map_err(|err| refused("body", "params", format!("Value error, {err}")))?;
    params.validate().map_err(scribbles_error)?;
    Ok(params)
}

/// `result_extension` (default `.nii.gz`); one naming a format medlabel does not write
/// is refused rather than ignored.
fn result_extension(request: &Map<String, Value>) -> Result<String, ApiError> {
    match request.get("result_extension").and_then(Value::as_str) {
        None | Some("") => Ok(".nii.gz".to_owned()),
        Some(ext) if medlabel_imaging::io::Format::from_name(ext).is_ok() => Ok(ext.to_owned()),
        Some(ext) => Err(refused(
            "body",
            "params",
            format!(
                "Value error, result_extension {ext:?}: a scribbles mask is written as .nii.gz, .nii or .nrrd"
            ),
        )),
    }
}

/// The scribbles labelmap; a raw `.bin` upload is laid on the image's grid.
fn read_scribbles(
    file: &VolumeFile,
    image: &Volume<f32>,
    limits: &ReadLimits,
) -> Result<Volume<f32>, ApiError> {
    let unreadable = |why: String| refused("body", "label", format!("{}: {why}", file.name));
    if file.name.to_ascii_lowercase().ends_with(RAW_LABEL_EXT) {
        if file.bytes.len() != image.data.len() {
            return Err(unreadable(format!(
                "a raw label holds one byte per voxel: {} for the image's dims {:?}, but it has {}",
                image.data.len(),
                image.dims,
                file.bytes.len()
            )));
        }
        return Ok(image.with_data(file.bytes.iter().map(|&b| f32::from(b)).collect()));
    }
    read_volume_bytes_with_limits(&file.bytes, &file.name, limits)
        .map_err(|err| unreadable(err.to_string()))
}

/// MONAI's `generate_spatial_bounding_box` of the mask: `[start, end)` per axis, or
/// zeros when the mask is empty.
fn bounding_box(mask: &Volume<u8>) -> [[usize; 3]; 2] {
    let [nx, ny, _] = mask.dims;
    let (mut lo, mut hi) = ([usize::MAX; 3], [0; 3]);
    for (v, _) in mask.data.iter().enumerate().filter(|(_, m)| **m != 0) {
        let ijk = [v % nx, v / nx % ny, v / (nx * ny)];
        for a in 0..3 {
            lo[a] = lo[a].min(ijk[a]);
            hi[a] = hi[a].max(ijk[a] + 1);
        }
    }
    if lo[0] == usize::MAX {
        [[0; 3]; 2]
    } else {
        [lo, hi]
    }
}

fn refused(location: &str, field: &str, why: String) -> ApiError {
    ApiError::field(FieldError::new(
        "value_error",
        location,
        field,
        why,
        Value::Null,
    ))
}

/// Every refusal of the segmentation names the upload or parameter at fault.
fn scribbles_error(err: ScribblesError) -> ApiError {
    let field = match &err {
        ScribblesError::GridMismatch(_)
        | ScribblesError::NoForeground { .. }
        | ScribblesError::NoBackground { .. } => ("body", "label"),
        ScribblesError::InvalidParameter { .. } | ScribblesError::EmptyRoi { .. } => {
            ("body", "params")
        }
        ScribblesError::Image(_) => ("query", "image"),
    };
    refused(field.0, field.1, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use medlabel_imaging::IDENTITY;

    #[test]
    fn only_the_request_keys_monai_label_reads_are_honoured() {
        let Value::Object(request) = json!({
            "lamda": 2.5, "roi": [1, 5, 2, 6, 0, 3], "label_info": [{"name": "x", "id": 4}],
            "max_graph_voxels": 1u64 << 40, "pix_dim": null, "a_min": 0,
        }) else {
            unreachable!()
        };
        let p = params(&request).unwrap();
        assert_eq!(p.lamda, 2.5);
        assert_eq!(p.roi, Some([1, 5, 2, 6, 0, 3]));
        assert_eq!(p.label_info.len(), 1);
        let defaults = ScribblesParams::default();
        assert_eq!(p.max_graph_voxels, defaults.max_graph_voxels);
        assert_eq!(p.pix_dim, defaults.pix_dim);
        assert_eq!(p.a_min, defaults.a_min);
    }

    #[test]
    fn malformed_params_are_422() {
        for bad in [
            json!({"lamda": "strong"}),
            json!({"sigma": 0}),
            json!({"num_bins": 0}),
            json!({"roi": [1, 2, 3]}),
        ] {
            let Value::Object(request) = bad.clone() else {
                unreachable!()
            };
            let err = params(&request).unwrap_err();
            assert_eq!(err.status().as_u16(), 422, "{bad}");
        }
        let Value::Object(request) = json!({"result_extension": ".png"}) else {
            unreachable!()
        };
        assert_eq!(
            result_extension(&request).unwrap_err().status().as_u16(),
            422
        );
    }

    #[test]
    fn bounding_box_is_half_open_like_monai() {
        let mut mask = Volume::filled([4, 3, 2], IDENTITY, 0u8);
        assert_eq!(bounding_box(&mask), [[0; 3]; 2]);
        let at = mask.index(1, 2, 1);
        mask.data[at] = 1;
        let at = mask.index(3, 0, 1);
        mask.data[at] = 1;
        assert_eq!(bounding_box(&mask), [[1, 0, 1], [4, 3, 2]]);
    }
}
