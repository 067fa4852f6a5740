//! Training beyond the runner's own UNet: an imported TorchScript model fine-tunes on
//! labelled volumes and gets better on held-out ones; a template network for a new
//! label set trains from scratch; early stopping ends a run that stopped improving.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use medlabel_runner::infer::{InferOptions, segment};
use medlabel_runner::{
    BundleImport, Model, ModelConfig, TrainRequest, import_bundle, synth, train,
};

/// Mean foreground Dice of the model in `dir` over (image, label) pairs.
fn dice(dir: &Path, pairs: &[(PathBuf, PathBuf)]) -> f64 {
    let model = Model::load(dir, tch::Device::Cpu).unwrap();
    let opts = InferOptions {
        amp: false,
        ..Default::default()
    };
    let scores: Vec<f64> = pairs
        .iter()
        .map(|(i, l)| {
            let image = medlabel_runner::io::read_image(i).unwrap();
            let label = medlabel_runner::io::read_image(l).unwrap();
            let (mask, _) = segment(&model, &image, &opts).unwrap();
            let (mut inter, mut a, mut b) = (0.0, 0.0, 0.0);
            for (&m, &t) in mask.data.iter().zip(&label.data) {
                let (m, t) = (m == 1, t == 1.0);
                inter += f64::from(u8::from(m && t));
                a += f64::from(u8::from(m));
                b += f64::from(u8::from(t));
            }
            2.0 * inter / (a + b).max(1.0)
        })
        .collect();
    scores.iter().sum::<f64>() / scores.len() as f64
}

fn request(epochs: usize) -> TrainRequest {
    TrainRequest {
        max_epochs: epochs,
        num_samples: 2,
        val_split: 0.0,
        device: "cpu".into(),
        amp: false,
        n_saved: 1,
        seed: 3,
        ..Default::default()
    }
}

#[test]
fn an_imported_torchscript_model_fine_tunes_to_a_better_held_out_dice() {
    let tmp = tempfile::tempdir().unwrap();
    let imported = tmp.path().join("imported");
    let cfg = import_bundle(
        &common::suite().join("unet_ts"),
        &imported,
        &BundleImport::default(),
    )
    .unwrap();
    assert!(matches!(
        cfg.network,
        medlabel_runner::NetworkConfig::TorchScript(_)
    ));
    // The bundle's model thresholds bright tissue; these cases label only the spleen.
    let geometry = ([40, 40, 24], [3.0, 3.0, 5.0]);
    let train_set =
        synth::write_studies(&tmp.path().join("train"), 4, 100, geometry.0, geometry.1).unwrap();
    let held_out =
        synth::write_studies(&tmp.path().join("held"), 2, 900, geometry.0, geometry.1).unwrap();
    let before = dice(&imported, &held_out);

    let out = tmp.path().join("out");
    let req = TrainRequest {
        pretrained: Some(imported.clone()),
        learning_rate: 5e-3,
        ..request(10)
    };
    let outcome = train(&req, &train_set, &out, |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!(outcome.stats.current_epoch, 10);
    // Still a TorchScript model, now with the fine-tuned weights.
    assert!(out.join("model.ts").is_file());
    let after = dice(&out, &held_out);
    // 16 epochs took it from 0.05 to 0.43; 10 must gain at least 0.15.
    assert!(
        after > before + 0.15,
        "held-out Dice {before:.3} → {after:.3}"
    );

    // Training a TorchScript model from scratch is refused: it has no initialiser.
    let scratch = TrainRequest {
        pretrained: Some(imported),
        from_scratch: true,
        ..request(1)
    };
    let err = train(
        &scratch,
        &train_set,
        &tmp.path().join("x"),
        |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("TorchScript"), "{err}");
}

#[test]
fn a_template_network_with_new_labels_trains_and_early_stopping_ends_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = [("spleen".to_owned(), 1), ("liver".to_owned(), 2)].into();
    let mut cfg = ModelConfig::template("segresnet", labels).unwrap();
    assert_eq!(cfg.network.out_channels(), 3);
    assert!(ModelConfig::template("vit", Default::default()).is_err());
    // Small enough for a CI core: fewer filters, coarse voxels, 16³ windows.
    if let medlabel_runner::NetworkConfig::SegResNet(n) = &mut cfg.network {
        n.init_filters = 4;
        n.blocks_down = vec![1, 1, 1];
        n.blocks_up = vec![1, 1];
        n.norm = medlabel_runner::networks::layers::NormConfig::Group { groups: 2 };
    }
    cfg.spacing = [4.0; 3];
    cfg.roi_size = [16; 3];
    let pairs =
        synth::write_studies(&tmp.path().join("data"), 2, 7, [24, 24, 16], [4.0; 3]).unwrap();
    let req = TrainRequest {
        model: Some(cfg),
        // A learning rate of zero never improves on the first validation.
        learning_rate: 0.0,
        early_stop_patience: 2,
        ..request(10)
    };
    let out = tmp.path().join("out");
    let outcome = train(&req, &pairs, &out, |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!(outcome.stats.current_epoch, 3, "{:?}", outcome.stats);
    assert!(outcome.stats.total_time.is_some());
    let model = Model::load(&out, tch::Device::Cpu).unwrap();
    assert_eq!(model.config.labels["liver"], 2);

    // From scratch: the same network, fresh weights, and training runs.
    let scratch = TrainRequest {
        pretrained: Some(out.clone()),
        from_scratch: true,
        seed: 4,
        ..request(1)
    };
    let fresh = tmp.path().join("fresh");
    train(&scratch, &pairs, &fresh, |_| {}, &AtomicBool::new(false)).unwrap();
    let a = Model::load(&out, tch::Device::Cpu).unwrap();
    let b = Model::load(&fresh, tch::Device::Cpu).unwrap();
    let name = "convInit.conv.weight";
    assert!(!a.vs.variables()[name].equal(&b.vs.variables()[name]));
}
