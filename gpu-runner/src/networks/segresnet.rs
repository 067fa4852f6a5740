//! MONAI's `SegResNet` (Myronenko 2018, without the VAE branch), 3D.
//!
//! `convInit` (3³ conv) → optional channel dropout → `len(blocks_down)` levels, each a
//! strided 3³ conv (not on the first) plus `blocks_down[i]` residual blocks at
//! `init_filters · 2^i` channels → for each up level a 1³ conv halving channels, ×2
//! upsampling (transposed 2³ conv for `deconv`, trilinear without corner alignment for
//! `nontrainable`), the skip added, `blocks_up[i]` residual blocks → norm, activation and
//! a 1³ conv to the outputs. A residual block is `x + conv(act(norm(conv(act(norm(x))))))`.
//! Convolutions have no bias except the final one; variables carry MONAI's names
//! (`convInit.conv.weight`, `down_layers.1.0.conv.weight`, `down_layers.1.1.norm1.weight`,
//! `up_samples.0.1.deconv.bias`, `conv_final.2.conv.bias`, …).

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use super::Mode;
use super::layers::{Act, ActConfig, Conv, ConvTranspose, Norm, NormConfig};
use crate::error::{Result, RunnerError};

/// How a SegResNet up level doubles its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpsampleMode {
    /// Transposed 2³ convolution with stride 2 (trainable).
    Deconv,
    /// Trilinear interpolation, `align_corners=False` (MONAI's default).
    #[default]
    Nontrainable,
}

/// The settings of `monai.networks.nets.SegResNet(spatial_dims=3, …)` the runner honours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegResNetConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    #[serde(default = "default_filters")]
    pub init_filters: i64,
    #[serde(default = "default_down")]
    pub blocks_down: Vec<usize>,
    #[serde(default = "default_up")]
    pub blocks_up: Vec<usize>,
    #[serde(default = "default_norm")]
    pub norm: NormConfig,
    #[serde(default = "default_act")]
    pub act: ActConfig,
    #[serde(default)]
    pub upsample_mode: UpsampleMode,
    /// Channel dropout after the first convolution (MONAI's `dropout_prob`; 0: none).
    #[serde(default)]
    pub dropout: f64,
}

fn default_filters() -> i64 {
    8
}
fn default_down() -> Vec<usize> {
    vec![1, 2, 2, 4]
}
fn default_up() -> Vec<usize> {
    vec![1, 1, 1]
}
fn default_norm() -> NormConfig {
    NormConfig::Group { groups: 8 }
}
fn default_act() -> ActConfig {
    ActConfig::Relu
}

