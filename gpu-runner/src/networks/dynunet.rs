//! MONAI's `DynUNet` (the nnU-Net topology), 3D, with per-level and per-axis kernel
//! sizes and strides.
//!
//! Levels: an input block (`kernel_size[0]`, `strides[0]`), down blocks for the middle
//! entries, a bottleneck (the last entry), and one up block per level below the top
//! (transposed conv with kernel = stride = `upsample_kernel_size`, concatenation with
//! the skip, a basic block), then a 1³ output conv. A basic block is conv → norm → act
//! → conv → norm → act; with `res_block` the second activation comes after adding a
//! residual (a 1³ strided conv + norm when channels or size change). Padding is
//! `(k − s + 1) / 2` per axis as MONAI computes it. Convolutions have no bias except the
//! output one (and the transposed ones with `trans_bias`). Deep-supervision heads are
//! built (so a state dict trained with them loads) but never used: the runner trains
//! and infers on the final output only. MONAI registers every block a second time under
//! `skip_layers.*`; those aliases are skipped when loading.

use serde::{Deserialize, Deserializer, Serialize};
use tch::{Tensor, nn};

use super::Mode;
use super::layers::{Act, ActConfig, Conv, ConvTranspose, Norm, NormConfig};
use crate::error::{Result, RunnerError};

/// The settings of `monai.networks.nets.DynUNet(spatial_dims=3, …)` the runner honours.
/// Kernel sizes and strides are per level, each an integer or three (MONAI's axis order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynUNetConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    #[serde(deserialize_with = "triples")]
    pub kernel_size: Vec<[i64; 3]>,
    #[serde(deserialize_with = "triples")]
    pub strides: Vec<[i64; 3]>,
    #[serde(deserialize_with = "triples")]
    pub upsample_kernel_size: Vec<[i64; 3]>,
    /// Channels per level; MONAI's default `min(2^(5+i), 320)` when empty.
    #[serde(default)]
    pub filters: Vec<i64>,
    #[serde(default = "default_norm")]
    pub norm: NormConfig,
    #[serde(default = "default_act")]
    pub act: ActConfig,
    /// Element dropout after every convolution (0: none).
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub res_block: bool,
    #[serde(default)]
    pub trans_bias: bool,
    /// Number of deep-supervision heads in the weights (0: none).
    #[serde(default)]
    pub deep_supervision_heads: usize,
}

fn default_norm() -> NormConfig {
    NormConfig::Instance { affine: true }
}
fn default_act() -> ActConfig {
    ActConfig::LeakyRelu {
        negative_slope: 0.01,
    }
}

/// An integer or three per entry, as MONAI accepts them.
fn triples<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[i64; 3]>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum One {
        Int(i64),
        Three([i64; 3]),
    }
    Ok(Vec::<One>::deserialize(d)?
        .into_iter()
        .map(|o| match o {
            One::Int(v) => [v; 3],
            One::Three(v) => v,
        })
        .collect())
}

/// MONAI's `get_padding`: `(k − s + 1) / 2`, truncated.
fn padding(k: [i64; 3], s: [i64; 3]) -> [i64; 3] {
    std::array::from_fn(|a| (k[a] - s[a] + 1) / 2)
}

