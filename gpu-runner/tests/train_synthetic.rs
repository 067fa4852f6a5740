//! End-to-end training on synthetic CT: a small UNet must learn to segment the spleen
//! well enough (Dice > 0.8) on volumes it never saw, through the public pipeline.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use medlabel_runner::infer::{InferOptions, segment};
use medlabel_runner::{Intensity, Model, ModelConfig, TrainRequest, UNetConfig, synth, train};

const DIMS: [usize; 3] = [48, 48, 40];
const SPACING: [f64; 3] = [3.0, 3.0, 3.5];

fn small_config() -> ModelConfig {
    ModelConfig {
        model_type: Default::default(),
        guidance: Default::default(),
        labels: BTreeMap::from([("background".into(), 0), ("spleen".into(), 1)]),
        spacing: [3.0, 3.0, 3.5],
        intensity: Intensity::spleen_ct(),
        roi_size: [32, 32, 32],
        network: UNetConfig {
            spatial_dims: 3,
            in_channels: 1,
            out_channels: 2,
            channels: vec![8, 16, 32],
            strides: vec![2, 2],
            num_res_units: 1,
            norm: Default::default(),
            dropout: 0.0,
        }
        .into(),
        ..Default::default()
    }
}

#[test]
fn short_seeded_training_reaches_dice_above_point_eight_on_held_out_volumes() {
    medlabel_runner::init_runtime();
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let studies = dir.path().join("studies");
    let datalist = synth::write_studies(&studies, 12, 100, DIMS, SPACING).unwrap();
    let req = TrainRequest {
        model: Some(small_config()),
        max_epochs: 40,
        val_interval: 2,
        learning_rate: 3e-3,
        num_samples: 4,
        device: "cpu".into(),
        seed: 1,
        n_saved: 2,
        ..Default::default()
    };
    let out = dir.path().join("out");
    let mut epochs_seen = Vec::new();
    let t = Instant::now();
    let outcome = train(
        &req,
        &datalist,
        &out,
        |s| epochs_seen.push(s.epoch),
        &AtomicBool::new(false),
    )
    .unwrap();
    eprintln!(
        "training: {:.1}s, stats {:?}",
        t.elapsed().as_secs_f64(),
        outcome.stats
    );
    assert_eq!(epochs_seen, (1..=40).collect::<Vec<_>>());
    assert!(outcome.stats.total_time.is_some());
    // Only the last n_saved checkpoints (weights and optimizer state) are kept.
    let mut ckpts: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    ckpts.sort();
    assert_eq!(
        ckpts,
        vec![
            "epoch_39.optimizer.safetensors",
            "epoch_39.safetensors",
            "epoch_40.optimizer.safetensors",
            "epoch_40.safetensors"
        ]
    );
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["current_epoch"], 40);

    // Held-out cases (other seeds) through the full inference pipeline.
    let model = Model::load(&out, tch::Device::Cpu).unwrap();
    let mut dices = Vec::new();
    for seed in [900, 901, 902] {
        let (image, label) = synth::case(seed, DIMS, SPACING);
        let (mask, _) = segment(&model, &image, &InferOptions::default()).unwrap();
        let inter = mask
            .data
            .iter()
            .zip(&label.data)
            .filter(|&(&m, &l)| m == 1 && l == 1)
            .count();
        let total = mask.data.iter().filter(|&&m| m == 1).count()
            + label.data.iter().filter(|&&l| l == 1).count();
        dices.push(2.0 * inter as f64 / total as f64);
    }
    eprintln!("held-out dice {dices:?}");
    assert!(dices.iter().all(|&d| d > 0.8), "{dices:?}");
}

/// A 2D DeepGrow model (a 2D UNet on axial slices, simulated clicks) trained from
/// scratch: validation (a click deep in the spleen, Dice on its slice) passes 0.8, and
/// the model it saves loads as a 2D model.
#[test]
fn a_2d_deepgrow_model_learns_from_slices() {
    medlabel_runner::init_runtime();
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let datalist =
        synth::write_studies(&dir.path().join("studies"), 8, 300, DIMS, SPACING).unwrap();
    let mut config = small_config();
    config.model_type = medlabel_runner::ModelType::Deepgrow;
    config.labels = BTreeMap::from([("background".into(), 0), ("foreground".into(), 1)]);
    config.roi_size = [32, 32, 1];
    if let medlabel_runner::NetworkConfig::UNet(net) = &mut config.network {
        (net.spatial_dims, net.in_channels) = (2, 3);
    }
    let req = TrainRequest {
        model: Some(config),
        max_epochs: 12,
        val_interval: 3,
        learning_rate: 3e-3,
        num_samples: 8,
        device: "cpu".into(),
        seed: 2,
        ..Default::default()
    };
    let out = dir.path().join("out");
    let outcome = train(&req, &datalist, &out, |_| {}, &AtomicBool::new(false)).unwrap();
    let best = outcome.stats.best_metric;
    eprintln!("2D deepgrow: best slice Dice {best:?}");
    assert!(best > 0.8, "{:?}", outcome.stats);
    let model = Model::load(&out, tch::Device::Cpu).unwrap();
    assert_eq!(model.config.dimension(), 2);
}
