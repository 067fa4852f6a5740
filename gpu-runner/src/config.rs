//! The JSON that travels with a model's weights (`config.json` beside the weights
//! file): everything inference needs to reproduce the training-time preprocessing, and
//! everything needed to rebuild the network.
//!
//! The original form — `labels`, `spacing`, `intensity`, `roi_size` and a UNet
//! `network` — still reads and writes unchanged. Four optional fields extend it:
//! `network.name` picks the architecture ([`NetworkConfig`]), `format` the weights file
//! ([`WeightsFormat`]), `layout` the axis order the network was trained in ([`Layout`]),
//! and `pipeline` the exact pre/post-processing of an imported MONAI bundle
//! ([`Pipeline`]), `type` a click-guided model ([`ModelType`]: deepgrow, deepedit) and
//! `guidance` how its clicks become input channels ([`Guidance`]); each is written only
//! when it differs from the original behaviour.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RunnerError};
use crate::networks::NetworkConfig;
use crate::pipeline::Pipeline;
use crate::unet::UNetConfig;

/// The model folder's file names (shared with the worker and the API's starter model).
pub use medlabel_events::models::folder::{
    CONFIG_FILE, PYTORCH_FILE, SAFETENSORS_FILE as WEIGHTS_FILE, TORCHSCRIPT_FILE, VERSION_FILE,
};

/// How a model folder stores its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightsFormat {
    /// `model.safetensors`, variables by MONAI state-dict name (native networks).
    #[default]
    Safetensors,
    /// `model.pt` from `torch.save(state_dict)` (native networks), read without pickle
    /// execution by [`crate::formats::state_dict`].
    Pytorch,
    /// `model.ts`, a TorchScript archive (network `torchscript`).
    Torchscript,
}

impl WeightsFormat {
    pub fn file_name(self) -> &'static str {
        match self {
            WeightsFormat::Safetensors => WEIGHTS_FILE,
            WeightsFormat::Pytorch => PYTORCH_FILE,
            WeightsFormat::Torchscript => TORCHSCRIPT_FILE,
        }
    }

    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The axis order a network sees its input in.
///
/// The runner holds volumes as `[.., k, j, i]` tensors while MONAI hands networks
/// `[.., i, j, k]`; a convolution kernel is not symmetric under that swap, so weights
/// trained one way give different results the other way. Models the runner trained
/// before this field existed use `zyx`; imported MONAI weights and new models use `xyz`,
/// for which the runner transposes each window before and after the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    #[default]
    Zyx,
    Xyz,
}

impl Layout {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What a model does, as MONAI Label's `/info/` names it (`type`): the SmartEdit panels
/// of Slicer and OHIF appear for `deepgrow` and `deepedit` models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    /// Automatic segmentation: the image is the network's only input.
    #[default]
    Segmentation,
    /// Click-guided binary segmentation of whatever was clicked (MONAI's DeepGrow):
    /// two guidance channels, foreground and background clicks.
    Deepgrow,
    /// Click-guided multi-label segmentation (MONAI's DeepEdit): one guidance channel
    /// per label, background included; without clicks it segments automatically.
    Deepedit,
}

impl ModelType {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the network takes click guidance beside the image.
    pub fn is_interactive(self) -> bool {
        self != Self::Segmentation
    }
}

/// How clicks become guidance channels (MONAI's `AddGuidanceSignal`), and how training
/// simulates them (MONAI's DeepEdit/DeepGrow interaction loop).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Guidance {
    /// σ of the Gaussian around each click, in voxels of the model's grid.
    pub sigma: f64,
    /// Training: at most this many rounds of simulated clicks before each loss step.
    pub max_interactions: usize,
    /// Training: the probability that a batch gets clicks at all (MONAI DeepEdit's
    /// `deepgrow_probability`; without clicks it learns automatic segmentation).
    pub click_probability: f64,
    /// Inference: voxels (model grid) around the clicks' box that the clicks may change.
    pub margin: i64,
    /// Inference: voxels (model grid) at the region's edges that the network sees for
    /// context but whose labels are not taken (a window's edge is its worst part).
    pub context: i64,
}

