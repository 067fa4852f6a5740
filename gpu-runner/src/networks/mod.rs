//! The networks a model can hold, behind one [`Network`] that inference, training and
//! MC-dropout uncertainty all call: MONAI's `UNet` ([`crate::unet`]), `SegResNet` and
//! `DynUNet` built natively on a [`nn::VarStore`] with MONAI's parameter names (so a
//! MONAI state dict loads by name), and TorchScript modules run by libtorch.
//!
//! [`NetworkConfig`] is the `network` object of `config.json`, tagged by `name`
//! (`segresnet`, `dynunet`, `torchscript`); a config without `name` is a UNet, as every
//! config was before the other networks existed, and a UNet is still written so.

pub mod dynunet;
pub mod layers;
pub mod segresnet;
pub mod torchscript;

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize};
use tch::{Kind, Tensor, nn};

use crate::error::{Result, RunnerError};
use crate::unet::{UNet, UNetConfig};
pub use dynunet::{DynUNet, DynUNetConfig};
pub use segresnet::{SegResNet, SegResNetConfig};
pub use torchscript::{TorchScript, TorchScriptConfig};

/// How a forward pass treats the stochastic and batch-dependent layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Batch norm uses batch statistics and updates running ones.
    pub train: bool,
    /// Dropout is active (training, or Monte-Carlo dropout at inference).
    pub dropout: bool,
}

impl Mode {
    pub const TRAIN: Mode = Mode {
        train: true,
        dropout: true,
    };
    pub const EVAL: Mode = Mode {
        train: false,
        dropout: false,
    };
    /// Deterministic normalisation with dropout on, for MC-dropout uncertainty.
    pub const MC_DROPOUT: Mode = Mode {
        train: false,
        dropout: true,
    };
}

/// The `network` object of a model's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", remote = "Self")]
pub enum NetworkConfig {
    #[serde(rename = "unet")]
    UNet(UNetConfig),
    #[serde(rename = "segresnet")]
    SegResNet(SegResNetConfig),
    #[serde(rename = "dynunet")]
    DynUNet(DynUNetConfig),
    #[serde(rename = "torchscript")]
    TorchScript(TorchScriptConfig),
}

impl Serialize for NetworkConfig {
    /// A UNet is written in the pre-`name` form, so the configs of existing models
    /// (and older runners reading new UNet configs) stay as they were.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NetworkConfig::UNet(c) => c.serialize(s),
            other => NetworkConfig::serialize(other, s),
        }
    }
}

impl<'de> Deserialize<'de> for NetworkConfig {
    /// Accepts the pre-`name` form (a bare UNet config) too.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v = serde_json::Value::deserialize(d)?;
        if let Some(obj) = v.as_object_mut()
            && !obj.contains_key("name")
        {
            obj.insert("name".into(), "unet".into());
        }
        NetworkConfig::deserialize(v).map_err(serde::de::Error::custom)
    }
}

impl From<UNetConfig> for NetworkConfig {
    fn from(c: UNetConfig) -> Self {
        NetworkConfig::UNet(c)
    }
}

