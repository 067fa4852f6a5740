//! A loaded model: config + network + the var store holding its weights on a device.
//!
//! The weights file depends on the config's [`WeightsFormat`]: safetensors and PyTorch
//! state dicts load into a native network by variable name (strictly: every name, every
//! shape), a TorchScript archive is the network itself. Saving writes safetensors for
//! native networks (whatever they were loaded from) and TorchScript for TorchScript.

use std::path::Path;

use tch::{Device, Tensor, nn};

use crate::config::{Layout, ModelConfig, WeightsFormat};
use crate::error::{Result, RunnerError};
use crate::formats::state_dict;
use crate::networks::{Mode, Network, NetworkConfig, TorchScript, load_state_dict};

/// A network with its weights and the config it was trained with.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub vs: nn::VarStore,
    pub net: Network,
}

impl Model {
    /// A freshly initialised native model (weights from `tch::manual_seed` state).
    pub fn new(config: ModelConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let net = Network::new(&vs.root(), &config.network)?;
        Ok(Self { config, vs, net })
    }

    /// Loads `dir/config.json` and the weights file its format names onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config = crate::config::ModelConfig::load(dir)?;
        let weights = config.weights_path(dir);
        if !weights.is_file() {
            return Err(RunnerError::invalid(format!(
                "{} is missing",
                weights.display()
            )));
        }
        if config.format == WeightsFormat::Torchscript {
            let vs = nn::VarStore::new(device);
            let net = Network::TorchScript(TorchScript::load(&weights, &vs.root())?);
            return Ok(Self { config, vs, net });
        }
        let tensors = match config.format {
            WeightsFormat::Pytorch => state_dict::read(&weights)?,
            _ => Tensor::read_safetensors(&weights)
                .map_err(|e| RunnerError::invalid(format!("{}: {e}", weights.display())))?,
        };
        let model = Self::new(config, device)?;
        load_state_dict(&model.vs, tensors)
            .map_err(|e| RunnerError::invalid(format!("{}: {e}", weights.display())))?;
        Ok(model)
    }

    /// The weights file of the model folder `dir` (what a server watches for a new
    /// version): `model.safetensors`, `model.pt` or `model.ts` as its config says.
    pub fn weights_file(dir: &Path) -> Result<std::path::PathBuf> {
        Ok(crate::config::ModelConfig::load(dir)?.weights_path(dir))
    }

    /// Writes config and weights into `dir` (created if needed). The weights go to a
    /// temporary name first and are renamed, so a reader never sees half a file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| RunnerError::io(dir, e))?;
        let mut config = self.config.clone();
        if config.format == WeightsFormat::Pytorch {
            config.format = WeightsFormat::Safetensors;
        }
        let name = config.format.file_name();
        // The extension stays last: tch picks the file format from it.
        let tmp = dir.join(format!(".tmp.{name}"));
        match &self.net {
            Network::TorchScript(ts) => ts.save(&tmp)?,
            _ => self.vs.save(&tmp)?,
        }
        let dst = dir.join(name);
        std::fs::rename(&tmp, &dst).map_err(|e| RunnerError::io(&dst, e))?;
        config.save(dir)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Logits for a `[N, C, D, H, W]` batch in the runner's tensor order, whatever axis
    /// order the network works in ([`Layout`]). A click-guided model given the image
    /// alone sees empty guidance channels: no clicks, automatic segmentation (DeepEdit).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let missing = self.config.network.in_channels() - x.size()[1];
        if self.config.model_type.is_interactive() && missing > 0 {
            let mut shape = x.size();
            shape[1] = missing;
            let empty = Tensor::zeros(shape.as_slice(), (x.kind(), x.device()));
            return self.forward(&Tensor::cat(&[x.shallow_clone(), empty], 1), mode);
        }
        match self.config.layout {
            Layout::Zyx => self.net.forward(x, mode),
            Layout::Xyz => {
                let t = x.permute([0, 1, 4, 3, 2]).contiguous();
                Ok(self.net.forward(&t, mode)?.permute([0, 1, 4, 3, 2]))
            }
        }
    }

    /// Whether MC-dropout can score with this model: a native network with dropout.
    pub fn supports_mc_dropout(&self) -> bool {
        !matches!(self.config.network, NetworkConfig::TorchScript(_))
            && self.config.network.mc_dropout() > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Intensity, ModelConfig};
    use crate::networks::Mode;
    use crate::unet::{Norm, UNetConfig};
    use std::collections::BTreeMap;
    use tch::{Kind, Tensor};

    #[test]
    fn save_then_load_gives_identical_outputs() {
        tch::manual_seed(7);
        let config = ModelConfig {
            model_type: Default::default(),
            guidance: Default::default(),
            labels: BTreeMap::from([
                ("background".into(), 0),
                ("liver".into(), 1),
                ("spleen".into(), 2),
            ]),
            spacing: [1.5, 1.5, 2.0],
            intensity: Intensity::Mr,
            roi_size: [16, 16, 16],
            network: UNetConfig {
                spatial_dims: 3,
                in_channels: 1,
                out_channels: 3,
                channels: vec![4, 8, 16],
                strides: vec![2, 2],
                num_res_units: 2,
                norm: Norm::Batch,
                dropout: 0.2,
            }
            .into(),
            format: Default::default(),
            layout: Default::default(),
            pipeline: Default::default(),
        };
        let model = Model::new(config.clone(), Device::Cpu).unwrap();
        // One training step so batch-norm running stats differ from their initial values.
        let x = Tensor::randn([2, 1, 16, 16, 16], (Kind::Float, Device::Cpu));
        let _ = model.forward(&x, Mode::TRAIN).unwrap();
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let loaded = Model::load(dir.path(), Device::Cpu).unwrap();
        assert_eq!(loaded.config, config);
        let a = tch::no_grad(|| model.forward(&x, Mode::EVAL)).unwrap();
        let b = tch::no_grad(|| loaded.forward(&x, Mode::EVAL)).unwrap();
        assert!(a.equal(&b));
        // A fresh model with another seed really differs, so the equality above is earned.
        tch::manual_seed(8);
        let other = Model::new(config, Device::Cpu).unwrap();
        assert!(
            !tch::no_grad(|| other.forward(&x, Mode::EVAL))
                .unwrap()
                .equal(&a)
        );
    }

    #[test]
    fn loading_a_folder_without_weights_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = ModelConfig {
            model_type: Default::default(),
            guidance: Default::default(),
            labels: BTreeMap::from([("background".into(), 0)]),
            spacing: [1.0; 3],
            intensity: Intensity::Mr,
            roi_size: [8; 3],
            network: UNetConfig {
                spatial_dims: 3,
                in_channels: 1,
                out_channels: 2,
                channels: vec![4, 8],
                strides: vec![2],
                num_res_units: 0,
                norm: Norm::Instance,
                dropout: 0.0,
            }
            .into(),
            format: Default::default(),
            layout: Default::default(),
            pipeline: Default::default(),
        };
        config.save(dir.path()).unwrap();
        let err = Model::load(dir.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        let mut bad = config;
        bad.roi_size = [9, 8, 8];
        assert!(bad.validate().is_err());
    }
}
