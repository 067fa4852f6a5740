//! `bench` (peer benchmark, compared with scripts/bench_peer.py; with `--bundle`, the
//! imported-bundle benchmark scripts/bench_bundles.sh compares with MONAI) and
//! `gpu-check` (what scripts/gpu-check.sh runs on a GPU machine).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use medlabel_runner::formats::state_dict;
use medlabel_runner::infer::{InferOptions, infer_file, segment};
use medlabel_runner::kernels;
use medlabel_runner::loss::dice_ce_loss;
use medlabel_runner::networks::load_state_dict;
use medlabel_runner::optim::AdamW;
use medlabel_runner::{
    Mode, Model, ModelConfig, Result, RunnerError, TrainRequest, parse_device, synth, train,
};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::cli::{BenchArgs, GpuCheckArgs};

/// Spacing of generated benchmark images: finer than the model's, so resampling is real work.
const BENCH_SPACING: [f64; 3] = [1.0, 1.0, 1.5];

/// The spleen network with random (seeded) or given weights.
fn bench_model(device: Device, weights: Option<PathBuf>) -> Result<Model> {
    tch::manual_seed(0);
    let model = Model::new(ModelConfig::spleen(), device)?;
    if let Some(w) = weights {
        load_state_dict(&model.vs, state_dict::read(&w)?)?;
    }
    Ok(model)
}

fn timed<T>(device: Device, f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    (out, t.elapsed().as_secs_f64())
}

fn summary(times: &[f64]) -> Value {
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    json!({"mean_s": mean, "min_s": min, "runs": times})
}

/// `image`, or a generated benchmark image of `size`³.
fn bench_image(image: Option<PathBuf>, dir: &std::path::Path, size: usize) -> Result<PathBuf> {
    if let Some(p) = image {
        return Ok(p);
    }
    let pairs = synth::write_studies(dir, 1, 7, [size; 3], BENCH_SPACING)?;
    Ok(pairs[0].0.clone())
}

/// Forward of one 96³ window, end-to-end inference of a `size`³ image, one training step;
/// or, with `--bundle DIR --image FILE`, [`bench_bundle`].
pub fn bench(a: BenchArgs) -> Result<Value> {
    if let Some(bundle) = &a.bundle {
        return bench_bundle(&a, bundle);
    }
    let device = parse_device(&a.device)?;
    let (size, repeat, batch) = (a.size, a.repeat.max(1), a.batch);
    let tmp = tempdir()?;
    let image = bench_image(a.image, &tmp, size)?;
    let model = bench_model(device, a.weights)?;

    let mut result = json!({"device": format!("{device:?}"), "threads": tch::get_num_threads()});
    if let Some(file) = a.check {
        // {"input", "output"} saved by the peer script with the same weights.
        let named = Tensor::loadz_multi_with_device(&file, device)?;
        let get = |n: &str| {
            named
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, t)| t.shallow_clone())
        };
        let (x, y) = get("input")
            .zip(get("output"))
            .ok_or_else(|| RunnerError::invalid("check file needs input and output"))?;
        let ours = tch::no_grad(|| model.forward(&x, Mode::EVAL))?;
        let diff = (ours - y).abs().max().double_value(&[]);
        result["check_max_abs_diff"] = json!(diff);
    }

    let x = Tensor::randn([1, 1, 96, 96, 96], (Kind::Float, device));
    let mut times = Vec::new();
    for i in 0..=repeat {
        let (out, t) = timed(device, || tch::no_grad(|| model.forward(&x, Mode::EVAL)));
        let _ = out?;
        if i > 0 {
            times.push(t); // the first run warms allocators and kernels
        }
    }
    result["forward_96"] = summary(&times);

    if !a.skip_e2e {
        let opts = InferOptions {
            amp: false,
            ..Default::default()
        };
        let out = tmp.join("mask.nii.gz");
        let mut runs = Vec::new();
        for _ in 0..repeat.min(2) {
            runs.push(infer_file(&model, &image, &out, &opts)?);
        }
        let totals: Vec<f64> = runs.iter().map(|l| l.total).collect();
        result["e2e"] = json!({"size": size, "summary": summary(&totals), "latencies": runs});
    }

    let train_model = bench_model(device, None)?;
    // The optimizer training uses (PyTorch's AdamW defaults, weight decay 0.01).
    let mut opt = AdamW::new(&train_model.vs, 1e-4, 0.01);
    let xb = Tensor::randn([batch, 1, 96, 96, 96], (Kind::Float, device));
    let yb = Tensor::randint(2, [batch, 1, 96, 96, 96], (Kind::Int64, device));
    let mut times = Vec::new();
    for i in 0..=repeat {
        let (out, t) = timed(device, || -> Result<()> {
            let loss = dice_ce_loss(&train_model.forward(&xb, Mode::TRAIN)?, &yb);
            opt.backward_step(&loss);
            Ok(())
        });
        out?;
        if i > 0 {
            times.push(t);
        }
    }
    result["train_step"] = json!({"batch": batch, "summary": summary(&times)});
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(result)
}

