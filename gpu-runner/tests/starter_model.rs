//! The starter model shipped in `models/segmentation_spleen` loads and segments a
//! synthetic case it never saw, so a fresh checkout can serve inference at once.

use std::path::Path;

use medlabel_runner::infer::{InferOptions, segment};
use medlabel_runner::{Model, synth};

#[test]
fn shipped_spleen_model_segments_an_unseen_synthetic_case() {
    let dir = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("models/segmentation_spleen");
    let model = Model::load(&dir, tch::Device::Cpu).unwrap();
    assert_eq!(model.config.labels["spleen"], 1);
    // make-sample's geometry at a seed outside the training range (0..16).
    let (image, label) = synth::case(4242, [128, 128, 80], [1.5, 1.5, 2.5]);
    let (mask, _) = segment(&model, &image, &InferOptions::default()).unwrap();
    let inter = mask
        .data
        .iter()
        .zip(&label.data)
        .filter(|&(&m, &l)| m == 1 && l == 1)
        .count();
    let total = mask.data.iter().filter(|&&m| m == 1).count()
        + label.data.iter().filter(|&&l| l == 1).count();
    let dice = 2.0 * inter as f64 / total as f64;
    assert!(dice > 0.8, "dice {dice}");
}
