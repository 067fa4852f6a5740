//! Supervised training (MONAI Label's segmentation trainer): Dice + cross-entropy,
//! AdamW, random pos/neg crops with flips and intensity shifts, sliding-window
//! validation Dice every `val_interval` epochs, optional early stopping. Click-guided
//! models (deepgrow, deepedit) train on each batch after simulated clicks
//! ([`crate::interaction`]); deepedit validates its automatic segmentation, deepgrow
//! the mask one click in each organ gives.
//!
//! Any model trains: native networks through their var store, TorchScript modules
//! through the parameters libtorch exposes (registered in the same var store, see
//! [`crate::networks::torchscript`]). A TorchScript checkpoint holds its parameters
//! only; the best model is saved as a whole TorchScript archive, buffers included.
//!
//! Output folder layout (what the job worker publishes):
//! - `config.json` + `model.safetensors`: the best model so far (by validation Dice);
//! - `checkpoints/epoch_<N>.safetensors` + `.json` (epoch, iteration, best metric) +
//!   `.optimizer.safetensors` (AdamW's step and moments): the last `n_saved` epochs, for
//!   resuming;
//! - `train_stats.json`: MONAI Label's progress document, rewritten every epoch.
//!
//! An epoch is one pass over the training volumes, one iteration per
//! `train_batch_size` volumes with `num_samples` crops from each as the batch. Resuming restores weights, counters and the
//! optimizer's state ([`crate::optim::AdamW`]: step count and moments), so training goes
//! on where it stopped; only the random crops are drawn afresh from the seed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, ModelType};
use crate::dataset::{Sample, Sampling};
use crate::error::{Result, RunnerError};
use crate::infer::{InferOptions, sliding_window};
use crate::loss::{dice_ce_loss, mean_dice};
use crate::model::Model;
use crate::networks::Mode;
use crate::optim::AdamW;
use crate::stats::{PhaseStats, TrainStats};
use crate::transforms::tensor_order;

/// An (image, label) file pair.
pub type Pair = (PathBuf, PathBuf);

/// A training request: hyperparameters plus where to start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainRequest {
    /// Config of a new model; ignored when `pretrained` is set.
    pub model: Option<ModelConfig>,
    /// A model folder to fine-tune instead of starting from random weights.
    pub pretrained: Option<PathBuf>,
    /// Train the `pretrained` folder's network from freshly initialised weights (MONAI
    /// Label's `pretrained: false`); native networks only.
    pub from_scratch: bool,
    /// Volumes per iteration (MONAI Label's `train_batch_size`), each giving
    /// `num_samples` crops.
    pub train_batch_size: usize,
    /// Stop after this many validations without a better Dice (0: never).
    pub early_stop_patience: usize,
    /// A checkpoint (`checkpoints/epoch_N.safetensors`) to resume from.
    pub resume: Option<PathBuf>,
    pub max_epochs: usize,
    pub val_interval: usize,
    pub val_split: f64,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub num_samples: usize,
    pub pos: f64,
    pub neg: f64,
    pub flip_prob: f64,
    pub shift_prob: f64,
    pub n_saved: usize,
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Autocast to float16 on CUDA.
    pub amp: bool,
    pub sw_overlap: f64,
}

impl Default for TrainRequest {
    fn default() -> Self {
        Self {
            model: None,
            pretrained: None,
            from_scratch: false,
            train_batch_size: 1,
            early_stop_patience: 0,
            resume: None,
            max_epochs: 50,
            val_interval: 1,
            val_split: 0.2,
            learning_rate: 1e-4,
            weight_decay: 1e-5,
            num_samples: 4,
            pos: 1.0,
            neg: 1.0,
            flip_prob: 0.5,
            shift_prob: 0.5,
            n_saved: 5,
            seed: 0,
            device: "auto".into(),
            amp: true,
            sw_overlap: 0.25,
        }
    }
}

/// What a finished (or stopped) run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    pub stats: TrainStats,
    /// The folder holding the best model (`config.json` + `model.safetensors`).
    pub model_dir: PathBuf,
    pub stopped: bool,
}

/// Checkpoint sidecar: the counters needed to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CheckpointMeta {
    epoch: usize,
    iteration: usize,
    best_metric: f64,
    best_metric_epoch: usize,
}

