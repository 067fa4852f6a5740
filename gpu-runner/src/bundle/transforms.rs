//! A bundle's `preprocessing`, `inferer` and `postprocessing` as runner pipeline steps.
//!
//! Each MONAI transform maps to a [`PreStep`]/[`PostStep`] with the same effect, or is
//! skipped when it changes nothing the runner computes (loading, channel-first, type
//! conversions, key copies, saving). Anything else — random augmentations, `Lambdad`,
//! an option the runner does not implement — is refused at import time with the
//! transform's name and the section it is in, so a model is never served with a
//! pipeline that silently differs from its bundle's.

use serde_json::Value;

use super::args::Args;
use super::resolve::Resolver;
use crate::config::Intensity;
use crate::error::{Result, RunnerError};
use crate::pipeline::{Inferer, Interp, PostStep, PreStep};
use crate::sliding::{BlendMode, PadMode};

/// Transforms that leave the image as the runner holds it (a float volume with its
/// affine), so they are skipped; their arguments are not even evaluated.
const HARMLESS: [&str; 12] = [
    "LoadImaged",
    "LoadImage",
    "EnsureChannelFirstd",
    "EnsureChannelFirst",
    "AddChanneld",
    "EnsureTyped",
    "EnsureType",
    "ToTensord",
    "ToTensor",
    "CopyItemsd",
    "DeleteItemsd",
    "Identityd",
];

/// The raw transform entries of a section (`Compose`, a list, or references to them),
/// with their ids; `None` when the section is absent.
pub fn entries(r: &mut Resolver, key: &str) -> Result<Option<Vec<(String, Value)>>> {
    let Some(raw) = r.raw(key).cloned() else {
        return Ok(None);
    };
    let mut out = Vec::new();
    collect(r, &raw, key, &mut out, 0)?;
    Ok(Some(out))
}

fn collect(
    r: &mut Resolver,
    v: &Value,
    at: &str,
    out: &mut Vec<(String, Value)>,
    depth: usize,
) -> Result<()> {
    if depth > 16 {
        return Err(RunnerError::invalid(format!(
            "{at}: transforms nested too deeply"
        )));
    }
    match v {
        Value::String(s) if s.starts_with('@') => {
            let id = &s[1..];
            let inner = r
                .raw(id)
                .cloned()
                .ok_or_else(|| RunnerError::invalid(format!("{at}: @{id} refers to nothing")))?;
            collect(r, &inner, id, out, depth + 1)
        }
        Value::String(_) => {
            // An expression building the list (`$@a + @b`): evaluate it whole.
            let evaluated = r.eval(v, at)?;
            collect(r, &evaluated, at, out, depth + 1)
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect(r, item, &format!("{at}#{i}"), out, depth + 1)?;
            }
            Ok(())
        }
        Value::Object(m)
            if m.get("_target_")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("Compose")) =>
        {
            let transforms = m.get("transforms").cloned().unwrap_or(Value::Array(vec![]));
            collect(r, &transforms, &format!("{at}#transforms"), out, depth + 1)
        }
        Value::Object(_) => {
            out.push((at.to_owned(), v.clone()));
            Ok(())
        }
        other => Err(RunnerError::invalid(format!(
            "{at}: {other} is not a transform"
        ))),
    }
}

/// What the preprocessing section gives.
pub struct Pre {
    pub steps: Vec<PreStep>,
    pub spacing: Option<[f64; 3]>,
    pub intensity: Vec<Intensity>,
}

fn unsupported(a: &Args) -> RunnerError {
    RunnerError::invalid(format!(
        "unsupported transform {:?} in {}",
        a.target, a.context
    ))
}

fn triple<T: Copy + serde::de::DeserializeOwned>(v: Value, a: &Args, what: &str) -> Result<[T; 3]> {
    if let Ok(one) = serde_json::from_value::<T>(v.clone()) {
        return Ok([one; 3]);
    }
    serde_json::from_value::<[T; 3]>(v.clone())
        .map_err(|_| a.error(format!("{what} {v} is not one value or three")))
}

