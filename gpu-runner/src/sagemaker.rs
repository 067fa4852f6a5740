//! The SageMaker training-container contract, for `medlabel-runner sagemaker-train`.
//!
//! SageMaker mounts hyperparameters at `<root>/input/config/hyperparameters.json` (every
//! value a string), input channels at `<root>/input/data/<channel>/`, and uploads
//! `<root>/model/` when the job succeeds; on failure the container writes the reason
//! to `<root>/output/failure` and exits non-zero. `root` is `/opt/ml` in a real job and
//! a temporary folder in tests.
//!
//! A channel holds a MONAI Label studies folder (images at the top, labels under
//! `labels/final/`). Hyperparameter values are parsed as JSON where they parse (so
//! `"10"` becomes 10 and `"{\"labels\":…}"` a model config) and are otherwise kept as
//! strings, then read as a [`TrainRequest`]; `channel` picks the data channel
//! (default `training`). Without a `model` the MONAI Label spleen network is trained.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::{Map, Value};

use crate::config::ModelConfig;
use crate::error::{Result, RunnerError};
use crate::train::{TrainOutcome, TrainRequest, train};

/// The `/opt/ml` layout below some root.
#[derive(Debug, Clone)]
pub struct SageMakerPaths {
    pub root: PathBuf,
}

impl SageMakerPaths {
    pub fn hyperparameters(&self) -> PathBuf {
        self.root.join("input/config/hyperparameters.json")
    }
    pub fn channel(&self, name: &str) -> PathBuf {
        self.root.join("input/data").join(name)
    }
    pub fn model(&self) -> PathBuf {
        self.root.join("model")
    }
    pub fn failure(&self) -> PathBuf {
        self.root.join("output/failure")
    }
}

/// Runs the training job; on error writes `output/failure` and returns the error.
pub fn run(paths: &SageMakerPaths) -> Result<TrainOutcome> {
    let result = run_inner(paths);
    if let Err(e) = &result {
        let failure = paths.failure();
        if let Some(dir) = failure.parent() {
            // Best effort: the error itself is what the caller reports.
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&failure, e.to_string());
    }
    result
}

fn run_inner(paths: &SageMakerPaths) -> Result<TrainOutcome> {
    let hp_path = paths.hyperparameters();
    let mut hp: Map<String, Value> = if hp_path.is_file() {
        let text = std::fs::read_to_string(&hp_path).map_err(|e| RunnerError::io(&hp_path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| RunnerError::json(hp_path.display().to_string(), e))?
    } else {
        Map::new()
    };
    let channel = match hp.remove("channel") {
        Some(Value::String(s)) => s,
        _ => "training".to_owned(),
    };
    let typed: Map<String, Value> = hp
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, serde_json::from_str(&s).unwrap_or(Value::String(s))),
            other => (k, other),
        })
        .collect();
    let mut req: TrainRequest = serde_json::from_value(Value::Object(typed))
        .map_err(|e| RunnerError::json("hyperparameters", e))?;
    if req.model.is_none() && req.pretrained.is_none() {
        req.model = Some(ModelConfig::spleen());
    }
    let data = paths.channel(&channel);
    let datalist = crate::synth::studies_datalist(&data)?;
    if datalist.is_empty() {
        return Err(RunnerError::invalid(format!(
            "channel {channel:?} ({}) has no image with a label under labels/final/",
            data.display()
        )));
    }
    train(
        &req,
        &datalist,
        &paths.model(),
        |_| {},
        &AtomicBool::new(false),
    )
}

/// Whether `dir` looks like a finished model folder.
pub fn has_model(dir: &Path) -> bool {
    crate::model::Model::weights_file(dir).is_ok_and(|weights| weights.is_file())
}