/// Trains on `datalist` (image, label) pairs, writing to `out`. `progress` is called
/// after every epoch; setting `stop` ends the run after the current iteration, keeping
/// what was saved.
pub fn train(
    req: &TrainRequest,
    datalist: &[(PathBuf, PathBuf)],
    out: &Path,
    mut progress: impl FnMut(&TrainStats),
    stop: &AtomicBool,
) -> Result<TrainOutcome> {
    if datalist.is_empty() {
        return Err(RunnerError::invalid(
            "training needs at least one labelled image",
        ));
    }
    if req.max_epochs == 0
        || req.num_samples == 0
        || req.val_interval == 0
        || req.train_batch_size == 0
    {
        return Err(RunnerError::invalid(
            "max_epochs, num_samples, val_interval and train_batch_size must be positive",
        ));
    }
    let device = crate::parse_device(&req.device)?;
    let ckpt_dir = out.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| RunnerError::io(&ckpt_dir, e))?;
    tch::manual_seed(req.seed as i64);
    let mut rng = ChaCha8Rng::seed_from_u64(req.seed);

    let mut model = match (&req.pretrained, &req.model) {
        (Some(dir), _) if req.from_scratch => {
            let mut cfg = ModelConfig::load(dir)?;
            if cfg.format == crate::config::WeightsFormat::Torchscript {
                return Err(RunnerError::invalid(
                    "a TorchScript model cannot start from scratch: its initialiser is not in the file",
                ));
            }
            cfg.format = crate::config::WeightsFormat::Safetensors;
            Model::new(cfg, device)?
        }
        (Some(dir), _) => Model::load(dir, device)?,
        (None, Some(cfg)) => Model::new(cfg.clone(), device)?,
        (None, None) => {
            return Err(RunnerError::invalid(
                "train request needs `model` or `pretrained`",
            ));
        }
    };
    let mut meta = CheckpointMeta {
        epoch: 0,
        iteration: 0,
        best_metric: -1.0,
        best_metric_epoch: 0,
    };
    let mut opt = AdamW::new(&model.vs, req.learning_rate, req.weight_decay);
    if let Some(ckpt) = &req.resume {
        model.vs.load(ckpt)?;
        opt.load(&optimizer_file(ckpt))?;
        let side = ckpt.with_extension("json");
        let text = std::fs::read_to_string(&side).map_err(|e| RunnerError::io(&side, e))?;
        meta = serde_json::from_str(&text)
            .map_err(|e| RunnerError::json(side.display().to_string(), e))?;
    }

    let (train_pairs, val_pairs) = split(datalist, req.val_split, &mut rng);
    let cfg = model.config.clone();
    if !cfg
        .pipeline
        .post
        .iter()
        .any(|s| matches!(s, crate::pipeline::PostStep::Argmax))
    {
        return Err(RunnerError::invalid(
            "training needs a softmax/argmax model (sigmoid-threshold outputs are not trained)",
        ));
    }
    let train_set = train_pairs
        .iter()
        .map(|(i, l)| Sample::load(i, l, &cfg, device, true))
        .collect::<Result<Vec<_>>>()?;
    let val_set = val_pairs
        .iter()
        .map(|(i, l)| Sample::load(i, l, &cfg, device, false))
        .collect::<Result<Vec<_>>>()?;

    let sampling = Sampling {
        num_samples: req.num_samples,
        pos: req.pos,
        neg: req.neg,
        flip_prob: req.flip_prob,
        shift_prob: req.shift_prob,
        shift_offset: 0.1,
    };
    let roi = tensor_order(cfg.roi_size);
    let amp = req.amp && device.is_cuda();
    let classes = cfg.network.out_channels();
    let started = Instant::now();
    let start_ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut stats = TrainStats {
        total_epochs: req.max_epochs,
        total_iterations: req.max_epochs * train_set.len().div_ceil(req.train_batch_size),
        start_ts,
        best_metric: meta.best_metric.max(0.0),
        train: PhaseStats {
            key_metric_name: "train_dice".into(),
            ..Default::default()
        },
        eval: PhaseStats {
            key_metric_name: "val_mean_dice".into(),
            best_metric: meta.best_metric.max(0.0),
            best_metric_epoch: meta.best_metric_epoch,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    let mut stopped = false;

    for epoch in meta.epoch + 1..=req.max_epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut dice_sum, mut dice_n) = (0.0, 0.0, 0usize);
        for batch in order.chunks(req.train_batch_size) {
            if stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            let (xs, ys): (Vec<_>, Vec<_>) = batch
                .iter()
                .map(|&idx| train_set[idx].crops(roi, &sampling, &mut rng))
                .unzip();
            let (mut x, mut y) = (tch::Tensor::cat(&xs, 0), tch::Tensor::cat(&ys, 0));
            if cfg.model_type.is_interactive() {
                (x, y) = crate::interaction::simulate(&model, &x, &y, &mut rng)?;
            }
            let logits = crate::with_amp(amp, || model.forward(&x, Mode::TRAIN))?;
            let loss = dice_ce_loss(&logits.to_kind(tch::Kind::Float), &y);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]);
            if let Some(d) = mean_dice(&logits.argmax(1, true), &y, classes) {
                dice_sum += d;
                dice_n += 1;
            }
            meta.iteration += 1;
        }
        if stopped {
            break;
        }
        meta.epoch = epoch;
        stats.current_epoch = epoch;
        stats.epoch = epoch;
        stats.current_iteration = meta.iteration;
        let train_dice = if dice_n > 0 {
            dice_sum / dice_n as f64
        } else {
            0.0
        };
        stats.train.metrics.insert(
            "train_loss".into(),
            loss_sum / order.len().div_ceil(req.train_batch_size) as f64,
        );
        stats.train.metrics.insert("train_dice".into(), train_dice);
        if train_dice > stats.train.best_metric {
            stats.train.best_metric = train_dice;
            stats.train.best_metric_epoch = epoch;
        }
        if epoch % req.val_interval == 0 || epoch == req.max_epochs {
            // Without held-out volumes the training volumes are scored, as MONAI Label does.
            let val = if val_set.is_empty() {
                &train_set
            } else {
                &val_set
            };
            let score = if cfg.model_type == ModelType::Deepgrow {
                crate::interaction::deepgrow_dice(&model, val, req.sw_overlap)?
            } else {
                validate(&model, val, req.sw_overlap, amp)?
            };
            stats.eval.metrics.insert("val_mean_dice".into(), score);
            if score > meta.best_metric {
                meta.best_metric = score;
                meta.best_metric_epoch = epoch;
                model.save(out)?;
            }
            stats.best_metric = meta.best_metric;
            stats.eval.best_metric = meta.best_metric;
            stats.eval.best_metric_epoch = meta.best_metric_epoch;
        }
        save_checkpoint(&model, &opt, &ckpt_dir, &meta, req.n_saved)?;
        // Early stopping counts validations since the best one, as ignite's handler does.
        let patience_over = req.early_stop_patience > 0
            && (epoch - meta.best_metric_epoch) / req.val_interval >= req.early_stop_patience;
        let done = epoch == req.max_epochs || patience_over;
        if patience_over {
            stats.total_epochs = epoch;
        }
        stats.set_elapsed(started.elapsed().as_secs(), done);
        stats.write(out)?;
        progress(&stats);
        if patience_over {
            break;
        }
    }
    if stopped {
        stats.write(out)?;
    }
    if !Model::weights_file(out).is_ok_and(|weights| weights.is_file()) {
        // Stopped before the first validation: publish the current weights anyway.
        model.save(out)?;
    }
    Ok(TrainOutcome {
        stats,
        model_dir: out.to_path_buf(),
        stopped,
    })
}