/// Maps the preprocessing entries.
pub fn pre(r: &mut Resolver, items: &[(String, Value)], context: &str) -> Result<Pre> {
    let mut out = Pre {
        steps: Vec::new(),
        spacing: None,
        intensity: Vec::new(),
    };
    let mut last_intensity: Option<usize> = None;
    for (at, raw) in items {
        let mut a = Args::new(raw, context, at)?;
        if a.disabled() || HARMLESS.contains(&a.target.as_str()) {
            continue;
        }
        a.ignore(&["keys", "allow_missing_keys"]);
        let intensity = match a.target.as_str() {
            "Orientationd" => {
                let ax: String = a.get_or(r, "axcodes", String::new())?;
                if ax != "RAS" {
                    return Err(a.error(format!("with axcodes {ax:?}: only RAS is supported")));
                }
                a.ignore(&["labels", "as_closest_canonical"]);
                out.steps.push(PreStep::Orientation);
                None
            }
            "Spacingd" => {
                let pixdim: Value = a.get(r, "pixdim")?.ok_or_else(|| a.error("needs pixdim"))?;
                let pixdim: [f64; 3] = triple(pixdim, &a, "pixdim")?;
                let mode: Value = a.get_or(r, "mode", Value::String("bilinear".into()))?;
                // One mode per key; the image is the first key.
                let mode = match &mode {
                    Value::Array(v) => v.first().cloned().unwrap_or(Value::Null),
                    m => m.clone(),
                };
                let mode = match mode.as_str() {
                    Some("bilinear") | Some("trilinear") => Interp::Bilinear,
                    Some("nearest") => Interp::Nearest,
                    _ => return Err(a.error(format!("with mode {mode}: only bilinear or nearest"))),
                };
                let padding: String = a.get_or(r, "padding_mode", "border".to_owned())?;
                if padding != "border"
                    || a.get_or(r, "align_corners", false)?
                    || a.get_or(r, "diagonal", false)?
                    || a.get_or(r, "scale_extent", false)?
                {
                    return Err(a.error("supports padding_mode border without align_corners, diagonal or scale_extent"));
                }
                a.ignore(&[
                    "dtype",
                    "recompute_affine",
                    "min_pixdim",
                    "max_pixdim",
                    "meta_keys",
                    "meta_key_postfix",
                ]);
                out.spacing = Some(pixdim);
                out.steps.push(PreStep::Spacing { mode });
                None
            }
            "ScaleIntensityRanged" => {
                let get = |a: &mut Args, r: &mut Resolver, k: &str| -> Result<f64> {
                    a.get(r, k)?.ok_or_else(|| a.error(format!("needs {k}")))
                };
                let i = Intensity::Ct {
                    a_min: get(&mut a, r, "a_min")?,
                    a_max: get(&mut a, r, "a_max")?,
                    b_min: get(&mut a, r, "b_min")?,
                    b_max: get(&mut a, r, "b_max")?,
                    clip: a.get_or(r, "clip", false)?,
                };
                a.ignore(&["dtype"]);
                Some(i)
            }
            "NormalizeIntensityd" => {
                if a.get::<Value>(r, "subtrahend")?.is_some()
                    || a.get::<Value>(r, "divisor")?.is_some()
                {
                    return Err(a.error("with a fixed subtrahend or divisor is not supported"));
                }
                let i = Intensity::Normalize {
                    nonzero: a.get_or(r, "nonzero", false)?,
                    channel_wise: a.get_or(r, "channel_wise", false)?,
                };
                a.ignore(&["dtype"]);
                Some(i)
            }
            "ScaleIntensityd" => {
                if a.get::<Value>(r, "factor")?.is_some() || a.get_or(r, "channel_wise", false)? {
                    return Err(a.error("with factor or channel_wise is not supported"));
                }
                let i = Intensity::Scale {
                    minv: a.get_or(r, "minv", 0.0)?,
                    maxv: a.get_or(r, "maxv", 1.0)?,
                };
                a.ignore(&["dtype"]);
                Some(i)
            }
            "CropForegroundd" => {
                if a.get::<Value>(r, "select_fn")?.is_some()
                    || a.get::<Value>(r, "channel_indices")?.is_some()
                {
                    return Err(a.error("with a select_fn or channel_indices is not supported"));
                }
                let margin: Value = a.get_or(r, "margin", Value::from(0))?;
                let k: Value = a.get_or(r, "k_divisible", Value::from(1))?;
                a.ignore(&[
                    "source_key",
                    "mode",
                    "start_coord_key",
                    "end_coord_key",
                    "allow_missing_keys",
                ]);
                out.steps.push(PreStep::CropForeground {
                    margin: triple(margin, &a, "margin")?,
                    k_divisible: triple(k, &a, "k_divisible")?,
                    allow_smaller: a.get_or(r, "allow_smaller", false)?,
                });
                None
            }
            _ => return Err(unsupported(&a)),
        };
        if let Some(i) = intensity {
            if last_intensity.is_some_and(|p| p + 1 != out.steps.len()) {
                return Err(a.error("follows a geometric transform that separates it from the other intensity transforms, which the runner does not support"));
            }
            if last_intensity.is_none() {
                out.steps.push(PreStep::Intensity);
            }
            last_intensity = Some(out.steps.len() - 1);
            out.intensity.push(i);
        }
        a.finish()?;
    }
    Ok(out)
}

