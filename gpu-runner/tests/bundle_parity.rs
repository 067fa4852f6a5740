//! MONAI bundles built by MONAI itself (`tests/python/bundles.py`: UNet, SegResNet and
//! DynUNet, each as a state dict and as TorchScript, trained a few steps so the masks
//! are not trivial) segment the same after import as under MONAI's own bundle
//! workflow: masks agree on ≥ 99.9 % of voxels, probabilities within 1e-3.

mod common;

use medlabel_runner::infer::{InferOptions, predict};
use medlabel_runner::pipeline::{PostStep, PreStep};
use medlabel_runner::{BundleImport, Model, NetworkConfig, WeightsFormat, import_bundle};
use tch::{Device, Kind, Tensor};

fn parity(name: &str) {
    let bundle = common::suite().join(name);
    let out = tempfile::tempdir().unwrap();
    let cfg = import_bundle(&bundle, out.path(), &BundleImport::default()).unwrap();
    // State dicts become native networks in safetensors; TorchScript stays TorchScript.
    let torchscript = name.ends_with("_ts");
    assert_eq!(
        cfg.format,
        if torchscript {
            WeightsFormat::Torchscript
        } else {
            WeightsFormat::Safetensors
        }
    );
    assert_eq!(
        matches!(cfg.network, NetworkConfig::TorchScript(_)),
        torchscript
    );
    assert_eq!(cfg.labels["organ"], 1);
    assert!(!cfg.labels.contains_key("background"));

    let model = Model::load(out.path(), Device::Cpu).unwrap();
    let image = medlabel_runner::io::read_image(&bundle.join("image.nii.gz")).unwrap();
    let opts = InferOptions {
        amp: false,
        ..Default::default()
    };
    let ours = predict(&model, &image, &opts, true).unwrap();
    let theirs =
        medlabel_runner::io::read_image(&bundle.join("monai/monai_labels.nii.gz")).unwrap();
    assert_eq!(theirs.dims, image.dims);

    let n = image.len();
    let agree = ours
        .mask
        .data
        .iter()
        .zip(&theirs.data)
        .filter(|(a, b)| f32::from(**a) == **b)
        .count();
    let fg = theirs.data.iter().filter(|&&v| v > 0.0).count();
    // The masks are not trivial: MONAI found some organ, not everything.
    assert!(
        fg > n / 200 && fg < n / 2,
        "{name}: MONAI foreground {fg} of {n}"
    );
    let agreement = agree as f64 / n as f64;
    assert!(
        agreement >= 0.999,
        "{name}: masks agree on {agreement:.5} ({agree}/{n})"
    );

    let probs = bundle.join("monai/monai_probs.npy");
    if probs.is_file() {
        // MONAI's [C, i, j, k] against ours [C, k, j, i].
        let theirs = Tensor::read_npy(&probs).unwrap().permute([0, 3, 2, 1]);
        let ours = ours.probabilities.expect("probabilities kept");
        assert_eq!(ours.size(), theirs.size(), "{name}");
        let diff = (ours - theirs.to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff <= 1e-3, "{name}: probabilities differ by {diff}");
    } else {
        // Only the bundle that discretises before inverting has no probabilities.
        assert!(
            name.starts_with("dynunet"),
            "{name}: MONAI wrote no probabilities"
        );
    }
}

#[test]
fn unet_state_dict_matches_monai() {
    parity("unet_pt");
}

#[test]
fn unet_torchscript_matches_monai() {
    parity("unet_ts");
}

#[test]
fn segresnet_state_dict_matches_monai() {
    parity("segresnet_pt");
}

#[test]
fn segresnet_torchscript_matches_monai() {
    parity("segresnet_ts");
}

#[test]
fn dynunet_state_dict_matches_monai() {
    parity("dynunet_pt");
}

#[test]
fn dynunet_torchscript_matches_monai() {
    parity("dynunet_ts");
}

/// The bundles' pipelines map as written: what each parity test exercises.
#[test]
fn imported_pipelines_follow_the_bundles() {
    let out = tempfile::tempdir().unwrap();
    let seg = import_bundle(
        &common::suite().join("segresnet_pt"),
        out.path(),
        &BundleImport::default(),
    )
    .unwrap();
    assert!(seg.pipeline.pre.iter().any(|s| matches!(
        s,
        PreStep::CropForeground {
            k_divisible: [8, 8, 8],
            ..
        }
    )));
    assert!(matches!(seg.network, NetworkConfig::SegResNet(_)));
    let out = tempfile::tempdir().unwrap();
    let dyn_ = import_bundle(
        &common::suite().join("dynunet_pt"),
        out.path(),
        &BundleImport::default(),
    )
    .unwrap();
    assert_eq!(dyn_.roi_size, [32, 32, 16]);
    assert_eq!(
        dyn_.pipeline.post,
        vec![
            PostStep::Softmax,
            PostStep::Argmax,
            PostStep::Invert { nearest: true }
        ]
    );
    let NetworkConfig::DynUNet(net) = &dyn_.network else {
        panic!("{:?}", dyn_.network)
    };
    assert_eq!(net.deep_supervision_heads, 1);
    // Asking for TorchScript on a TorchScript bundle keeps it so.
    let out = tempfile::tempdir().unwrap();
    let ts = import_bundle(
        &common::suite().join("unet_ts"),
        out.path(),
        &BundleImport {
            prefer_torchscript: true,
        },
    )
    .unwrap();
    assert_eq!(ts.format, WeightsFormat::Torchscript);
}
