//! MONAI bundle import: a bundle folder or `.zip` (`configs/metadata.json`,
//! `configs/inference.json`, `models/model.pt` and/or `models/model.ts`) becomes a
//! runner model folder (`config.json` + weights), or an error that names what the
//! runner cannot reproduce.
//!
//! Like MONAI Label's bundle task, labels come from the first output's `channel_def` in
//! `metadata.json` (lower-cased, background left out), the pre/post-processing from the
//! `preprocessing`/`pre_transforms` and `postprocessing`/`post_transforms` entries, and
//! the window from `inferer`. Weights: with `models/model.pt` and a `network_def` the
//! runner builds ([`network::NATIVE`]), the state dict is read (never unpickled, see
//! [`crate::formats::state_dict`]), checked name by name against the native network and
//! stored as safetensors; otherwise `models/model.ts` is served through TorchScript.
//! Nothing in the bundle is executed: configs are evaluated by [`resolve`], which only
//! knows references, literals and arithmetic.
//!
//! A zip is read defensively: an entry whose name leaves the bundle (`..`, an absolute
//! path) fails the import, only `configs/*.json` and the two model files are extracted,
//! each within a size limit and with its compression ratio checked. JSON documents are
//! limited to [`MAX_JSON_BYTES`] and serde_json's nesting limit.

mod args;
mod network;
pub mod resolve;
mod transforms;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{Intensity, Layout, ModelConfig, WeightsFormat};
use crate::error::{Result, RunnerError};
use crate::formats::state_dict;
use crate::model::Model;
use crate::networks::{NetworkConfig, TorchScriptConfig, load_state_dict};
use crate::pipeline::Pipeline;
use args::Args;
use resolve::{Resolver, lookup};

/// Largest config document read.
pub const MAX_JSON_BYTES: u64 = 16 << 20;
/// Largest model file extracted from a zip.
pub const MAX_MODEL_BYTES: u64 = 8 << 30;
const MAX_DEFLATE_RATIO: u64 = 1100;

/// Import choices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BundleImport {
    /// Serve `models/model.ts` even when `model.pt` and a native network are there.
    pub prefer_torchscript: bool,
}

