//! medlabel's libtorch runner: MONAI-compatible 3D UNet, preprocessing, sliding-window
//! inference, training, MC-dropout uncertainty and GPU kernels, plus the process-level
//! setup every binary needs ([`init_runtime`]).
//!
//! Jobs come from the event log: [`worker`] follows it directly (the local server's
//! SQLite log); [`queue_worker`] (feature `aws`) takes the cloud's SQS job messages and
//! runs them against DynamoDB and S3.
//!
//! Models live in a folder with `config.json` ([`ModelConfig`]) and a weights file:
//! `model.safetensors`, a PyTorch state dict `model.pt` (read by a pickle reader that
//! never runs code, [`formats`]) or a TorchScript `model.ts`. The network is MONAI's
//! UNet, SegResNet or DynUNet built natively, or any TorchScript module ([`networks`]).
//! [`bundle::import`] turns a MONAI bundle into such a folder, mapping its transforms
//! onto the runner's own ([`pipeline`]); [`train()`] trains any of them.

pub mod bundle;
pub mod components;
pub mod config;
pub mod dataset;
pub mod error;
pub mod formats;
pub mod guidance;
pub mod import;
pub mod infer;
pub mod interaction;
pub mod interactive;
pub mod io;
pub mod kernels;
pub mod logging;
pub mod loss;
pub mod model;
pub mod networks;
pub mod optim;
pub mod pipeline;
#[cfg(feature = "aws")]
pub mod queue_worker;
pub mod sagemaker;
pub mod serve;
pub mod sliding;
pub mod stats;
pub mod synth;
pub mod train;
pub mod transforms;
pub mod uncertainty;
pub mod unet;
pub mod worker;

pub use bundle::{BundleImport, import as import_bundle};
pub use config::{Guidance, Intensity, Layout, ModelConfig, ModelType, WeightsFormat};
pub use error::{Result, RunnerError};
pub use infer::{InferOptions, Latencies};
pub use model::Model;
pub use networks::{Network, NetworkConfig};
pub use pipeline::Pipeline;
pub use stats::TrainStats;
pub use train::{TrainOutcome, TrainRequest, train};
pub use unet::{Mode, Norm, UNet, UNetConfig};

/// Process setup for binaries: registers libtorch's CUDA backend when it is installed
/// and sets the intra-op thread count from `OMP_NUM_THREADS`.
///
/// Nothing references `libtorch_cuda.so` directly, so the linker's `--as-needed` drops it
/// and CUDA would look absent on a GPU machine (tch issues #907, #980); loading it by
/// name registers the backend where it exists and is a no-op elsewhere.
pub fn init_runtime() {
    // SAFETY: dlopen with a valid C string; the handle is intentionally kept open for the
    // life of the process, and failure (CPU-only libtorch) is simply ignored.
    unsafe {
        libc::dlopen(
            c"libtorch_cuda.so".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_GLOBAL,
        );
    }
    if let Some(n) = std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|&n| n > 0)
    {
        tch::set_num_threads(n);
    }
}

/// Runs `f` under CUDA autocast (float16) when `amp`, else plainly: tch's autocast
/// toggles libtorch's deprecated global switch, which logs a warning on every call.
pub fn with_amp<T>(amp: bool, f: impl FnOnce() -> T) -> T {
    if amp { tch::autocast(true, f) } else { f() }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
pub fn parse_device(s: &str) -> Result<tch::Device> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cuda" => cuda_device(0),
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(i) => cuda_device(i),
            None => Err(RunnerError::invalid(format!(
                "unknown device {s:?}: use cpu, cuda, cuda:N or auto"
            ))),
        },
    }
}

fn cuda_device(i: usize) -> Result<tch::Device> {
    if tch::Cuda::is_available() && (i as i64) < tch::Cuda::device_count() {
        Ok(tch::Device::Cuda(i))
    } else {
        Err(RunnerError::invalid(format!(
            "CUDA device {i} is not available"
        )))
    }
}
