//! A loaded model: config + network + the var store holding its weights on a device.

use std::path::Path;

use tch::{Device, nn};

use crate::config::{ModelConfig, WEIGHTS_FILE};
use crate::error::{Result, RunnerError};
use crate::unet::{Mode, UNet};

/// A network with its weights and the config it was trained with.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub vs: nn::VarStore,
    pub net: UNet,
}

impl Model {
    /// A freshly initialised model (weights from `tch::manual_seed` state).
    pub fn new(config: ModelConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let net = UNet::new(&vs.root(), &config.network)?;
        Ok(Self { config, vs, net })
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config = ModelConfig::load(dir)?;
        let mut model = Self::new(config, device)?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(RunnerError::invalid(format!(
                "{} is missing",
                weights.display()
            )));
        }
        model.vs.load(&weights)?;
        Ok(model)
    }

    /// Writes config and weights into `dir` (created if needed). The weights go to a
    /// temporary name first and are renamed, so a reader never sees half a file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| RunnerError::io(dir, e))?;
        let tmp = dir.join(format!(".{WEIGHTS_FILE}.tmp.safetensors"));
        self.vs.save(&tmp)?;
        let dst = dir.join(WEIGHTS_FILE);
        std::fs::rename(&tmp, &dst).map_err(|e| RunnerError::io(&dst, e))?;
        self.config.save(dir)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Logits for a `[N, C, D, H, W]` batch.
    pub fn forward(&self, x: &tch::Tensor, mode: Mode) -> tch::Tensor {
        self.net.forward(x, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Intensity, ModelConfig};
    use crate::unet::{Norm, UNetConfig};
    use std::collections::BTreeMap;
    use tch::{Kind, Tensor};

    #[test]
    fn save_then_load_gives_identical_outputs() {
        tch::manual_seed(7);
        let config = ModelConfig {
            labels: BTreeMap::from([
                ("background".into(), 0),
                ("liver".into(), 1),
                ("spleen".into(), 2),
            ]),
            spacing: [1.5, 1.5, 2.0],
            intensity: Intensity::Mr,
            roi_size: [16, 16, 16],
            network: UNetConfig {
                in_channels: 1,
                out_channels: 3,
                channels: vec![4, 8, 16],
                strides: vec![2, 2],
                num_res_units: 2,
                norm: Norm::Batch,
                dropout: 0.2,
            },
        };
        let model = Model::new(config.clone(), Device::Cpu).unwrap();
        // One training step so batch-norm running stats differ from their initial values.
        let x = Tensor::randn([2, 1, 16, 16, 16], (Kind::Float, Device::Cpu));
        let _ = model.forward(&x, Mode::TRAIN);
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let loaded = Model::load(dir.path(), Device::Cpu).unwrap();
        assert_eq!(loaded.config, config);
        let a = tch::no_grad(|| model.forward(&x, Mode::EVAL));
        let b = tch::no_grad(|| loaded.forward(&x, Mode::EVAL));
        assert!(a.equal(&b));
        // A fresh model with another seed really differs, so the equality above is earned.
        tch::manual_seed(8);
        let other = Model::new(config, Device::Cpu).unwrap();
        assert!(!tch::no_grad(|| other.forward(&x, Mode::EVAL)).equal(&a));
    }

    #[test]
    fn loading_a_folder_without_weights_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = ModelConfig {
            labels: BTreeMap::from([("background".into(), 0)]),
            spacing: [1.0; 3],
            intensity: Intensity::Mr,
            roi_size: [8; 3],
            network: UNetConfig {
                in_channels: 1,
                out_channels: 2,
                channels: vec![4, 8],
                strides: vec![2],
                num_res_units: 0,
                norm: Norm::Instance,
                dropout: 0.0,
            },
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
