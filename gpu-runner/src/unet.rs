//! A 3D UNet with the layer structure of MONAI's `monai.networks.nets.UNet`.
//!
//! The network is built recursively exactly as MONAI builds it: each level is
//! `Sequential(down, SkipConnection(inner), up)`, the skip concatenates `[x, inner(x)]`
//! along channels, the innermost `inner` is a stride-1 "bottom" layer, and a down layer
//! is a strided `Convolution` (conv → Norm → Dropout → PReLU, MONAI's "NDA" order) or,
//! with `num_res_units > 0`, a `ResidualUnit` of that many such convolutions plus a
//! residual projection. Up layers are transposed convolutions (output padding
//! `stride - 1`) followed, with residual units, by one residual convolution; the top
//! up layer ends in a bare convolution that yields logits.
//!
//! Variable names follow MONAI's `state_dict` keys (`model.1.submodule.0.conv.unit0.conv.weight`,
//! `…adn.A.weight`, `…residual.weight`), so the trainable parameter count equals MONAI's for
//! the same configuration and a MONAI checkpoint exported to safetensors loads directly.
//! Instance norm has no affine parameters (MONAI's default `InstanceNorm3d`); batch norm
//! has weight, bias and running statistics.
//!
//! Convolutions use [`crate::networks::layers::Conv`] (oneDNN on the CPU).
//!
//! With `spatial_dims: 2` (MONAI's `UNet(spatial_dims=2, …)`) the kernels are squares
//! and the variables have the names and shapes of MONAI's 2D UNet. The runner
//! hands every network `[N, C, D, H, W]` tensors; a 2D UNet runs on each of the `D`
//! slices on its own (they are folded into the batch), so a window one slice deep is a
//! plane and a deeper one is a stack of planes.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::{self, Module};

use crate::error::{Result, RunnerError};
pub use crate::networks::Mode;
use crate::networks::layers::Conv;

/// Normalisation after each convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Per-sample, per-channel normalisation without learned parameters (MONAI default).
    #[default]
    Instance,
    /// Batch normalisation with learned scale/shift and running statistics.
    Batch,
}

/// The settings of MONAI's `UNet(spatial_dims, …)` that this network honours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// 3 (volumes) or 2 (slices: see the module doc).
    #[serde(default = "three", skip_serializing_if = "is_three")]
    pub spatial_dims: usize,
    pub in_channels: i64,
    pub out_channels: i64,
    /// Feature channels per level, top to bottom; at least two.
    pub channels: Vec<i64>,
    /// Down-sampling stride per level; exactly `channels.len() - 1` entries.
    pub strides: Vec<i64>,
    #[serde(default)]
    pub num_res_units: usize,
    #[serde(default)]
    pub norm: Norm,
    /// Dropout probability after every convolution (0 disables it; MC dropout needs > 0).
    #[serde(default)]
    pub dropout: f64,
}

fn three() -> usize {
    3
}

fn is_three(dims: &usize) -> bool {
    *dims == 3
}

impl UNetConfig {
    /// Checks the invariants MONAI asserts at construction.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.spatial_dims, 2 | 3) {
            return Err(RunnerError::invalid(format!(
                "unet: spatial_dims is 2 or 3, not {}",
                self.spatial_dims
            )));
        }
        if self.channels.len() < 2 {
            return Err(RunnerError::invalid(
                "unet: channels needs at least two levels",
            ));
        }
        if self.strides.len() != self.channels.len() - 1 {
            return Err(RunnerError::invalid(format!(
                "unet: {} channels need {} strides, got {}",
                self.channels.len(),
                self.channels.len() - 1,
                self.strides.len()
            )));
        }
        let positive = |v: &[i64]| v.iter().all(|&x| x > 0);
        if self.in_channels <= 0
            || self.out_channels <= 0
            || !positive(&self.channels)
            || !positive(&self.strides)
        {
            return Err(RunnerError::invalid(
                "unet: channel counts and strides must be positive",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(RunnerError::invalid("unet: dropout must be in [0, 1)"));
        }
        Ok(())
    }

    /// The factor every spatial size must be divisible by (the product of the strides).
    pub fn size_divisor(&self) -> i64 {
        self.strides.iter().product()
    }

    /// [`Self::size_divisor`] along the runner's tensor axes (D, H, W): a 2D network
    /// runs slice by slice, so any number of slices fits.
    pub fn grid_divisor(&self) -> [i64; 3] {
        let d = self.size_divisor();
        if self.spatial_dims == 2 {
            [1, d, d]
        } else {
            [d; 3]
        }
    }
}