/// Reads a JSON document within the size limit.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let meta = std::fs::metadata(path).map_err(|e| RunnerError::io(path, e))?;
    if meta.len() > MAX_JSON_BYTES {
        return Err(RunnerError::invalid(format!(
            "{} is larger than {MAX_JSON_BYTES} bytes",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| RunnerError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| RunnerError::json(path.display().to_string(), e))
}

/// Imports the bundle at `bundle` (a folder or a `.zip`) into the model folder `out`
/// (created), and returns the model's config.
pub fn import(bundle: &Path, out: &Path, opts: &BundleImport) -> Result<ModelConfig> {
    std::fs::create_dir_all(out).map_err(|e| RunnerError::io(out, e))?;
    if bundle.is_file() {
        let staging = out.join(".bundle");
        let _ = std::fs::remove_dir_all(&staging);
        let result = extract(bundle, &staging).and_then(|root| import_dir(&root, out, opts));
        let _ = std::fs::remove_dir_all(&staging);
        result
    } else {
        import_dir(bundle, out, opts)
    }
}

/// Extracts what the importer reads from a bundle zip into `dest`; returns the bundle's
/// root there (zips usually hold one top folder named after the bundle).
fn extract(zip_path: &Path, dest: &Path) -> Result<PathBuf> {
    let what = zip_path.display().to_string();
    let file = std::fs::File::open(zip_path).map_err(|e| RunnerError::io(zip_path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| RunnerError::invalid(format!("{what}: not a zip archive ({e})")))?;
    let mut names = Vec::new();
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| RunnerError::invalid(format!("{what}: {e}")))?;
        let rel = entry.enclosed_name().ok_or_else(|| {
            RunnerError::invalid(format!(
                "{what}: entry {:?} points outside the bundle",
                entry.name()
            ))
        })?;
        names.push((i, rel));
    }
    let meta = names
        .iter()
        .map(|(_, p)| p)
        .filter(|p| p.ends_with("configs/metadata.json"))
        .min_by_key(|p| p.components().count())
        .ok_or_else(|| RunnerError::invalid(format!("{what}: no configs/metadata.json")))?;
    let root = meta
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    for (i, rel) in &names {
        let Ok(inside) = rel.strip_prefix(&root) else {
            continue;
        };
        let wanted = (inside.starts_with("configs")
            && inside.extension().is_some_and(|e| e == "json")
            && inside.components().count() == 2)
            || inside == Path::new("models/model.pt")
            || inside == Path::new("models/model.ts");
        if !wanted {
            continue;
        }
        let entry = zip
            .by_index(*i)
            .map_err(|e| RunnerError::invalid(format!("{what}: {e}")))?;
        let limit = if inside.starts_with("configs") {
            MAX_JSON_BYTES
        } else {
            MAX_MODEL_BYTES
        };
        let size = entry.size();
        if size > limit || size > entry.compressed_size().saturating_mul(MAX_DEFLATE_RATIO) + 4096 {
            return Err(RunnerError::invalid(format!(
                "{what}: entry {} is too large or too compressed ({size} bytes)",
                rel.display()
            )));
        }
        let path = dest.join(inside);
        let parent = path.parent().expect("a file path has a parent");
        std::fs::create_dir_all(parent).map_err(|e| RunnerError::io(parent, e))?;
        let mut f = std::fs::File::create(&path).map_err(|e| RunnerError::io(&path, e))?;
        let copied = std::io::copy(&mut entry.take(size + 1), &mut f)
            .map_err(|e| RunnerError::invalid(format!("{what}: {}: {e}", rel.display())))?;
        if copied != size {
            return Err(RunnerError::invalid(format!(
                "{what}: entry {} is not the size it declares",
                rel.display()
            )));
        }
    }
    Ok(dest.to_path_buf())
}

fn import_dir(root: &Path, out: &Path, opts: &BundleImport) -> Result<ModelConfig> {
    let configs = root.join("configs");
    if !configs.join("inference.json").is_file() {
        let why = if configs.join("inference.yaml").is_file() {
            "configs/inference.yaml is YAML, which the runner does not read: convert it to JSON"
        } else {
            "configs/inference.json is missing"
        };
        return Err(RunnerError::invalid(format!("{}: {why}", root.display())));
    }
    let meta = read_json(&configs.join("metadata.json"))?;
    let doc = read_json(&configs.join("inference.json"))?;
    let mut r = Resolver::new(&doc, "configs/inference.json", Some(root));

    // The pipeline first: what the runner cannot reproduce matters more than weights.
    let section = |r: &mut Resolver, keys: &[&str]| -> Result<Vec<(String, Value)>> {
        for k in keys {
            if let Some(items) = transforms::entries(r, k)? {
                return Ok(items);
            }
        }
        Ok(Vec::new())
    };
    let pre_items = section(&mut r, &["preprocessing", "pre_transforms"])?;
    let pre = transforms::pre(&mut r, &pre_items, "configs/inference.json preprocessing")?;
    let inferer_raw = r
        .raw("inferer")
        .cloned()
        .ok_or_else(|| RunnerError::invalid("configs/inference.json has no inferer"))?;
    let (roi_size, inferer) =
        transforms::inferer(&mut r, &inferer_raw, "configs/inference.json inferer")?;
    let post_items = section(&mut r, &["postprocessing", "post_transforms"])?;
    let post = transforms::post(&mut r, &post_items, "configs/inference.json postprocessing")?;

    let (in_channels, out_channels, divisor) = io_format(&meta)?;
    let labels = labels(&meta, out_channels)?;
    let pt = root.join("models/model.pt");
    let ts = root.join("models/model.ts");
    let native = match r.raw("network_def").cloned() {
        Some(raw) => {
            let mut a = Args::new(&raw, "configs/inference.json network_def", "network_def")?;
            let net = network::map(&mut a, &mut r).and_then(|n| a.finish().map(|()| n));
            Some(net)
        }
        None => None,
    };
    let use_native = pt.is_file() && !(opts.prefer_torchscript && ts.is_file());
    let network = match native {
        Some(Ok(net)) if use_native => net,
        Some(Err(e)) if !ts.is_file() => return Err(e),
        _ if ts.is_file() => NetworkConfig::TorchScript(TorchScriptConfig {
            in_channels,
            out_channels,
            size_divisor: divisor,
        }),
        _ => {
            return Err(RunnerError::invalid(format!(
                "{}: needs models/model.pt with a network_def, or models/model.ts",
                root.display()
            )));
        }
    };

    let torchscript = matches!(network, NetworkConfig::TorchScript(_));
    let mut intensity = pre.intensity;
    let config = ModelConfig {
        model_type: Default::default(),
        guidance: Default::default(),
        labels,
        spacing: pre.spacing.unwrap_or([1.0; 3]),
        intensity: if intensity.len() == 1 {
            intensity.remove(0)
        } else {
            Intensity::Chain { steps: intensity }
        },
        roi_size,
        network,
        format: if torchscript {
            WeightsFormat::Torchscript
        } else {
            WeightsFormat::Safetensors
        },
        layout: Layout::Xyz,
        pipeline: Pipeline {
            pre: pre.steps,
            inferer,
            post,
        },
    };
    config.validate()?;

    let device = tch::Device::Cpu;
    if torchscript {
        let dst = out.join(WeightsFormat::Torchscript.file_name());
        std::fs::copy(&ts, &dst).map_err(|e| RunnerError::io(&dst, e))?;
        config.save(out)?;
        // Proves the archive loads before anyone serves it.
        Model::load(out, device)?;
    } else {
        let model = Model::new(config.clone(), device)?;
        let weights = state_dict::read(&pt)?;
        load_state_dict(&model.vs, weights)
            .map_err(|e| RunnerError::invalid(format!("{}: {e}", pt.display())))?;
        model.save(out)?;
    }
    Ok(config)
}

/// Input channels, output channels and the size divisor `metadata.json` declares.
fn io_format(meta: &Value) -> Result<(i64, i64, [i64; 3])> {
    let first = |key: &str| -> Option<&Value> {
        lookup(meta, &format!("network_data_format#{key}"))
            .and_then(Value::as_object)
            .and_then(|m| m.values().next())
    };
    let input = first("inputs").ok_or_else(|| {
        RunnerError::invalid("configs/metadata.json has no network_data_format.inputs")
    })?;
    let output = first("outputs").ok_or_else(|| {
        RunnerError::invalid("configs/metadata.json has no network_data_format.outputs")
    })?;
    let in_channels = input
        .get("num_channels")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let out_channels = output
        .get("num_channels")
        .and_then(Value::as_i64)
        .or_else(|| {
            output
                .get("channel_def")
                .and_then(Value::as_object)
                .map(|m| m.len() as i64)
        })
        .ok_or_else(|| {
            RunnerError::invalid("configs/metadata.json: output num_channels is missing")
        })?;
    // `spatial_shape` entries such as "16*n" say what window sizes the network takes.
    let mut divisor = [1i64; 3];
    if let Some(shape) = input.get("spatial_shape").and_then(Value::as_array) {
        for (d, s) in divisor.iter_mut().zip(shape) {
            if let Some(k) = s
                .as_str()
                .and_then(|s| s.split('*').next())
                .and_then(|k| k.trim().parse().ok())
            {
                *d = k;
            }
        }
    }
    Ok((in_channels, out_channels, divisor))
}

/// MONAI Label's labels: `channel_def` of the first output, lower-cased, without
/// background; `class_<i>` when the bundle names none.
fn labels(meta: &Value, out_channels: i64) -> Result<BTreeMap<String, i64>> {
    let outputs = lookup(meta, "network_data_format#outputs").and_then(Value::as_object);
    let def = outputs
        .and_then(|m| m.values().next())
        .and_then(|o| o.get("channel_def"))
        .and_then(Value::as_object);
    let Some(def) = def else {
        return Ok((1..out_channels.max(2))
            .map(|i| (format!("class_{i}"), i))
            .collect());
    };
    let mut labels = BTreeMap::new();
    for (k, v) in def {
        let idx: i64 = k.parse().map_err(|_| {
            RunnerError::invalid(format!(
                "configs/metadata.json: channel_def key {k:?} is not a number"
            ))
        })?;
        let name = v.as_str().unwrap_or_default().to_lowercase();
        if name != "background" && !name.is_empty() {
            labels.insert(name, idx);
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_bundle(dir: &Path, inference: Value) {
        std::fs::create_dir_all(dir.join("configs")).unwrap();
        let meta = json!({"network_data_format": {
            "inputs": {"image": {"num_channels": 1, "spatial_shape": [96, 96, 96]}},
            "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "background", "1": "Spleen"}}}
        }});
        std::fs::write(dir.join("configs/metadata.json"), meta.to_string()).unwrap();
        std::fs::write(dir.join("configs/inference.json"), inference.to_string()).unwrap();
    }

    fn inference(pre_extra: Value) -> Value {
        json!({
            "image_key": "image",
            "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                "channels": [4, 8], "strides": [2], "num_res_units": 1, "norm": "batch"},
            "preprocessing": {"_target_": "Compose", "transforms": [
                {"_target_": "LoadImaged", "keys": "@image_key"},
                {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
                {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
                pre_extra
            ]},
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 4, "overlap": 0.5},
            "postprocessing": {"_target_": "Compose", "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": true},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image", "nearest_interp": false},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": true},
                {"_target_": "SaveImaged", "keys": "pred", "output_dtype": "$numpy.float32"}
            ]}
        })
    }

    #[test]
    fn a_bundle_without_weights_maps_its_pipeline_then_asks_for_weights() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(
            dir.path(),
            inference(
                json!({"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"}),
            ),
        );
        let err = import(
            dir.path(),
            &dir.path().join("out"),
            &BundleImport::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("models/model.pt"), "{err}");
    }

    #[test]
    fn unsupported_transforms_are_named_with_their_section() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(
            dir.path(),
            inference(json!({"_target_": "RandFlipd", "keys": "image", "prob": 0.5})),
        );
        let err = import(
            dir.path(),
            &dir.path().join("out"),
            &BundleImport::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                r#"unsupported transform "RandFlipd" in configs/inference.json preprocessing"#
            ),
            "{err}"
        );
        write_bundle(
            dir.path(),
            inference(
                json!({"_target_": "Spacingd", "keys": "image", "pixdim": 2.0, "mode": "bicubic"}),
            ),
        );
        let err = import(
            dir.path(),
            &dir.path().join("out"),
            &BundleImport::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("Spacingd") && err.contains("bicubic"), "{err}");
    }

    #[test]
    fn labels_follow_monai_label() {
        let meta = json!({"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "Spleen", "2": "liver"}}}}});
        assert_eq!(
            labels(&meta, 3).unwrap(),
            BTreeMap::from([("spleen".to_owned(), 1), ("liver".to_owned(), 2)])
        );
    }
}