impl DynUNetConfig {
    /// The channel count of every level.
    pub fn level_filters(&self) -> Vec<i64> {
        if self.filters.is_empty() {
            (0..self.strides.len())
                .map(|i| (1i64 << (5 + i)).min(320))
                .collect()
        } else {
            self.filters[..self.strides.len().min(self.filters.len())].to_vec()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(RunnerError::invalid(format!("dynunet: {m}")));
        let n = self.strides.len();
        if self.kernel_size.len() != n || n < 3 {
            return err("kernel_size and strides need the same length, at least 3".into());
        }
        if self.upsample_kernel_size.len() != n - 1 {
            return err(format!("upsample_kernel_size needs {} entries", n - 1));
        }
        if !self.filters.is_empty() && self.filters.len() < n {
            return err("filters needs at least one entry per level".into());
        }
        if self.in_channels <= 0
            || self.out_channels <= 0
            || self.level_filters().iter().any(|&f| f <= 0)
        {
            return err("channel counts must be positive".into());
        }
        let all = self
            .kernel_size
            .iter()
            .chain(&self.strides)
            .chain(&self.upsample_kernel_size);
        if all.flatten().any(|&v| v <= 0) {
            return err("kernel sizes and strides must be positive".into());
        }
        for (k, s) in self.kernel_size.iter().zip(&self.strides) {
            if k.iter().zip(s).any(|(k, s)| k - s + 1 < 0) {
                return err(format!("kernel {k:?} is smaller than stride {s:?}"));
            }
        }
        if self
            .upsample_kernel_size
            .iter()
            .zip(&self.strides[1..])
            .any(|(u, s)| u != s)
        {
            return err("upsample_kernel_size must equal strides[1:]".into());
        }
        if self.deep_supervision_heads >= n - 1 {
            return err("deep supervision needs fewer heads than up levels".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return err("dropout must be in [0, 1)".into());
        }
        Ok(())
    }

    /// Per-axis factor every spatial size must be a multiple of (MONAI's axis order).
    pub fn size_divisor(&self) -> [i64; 3] {
        std::array::from_fn(|a| self.strides.iter().map(|s| s[a]).product())
    }
}

/// A conv followed by the dropout MONAI's `Convolution` puts after it.
#[derive(Debug)]
struct DropConv {
    conv: Conv,
    dropout: f64,
}

impl DropConv {
    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let y = self.conv.forward(x);
        if self.dropout > 0.0 {
            y.dropout(self.dropout, mode.dropout)
        } else {
            y
        }
    }
}

/// `UnetBasicBlock` or, with `res`, `UnetResBlock`.
#[derive(Debug)]
struct Block {
    conv1: DropConv,
    conv2: DropConv,
    norm1: Norm,
    norm2: Norm,
    act: Act,
    res: bool,
    /// The residual projection (`conv3`, `norm3`) when channels or size change.
    project: Option<(DropConv, Norm)>,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: nn::Path,
        cfg: &DynUNetConfig,
        cin: i64,
        cout: i64,
        k: [i64; 3],
        s: [i64; 3],
        res: bool,
    ) -> Self {
        let conv = |name: &str, ci: i64, k: [i64; 3], s: [i64; 3]| DropConv {
            conv: Conv::new(&p / name / "conv", ci, cout, k, s, padding(k, s), false),
            dropout: cfg.dropout,
        };
        let project = (res && (cin != cout || s != [1; 3])).then(|| {
            (
                conv("conv3", cin, [1; 3], s),
                Norm::new(&p / "norm3", &cfg.norm, cout),
            )
        });
        Self {
            conv1: conv("conv1", cin, k, s),
            conv2: conv("conv2", cout, k, [1; 3]),
            norm1: Norm::new(&p / "norm1", &cfg.norm, cout),
            norm2: Norm::new(&p / "norm2", &cfg.norm, cout),
            act: Act::new(&p / "lrelu", cfg.act),
            res,
            project,
        }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let y = self.conv1.forward(x, mode);
        let y = self.act.forward_owned(self.norm1.forward(&y, mode));
        let mut y = self.norm2.forward(&self.conv2.forward(&y, mode), mode);
        if self.res {
            let _ = match &self.project {
                Some((c, n)) => y.g_add_(&n.forward(&c.forward(x, mode), mode)),
                None => y.g_add_(x),
            };
        }
        self.act.forward_owned(y)
    }
}

/// `UnetUpBlock`: transposed conv, concatenation with the skip, basic block.
#[derive(Debug)]
struct UpBlock {
    transp: ConvTranspose,
    dropout: f64,
    block: Block,
}

impl UpBlock {
    fn forward(&self, x: &Tensor, skip: &Tensor, mode: Mode) -> Tensor {
        let y = self.transp.forward(x);
        let y = if self.dropout > 0.0 {
            y.dropout(self.dropout, mode.dropout)
        } else {
            y
        };
        self.block
            .forward(&Tensor::cat(&[y, skip.shallow_clone()], 1), mode)
    }
}

/// The network; build it under a var store root.
#[derive(Debug)]
pub struct DynUNet {
    /// The input block, then the down blocks.
    downs: Vec<Block>,
    bottleneck: Block,
    /// Up blocks from the deepest level to the top.
    ups: Vec<UpBlock>,
    output: DropConv,
}