/// Conv → [Norm → Dropout → PReLU] (MONAI `Convolution` with `adn_ordering="NDA"`).
#[derive(Debug)]
struct ConvBlock {
    conv: ConvKind,
    adn: Option<Adn>,
}

#[derive(Debug)]
enum ConvKind {
    Plain(Conv),
    Transposed(nn::ConvTranspose3D),
    Transposed2d(nn::ConvTranspose2D),
}

#[derive(Debug)]
struct Adn {
    norm: Option<nn::BatchNorm>,
    dropout: f64,
    prelu: Tensor,
}

impl ConvBlock {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: nn::Path,
        cfg: &UNetConfig,
        cin: i64,
        cout: i64,
        stride: i64,
        transposed: bool,
        conv_only: bool,
    ) -> Self {
        let conv_path = &p / "conv";
        let conv = if transposed {
            let c = nn::ConvTransposeConfig {
                stride,
                padding: 1,
                output_padding: stride - 1,
                ..Default::default()
            };
            if cfg.spatial_dims == 2 {
                ConvKind::Transposed2d(nn::conv_transpose2d(conv_path, cin, cout, 3, c))
            } else {
                ConvKind::Transposed(nn::conv_transpose3d(conv_path, cin, cout, 3, c))
            }
        } else {
            let dims = cfg.spatial_dims;
            ConvKind::Plain(Conv::uniform(conv_path, dims, cin, cout, 3, stride, true))
        };
        let adn = (!conv_only).then(|| {
            let adn = &p / "adn";
            let norm = (cfg.norm == Norm::Batch).then(|| {
                let (path, c) = (&adn / "N", Default::default());
                if cfg.spatial_dims == 2 {
                    nn::batch_norm2d(path, cout, c)
                } else {
                    nn::batch_norm3d(path, cout, c)
                }
            });
            // MONAI's PReLU has one shared slope initialised to 0.25.
            let prelu = (&adn / "A").var("weight", &[1], nn::Init::Const(0.25));
            Adn {
                norm,
                dropout: cfg.dropout,
                prelu,
            }
        });
        Self { conv, adn }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let y = match &self.conv {
            ConvKind::Plain(c) => c.forward(x),
            ConvKind::Transposed(c) => c.forward(x),
            ConvKind::Transposed2d(c) => c.forward(x),
        };
        let Some(adn) = &self.adn else { return y };
        let y = match &adn.norm {
            Some(bn) => nn::ModuleT::forward_t(bn, &y, mode.train),
            None => y.instance_norm(
                None::<Tensor>,
                None::<Tensor>,
                None::<Tensor>,
                None::<Tensor>,
                true,
                0.1,
                1e-5,
                true,
            ),
        };
        let y = if adn.dropout > 0.0 {
            y.dropout(adn.dropout, mode.dropout)
        } else {
            y
        };
        y.prelu(&adn.prelu)
    }
}

/// MONAI `ResidualUnit`: `subunits` conv blocks (only the first strided) plus a residual
/// path that is the identity, a 1×1×1 conv (channels change) or a strided 3×3×3 conv.
#[derive(Debug)]
struct ResidualUnit {
    units: Vec<ConvBlock>,
    residual: Option<Conv>,
}

