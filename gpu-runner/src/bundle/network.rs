//! A bundle's `network_def` as a runner [`NetworkConfig`]: `UNet`, `SegResNet` and
//! `DynUNet` with the arguments the native networks implement. Any other class, or an
//! argument value they do not implement, is an error naming it (the importer then falls
//! back to the bundle's TorchScript file when it has one).

use serde_json::Value;

use super::args::Args;
use super::resolve::Resolver;
use crate::error::Result;
use crate::networks::layers::{ActConfig, NormConfig};
use crate::networks::segresnet::UpsampleMode;
use crate::networks::{DynUNetConfig, NetworkConfig, SegResNetConfig};
use crate::unet::{Norm, UNetConfig};

/// The network classes built natively.
pub const NATIVE: [&str; 3] = ["UNet", "SegResNet", "DynUNet"];

/// Maps an evaluated-on-demand `network_def` entry.
pub fn map(a: &mut Args, r: &mut Resolver) -> Result<NetworkConfig> {
    let dims: i64 = a.get_or(r, "spatial_dims", 3)?;
    if dims != 3 {
        return Err(a.error(format!(
            "with spatial_dims {dims}: only 3D networks are served"
        )));
    }
    let net = match a.target.as_str() {
        "UNet" => unet(a, r)?,
        "SegResNet" => segresnet(a, r)?,
        "DynUNet" => dynunet(a, r)?,
        other => {
            return Err(a.error(format!(
                "is not built natively (only {NATIVE:?}); `{other}` needs models/model.ts"
            )));
        }
    };
    net.validate()?;
    Ok(net)
}

/// `("name", {args})`, `["name", {args}]` or `"name"` → lower-case name and args.
fn split(v: &Value) -> Option<(String, serde_json::Map<String, Value>)> {
    match v {
        Value::String(s) => Some((s.to_lowercase(), Default::default())),
        Value::Array(a) if !a.is_empty() && a.len() <= 2 => {
            let name = a[0].as_str()?.to_lowercase();
            let args = a
                .get(1)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            Some((name, args))
        }
        _ => None,
    }
}

fn norm(a: &Args, v: &Value, default_groups: Option<i64>) -> Result<NormConfig> {
    let bad = || a.error(format!("norm {v} is not instance, batch or group"));
    let (name, args) = split(v).ok_or_else(bad)?;
    let only = |allowed: &[&str]| -> Result<()> {
        match args.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(a.error(format!("norm argument `{k}` is not supported"))),
            None => Ok(()),
        }
    };
    match name.as_str() {
        "instance" => {
            only(&["affine"])?;
            Ok(NormConfig::Instance {
                affine: args.get("affine").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        "batch" => {
            only(&[])?;
            Ok(NormConfig::Batch)
        }
        "group" => {
            only(&["num_groups"])?;
            let groups = args
                .get("num_groups")
                .and_then(Value::as_i64)
                .or(default_groups);
            Ok(NormConfig::Group {
                groups: groups.ok_or_else(|| a.error("group norm without num_groups"))?,
            })
        }
        _ => Err(bad()),
    }
}

fn act(a: &Args, v: &Value) -> Result<ActConfig> {
    let bad = || a.error(format!("activation {v} is not relu, leakyrelu or prelu"));
    let (name, args) = split(v).ok_or_else(bad)?;
    let known = |allowed: &[&str]| -> Result<()> {
        match args.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(a.error(format!("activation argument `{k}` is not supported"))),
            None => Ok(()),
        }
    };
    match name.as_str() {
        "relu" => {
            known(&["inplace"])?;
            Ok(ActConfig::Relu)
        }
        "leakyrelu" => {
            known(&["inplace", "negative_slope"])?;
            Ok(ActConfig::LeakyRelu {
                negative_slope: args
                    .get("negative_slope")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.01),
            })
        }
        "prelu" => {
            known(&[])?;
            Ok(ActConfig::Prelu)
        }
        _ => Err(bad()),
    }
}

fn unet(a: &mut Args, r: &mut Resolver) -> Result<NetworkConfig> {
    let k: i64 = a.get_or(r, "kernel_size", 3)?;
    let uk: i64 = a.get_or(r, "up_kernel_size", 3)?;
    if k != 3 || uk != 3 {
        return Err(a.error("with kernel sizes other than 3 is not supported"));
    }
    let act_v: Value = a.get_or(r, "act", Value::String("prelu".into()))?;
    if act(a, &act_v)? != ActConfig::Prelu {
        return Err(a.error("supports act PRELU only"));
    }
    let norm_v: Value = a.get_or(r, "norm", Value::String("instance".into()))?;
    let norm = match norm(a, &norm_v, None)? {
        NormConfig::Instance { affine: false } => Norm::Instance,
        NormConfig::Batch => Norm::Batch,
        other => return Err(a.error(format!("supports instance or batch norm, not {other:?}"))),
    };
    if !a.get_or(r, "bias", true)? || a.get_or(r, "adn_ordering", "NDA".to_owned())? != "NDA" {
        return Err(a.error("supports bias=True and adn_ordering NDA only"));
    }
    let cfg = UNetConfig {
        spatial_dims: 3,
        in_channels: a
            .get(r, "in_channels")?
            .ok_or_else(|| a.error("needs in_channels"))?,
        out_channels: a
            .get(r, "out_channels")?
            .ok_or_else(|| a.error("needs out_channels"))?,
        channels: a
            .get(r, "channels")?
            .ok_or_else(|| a.error("needs channels"))?,
        strides: a
            .get(r, "strides")?
            .ok_or_else(|| a.error("needs strides"))?,
        num_res_units: a.get_or(r, "num_res_units", 0)?,
        norm,
        dropout: a.get_or(r, "dropout", 0.0)?,
    };
    Ok(NetworkConfig::UNet(cfg))
}

