//! The command line, declared once: clap parses it, prints `--help`, and rejects
//! unknown options and malformed values before any command starts.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};
use medlabel_runner::{Result, RunnerError};

#[derive(Parser)]
#[command(
    name = "medlabel-runner",
    about = "medlabel's GPU runner: inference, training and model import on libtorch",
    after_help = "Every command prints one JSON document on stdout; errors go to stderr with exit code 1."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Segment one image with a model folder.
    Infer(InferArgs),
    /// Train a model on a studies folder or a datalist.
    Train(Box<TrainArgs>),
    /// Serve the HTTP contract (`/invocations`, `/ping`) for the model folders in a directory,
    /// or for the models published in a cloud deployment's log.
    Serve(ServeArgs),
    /// The local server's child: follow the SQLite log of a studies folder's `.medlabel`
    /// home, run its jobs and serve interactive inference on loopback.
    Worker(WorkerArgs),
    /// The cloud worker: jobs from SQS, the log on DynamoDB, blobs on S3.
    #[cfg(feature = "aws")]
    SqsWorker(SqsWorkerArgs),
    /// SageMaker's training entry point.
    SagemakerTrain(SagemakerTrainArgs),
    /// Turn a MONAI bundle, TorchScript archive, state dict or safetensors file into a
    /// model folder (checked: it loads and gives one output per label).
    Import(ImportArgs),
    /// A new model folder from a template network and a label set, with fresh weights.
    NewModel(NewModelArgs),
    /// Write synthetic CT-like studies (images and labels).
    MakeSample(MakeSampleArgs),
    /// MC-dropout uncertainty of one image.
    Uncertainty(UncertaintyArgs),
    /// CUDA discovery, kernel checks and a short training on GPU 0.
    GpuCheck(GpuCheckArgs),
    /// The peer benchmark (or, with `--bundle`, the imported-bundle benchmark).
    Bench(BenchArgs),
}

#[derive(Args)]
pub struct InferArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub image: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 0.25)]
    pub overlap: f64,
    #[arg(long, default_value_t = 1)]
    pub sw_batch_size: usize,
    #[arg(long)]
    pub no_amp: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    /// A MONAI Label studies folder (images, labels/final/).
    #[arg(
        long,
        conflicts_with = "datalist",
        required_unless_present = "datalist"
    )]
    pub studies: Option<PathBuf>,
    /// `[{"image": path, "label": path}, …]`; relative paths from the file's folder.
    #[arg(long)]
    pub datalist: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// A TrainRequest JSON; the options below override it.
    #[arg(long)]
    pub request: Option<PathBuf>,
    /// A model folder to fine-tune.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// A checkpoint to resume from.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[arg(long)]
    pub max_epochs: Option<usize>,
    #[arg(long)]
    pub val_interval: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub num_samples: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub device: Option<String>,
    /// The new model's window (three values).
    #[arg(long, value_parser = triple::<i64>)]
    pub roi: Option<[i64; 3]>,
    #[arg(long, value_parser = triple::<f64>)]
    pub spacing: Option<[f64; 3]>,
    /// UNet channels per level.
    #[arg(long, value_delimiter = ',')]
    pub channels: Option<Vec<i64>>,
    /// UNet strides per level.
    #[arg(long, value_delimiter = ',')]
    pub strides: Option<Vec<i64>>,
    #[arg(long)]
    pub res_units: Option<usize>,
    /// 2: a UNet on axial slices (its `--roi` one voxel along S); 3 (default): volumes.
    #[arg(long)]
    pub spatial_dims: Option<usize>,
    /// instance or batch.
    #[arg(long)]
    pub norm: Option<String>,
    #[arg(long)]
    pub dropout: Option<f64>,
    /// A click-guided model: deepgrow or deepedit (guidance channels join the input).
    #[arg(long = "type")]
    pub model_type: Option<String>,
    /// The new model's labels, `name=channel,…` (channel 0 is background).
    #[arg(long, value_parser = label, value_delimiter = ',')]
    pub labels: Option<Vec<(String, i64)>>,
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long)]
    pub model_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Requests may only name files below this folder.
    #[arg(long, default_value = "/")]
    pub data_root: PathBuf,
    /// Serve the models published in this DynamoDB event table (with `--bucket`).
    #[arg(long, requires = "bucket")]
    pub table: Option<String>,
    #[arg(long, requires = "table")]
    pub bucket: Option<String>,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// The studies folder's `.medlabel` home.
    #[arg(long)]
    pub home: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub serve: String,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Seconds a job is held without renewing its lease.
    #[arg(long)]
    pub lease_seconds: Option<f64>,
    /// Exit when stdin closes (the parent died).
    #[arg(long)]
    pub exit_with_stdin: bool,
    /// Read the bearer secret for the HTTP contract as the first line of stdin.
    #[arg(long)]
    pub secret_stdin: bool,
}

