//! Models users bring: MONAI bundles, TorchScript archives, state dicts, safetensors.
//!
//! Reading them takes libtorch, which this crate never links, so the runner binary
//! does it (`medlabel-runner import`, which checks that the result loads and gives one
//! output per label) into a scratch folder; this module then publishes that folder as
//! a model version through [`Models::publish`], the one writer of model events. The
//! same path serves `medlabel serve --bundle`, `PUT /model/{name}` with a bundle zip or
//! TorchScript file, `medlabel model new` and `medlabel publish-model`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use medlabel_events::blob::read_to_vec;
use medlabel_events::datastore::WriteContext;
use medlabel_events::models::{Models, PublishedModel, folder};
use medlabel_events::{Actor, BlobStore, Extension, ModelName};
use sha2::{Digest, Sha256};

/// Longest an import may take: a large bundle converts and runs one window on CPU.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a model could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file itself is at fault (unsupported transform, wrong shapes, not a model):
    /// the runner's own explanation.
    #[error("{0}")]
    Refused(String),
    /// The runner could not be run, or failed for a reason of its own.
    #[error("model import failed: {0}")]
    Failed(String),
    #[error("model import: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a model folder could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("model folder: {0}")]
    Io(#[from] std::io::Error),
    /// The folder's config is unreadable or names no known weights format.
    #[error("model folder: {0}")]
    Folder(String),
    #[error(transparent)]
    Blob(#[from] medlabel_events::blob::BlobError),
    #[error(transparent)]
    Model(#[from] medlabel_events::models::ModelError),
    #[error(transparent)]
    Id(#[from] medlabel_events::id::InvalidId),
    #[error(transparent)]
    Store(#[from] medlabel_events::store::StoreError),
}

impl From<String> for PublishError {
    fn from(why: String) -> Self {
        Self::Folder(why)
    }
}

/// Runs the runner binary's `import` (and `new-model`) commands in a scratch folder.
#[derive(Debug, Clone)]
pub struct ModelImporter {
    runner: PathBuf,
    scratch: PathBuf,
}

/// A model folder written by the runner; removed (with its scratch) when dropped.
pub struct ImportedFolder {
    work: tempfile::TempDir,
}

impl ImportedFolder {
    pub fn path(&self) -> PathBuf {
        self.work.path().join("model")
    }
}

impl ModelImporter {
    /// `runner` is the `medlabel-runner` binary; folders are written below `scratch`.
    pub fn new(runner: PathBuf, scratch: PathBuf) -> Self {
        Self { runner, scratch }
    }

    /// Imports `file` (a bundle folder or zip, or a weights-only file taking the config
    /// `like_config`, the JSON of the model it replaces).
    pub async fn import(
        &self,
        file: &Path,
        like_config: Option<&[u8]>,
    ) -> Result<ImportedFolder, ImportError> {
        let work = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&self.scratch)?;
        let out = work.path().join("model");
        let mut args = vec![
            "import".into(),
            "--file".into(),
            file.as_os_str().to_owned(),
        ];
        if let Some(config) = like_config {
            let like = work.path().join("like");
            std::fs::create_dir_all(&like)?;
            std::fs::write(like.join(folder::CONFIG_FILE), config)?;
            args.extend(["--like".into(), like.into_os_string()]);
        }
        args.extend(["--out".into(), out.clone().into_os_string()]);
        self.run(&args).await?;
        Ok(ImportedFolder { work })
    }

    /// A new model folder for `labels` (name → output channel) on a template `network`.
    pub async fn new_model(
        &self,
        network: &str,
        labels: &[(String, i64)],
    ) -> Result<ImportedFolder, ImportError> {
        let work = tempfile::Builder::new()
            .prefix("new-model-")
            .tempdir_in(&self.scratch)?;
        let out = work.path().join("model");
        let labels = labels
            .iter()
            .map(|(name, channel)| format!("{name}={channel}"))
            .collect::<Vec<_>>()
            .join(",");
        let args = [
            "new-model".into(),
            "--network".into(),
            network.into(),
            "--labels".into(),
            labels.into(),
            "--out".into(),
            out.into_os_string(),
        ];
        self.run(&args).await?;
        Ok(ImportedFolder { work })
    }

    async fn run(&self, args: &[std::ffi::OsString]) -> Result<(), ImportError> {
        let child = tokio::process::Command::new(&self.runner)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(IMPORT_TIMEOUT, child)
            .await
            .map_err(|_| ImportError::Failed(format!("took longer than {IMPORT_TIMEOUT:?}")))?
            .map_err(|e| ImportError::Failed(format!("{}: {e}", self.runner.display())))?;
        if output.status.success() {
            return Ok(());
        }
        // The runner's last stderr line is its error; "invalid input" marks the file's fault.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default().trim();
        match last.split_once("invalid input: ") {
            Some((_, why)) => Err(ImportError::Refused(why.to_owned())),
            None => Err(ImportError::Failed(last.to_owned())),
        }
    }
}

/// Publishes the model folder `dir` (its config and the weights file the config names)
/// as the next version of `name`.
pub async fn publish_folder(
    models: &Models,
    blobs: &dyn BlobStore,
    ctx: &WriteContext,
    name: &ModelName,
    dir: &Path,
) -> Result<PublishedModel, PublishError> {
    let (config, weights) = put_folder(blobs, dir).await?;
    Ok(models
        .publish(ctx, name, weights, config, None, None)
        .await?)
}

/// Stores a model folder's config and weights as blobs: `(config, weights)`.
pub async fn put_folder(
    blobs: &dyn BlobStore,
    dir: &Path,
) -> Result<(medlabel_events::BlobRef, medlabel_events::BlobRef), PublishError> {
    let config_path = dir.join(folder::CONFIG_FILE);
    let weights_name = folder::weights_file_of(&std::fs::read(&config_path)?)?;
    let weights_path = dir.join(weights_name);
    let suffix = weights_path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let weights = blobs
        .put_file(&weights_path, &Extension::parse(format!(".{suffix}"))?)
        .await?;
    let config = blobs
        .put_file(&config_path, &Extension::parse(".json")?)
        .await?;
    Ok((config, weights))
}

/// The current config JSON of `model`, for weights-only uploads to take.
pub async fn current_config(
    blobs: &dyn BlobStore,
    model: &PublishedModel,
) -> Result<Vec<u8>, medlabel_events::blob::BlobError> {
    read_to_vec(blobs, &model.config).await
}

/// Publishes the folder `dir` as version 1 of `name` unless that model has a version
/// already (a restart never rolls back what training or an upload published since);
/// returns whether this call published it. The request id derives from the name and
/// the weights, so a restart records nothing twice. When the model exists with other
/// weights, says how to publish these.
pub async fn publish_if_absent(
    models: &Models,
    blobs: &dyn BlobStore,
    name: &ModelName,
    dir: &Path,
) -> Result<bool, PublishError> {
    if let Some(current) = models.view().await?.model(name).cloned() {
        let weights_name = folder::weights_file_of(&std::fs::read(dir.join(folder::CONFIG_FILE))?)?;
        let here = sha256_hex(&std::fs::read(dir.join(weights_name))?);
        if here != current.weights.sha256 {
            tracing::warn!(
                model = %name,
                version = current.version,
                "the model already has a version with other weights; PUT /model/{name} publishes these"
            );
        }
        return Ok(false);
    }
    let (config, weights) = put_folder(blobs, dir).await?;
    // Named as well as hashed: two folders may hold the same weights under two names.
    let ctx = WriteContext::new(
        Actor::admin(),
        format!("starter-{name}-{}", &weights.sha256[..32]),
    );
    let published = models
        .publish(&ctx, name, weights, config, None, None)
        .await?;
    tracing::info!(model = %published.model, version = published.version, "model published");
    Ok(true)
}

/// [`publish_if_absent`] for a model folder named after its model.
pub async fn publish_model_folder(
    models: &Models,
    blobs: &dyn BlobStore,
    dir: &Path,
) -> Result<bool, PublishError> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PublishError::Folder("the model folder has no name".into()))?;
    publish_if_absent(models, blobs, &ModelName::parse(name)?, dir).await
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