fn segresnet(a: &mut Args, r: &mut Resolver) -> Result<NetworkConfig> {
    let mut cfg = SegResNetConfig::new(
        a.get_or(r, "in_channels", 1)?,
        a.get_or(r, "out_channels", 2)?,
    );
    cfg.init_filters = a.get_or(r, "init_filters", cfg.init_filters)?;
    cfg.blocks_down = a.get_or(r, "blocks_down", cfg.blocks_down)?;
    cfg.blocks_up = a.get_or(r, "blocks_up", cfg.blocks_up)?;
    cfg.dropout = a.get_or(r, "dropout_prob", 0.0)?;
    let groups: i64 = a.get_or(r, "num_groups", 8)?;
    let norm_name: String = a.get_or(r, "norm_name", String::new())?;
    let norm_v: Value = a.get_or(
        r,
        "norm",
        serde_json::json!(["GROUP", {"num_groups": groups}]),
    )?;
    cfg.norm = if norm_name.is_empty() {
        norm(a, &norm_v, Some(groups))?
    } else {
        norm(a, &Value::String(norm_name), Some(groups))?
    };
    let act_v: Value = a.get_or(r, "act", Value::String("relu".into()))?;
    cfg.act = act(a, &act_v)?;
    let mode: String = a.get_or(r, "upsample_mode", "nontrainable".to_owned())?;
    cfg.upsample_mode = match mode.to_lowercase().as_str() {
        "deconv" => UpsampleMode::Deconv,
        "nontrainable" => UpsampleMode::Nontrainable,
        other => return Err(a.error(format!("upsample_mode {other:?} is not supported"))),
    };
    if !a.get_or(r, "use_conv_final", true)? {
        return Err(a.error("without its final convolution is not supported"));
    }
    Ok(NetworkConfig::SegResNet(cfg))
}

fn dynunet(a: &mut Args, r: &mut Resolver) -> Result<NetworkConfig> {
    let triples = |v: Option<Value>, name: &str, a: &Args| -> Result<Value> {
        v.ok_or_else(|| a.error(format!("needs {name}")))
    };
    let kernel = a.get::<Value>(r, "kernel_size")?;
    let strides = a.get::<Value>(r, "strides")?;
    let up = a.get::<Value>(r, "upsample_kernel_size")?;
    let json = serde_json::json!({
        "in_channels": a.get::<i64>(r, "in_channels")?.ok_or_else(|| a.error("needs in_channels"))?,
        "out_channels": a.get::<i64>(r, "out_channels")?.ok_or_else(|| a.error("needs out_channels"))?,
        "kernel_size": triples(kernel, "kernel_size", a)?,
        "strides": triples(strides, "strides", a)?,
        "upsample_kernel_size": triples(up, "upsample_kernel_size", a)?,
        "filters": a.get_or::<Vec<i64>>(r, "filters", Vec::new())?,
    });
    let mut cfg: DynUNetConfig = serde_json::from_value(json).map_err(|e| {
        a.error(format!(
            "has kernel sizes or strides the runner cannot read: {e}"
        ))
    })?;
    let norm_v: Value = a.get_or(
        r,
        "norm_name",
        serde_json::json!(["INSTANCE", {"affine": true}]),
    )?;
    cfg.norm = norm(a, &norm_v, None)?;
    let act_v: Value = a.get_or(
        r,
        "act_name",
        serde_json::json!(["leakyrelu", {"negative_slope": 0.01}]),
    )?;
    cfg.act = act(a, &act_v)?;
    cfg.dropout = a.get_or(r, "dropout", 0.0)?;
    cfg.res_block = a.get_or(r, "res_block", false)?;
    cfg.trans_bias = a.get_or(r, "trans_bias", false)?;
    if a.get_or(r, "deep_supervision", false)? {
        cfg.deep_supervision_heads = a.get_or(r, "deep_supr_num", 1)?;
    } else {
        a.ignore(&["deep_supr_num"]);
    }
    Ok(NetworkConfig::DynUNet(cfg))
}