impl ResidualUnit {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: nn::Path,
        cfg: &UNetConfig,
        cin: i64,
        cout: i64,
        stride: i64,
        subunits: usize,
        last_conv_only: bool,
    ) -> Self {
        let subunits = subunits.max(1);
        let conv = &p / "conv";
        let units = (0..subunits)
            .map(|su| {
                let (ci, s) = if su == 0 { (cin, stride) } else { (cout, 1) };
                let conv_only = last_conv_only && su == subunits - 1;
                ConvBlock::new(
                    &conv / format!("unit{su}"),
                    cfg,
                    ci,
                    cout,
                    s,
                    false,
                    conv_only,
                )
            })
            .collect();
        let residual = (stride != 1 || cin != cout).then(|| {
            let k = if stride == 1 { 1 } else { 3 };
            Conv::uniform(
                &p / "residual",
                cfg.spatial_dims,
                cin,
                cout,
                k,
                stride,
                true,
            )
        });
        Self { units, residual }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let res = match &self.residual {
            Some(r) => r.forward(x),
            None => x.shallow_clone(),
        };
        let y = self
            .units
            .iter()
            .fold(x.shallow_clone(), |y, u| u.forward(&y, mode));
        y + res
    }
}

/// A down, bottom or up layer: a single convolution block, a residual unit, or (up path
/// with residual units) a transposed convolution followed by a residual unit.
#[derive(Debug)]
enum Layer {
    Conv(Box<ConvBlock>),
    Res(ResidualUnit),
    UpRes(Box<(ConvBlock, ResidualUnit)>),
}

impl Layer {
    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        match self {
            Layer::Conv(c) => c.forward(x, mode),
            Layer::Res(r) => r.forward(x, mode),
            Layer::UpRes(b) => b.1.forward(&b.0.forward(x, mode), mode),
        }
    }
}

/// One level: `down → cat([x, inner(x)]) → up`.
#[derive(Debug)]
struct Level {
    down: Layer,
    inner: Inner,
    up: Layer,
}

#[derive(Debug)]
enum Inner {
    Level(Box<Level>),
    Bottom(Box<Layer>),
}

impl Level {
    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let d = self.down.forward(x, mode);
        let i = match &self.inner {
            Inner::Level(l) => l.forward(&d, mode),
            Inner::Bottom(b) => b.forward(&d, mode),
        };
        self.up.forward(&Tensor::cat(&[d, i], 1), mode)
    }
}

/// The network. Build it under a [`nn::VarStore`] root; its variables live there.
#[derive(Debug)]
pub struct UNet {
    top: Level,
    config: UNetConfig,
}