/// Imports a MONAI bundle and times inference of `--image` as MONAI Label runs a model
/// (read the file, preprocess, sliding window, postprocess, no writing): one warm-up,
/// then `--repeat` runs, reported with their median.
fn bench_bundle(a: &BenchArgs, bundle: &std::path::Path) -> Result<Value> {
    let device = parse_device(&a.device)?;
    let image = a
        .image
        .clone()
        .expect("clap requires --image with --bundle");
    let repeat = a.repeat.max(1);
    let torchscript = a.torchscript;
    let tmp = tempdir()?;
    let opts = medlabel_runner::BundleImport {
        prefer_torchscript: torchscript,
    };
    let (config, import_s) = timed(Device::Cpu, || {
        medlabel_runner::import_bundle(bundle, &tmp.join("model"), &opts)
    });
    let config = config?;
    let model = Model::load(&tmp.join("model"), device)?;
    let opts = InferOptions {
        amp: false,
        ..Default::default()
    };
    let mut runs = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..=repeat {
        let (out, t) = timed(device, || -> Result<_> {
            let v = medlabel_runner::io::read_image(&image)?;
            segment(&model, &v, &opts)
        });
        let (_, lat) = out?;
        if i > 0 {
            runs.push(t);
            latencies.push(lat);
        }
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(json!({
        "network": config.network.name(), "format": config.format, "device": format!("{device:?}"),
        "threads": tch::get_num_threads(), "import_s": import_s, "median_s": sorted[sorted.len() / 2],
        "runs": runs, "latencies": latencies,
    }))
}

/// CUDA discovery, kernel equality, AMP inference and one training epoch on GPU 0.
pub fn gpu_check(a: GpuCheckArgs) -> Result<Value> {
    let (size, model_dir) = (a.size, a.model);
    let mut report = json!({
        "tch_cuda_available": tch::Cuda::is_available(),
        "tch_cuda_devices": tch::Cuda::device_count(),
        "cudnn": tch::Cuda::cudnn_is_available(),
        "driver_present": kernels::driver_present(),
        "nvrtc_present": kernels::nvrtc_present(),
        "gpus": kernels::discover(),
    });
    eprintln!("[gpu-check] cuda: {report}");
    if !tch::Cuda::is_available() {
        return Err(RunnerError::Cuda(format!(
            "libtorch sees no CUDA device: {report}"
        )));
    }
    let checks = kernels::self_check(0, 42)?;
    eprintln!("[gpu-check] kernels: {}", json!(checks));
    report["kernels"] = json!(checks);
    if let Some(bad) = checks.iter().find(|c| !c.passed) {
        return Err(RunnerError::Cuda(format!(
            "kernel {} differs from CPU by {}",
            bad.kernel, bad.max_abs_diff
        )));
    }

    let device = Device::Cuda(0);
    let model = match model_dir {
        Some(d) => Model::load(&d, device)?,
        None => bench_model(device, None)?,
    };
    let tmp = tempdir()?;
    let (written, t_gen) = timed(Device::Cpu, || {
        synth::write_studies(&tmp.join("big"), 1, 7, [size; 3], BENCH_SPACING)
    });
    let image = written?[0].0.clone();
    eprintln!("[gpu-check] wrote {size}³ synthetic image in {t_gen:.1}s");
    let out = tmp.join("mask.nii.gz");
    let mut runs = Vec::new();
    for amp in [true, true, false] {
        let opts = InferOptions {
            amp,
            sw_batch_size: Some(4),
            ..Default::default()
        };
        let lat = infer_file(&model, &image, &out, &opts)?;
        eprintln!("[gpu-check] inference amp={amp}: {}", json!(lat));
        runs.push(json!({"amp": amp, "latencies": lat}));
    }
    report["inference"] = json!({"size": size, "runs": runs});

    let studies = tmp.join("train");
    let datalist = synth::write_studies(&studies, 4, 11, [128, 128, 96], BENCH_SPACING)?;
    let req = TrainRequest {
        model: Some(ModelConfig::spleen()),
        max_epochs: 1,
        device: "cuda".into(),
        ..Default::default()
    };
    let (outcome, t_train) = timed(device, || {
        train(
            &req,
            &datalist,
            &tmp.join("out"),
            |_| {},
            &AtomicBool::new(false),
        )
    });
    let outcome = outcome?;
    eprintln!(
        "[gpu-check] one epoch ({} volumes, amp) in {t_train:.1}s",
        datalist.len()
    );
    report["train_epoch"] =
        json!({"seconds": t_train, "volumes": datalist.len(), "stats": outcome.stats});
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(report)
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("medlabel-runner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| RunnerError::io(&dir, e))?;
    Ok(dir)
}
