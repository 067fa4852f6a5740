//! The JSON that travels with a model's weights (`config.json` beside
//! `model.safetensors`): everything inference needs to reproduce the training-time
//! preprocessing, and everything needed to rebuild the network.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RunnerError};
use crate::unet::UNetConfig;

/// File name of the config inside a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights inside a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the stamp a worker writes last into a model folder it materialises:
/// `"<model version> <weights sha256>"`.
pub const VERSION_FILE: &str = ".version";

/// Intensity normalisation applied after resampling.
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
    /// MR z-score over all voxels (MONAI `NormalizeIntensityd`).
    Mr,
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
    /// Label name → output channel; 0 is background and is usually listed too.
    pub labels: BTreeMap<String, i64>,
    /// Voxel spacing (mm, along R, A, S) the network works at.
    pub spacing: [f64; 3],
    pub intensity: Intensity,
    /// Sliding-window / training crop size in voxels (along R, A, S).
    pub roi_size: [i64; 3],
    pub network: UNetConfig,
}

impl ModelConfig {
    /// MONAI Label's radiology `segmentation_spleen` model: UNet (16, 32, 64, 128, 256),
    /// strides 2, two residual units, batch norm, 96³ windows at 1.5 × 1.5 × 2 mm.
    pub fn spleen() -> Self {
        Self {
            labels: BTreeMap::from([("background".into(), 0), ("spleen".into(), 1)]),
            spacing: [1.5, 1.5, 2.0],
            intensity: Intensity::spleen_ct(),
            roi_size: [96, 96, 96],
            network: UNetConfig {
                in_channels: 1,
                out_channels: 2,
                channels: vec![16, 32, 64, 128, 256],
                strides: vec![2, 2, 2, 2],
                num_res_units: 2,
                norm: crate::unet::Norm::Batch,
                dropout: 0.0,
            },
        }
    }

    /// Checks that sizes fit the network and labels fit its outputs.
    pub fn validate(&self) -> Result<()> {
        self.network.validate()?;
        let div = self.network.size_divisor();
        if self.roi_size.iter().any(|&r| r <= 0 || r % div != 0) {
            return Err(RunnerError::invalid(format!(
                "roi_size {:?} must be positive multiples of {div} (product of strides)",
                self.roi_size
            )));
        }
        if self.spacing.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return Err(RunnerError::invalid(format!(
                "spacing {:?} must be positive",
                self.spacing
            )));
        }
        if let Some((name, idx)) = self
            .labels
            .iter()
            .find(|&(_, &i)| i < 0 || i >= self.network.out_channels)
        {
            return Err(RunnerError::invalid(format!(
                "label {name:?} = {idx} is outside the network's {} outputs",
                self.network.out_channels
            )));
        }
        Ok(())
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

    /// Label names ordered by channel, as MONAI Label's `label_names` result field.
    pub fn label_names(&self) -> BTreeMap<String, i64> {
        self.labels.clone()
    }
}