impl UNet {
    /// Creates the variables under `root / "model"` (MONAI's attribute name).
    pub fn new(root: &nn::Path, config: &UNetConfig) -> Result<Self> {
        config.validate()?;
        let top = build_level(
            &(root / "model"),
            config,
            config.in_channels,
            config.out_channels,
            &config.channels,
            &config.strides,
            true,
        );
        Ok(Self {
            top,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Logits `[N, out_channels, D, H, W]` for input `[N, in_channels, D, H, W]`; each
    /// spatial size must be a multiple of [`UNetConfig::grid_divisor`]. A 2D network
    /// takes `[N, C, H, W]` too.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let (2, &[n, c, d, h, w]) = (self.config.spatial_dims, x.size().as_slice()) else {
            return self.top.forward(x, mode);
        };
        let planes = x.permute([0, 2, 1, 3, 4]).reshape([n * d, c, h, w]);
        let y = self.top.forward(&planes, mode);
        let out = y.size()[1];
        y.reshape([n, d, out, h, w]).permute([0, 2, 1, 3, 4])
    }
}

fn down_layer(p: nn::Path, cfg: &UNetConfig, cin: i64, cout: i64, stride: i64) -> Layer {
    if cfg.num_res_units > 0 {
        Layer::Res(ResidualUnit::new(
            p,
            cfg,
            cin,
            cout,
            stride,
            cfg.num_res_units,
            false,
        ))
    } else {
        Layer::Conv(Box::new(ConvBlock::new(
            p, cfg, cin, cout, stride, false, false,
        )))
    }
}

fn up_layer(
    p: nn::Path,
    cfg: &UNetConfig,
    cin: i64,
    cout: i64,
    stride: i64,
    is_top: bool,
) -> Layer {
    if cfg.num_res_units > 0 {
        let conv = ConvBlock::new(&p / "0", cfg, cin, cout, stride, true, false);
        let ru = ResidualUnit::new(&p / "1", cfg, cout, cout, 1, 1, is_top);
        Layer::UpRes(Box::new((conv, ru)))
    } else {
        Layer::Conv(Box::new(ConvBlock::new(
            p, cfg, cin, cout, stride, true, is_top,
        )))
    }
}

fn build_level(
    p: &nn::Path,
    cfg: &UNetConfig,
    cin: i64,
    cout: i64,
    channels: &[i64],
    strides: &[i64],
    is_top: bool,
) -> Level {
    let (c, s) = (channels[0], strides[0]);
    let sub = &(p / "1") / "submodule";
    let (inner, up_in) = if channels.len() > 2 {
        (
            Inner::Level(Box::new(build_level(
                &sub,
                cfg,
                c,
                c,
                &channels[1..],
                &strides[1..],
                false,
            ))),
            c * 2,
        )
    } else {
        (
            Inner::Bottom(Box::new(down_layer(sub, cfg, c, channels[1], 1))),
            c + channels[1],
        )
    };
    Level {
        down: down_layer(p / "0", cfg, cin, c, s),
        inner,
        up: up_layer(p / "2", cfg, up_in, cout, s, is_top),
    }
}

/// Number of trainable scalars in a var store (what `sum(p.numel() for p in
/// model.parameters())` gives in PyTorch).
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(Tensor::numel)
        .map(|n| n as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn cfg(channels: &[i64], strides: &[i64], res: usize, norm: Norm) -> UNetConfig {
        UNetConfig {
            spatial_dims: 3,
            in_channels: 1,
            out_channels: 3,
            channels: channels.to_vec(),
            strides: strides.to_vec(),
            num_res_units: res,
            norm,
            dropout: 0.1,
        }
    }

    #[test]
    fn output_shapes_for_several_configs() {
        tch::manual_seed(0);
        for (c, s, res, norm, size) in [
            (vec![4, 8], vec![2], 0, Norm::Instance, [8, 8, 8]),
            (vec![4, 8, 16], vec![2, 2], 2, Norm::Batch, [16, 8, 12]),
            (
                vec![4, 8, 16, 32],
                vec![2, 2, 1],
                1,
                Norm::Instance,
                [8, 16, 8],
            ),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = UNet::new(&vs.root(), &cfg(&c, &s, res, norm)).unwrap();
            let x = Tensor::randn(
                [2, 1, size[0], size[1], size[2]],
                (Kind::Float, Device::Cpu),
            );
            let y = net.forward(&x, Mode::TRAIN);
            assert_eq!(
                y.size(),
                vec![2, 3, size[0], size[1], size[2]],
                "{c:?} {s:?} res {res}"
            );
        }
    }

    #[test]
    fn parameter_count_matches_monai_formula() {
        // channels (4, 8), stride 2, no residual units, instance norm:
        // down conv 1→4 (108+4) + PReLU 1; bottom conv 4→8 (864+8) + 1;
        // top transposed conv 12→3 (972+3), conv only.
        let vs = nn::VarStore::new(Device::Cpu);
        UNet::new(&vs.root(), &cfg(&[4, 8], &[2], 0, Norm::Instance)).unwrap();
        assert_eq!(parameter_count(&vs), 112 + 1 + 872 + 1 + 975);
        // Same with one residual unit adds projections and the top residual conv.
        let vs = nn::VarStore::new(Device::Cpu);
        UNet::new(&vs.root(), &cfg(&[4, 8], &[2], 1, Norm::Instance)).unwrap();
        let down = 112 + 1 + (4 * 27 + 4); // unit0 + PReLU + strided residual conv
        let bottom = 872 + 1 + (4 * 8 + 8); // unit0 + PReLU + 1×1×1 projection
        let up = (12 * 3 * 27 + 3) + 1 + (3 * 3 * 27 + 3); // transposed + PReLU + bare conv
        assert_eq!(parameter_count(&vs), down + bottom + up);
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(
            names.contains(&"model.1.submodule.residual.weight".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"model.2.1.conv.unit0.conv.weight".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn parameter_counts_equal_monai_for_real_configs() {
        // Counted with MONAI: sum(p.numel() for p in UNet(dims, 1, 2, …).parameters())
        // (3D with 1.6.1, 2D with 1.5.1, whose state dict holds the same names with
        // `[cout, cin, 3, 3]` kernels).
        for (dims, c, s, res, norm, monai) in [
            (
                3,
                vec![16, 32, 64, 128, 256],
                vec![2, 2, 2, 2],
                2,
                Norm::Batch,
                4_808_917,
            ),
            (3, vec![8, 16, 32], vec![2, 2], 1, Norm::Instance, 34_886),
            (3, vec![4, 8], vec![2], 0, Norm::Instance, 1_636),
            (3, vec![4, 8], vec![2], 1, Norm::Instance, 1_899),
            (
                2,
                vec![16, 32, 64, 128, 256],
                vec![2, 2, 2, 2],
                2,
                Norm::Batch,
                1_627_597,
            ),
            (2, vec![8, 16, 32], vec![2, 2], 1, Norm::Instance, 12_062),
            (2, vec![4, 8], vec![2], 0, Norm::Instance, 556),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let config = UNetConfig {
                spatial_dims: dims,
                out_channels: 2,
                ..cfg(&c, &s, res, norm)
            };
            UNet::new(&vs.root(), &config).unwrap();
            let what = format!("{dims}D {c:?} res {res} {norm:?}");
            assert_eq!(parameter_count(&vs), monai, "{what}");
        }
    }

    #[test]
    fn two_dimensional_networks_run_slice_by_slice() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = UNetConfig {
            spatial_dims: 2,
            dropout: 0.0,
            ..cfg(&[4, 8, 16], &[2, 2], 1, Norm::Instance)
        };
        let net = UNet::new(&vs.root(), &config).unwrap();
        let kernel = &vs.variables()["model.0.conv.unit0.conv.weight"];
        assert_eq!(kernel.size(), vec![4, 1, 3, 3]);
        assert_eq!(config.grid_divisor(), [1, 4, 4]);
        // Three slices of a [1, 1, 3, 8, 12] input: each answered as a plane of its own.
        let x = Tensor::randn([1, 1, 3, 8, 12], (Kind::Float, Device::Cpu));
        let y = tch::no_grad(|| net.forward(&x, Mode::EVAL));
        assert_eq!(y.size(), vec![1, 3, 3, 8, 12]);
        for d in 0..3 {
            let plane = tch::no_grad(|| net.forward(&x.select(2, d), Mode::EVAL));
            assert!(
                plane.allclose(&y.select(2, d), 1e-5, 1e-5, false),
                "slice {d}"
            );
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let bad = UNetConfig {
            spatial_dims: 1,
            ..config
        };
        assert!(UNet::new(&vs.root(), &bad).is_err());
    }

    #[test]
    fn invalid_configs_are_errors() {
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(UNet::new(&vs.root(), &cfg(&[4], &[], 0, Norm::Instance)).is_err());
        assert!(UNet::new(&vs.root(), &cfg(&[4, 8, 16], &[2], 0, Norm::Instance)).is_err());
        assert!(UNet::new(&vs.root(), &cfg(&[4, 0], &[2], 0, Norm::Instance)).is_err());
    }
}