/// Mean foreground Dice over whole volumes with sliding-window inference.
pub fn validate(model: &Model, set: &[Sample], overlap: f64, amp: bool) -> Result<f64> {
    let cfg = &model.config;
    let opts = InferOptions {
        overlap: Some(overlap),
        ..Default::default()
    };
    let sw = sliding_window(model, &opts);
    let mut scores = Vec::new();
    for s in set {
        let logits = tch::no_grad(|| {
            crate::with_amp(amp, || sw.run(&s.image, |x| model.forward(x, Mode::EVAL)))
        })?;
        if let Some(d) = mean_dice(
            &logits.argmax(1, true),
            &s.label,
            cfg.network.out_channels(),
        ) {
            scores.push(d);
        }
    }
    Ok(if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f64>() / scores.len() as f64
    })
}

/// A seeded shuffle, then the last `val_split` fraction (at least one when there are
/// two or more pairs) is held out.
fn split(datalist: &[Pair], val_split: f64, rng: &mut ChaCha8Rng) -> (Vec<Pair>, Vec<Pair>) {
    let mut all = datalist.to_vec();
    all.shuffle(rng);
    let n_val = if all.len() < 2 || val_split <= 0.0 {
        0
    } else {
        ((all.len() as f64 * val_split).round() as usize).clamp(1, all.len() - 1)
    };
    let val = all.split_off(all.len() - n_val);
    (all, val)
}

/// The optimizer state saved beside the checkpoint `weights`.
fn optimizer_file(weights: &Path) -> PathBuf {
    weights.with_extension("optimizer.safetensors")
}

fn save_checkpoint(
    model: &Model,
    opt: &AdamW,
    dir: &Path,
    meta: &CheckpointMeta,
    keep: usize,
) -> Result<()> {
    let weights = dir.join(format!("epoch_{}.safetensors", meta.epoch));
    model.vs.save(&weights)?;
    opt.save(&optimizer_file(&weights))?;
    let side = weights.with_extension("json");
    let text = serde_json::to_string(meta).map_err(|e| RunnerError::json("checkpoint", e))?;
    std::fs::write(&side, text).map_err(|e| RunnerError::io(&side, e))?;
    if keep > 0 && meta.epoch > keep {
        for old in [
            format!("epoch_{}.safetensors", meta.epoch - keep),
            format!("epoch_{}.optimizer.safetensors", meta.epoch - keep),
            format!("epoch_{}.json", meta.epoch - keep),
        ] {
            let p = dir.join(old);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| RunnerError::io(&p, e))?;
            }
        }
    }
    Ok(())
}