/// Maps the `inferer` entry; the window size comes back separately.
pub fn inferer(r: &mut Resolver, raw: &Value, context: &str) -> Result<([i64; 3], Inferer)> {
    let mut a = Args::new(raw, context, "inferer")?;
    if a.target != "SlidingWindowInferer" {
        return Err(RunnerError::invalid(format!(
            "unsupported inferer {:?} in {context} (only SlidingWindowInferer)",
            a.target
        )));
    }
    let roi: Value = a
        .get(r, "roi_size")?
        .ok_or_else(|| a.error("needs roi_size"))?;
    let roi: [i64; 3] = triple(roi, &a, "roi_size")?;
    if roi.iter().any(|&v| v <= 0) {
        return Err(a.error(format!("roi_size {roi:?} must be positive")));
    }
    let defaults = Inferer::default();
    let mode: String = a.get_or(r, "mode", "constant".to_owned())?;
    let padding: String = a.get_or(r, "padding_mode", "constant".to_owned())?;
    let cval: f64 = a.get_or(r, "cval", 0.0)?;
    let inf = Inferer {
        sw_batch_size: a.get_or(r, "sw_batch_size", 1)?,
        overlap: a.get_or(r, "overlap", 0.25)?,
        mode: match mode.as_str() {
            "constant" => BlendMode::Constant,
            "gaussian" => BlendMode::Gaussian,
            other => return Err(a.error(format!("mode {other:?} is not supported"))),
        },
        sigma_scale: a.get_or(r, "sigma_scale", defaults.sigma_scale)?,
        padding: match (padding.as_str(), cval) {
            ("constant", 0.0) => PadMode::Constant,
            ("replicate", _) => PadMode::Replicate,
            _ => {
                return Err(a.error(format!(
                    "padding_mode {padding:?} (cval {cval}) is not supported"
                )));
            }
        },
    };
    a.ignore(&[
        "device",
        "sw_device",
        "progress",
        "cache_roi_weight_map",
        "cpu_thresh",
        "buffer_steps",
        "buffer_dim",
    ]);
    a.finish()?;
    Ok((roi, inf))
}

/// Maps the postprocessing entries, completing them as MONAI Label does: a result
/// always goes back to the input's grid, so a missing `Invertd` is added last.
pub fn post(r: &mut Resolver, items: &[(String, Value)], context: &str) -> Result<Vec<PostStep>> {
    let mut out = Vec::new();
    for (at, raw) in items {
        let mut a = Args::new(raw, context, at)?;
        if a.disabled() || HARMLESS.contains(&a.target.as_str()) || a.target == "SaveImaged" {
            continue;
        }
        a.ignore(&["keys", "allow_missing_keys"]);
        match a.target.as_str() {
            "Activationsd" => {
                let (softmax, sigmoid) = (
                    a.get_or(r, "softmax", false)?,
                    a.get_or(r, "sigmoid", false)?,
                );
                if a.get::<Value>(r, "other")?.is_some() {
                    return Err(a.error("with `other` is not supported"));
                }
                match (softmax, sigmoid) {
                    (true, false) => out.push(PostStep::Softmax),
                    (false, true) => out.push(PostStep::Sigmoid),
                    (false, false) => {}
                    _ => return Err(a.error("with both softmax and sigmoid")),
                }
            }
            "AsDiscreted" => {
                let argmax = a.get_or(r, "argmax", false)?;
                let threshold: Option<f64> = a.get(r, "threshold")?;
                if a.get::<Value>(r, "to_onehot")?.is_some()
                    || a.get::<Value>(r, "rounding")?.is_some()
                {
                    return Err(a.error("with to_onehot or rounding is not supported"));
                }
                a.ignore(&["dim", "keepdim", "dtype"]);
                match (argmax, threshold) {
                    (true, None) => out.push(PostStep::Argmax),
                    (false, Some(value)) => out.push(PostStep::Threshold { value }),
                    _ => return Err(a.error("needs exactly one of argmax and threshold")),
                }
            }
            "Invertd" => {
                let nearest = a.get_or(r, "nearest_interp", true)?;
                a.ignore(&[
                    "transform",
                    "orig_keys",
                    "meta_keys",
                    "orig_meta_keys",
                    "meta_key_postfix",
                    "to_tensor",
                    "device",
                    "post_func",
                ]);
                out.push(PostStep::Invert { nearest });
            }
            "KeepLargestConnectedComponentd" => {
                if a.get_or(r, "is_onehot", false)? || a.get_or(r, "num_components", 1)? != 1 {
                    return Err(a.error("supports label maps and num_components 1 only"));
                }
                let labels: Value = a.get_or(r, "applied_labels", Value::Array(vec![]))?;
                let applied_labels = match labels {
                    Value::Number(n) => vec![n.as_u64().unwrap_or(0) as u8],
                    v => serde_json::from_value(v)
                        .map_err(|_| a.error("applied_labels must be small integers"))?,
                };
                out.push(PostStep::KeepLargestComponent {
                    applied_labels,
                    independent: a.get_or(r, "independent", true)?,
                    connectivity: a.get_or(r, "connectivity", 3)?,
                });
            }
            _ => return Err(unsupported(&a)),
        }
        a.finish()?;
    }
    if !out.iter().any(|s| matches!(s, PostStep::Invert { .. })) {
        out.push(PostStep::Invert { nearest: true });
    }
    Ok(out)
}