impl Default for Guidance {
    fn default() -> Self {
        Self {
            sigma: 2.0,
            max_interactions: 3,
            click_probability: 0.5,
            margin: 8,
            context: 8,
        }
    }
}

impl Guidance {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Intensity normalisation (the pipeline's `intensity` step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Intensity {
    /// CT windowing (MONAI `ScaleIntensityRanged`): `[a_min, a_max]` maps linearly to
    /// `[b_min, b_max]`, clamped when `clip`.
    Ct {
        a_min: f64,
        a_max: f64,
        b_min: f64,
        b_max: f64,
        clip: bool,
    },
    /// Z-score over all voxels (MONAI `NormalizeIntensityd()` with its defaults).
    Mr,
    /// MONAI `NormalizeIntensityd(nonzero, channel_wise)`: z-score over the non-zero
    /// voxels only (the others stay 0) when `nonzero`, per channel when `channel_wise`.
    Normalize {
        #[serde(default)]
        nonzero: bool,
        #[serde(default)]
        channel_wise: bool,
    },
    /// MONAI `ScaleIntensityd(minv, maxv)`: min–max rescaling to `[minv, maxv]`.
    Scale { minv: f64, maxv: f64 },
    /// Several steps in order (a bundle with more than one intensity transform).
    Chain { steps: Vec<Intensity> },
}

impl Intensity {
    /// The window MONAI Label's spleen model uses (soft tissue, −57…164 HU → 0…1).
    pub fn spleen_ct() -> Self {
        Intensity::Ct {
            a_min: -57.0,
            a_max: 164.0,
            b_min: 0.0,
            b_max: 1.0,
            clip: true,
        }
    }
}

/// A model's description: labels, geometry, preprocessing and network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Segmentation, or a click-guided model (whose network takes guidance channels).
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "ModelType::is_default"
    )]
    pub model_type: ModelType,
    #[serde(default, skip_serializing_if = "Guidance::is_default")]
    pub guidance: Guidance,
    /// Label name → output channel; 0 is background and is usually listed too.
    pub labels: BTreeMap<String, i64>,
    /// Voxel spacing (mm, along R, A, S) the network works at.
    pub spacing: [f64; 3],
    pub intensity: Intensity,
    /// Sliding-window / training crop size in voxels (along R, A, S).
    pub roi_size: [i64; 3],
    pub network: NetworkConfig,
    #[serde(default, skip_serializing_if = "WeightsFormat::is_default")]
    pub format: WeightsFormat,
    #[serde(default, skip_serializing_if = "Layout::is_default")]
    pub layout: Layout,
    #[serde(default, skip_serializing_if = "Pipeline::is_standard")]
    pub pipeline: Pipeline,
}

/// The spleen model ([`ModelConfig::spleen`]), so literals can fill in the rest.
impl Default for ModelConfig {
    fn default() -> Self {
        Self::spleen()
    }
}

impl ModelConfig {
    /// MONAI Label's radiology `segmentation_spleen` model: UNet (16, 32, 64, 128, 256),
    /// strides 2, two residual units, batch norm, 96³ windows at 1.5 × 1.5 × 2 mm.
    pub fn spleen() -> Self {
        Self {
            model_type: ModelType::Segmentation,
            guidance: Guidance::default(),
            labels: BTreeMap::from([("background".into(), 0), ("spleen".into(), 1)]),
            spacing: [1.5, 1.5, 2.0],
            intensity: Intensity::spleen_ct(),
            roi_size: [96, 96, 96],
            network: UNetConfig {
                spatial_dims: 3,
                in_channels: 1,
                out_channels: 2,
                channels: vec![16, 32, 64, 128, 256],
                strides: vec![2, 2, 2, 2],
                num_res_units: 2,
                norm: crate::unet::Norm::Batch,
                dropout: 0.0,
            }
            .into(),
            format: WeightsFormat::Safetensors,
            layout: Layout::Zyx,
            pipeline: Pipeline::default(),
        }
    }