impl SegResNetConfig {
    /// MONAI's defaults for the given channel counts.
    pub fn new(in_channels: i64, out_channels: i64) -> Self {
        Self {
            in_channels,
            out_channels,
            init_filters: default_filters(),
            blocks_down: default_down(),
            blocks_up: default_up(),
            norm: default_norm(),
            act: default_act(),
            upsample_mode: UpsampleMode::default(),
            dropout: 0.0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let err = |m: &str| Err(RunnerError::invalid(format!("segresnet: {m}")));
        if self.in_channels <= 0 || self.out_channels <= 0 || self.init_filters <= 0 {
            return err("channel counts must be positive");
        }
        if self.blocks_down.is_empty() || self.blocks_up.len() + 1 != self.blocks_down.len() {
            return err("blocks_up needs one entry fewer than blocks_down");
        }
        if let NormConfig::Group { groups } = self.norm
            && (groups <= 0 || self.init_filters % groups != 0)
        {
            return err("group norm needs init_filters divisible by num_groups");
        }
        if matches!(self.act, ActConfig::Prelu) {
            // MONAI shares one PReLU module between blocks under several names.
            return err("act prelu is not supported");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return err("dropout must be in [0, 1)");
        }
        Ok(())
    }

    /// Every spatial size must be a multiple of this (one halving per down level).
    pub fn size_divisor(&self) -> i64 {
        1 << (self.blocks_down.len() - 1)
    }
}

#[derive(Debug)]
struct ResBlock {
    norm1: Norm,
    norm2: Norm,
    conv1: Conv,
    conv2: Conv,
    act: Act,
}

impl ResBlock {
    fn new(p: nn::Path, cfg: &SegResNetConfig, c: i64) -> Self {
        Self {
            norm1: Norm::new(&p / "norm1", &cfg.norm, c),
            norm2: Norm::new(&p / "norm2", &cfg.norm, c),
            conv1: Conv::cubic(&p / "conv1" / "conv", c, c, 3, 1, false),
            conv2: Conv::cubic(&p / "conv2" / "conv", c, c, 3, 1, false),
            act: Act::new(&p / "act", cfg.act),
        }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let y = self
            .conv1
            .forward(&self.act.forward_owned(self.norm1.forward(x, mode)));
        let mut y = self
            .conv2
            .forward(&self.act.forward_owned(self.norm2.forward(&y, mode)));
        let _ = y.g_add_(x);
        y
    }
}

#[derive(Debug)]
struct Down {
    pre: Option<Conv>,
    blocks: Vec<ResBlock>,
}

#[derive(Debug)]
struct Up {
    reduce: Conv,
    deconv: Option<ConvTranspose>,
    blocks: Vec<ResBlock>,
}

/// The network; build it under a var store root.
#[derive(Debug)]
pub struct SegResNet {
    init: Conv,
    dropout: f64,
    down: Vec<Down>,
    up: Vec<Up>,
    final_norm: Norm,
    final_act: Act,
    final_conv: Conv,
}

impl SegResNet {
    pub fn new(root: &nn::Path, cfg: &SegResNetConfig) -> Result<Self> {
        cfg.validate()?;
        let f = cfg.init_filters;
        let down = cfg
            .blocks_down
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = root / "down_layers" / i;
                let c = f << i;
                Down {
                    pre: (i > 0).then(|| Conv::cubic(&p / "0" / "conv", c / 2, c, 3, 2, false)),
                    blocks: (0..n)
                        .map(|j| ResBlock::new(&p / (j + 1), cfg, c))
                        .collect(),
                }
            })
            .collect();
        let n_up = cfg.blocks_up.len();
        let up = cfg
            .blocks_up
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let c = f << (n_up - i);
                let s = root / "up_samples" / i;
                Up {
                    reduce: Conv::cubic(&s / "0" / "conv", c, c / 2, 1, 1, false),
                    deconv: (cfg.upsample_mode == UpsampleMode::Deconv).then(|| {
                        ConvTranspose::new(
                            &s / "1" / "deconv",
                            c / 2,
                            c / 2,
                            [2; 3],
                            [2; 3],
                            [0; 3],
                            [0; 3],
                            true,
                        )
                    }),
                    blocks: (0..n)
                        .map(|j| ResBlock::new(root / "up_layers" / i / j, cfg, c / 2))
                        .collect(),
                }
            })
            .collect();
        let fin = root / "conv_final";
        Ok(Self {
            init: Conv::cubic(root / "convInit" / "conv", cfg.in_channels, f, 3, 1, false),
            dropout: cfg.dropout,
            down,
            up,
            final_norm: Norm::new(&fin / "0", &cfg.norm, f),
            final_act: Act::new(&fin / "1", cfg.act),
            final_conv: Conv::cubic(&fin / "2" / "conv", f, cfg.out_channels, 1, 1, true),
        })
    }

    /// Logits for `[N, C, …]`; spatial sizes must be multiples of
    /// [`SegResNetConfig::size_divisor`].
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let mut x = self.init.forward(x);
        if self.dropout > 0.0 {
            x = x.feature_dropout(self.dropout, mode.dropout);
        }
        let mut skips = Vec::with_capacity(self.down.len());
        for d in &self.down {
            if let Some(pre) = &d.pre {
                x = pre.forward(&x);
            }
            for b in &d.blocks {
                x = b.forward(&x, mode);
            }
            skips.push(x.shallow_clone());
        }
        skips.reverse();
        for (i, u) in self.up.iter().enumerate() {
            let y = u.reduce.forward(&x);
            let y = match &u.deconv {
                Some(d) => d.forward(&y),
                None => {
                    let s = y.size();
                    let size = [s[2] * 2, s[3] * 2, s[4] * 2];
                    y.upsample_trilinear3d(size, false, 2.0, 2.0, 2.0)
                }
            };
            let mut y = y;
            let _ = y.g_add_(&skips[i + 1]);
            x = y;
            for b in &u.blocks {
                x = b.forward(&x, mode);
            }
        }
        self.final_conv.forward(
            &self
                .final_act
                .forward_owned(self.final_norm.forward(&x, mode)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::parameter_count;
    use tch::{Device, Kind};

    #[test]
    fn parameter_counts_and_names_equal_monai() {
        // Counted with MONAI 1.6.1: sum(p.numel() for p in SegResNet(…).parameters()).
        for (filters, mode, monai) in [
            (8, UpsampleMode::Nontrainable, 1_176_186),
            (8, UpsampleMode::Deconv, 1_186_994),
            (16, UpsampleMode::Nontrainable, 4_700_914),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = SegResNetConfig {
                init_filters: filters,
                upsample_mode: mode,
                ..SegResNetConfig::new(1, 2)
            };
            SegResNet::new(&vs.root(), &cfg).unwrap();
            assert_eq!(parameter_count(&vs), monai, "{filters} {mode:?}");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SegResNetConfig {
            upsample_mode: UpsampleMode::Deconv,
            ..SegResNetConfig::new(1, 2)
        };
        SegResNet::new(&vs.root(), &cfg).unwrap();
        let names: Vec<String> = vs.variables().into_keys().collect();
        for n in [
            "convInit.conv.weight",
            "down_layers.1.0.conv.weight",
            "down_layers.3.4.norm2.bias",
            "up_samples.2.1.deconv.bias",
            "up_layers.0.0.conv1.conv.weight",
            "conv_final.2.conv.bias",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
    }

    #[test]
    fn output_keeps_the_input_size() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SegResNetConfig {
            init_filters: 4,
            blocks_down: vec![1, 1, 1],
            blocks_up: vec![1, 1],
            norm: NormConfig::Group { groups: 2 },
            dropout: 0.2,
            ..SegResNetConfig::new(1, 3)
        };
        let net = SegResNet::new(&vs.root(), &cfg).unwrap();
        let x = Tensor::randn([2, 1, 8, 12, 16], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward(&x, Mode::TRAIN).size(), vec![2, 3, 8, 12, 16]);
        assert_eq!(cfg.size_divisor(), 4);
        let bad = SegResNetConfig {
            blocks_up: vec![1],
            ..cfg
        };
        assert!(bad.validate().is_err());
    }
}
