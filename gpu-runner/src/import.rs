//! A model file from a user, whatever its kind, turned into a model folder.
//!
//! MONAI Label users bring a model as a MONAI bundle (a folder or a zip), a TorchScript
//! archive (`torch.jit.script(net).save(...)`), a state dict (`torch.save(net.state_dict())`)
//! or safetensors. [`import_model`] tells them apart by their contents, never by their
//! names (an upload's name is the client's choice):
//! - a folder, or a zip holding `configs/metadata.json`: a bundle ([`crate::bundle::import`],
//!   which brings its own labels, transforms and network);
//! - any other zip holding a `code/` folder: TorchScript; other zips holding `data.pkl`:
//!   a state dict; anything else: safetensors. These carry weights only, so they take
//!   the config of a model folder `like` (the model they become the next version of);
//!   TorchScript replaces its network by the archive with the same inputs and outputs.
//!
//! Nothing runs code from the file beyond what TorchScript's own loader runs, and the
//! result proves itself before it is written: it loads, and one forward pass on a
//! window of zeros gives one output channel per label.

use std::io::Read;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::bundle::{BundleImport, import as import_bundle};
use crate::config::{ModelConfig, WeightsFormat};
use crate::error::{Result, RunnerError};
use crate::formats::state_dict;
use crate::model::Model;
use crate::networks::{Mode, NetworkConfig, TorchScriptConfig, load_state_dict};

/// What [`import_model`] found the file to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    Bundle,
    TorchScript,
    StateDict,
    Safetensors,
}

/// Writes the model folder for `file` into `out` and returns its config and kind.
/// `like` is the folder whose config weights-only files take; bundles ignore it.
pub fn import_model(
    file: &Path,
    like: Option<&Path>,
    out: &Path,
    opts: &BundleImport,
) -> Result<(ModelConfig, ModelSource)> {
    let source = identify(file)?;
    if source == ModelSource::Bundle {
        let config = import_bundle(file, out, opts)?;
        probe(out)?;
        return Ok((config, source));
    }
    let like = like.ok_or_else(|| {
        RunnerError::invalid(format!(
            "{}: a {source:?} file holds weights only; it needs the model it replaces",
            file.display()
        ))
    })?;
    let mut config = ModelConfig::load(like)?;
    std::fs::create_dir_all(out).map_err(|e| RunnerError::io(out, e))?;
    if source == ModelSource::TorchScript {
        config.network = NetworkConfig::TorchScript(TorchScriptConfig {
            in_channels: config.network.in_channels(),
            out_channels: config.network.out_channels(),
            size_divisor: config.network.size_divisor(),
        });
        config.format = WeightsFormat::Torchscript;
        config.validate()?;
        let dst = config.weights_path(out);
        std::fs::copy(file, &dst).map_err(|e| RunnerError::io(&dst, e))?;
        config.save(out)?;
    } else {
        // A TorchScript model receiving plain weights has no native network to take them.
        if matches!(config.network, NetworkConfig::TorchScript(_)) {
            return Err(RunnerError::invalid(
                "this model is a TorchScript archive: upload a TorchScript file or a bundle",
            ));
        }
        config.format = WeightsFormat::Safetensors;
        let model = Model::new(config, Device::Cpu)?;
        let tensors = match source {
            ModelSource::StateDict => state_dict::read(file)?,
            _ => Tensor::read_safetensors(file)
                .map_err(|e| RunnerError::invalid(format!("{}: {e}", file.display())))?,
        };
        load_state_dict(&model.vs, tensors)
            .map_err(|e| RunnerError::invalid(format!("{}: {e}", file.display())))?;
        model.save(out)?;
        config = model.config;
    }
    probe(out)?;
    Ok((config, source))
}

/// What kind of model file `file` is, from its contents.
pub fn identify(file: &Path) -> Result<ModelSource> {
    if file.is_dir() {
        return Ok(ModelSource::Bundle);
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(file).map_err(|e| RunnerError::io(file, e))?;
    let read = f.read(&mut magic).map_err(|e| RunnerError::io(file, e))?;
    if read < 4 || magic != *b"PK\x03\x04" {
        return Ok(ModelSource::Safetensors);
    }
    let zip = zip::ZipArchive::new(f).map_err(|e| {
        RunnerError::invalid(format!("{}: not a zip archive ({e})", file.display()))
    })?;
    let names: Vec<&str> = zip.file_names().collect();
    let has = |pred: &dyn Fn(&str) -> bool| names.iter().any(|n| pred(n));
    if has(&|n| n.ends_with("configs/metadata.json")) {
        Ok(ModelSource::Bundle)
    } else if has(&|n| n.contains("/code/")) {
        Ok(ModelSource::TorchScript)
    } else if has(&|n| n.ends_with("data.pkl")) {
        Ok(ModelSource::StateDict)
    } else {
        Err(RunnerError::invalid(format!(
            "{}: a zip that is neither a MONAI bundle (configs/metadata.json), TorchScript \
             (code/) nor a PyTorch state dict (data.pkl)",
            file.display()
        )))
    }
}

/// Loads the folder and runs one window of zeros through it: the output must have one
/// channel per label (background included).
fn probe(dir: &Path) -> Result<()> {
    let model = Model::load(dir, Device::Cpu)?;
    let config = &model.config;
    // `forward` takes the runner's tensor order, as inference feeds it.
    let [a, b, c] = crate::transforms::tensor_order(config.roi_size);
    let channels = config.network.in_channels();
    let x = Tensor::zeros([1, channels, a, b, c], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| model.forward(&x, Mode::EVAL))?;
    let want = config.labels.values().copied().max().unwrap_or(0) + 1;
    let got = y.size().get(1).copied().unwrap_or(0);
    if got < want {
        return Err(RunnerError::invalid(format!(
            "the network gives {got} output channels; its labels need {want}"
        )));
    }
    Ok(())
}