    /// A fresh model of a template network for a new label set (MONAI Label's
    /// "new model from a template"): `network` is `unet`, `segresnet` or `dynunet` with
    /// MONAI's usual settings, sized to `labels` (name → output channel; channel 0 is
    /// background and needs no name), on CT-windowed 1.5 × 1.5 × 2 mm voxels in 96³
    /// windows, in MONAI's axis order so the weights also work in MONAI.
    pub fn template(network: &str, labels: BTreeMap<String, i64>) -> Result<Self> {
        let out = labels.values().copied().max().unwrap_or(0) + 1;
        if out < 2 {
            return Err(RunnerError::invalid(
                "a new model needs at least one label > 0",
            ));
        }
        let mut net = match network {
            "unet" => Self::spleen().network,
            "segresnet" => NetworkConfig::SegResNet(crate::networks::SegResNetConfig {
                init_filters: 16,
                dropout: 0.2,
                ..crate::networks::SegResNetConfig::new(1, out)
            }),
            "dynunet" => NetworkConfig::DynUNet(crate::networks::DynUNetConfig {
                in_channels: 1,
                out_channels: out,
                kernel_size: vec![[3; 3]; 5],
                strides: vec![[1; 3], [2; 3], [2; 3], [2; 3], [2; 3]],
                upsample_kernel_size: vec![[2; 3]; 4],
                filters: vec![32, 64, 128, 256, 320],
                norm: crate::networks::layers::NormConfig::Instance { affine: true },
                act: crate::networks::layers::ActConfig::LeakyRelu {
                    negative_slope: 0.01,
                },
                dropout: 0.0,
                res_block: true,
                trans_bias: false,
                deep_supervision_heads: 0,
            }),
            other => {
                return Err(RunnerError::invalid(format!(
                    "unknown network template {other:?}: use unet, segresnet or dynunet"
                )));
            }
        };
        net.set_out_channels(out);
        let cfg = Self {
            labels,
            network: net,
            layout: Layout::Xyz,
            ..Self::spleen()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The weights file of a model folder with this config.
    pub fn weights_path(&self, dir: &Path) -> PathBuf {
        dir.join(self.format.file_name())
    }

    /// Checks that sizes fit the network, labels fit its outputs, the pipeline is
    /// complete and the weights format suits the network.
    pub fn validate(&self) -> Result<()> {
        self.network.validate()?;
        if self.dimension() == 2 && !self.is_slice_model() {
            return Err(RunnerError::invalid(format!(
                "a 2D network works on axial slices: roi_size {:?} must be one voxel along S, \
                 with the standard preprocessing and the zyx layout",
                self.roi_size
            )));
        }
        let div = self.network.size_divisor();
        // The network's axes are the config's (i, j, k) in MONAI's layout, reversed in
        // the runner's original one.
        let div = match self.layout {
            Layout::Xyz => div,
            Layout::Zyx => [div[2], div[1], div[0]],
        };
        if self
            .roi_size
            .iter()
            .zip(div)
            .any(|(&r, d)| r <= 0 || r % d != 0)
        {
            return Err(RunnerError::invalid(format!(
                "roi_size {:?} must be positive multiples of {div:?} (product of strides)",
                self.roi_size
            )));
        }
        if self.spacing.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return Err(RunnerError::invalid(format!(
                "spacing {:?} must be positive",
                self.spacing
            )));
        }
        let out = self.network.out_channels();
        if let Some((name, idx)) = self.labels.iter().find(|&(_, &i)| i < 0 || i >= out.max(2)) {
            return Err(RunnerError::invalid(format!(
                "label {name:?} = {idx} is outside the network's {out} outputs"
            )));
        }
        // A segmentation network may take several image channels (an imported bundle's).
        let inputs = 1 + self.guidance_channels();
        if self.model_type.is_interactive() && self.network.in_channels() != inputs {
            return Err(RunnerError::invalid(format!(
                "a {:?} model needs {inputs} input channels (image and guidance), the network has {}",
                self.model_type,
                self.network.in_channels()
            )));
        }
        if self.model_type == ModelType::Deepedit && self.labels.get("background") != Some(&0) {
            return Err(RunnerError::invalid(
                "a deepedit model names background = 0 among its labels (it takes background clicks)",
            ));
        }
        let torchscript = matches!(self.network, NetworkConfig::TorchScript(_));
        if torchscript != (self.format == WeightsFormat::Torchscript) {
            return Err(RunnerError::invalid(format!(
                "network {} cannot be stored as {:?}",
                self.network.name(),
                self.format
            )));
        }
        self.pipeline.validate(out)
    }

    /// 2 for a network that works on axial slices (a 2D UNet), else 3. MONAI Label
    /// reports it as the model's `dimension`; Slicer and OHIF then send the clicks of
    /// one slice.
    pub fn dimension(&self) -> usize {
        match &self.network {
            NetworkConfig::UNet(c) => c.spatial_dims,
            _ => 3,
        }
    }

    /// What a 2D model relies on: windows one slice deep along S, which the standard
    /// preprocessing's orientation puts on the tensor's D axis, the one the network
    /// folds (and the zyx layout keeps there).
    fn is_slice_model(&self) -> bool {
        self.roi_size[2] == 1 && self.pipeline.has_standard_pre() && self.layout == Layout::Zyx
    }

    /// Reads and validates `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| RunnerError::io(&path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| RunnerError::json(path.display().to_string(), e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes `dir/config.json` (pretty, so it diffs well in the repository).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CONFIG_FILE);
        let text =
            serde_json::to_string_pretty(self).map_err(|e| RunnerError::json("model config", e))?;
        std::fs::write(&path, text + "\n").map_err(|e| RunnerError::io(&path, e))
    }