impl NetworkConfig {
    pub fn name(&self) -> &'static str {
        match self {
            NetworkConfig::UNet(_) => "unet",
            NetworkConfig::SegResNet(_) => "segresnet",
            NetworkConfig::DynUNet(_) => "dynunet",
            NetworkConfig::TorchScript(_) => "torchscript",
        }
    }

    pub fn in_channels(&self) -> i64 {
        match self {
            NetworkConfig::UNet(c) => c.in_channels,
            NetworkConfig::SegResNet(c) => c.in_channels,
            NetworkConfig::DynUNet(c) => c.in_channels,
            NetworkConfig::TorchScript(c) => c.in_channels,
        }
    }

    pub fn out_channels(&self) -> i64 {
        match self {
            NetworkConfig::UNet(c) => c.out_channels,
            NetworkConfig::SegResNet(c) => c.out_channels,
            NetworkConfig::DynUNet(c) => c.out_channels,
            NetworkConfig::TorchScript(c) => c.out_channels,
        }
    }

    /// Sets the number of outputs (a new label set on a network template).
    pub fn set_out_channels(&mut self, n: i64) {
        match self {
            NetworkConfig::UNet(c) => c.out_channels = n,
            NetworkConfig::SegResNet(c) => c.out_channels = n,
            NetworkConfig::DynUNet(c) => c.out_channels = n,
            NetworkConfig::TorchScript(c) => c.out_channels = n,
        }
    }

    /// The factor each spatial size must be a multiple of, in the network's axis order.
    pub fn size_divisor(&self) -> [i64; 3] {
        match self {
            NetworkConfig::UNet(c) => c.grid_divisor(),
            NetworkConfig::SegResNet(c) => [c.size_divisor(); 3],
            NetworkConfig::DynUNet(c) => c.size_divisor(),
            NetworkConfig::TorchScript(c) => c.size_divisor,
        }
    }

    /// The dropout probability MC-dropout relies on (0 when the network has none or
    /// cannot switch it on alone).
    pub fn mc_dropout(&self) -> f64 {
        match self {
            NetworkConfig::UNet(c) => c.dropout,
            NetworkConfig::SegResNet(c) => c.dropout,
            NetworkConfig::DynUNet(c) => c.dropout,
            NetworkConfig::TorchScript(_) => 0.0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            NetworkConfig::UNet(c) => c.validate(),
            NetworkConfig::SegResNet(c) => c.validate(),
            NetworkConfig::DynUNet(c) => c.validate(),
            NetworkConfig::TorchScript(c) => {
                if c.in_channels <= 0
                    || c.out_channels <= 0
                    || c.size_divisor.iter().any(|&d| d <= 0)
                {
                    return Err(RunnerError::invalid(
                        "torchscript: channel counts and size_divisor must be positive",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A network ready to run.
#[derive(Debug)]
pub enum Network {
    UNet(Box<UNet>),
    SegResNet(Box<SegResNet>),
    DynUNet(Box<DynUNet>),
    TorchScript(TorchScript),
}

impl Network {
    /// Builds a native network with fresh variables under `root`; TorchScript modules
    /// come from a file ([`TorchScript::load`]).
    pub fn new(root: &nn::Path, cfg: &NetworkConfig) -> Result<Self> {
        Ok(match cfg {
            NetworkConfig::UNet(c) => Network::UNet(Box::new(UNet::new(root, c)?)),
            NetworkConfig::SegResNet(c) => Network::SegResNet(Box::new(SegResNet::new(root, c)?)),
            NetworkConfig::DynUNet(c) => Network::DynUNet(Box::new(DynUNet::new(root, c)?)),
            NetworkConfig::TorchScript(_) => {
                return Err(RunnerError::invalid(
                    "a TorchScript network cannot be created from scratch: it comes with its file",
                ));
            }
        })
    }

    /// Logits `[N, out_channels, …]` for `[N, in_channels, …]`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match self {
            Network::UNet(n) => n.forward(x, mode),
            Network::SegResNet(n) => n.forward(x, mode),
            Network::DynUNet(n) => n.forward(x, mode),
            Network::TorchScript(n) => return n.forward(x, mode),
        })
    }
}

/// Copies named tensors (a state dict) into the variables of `vs`, by name.
///
/// Every variable must be given, with its exact shape; extra names are an error too
/// (they mean the weights belong to another configuration), except batch norm's
/// `num_batches_tracked` counters and DynUNet's `skip_layers.*` aliases, which the
/// native networks do not keep. Half and double weights are converted to float.
pub fn load_state_dict(vs: &nn::VarStore, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let mut vars = vs.variables();
    let mut unexpected = Vec::new();
    let mut seen = BTreeSet::new();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in tensors {
            if name.ends_with("num_batches_tracked") || name.starts_with("skip_layers.") {
                continue;
            }
            let Some(var) = vars.get_mut(&name) else {
                unexpected.push(name);
                continue;
            };
            if var.size() != t.size() {
                return Err(RunnerError::invalid(format!(
                    "weights {name:?} have shape {:?}, the network needs {:?}",
                    t.size(),
                    var.size()
                )));
            }
            if !matches!(
                t.kind(),
                Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
            ) {
                return Err(RunnerError::invalid(format!(
                    "weights {name:?} are {:?}, not floating point",
                    t.kind()
                )));
            }
            var.f_copy_(&t.to_kind(var.kind()).to_device(var.device()))?;
            seen.insert(name);
        }
        Ok(())
    })?;
    let missing: Vec<&String> = vars.keys().filter(|k| !seen.contains(*k)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        let list = |v: Vec<&String>| {
            let n = v.len();
            let head: Vec<&str> = v.into_iter().take(5).map(String::as_str).collect();
            format!(
                "{n} ({}{})",
                head.join(", "),
                if n > 5 { ", …" } else { "" }
            )
        };
        return Err(RunnerError::invalid(format!(
            "weights do not match the network: missing {}, unexpected {}",
            list(missing),
            list(unexpected.iter().collect())
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn legacy_network_json_is_a_unet_and_new_ones_carry_their_name() {
        let legacy = serde_json::json!({"in_channels": 1, "out_channels": 2, "channels": [4, 8],
            "strides": [2]});
        let cfg: NetworkConfig = serde_json::from_value(legacy).unwrap();
        assert!(matches!(cfg, NetworkConfig::UNet(_)));
        let seg = NetworkConfig::SegResNet(SegResNetConfig::new(1, 3));
        let v = serde_json::to_value(&seg).unwrap();
        assert_eq!(v["name"], "segresnet");
        assert_eq!(serde_json::from_value::<NetworkConfig>(v).unwrap(), seg);
        let err = serde_json::from_value::<NetworkConfig>(serde_json::json!({"name": "vit"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vit"), "{err}");
    }

    #[test]
    fn state_dicts_load_by_name_and_mismatches_are_named() {
        tch::manual_seed(3);
        let cfg = NetworkConfig::SegResNet(SegResNetConfig {
            init_filters: 4,
            blocks_down: vec![1, 1],
            blocks_up: vec![1],
            norm: layers::NormConfig::Group { groups: 2 },
            ..SegResNetConfig::new(1, 2)
        });
        let a = nn::VarStore::new(Device::Cpu);
        Network::new(&a.root(), &cfg).unwrap();
        let b = nn::VarStore::new(Device::Cpu);
        let net_b = Network::new(&b.root(), &cfg).unwrap();
        let sd: Vec<(String, Tensor)> = a.variables().into_iter().collect();
        load_state_dict(&b, sd.iter().map(|(k, v)| (k.clone(), v.copy())).collect()).unwrap();
        let x = Tensor::randn([1, 1, 8, 8, 8], (Kind::Float, Device::Cpu));
        let net_a = Network::new(&nn::VarStore::new(Device::Cpu).root(), &cfg).unwrap();
        drop(net_a);
        let y = tch::no_grad(|| net_b.forward(&x, Mode::EVAL)).unwrap();
        assert_eq!(y.size(), vec![1, 2, 8, 8, 8]);
        for (k, v) in &sd {
            assert!(b.variables()[k].equal(v), "{k}");
        }
        let mut short = sd
            .iter()
            .map(|(k, v)| (k.clone(), v.copy()))
            .collect::<Vec<_>>();
        short.pop();
        short.push((
            "other.weight".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ));
        let err = load_state_dict(&b, short).unwrap_err().to_string();
        assert!(
            err.contains("missing 1") && err.contains("other.weight"),
            "{err}"
        );
        let mut wrong = sd
            .iter()
            .map(|(k, v)| (k.clone(), v.copy()))
            .collect::<Vec<_>>();
        wrong[0].1 = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let err = load_state_dict(&b, wrong).unwrap_err().to_string();
        assert!(err.contains("shape [3]"), "{err}");
    }
}
