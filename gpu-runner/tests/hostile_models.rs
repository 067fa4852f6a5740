//! Model files and bundles built to attack or confuse the runner get clear errors, never
//! a panic and never code execution: a pickle that would run `os.system`, truncated
//! archives, tensors claiming more than their storage holds, a `.ts` that is not
//! TorchScript, zip entries escaping the bundle, deep and huge JSON.

use std::io::{Cursor, Write};
use std::path::Path;

use medlabel_runner::config::WeightsFormat;
use medlabel_runner::unet::{Norm, UNetConfig};
use medlabel_runner::{BundleImport, Model, ModelConfig, import_bundle};

/// A torch.save-shaped zip: `archive/data.pkl` plus storage entries.
fn torch_zip(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut out);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pkl).unwrap();
    for (key, bytes) in storages {
        z.start_file(format!("archive/data/{key}"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
    out.into_inner()
}

/// `{"w": tensor}` over storage "0" of `numel` floats (BININT, so it can be huge),
/// viewed with `size`/`stride` from `offset`.
fn state_dict_pickle(numel: u32, offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'(', 0x8c, 1, b'w'];
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    p.extend([0x8c, 7]);
    p.extend(b"storage");
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend([0x8c, 1, b'0', 0x8c, 3]);
    p.extend(b"cpu");
    p.push(b'J');
    p.extend(numel.to_le_bytes());
    p.extend([b't', b'Q', b'K', offset, b'(']);
    for &s in size {
        p.extend([b'K', s]);
    }
    p.extend([b't', b'(']);
    for &s in stride {
        p.extend([b'K', s]);
    }
    p.extend([b't', 0x89]);
    p.extend(b"ccollections\nOrderedDict\n)Rt");
    p.extend([b'R', b'u', b'.']);
    p
}

/// A model folder whose config says `format` and whose weights file holds `bytes`.
fn model_folder(dir: &Path, format: WeightsFormat, bytes: &[u8]) {
    let mut cfg = ModelConfig {
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
        roi_size: [16; 3],
        format,
        ..Default::default()
    };
    if format == WeightsFormat::Torchscript {
        cfg.network = medlabel_runner::NetworkConfig::TorchScript(
            medlabel_runner::networks::TorchScriptConfig {
                in_channels: 1,
                out_channels: 2,
                size_divisor: [1; 3],
            },
        );
    }
    std::fs::create_dir_all(dir).unwrap();
    cfg.save(dir).unwrap();
    std::fs::write(dir.join(format.file_name()), bytes).unwrap();
}

fn load_error(format: WeightsFormat, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    model_folder(dir.path(), format, bytes);
    Model::load(dir.path(), tch::Device::Cpu)
        .unwrap_err()
        .to_string()
}

#[test]
fn a_pickle_that_would_run_os_system_is_refused_by_name() {
    // What pickle writes for an object whose __reduce__ returns (os.system, ("…",)):
    // GLOBAL 'os system', the argument tuple, REDUCE. Built here, never run.
    let marker = std::env::temp_dir().join(format!("medlabel-pwned-{}", std::process::id()));
    let mut p = vec![0x80, 2];
    p.extend(b"cos\nsystem\n");
    let cmd = format!("touch {}", marker.display());
    p.push(b'X');
    p.extend((cmd.len() as u32).to_le_bytes());
    p.extend(cmd.as_bytes());
    p.extend([0x85, b'R', b'.']);
    let err = load_error(WeightsFormat::Pytorch, &torch_zip(&p, &[]));
    assert!(err.contains("`os.system`"), "{err}");
    assert!(!marker.exists(), "the payload ran");
    // The same payload hidden inside a checkpoint dict's value.
    let mut p = vec![0x80, 2, b'}', 0x8c, 5];
    p.extend(b"model");
    p.extend(b"cbuiltins\neval\n");
    p.extend([0x8c, 4]);
    p.extend(b"1+1)");
    p.extend([0x85, b'R', b's', b'.']);
    let err = load_error(WeightsFormat::Pytorch, &torch_zip(&p, &[]));
    assert!(err.contains("`builtins.eval`"), "{err}");
}

#[test]
fn truncated_archives_and_lying_tensors_are_clear_errors() {
    let floats: Vec<u8> = (0..10).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let good = torch_zip(&state_dict_pickle(10, 0, &[10], &[1]), &[("0", &floats)]);
    // Valid as a state dict, but not for this network: names are listed.
    let err = load_error(WeightsFormat::Pytorch, &good);
    assert!(
        err.contains("do not match") && err.contains("unexpected 1 (w)"),
        "{err}"
    );
    for cut in [0, 22, good.len() / 3, good.len() - 10] {
        let err = load_error(WeightsFormat::Pytorch, &good[..cut]);
        assert!(err.contains("model.pt"), "cut {cut}: {err}");
    }
    // Sizes and strides that reach past the storage.
    for (size, stride, offset) in [
        (vec![11u8], vec![1u8], 0u8),
        (vec![4, 4], vec![4, 1], 0),
        (vec![5], vec![1], 6),
    ] {
        let zip = torch_zip(
            &state_dict_pickle(10, offset, &size, &stride),
            &[("0", &floats)],
        );
        let err = load_error(WeightsFormat::Pytorch, &zip);
        assert!(err.contains("storage"), "{size:?} {stride:?}: {err}");
    }
    // A storage claiming two billion floats that the archive does not hold: refused
    // before anything is allocated.
    let zip = torch_zip(
        &state_dict_pickle(u32::MAX >> 1, 0, &[1], &[1]),
        &[("0", &floats)],
    );
    let err = load_error(WeightsFormat::Pytorch, &zip);
    assert!(err.contains("holds 40 bytes"), "{err}");
    // A missing storage entry.
    let zip = torch_zip(&state_dict_pickle(10, 0, &[10], &[1]), &[]);
    assert!(load_error(WeightsFormat::Pytorch, &zip).contains("archive/data/0"));
}

#[test]
fn files_that_are_not_torchscript_are_refused() {
    let err = load_error(WeightsFormat::Torchscript, b"definitely not a zip");
    assert!(err.contains("not a loadable TorchScript archive"), "{err}");
    // A state dict given as TorchScript.
    let floats: Vec<u8> = (0..10).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let sd = torch_zip(&state_dict_pickle(10, 0, &[10], &[1]), &[("0", &floats)]);
    let err = load_error(WeightsFormat::Torchscript, &sd);
    assert!(err.contains("not a loadable TorchScript archive"), "{err}");
    // Empty file.
    let err = load_error(WeightsFormat::Torchscript, b"");
    assert!(err.contains("TorchScript"), "{err}");
}

fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    for (name, bytes) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn hostile_bundles_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let import = |bundle: &Path| {
        import_bundle(bundle, &tmp.path().join("out"), &BundleImport::default())
            .unwrap_err()
            .to_string()
    };
    let meta = br#"{"network_data_format": {"inputs": {"image": {"num_channels": 1}}, "outputs": {"pred": {"num_channels": 2}}}}"#;

    let traversal = tmp.path().join("traversal.zip");
    write_zip(
        &traversal,
        &[
            ("b/configs/metadata.json", meta),
            ("b/../../evil.json", b"{}"),
        ],
    );
    let err = import(&traversal);
    assert!(err.contains("outside the bundle"), "{err}");
    assert!(!tmp.path().join("evil.json").exists());

    let missing = tmp.path().join("missing.zip");
    write_zip(&missing, &[("b/configs/metadata.json", meta)]);
    assert!(
        import(&missing).contains("inference.json"),
        "{}",
        import(&missing)
    );

    let not_zip = tmp.path().join("bundle.zip");
    std::fs::write(&not_zip, b"PK\x03\x04 truncated").unwrap();
    assert!(import(&not_zip).contains("zip"), "{}", import(&not_zip));

    // Deeply nested JSON stops at the parser's limit instead of overflowing the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_zip = tmp.path().join("deep.zip");
    write_zip(
        &deep_zip,
        &[
            ("configs/metadata.json", meta),
            ("configs/inference.json", deep.as_bytes()),
        ],
    );
    let err = import(&deep_zip);
    assert!(err.contains("recursion limit"), "{err}");

    // A config over the size limit is not read at all.
    let huge = vec![b' '; (medlabel_runner::bundle::MAX_JSON_BYTES + 1) as usize];
    let dir = tmp.path().join("huge");
    std::fs::create_dir_all(dir.join("configs")).unwrap();
    std::fs::write(dir.join("configs/metadata.json"), meta).unwrap();
    std::fs::write(dir.join("configs/inference.json"), &huge).unwrap();
    assert!(import(&dir).contains("larger than"), "{}", import(&dir));

    // Python in a value the importer needs is named, not run.
    let dir = tmp.path().join("python");
    std::fs::create_dir_all(dir.join("configs")).unwrap();
    std::fs::write(dir.join("configs/metadata.json"), meta).unwrap();
    let cfg = serde_json::json!({
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "$__import__('os').system('true')"},
    });
    std::fs::write(dir.join("configs/inference.json"), cfg.to_string()).unwrap();
    let err = import(&dir);
    assert!(
        err.contains("cannot evaluate") && err.contains("__import__"),
        "{err}"
    );
}