#[cfg(feature = "aws")]
#[derive(Args)]
pub struct SqsWorkerArgs {
    #[arg(long, env = "MEDLABEL_JOB_QUEUE_URL")]
    pub queue_url: String,
    #[arg(long, env = "MEDLABEL_EVENTS_TABLE")]
    pub table: String,
    #[arg(long, env = "MEDLABEL_BLOBS_BUCKET")]
    pub bucket: String,
    /// Scratch space (default: the system's temporary folder).
    #[arg(long)]
    pub work: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Stop when the queue is empty instead of waiting for more.
    #[arg(long)]
    pub until_empty: bool,
}

#[derive(Args)]
pub struct SagemakerTrainArgs {
    #[arg(long, default_value = "/opt/ml")]
    pub root: PathBuf,
}

#[derive(Args)]
pub struct ImportArgs {
    /// A bundle (folder or zip), TorchScript archive, state dict or safetensors file.
    #[arg(long)]
    pub file: PathBuf,
    /// The model folder whose config a weights-only file takes (the model it replaces).
    #[arg(long)]
    pub like: Option<PathBuf>,
    /// The model folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Serve a bundle's `models/model.ts` even when `model.pt` and a native network are there.
    #[arg(long)]
    pub prefer_torchscript: bool,
}

#[derive(Args)]
pub struct NewModelArgs {
    /// unet, segresnet or dynunet.
    #[arg(long, default_value = "segresnet")]
    pub network: String,
    /// `name=channel,…` (channel 0 is background), e.g. `spleen=1,liver=2`.
    #[arg(long, value_parser = label, value_delimiter = ',', required = true)]
    pub labels: Vec<(String, i64)>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
}

#[derive(Args)]
pub struct MakeSampleArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub cases: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_parser = triple::<usize>, default_value = "96,96,64")]
    pub dims: [usize; 3],
    #[arg(long, value_parser = triple::<f64>, default_value = "1.5,1.5,2")]
    pub spacing: [f64; 3],
    /// Label the liver too (2), for multi-label (DeepEdit) training.
    #[arg(long)]
    pub liver: bool,
}

#[derive(Args)]
pub struct UncertaintyArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub image: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub passes: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(Args)]
pub struct GpuCheckArgs {
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// A model folder to check instead of the seeded spleen network.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value_t = 2)]
    pub batch: i64,
    /// State-dict weights for the spleen network (the peer script's).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// `{"input", "output"}` saved by the peer script with the same weights.
    #[arg(long)]
    pub check: Option<PathBuf>,
    #[arg(long)]
    pub skip_e2e: bool,
    /// The image to time (default: a generated one).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Time an imported MONAI bundle on `--image` instead.
    #[arg(long, requires = "image")]
    pub bundle: Option<PathBuf>,
    /// With `--bundle`: serve its TorchScript archive.
    #[arg(long)]
    pub torchscript: bool,
}

/// Exactly three comma-separated values.
fn triple<T: FromStr + Copy>(text: &str) -> std::result::Result<[T; 3], String> {
    let values = text
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| format!("cannot parse {v:?}"))
        })
        .collect::<std::result::Result<Vec<T>, String>>()?;
    values
        .try_into()
        .map_err(|_| "needs three comma-separated values".to_owned())
}

/// `name=channel`.
fn label(text: &str) -> std::result::Result<(String, i64), String> {
    let (name, channel) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected name=channel"))?;
    let channel = channel
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: the channel must be an integer"))?;
    Ok((name.trim().to_owned(), channel))
}

/// Reads `[{"image": …, "label": …}, …]`; relative paths are taken from the file's folder.
pub fn read_datalist(file: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    #[derive(serde::Deserialize)]
    struct Item {
        image: PathBuf,
        label: PathBuf,
    }
    let text = std::fs::read_to_string(file).map_err(|e| RunnerError::io(file, e))?;
    let items: Vec<Item> = serde_json::from_str(&text)
        .map_err(|e| RunnerError::json(file.display().to_string(), e))?;
    let base = file.parent().unwrap_or(Path::new("."));
    Ok(items
        .into_iter()
        .map(|i| (base.join(i.image), base.join(i.label)))
        .collect())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn malformed_values_are_refused_before_any_command_runs() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["medlabel-runner"], args].concat());
        assert!(parse(&["make-sample", "--out", "x", "--dims", "1,2"]).is_err());
        assert!(parse(&["new-model", "--out", "x", "--labels", "spleen"]).is_err());
        assert!(
            parse(&[
                "infer", "--model", "m", "--image", "i", "--out", "o", "--typo", "1"
            ])
            .is_err()
        );
        let Command::NewModel(new) =
            parse(&["new-model", "--out", "x", "--labels", "spleen=1,liver=2"])
                .unwrap()
                .command
        else {
            panic!("new-model parses as NewModel");
        };
        assert_eq!(new.labels, vec![("spleen".into(), 1), ("liver".into(), 2)]);
    }
}