impl DynUNet {
    pub fn new(root: &nn::Path, cfg: &DynUNetConfig) -> Result<Self> {
        cfg.validate()?;
        let f = cfg.level_filters();
        let (k, s) = (&cfg.kernel_size, &cfg.strides);
        let n = s.len();
        let mut downs = vec![Block::new(
            root / "input_block",
            cfg,
            cfg.in_channels,
            f[0],
            k[0],
            s[0],
            cfg.res_block,
        )];
        for i in 1..n - 1 {
            downs.push(Block::new(
                root / "downsamples" / (i - 1),
                cfg,
                f[i - 1],
                f[i],
                k[i],
                s[i],
                cfg.res_block,
            ));
        }
        let bottleneck = Block::new(
            root / "bottleneck",
            cfg,
            f[n - 2],
            f[n - 1],
            k[n - 1],
            s[n - 1],
            cfg.res_block,
        );
        // MONAI lists up blocks deepest first: up block j joins level n-1-j into n-2-j.
        let ups = (0..n - 1)
            .map(|j| {
                let (cin, cout) = (f[n - 1 - j], f[n - 2 - j]);
                let u = cfg.upsample_kernel_size[n - 2 - j];
                let p = root / "upsamples" / j;
                // MONAI's output padding 2p + s − k, with stride = kernel.
                let out_pad = padding(u, u).map(|p| 2 * p);
                UpBlock {
                    transp: ConvTranspose::new(
                        &p / "transp_conv" / "conv",
                        cin,
                        cout,
                        u,
                        u,
                        padding(u, u),
                        out_pad,
                        cfg.trans_bias,
                    ),
                    dropout: cfg.dropout,
                    block: Block::new(
                        &p / "conv_block",
                        cfg,
                        2 * cout,
                        cout,
                        k[n - 1 - j],
                        [1; 3],
                        false,
                    ),
                }
            })
            .collect();
        let head = |p: nn::Path, cin: i64| DropConv {
            conv: Conv::new(
                &p / "conv" / "conv",
                cin,
                cfg.out_channels,
                [1; 3],
                [1; 3],
                [0; 3],
                true,
            ),
            dropout: cfg.dropout,
        };
        for i in 0..cfg.deep_supervision_heads {
            // Only so that weights trained with deep supervision load; never evaluated.
            head(root / "deep_supervision_heads" / i, f[i + 1]);
        }
        Ok(Self {
            downs,
            bottleneck,
            ups,
            output: head(root / "output_block", f[0]),
        })
    }

    /// Logits at the input block's resolution (the input's unless `strides[0]` ≠ 1).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let top = self.level(0, x, mode);
        self.output.forward(&top, mode)
    }

    fn level(&self, i: usize, x: &Tensor, mode: Mode) -> Tensor {
        let down = self.downs[i].forward(x, mode);
        let next = if i + 1 < self.downs.len() {
            self.level(i + 1, &down, mode)
        } else {
            self.bottleneck.forward(&down, mode)
        };
        self.ups[self.ups.len() - 1 - i].forward(&next, &down, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::parameter_count;
    use tch::{Device, Kind};

    fn config(json: serde_json::Value) -> DynUNetConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn parameter_counts_equal_monai() {
        // Counted with MONAI 1.6.1: sum(p.numel() for p in DynUNet(3, …).parameters()).
        for (cfg, monai) in [
            (
                serde_json::json!({"in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3, 3],
                    "strides": [1, 2, 2, 2], "upsample_kernel_size": [2, 2, 2], "filters": [8, 16, 32, 64]}),
                350_762,
            ),
            (
                serde_json::json!({"in_channels": 1, "out_channels": 3, "kernel_size": [[3, 3, 1], 3, 3],
                    "strides": [1, [2, 2, 1], 2], "upsample_kernel_size": [[2, 2, 1], 2],
                    "filters": [8, 16, 32], "res_block": true, "norm": {"type": "batch"}}),
                84_123,
            ),
            (
                serde_json::json!({"in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3, 3],
                    "strides": [1, 2, 2, 2], "upsample_kernel_size": [2, 2, 2], "filters": [8, 16, 32, 64],
                    "deep_supervision_heads": 2}),
                350_862,
            ),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            DynUNet::new(&vs.root(), &config(cfg.clone())).unwrap();
            assert_eq!(parameter_count(&vs), monai, "{cfg}");
        }
    }

    #[test]
    fn anisotropic_levels_keep_the_input_size() {
        tch::manual_seed(2);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = config(serde_json::json!({"in_channels": 1, "out_channels": 3,
            "kernel_size": [[3, 3, 1], 3, 3], "strides": [1, [2, 2, 1], 2],
            "upsample_kernel_size": [[2, 2, 1], 2], "filters": [4, 8, 16], "res_block": true,
            "dropout": 0.1}));
        assert_eq!(cfg.size_divisor(), [4, 4, 2]);
        let net = DynUNet::new(&vs.root(), &cfg).unwrap();
        let x = Tensor::randn([2, 1, 8, 12, 6], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward(&x, Mode::TRAIN).size(), vec![2, 3, 8, 12, 6]);
        let bad = DynUNetConfig {
            upsample_kernel_size: vec![[2; 3]; 2],
            ..cfg
        };
        assert!(bad.validate().is_err());
    }
}