    /// Guidance channels beside the image: deepgrow's foreground and background,
    /// deepedit's one per label (ordered by label index), none for segmentation.
    pub fn guidance_channels(&self) -> i64 {
        match self.model_type {
            ModelType::Segmentation => 0,
            ModelType::Deepgrow => 2,
            ModelType::Deepedit => self.labels.len() as i64,
        }
    }

    /// Label names ordered by channel, as MONAI Label's `label_names` result field.
    pub fn label_names(&self) -> BTreeMap<String, i64> {
        self.labels.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_reads_and_writes_back_unchanged() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/segmentation_spleen");
        let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
        let cfg = ModelConfig::load(&dir).unwrap();
        assert!(matches!(cfg.network, NetworkConfig::UNet(_)));
        assert_eq!(
            (cfg.format, cfg.layout),
            (WeightsFormat::Safetensors, Layout::Zyx)
        );
        assert!(cfg.pipeline.is_standard());
        let out = tempfile::tempdir().unwrap();
        cfg.save(out.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join(CONFIG_FILE)).unwrap(),
            text
        );
    }

    #[test]
    fn templates_size_the_network_to_the_labels() {
        let labels = BTreeMap::from([("spleen".to_owned(), 1), ("liver".to_owned(), 2)]);
        for name in ["unet", "segresnet", "dynunet"] {
            let cfg = ModelConfig::template(name, labels.clone()).unwrap();
            assert_eq!(cfg.network.name(), name);
            assert_eq!(cfg.network.out_channels(), 3);
            assert_eq!(cfg.layout, Layout::Xyz);
        }
        assert!(ModelConfig::template("segresnet", BTreeMap::new()).is_err());
    }
}
