//! Stopping a run on request and resuming it from its last checkpoint, as the job
//! worker does when a user stops training or a machine is replaced.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use medlabel_runner::{
    Intensity, ModelConfig, RunnerError, TrainRequest, UNetConfig, synth, train,
};

fn request() -> TrainRequest {
    TrainRequest {
        model: Some(ModelConfig {
            model_type: Default::default(),
            guidance: Default::default(),
            labels: BTreeMap::from([("background".into(), 0), ("spleen".into(), 1)]),
            spacing: [4.0; 3],
            intensity: Intensity::spleen_ct(),
            roi_size: [16; 3],
            network: UNetConfig {
                spatial_dims: 3,
                in_channels: 1,
                out_channels: 2,
                channels: vec![4, 8],
                strides: vec![2],
                num_res_units: 1,
                norm: Default::default(),
                dropout: 0.0,
            }
            .into(),
            ..Default::default()
        }),
        max_epochs: 5,
        num_samples: 2,
        device: "cpu".into(),
        ..Default::default()
    }
}

#[test]
fn stop_keeps_progress_and_resume_continues_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth::write_studies(&dir.path().join("s"), 3, 1, [24, 24, 16], [4.0; 3]).unwrap();
    let out = dir.path().join("out");
    let stop = AtomicBool::new(false);
    let mut seen = Vec::new();
    let outcome = train(
        &request(),
        &data,
        &out,
        |s| {
            seen.push(s.epoch);
            stop.store(true, Ordering::Relaxed);
        },
        &stop,
    )
    .unwrap();
    assert!(outcome.stopped);
    assert_eq!(seen, vec![1]);
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["current_epoch"], 1);
    assert!(
        stats.get("current_time").is_some() && stats.get("total_time").is_none(),
        "{stats}"
    );
    assert!(out.join("model.safetensors").is_file());
    // The optimizer's state is kept beside the checkpoint, so the resume below is warm.
    assert!(
        out.join("checkpoints/epoch_1.optimizer.safetensors")
            .is_file()
    );

    let resumed = TrainRequest {
        resume: Some(out.join("checkpoints/epoch_1.safetensors")),
        max_epochs: 3,
        ..request()
    };
    let mut seen = Vec::new();
    let outcome = train(
        &resumed,
        &data,
        &out,
        |s| seen.push(s.epoch),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(seen, vec![2, 3]);
    assert!(!outcome.stopped);
    // Two training volumes (one held out): the iteration counter carried over.
    assert_eq!(outcome.stats.current_iteration, 6);
    assert!(outcome.stats.total_time.is_some());
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let none = AtomicBool::new(false);
    let err = train(&request(), &[], dir.path(), |_| {}, &none).unwrap_err();
    assert!(matches!(err, RunnerError::Invalid(_)), "{err}");
    let data = synth::write_studies(&dir.path().join("s"), 1, 1, [16, 16, 16], [4.0; 3]).unwrap();
    let no_model = TrainRequest {
        model: None,
        ..request()
    };
    assert!(train(&no_model, &data, &dir.path().join("o"), |_| {}, &none).is_err());
    let cuda = TrainRequest {
        device: "cuda:7".into(),
        ..request()
    };
    assert!(train(&cuda, &data, &dir.path().join("o"), |_| {}, &none).is_err());
    let missing = vec![(
        dir.path().join("nope.nii.gz"),
        dir.path().join("nope.nii.gz"),
    )];
    assert!(train(&request(), &missing, &dir.path().join("o"), |_| {}, &none).is_err());
}
