//! TorchScript modules (`torch.jit.script`/`trace` + `torch.jit.save`, a bundle's
//! `models/model.ts`) run through libtorch's own interpreter: no Python, and the
//! archive's pickles are read by libtorch's TorchScript unpickler, which builds tensors
//! and TorchScript objects only.
//!
//! The module is loaded as a [`TrainableCModule`], which registers its parameters in
//! the model's var store, so the runner's optimizer trains them like native ones; saving
//! writes a TorchScript archive again (buffers such as batch-norm statistics included).
//! libtorch switches a module between training and evaluation as a whole, so the mode is
//! switched lazily before a forward pass that needs the other one; dropout alone cannot
//! be switched on, so MC-dropout is refused for TorchScript models.

use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tch::{Tensor, TrainableCModule, nn};

use super::Mode;
use crate::error::{Result, RunnerError};

/// What the runner must know about a TorchScript module it cannot look inside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorchScriptConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    /// Per-axis factor every window size must be a multiple of (MONAI's axis order);
    /// a bundle's `spatial_shape` such as `"16*n"` gives it.
    #[serde(default = "ones")]
    pub size_divisor: [i64; 3],
}

fn ones() -> [i64; 3] {
    [1; 3]
}

/// A loaded TorchScript module and the mode it is in.
pub struct TorchScript {
    module: Mutex<(TrainableCModule, Option<bool>)>,
}

impl std::fmt::Debug for TorchScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TorchScript")
    }
}

impl TorchScript {
    /// Loads `path` onto the var store's device; its parameters become the store's
    /// trainable variables (named like the module's, `.` replaced by `_`).
    pub fn load(path: &Path, root: &nn::Path) -> Result<Self> {
        if !path.is_file() {
            return Err(RunnerError::invalid(format!(
                "{} is missing",
                path.display()
            )));
        }
        let module = TrainableCModule::load(path, root.clone()).map_err(|e| {
            RunnerError::invalid(format!(
                "{} is not a loadable TorchScript archive: {}",
                path.display(),
                first_line(&e.to_string())
            ))
        })?;
        Ok(Self {
            module: Mutex::new((module, None)),
        })
    }

    /// Runs `forward`; a tuple or stacked deep-supervision output yields its first map.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut guard = self.module.lock().unwrap_or_else(|p| p.into_inner());
        let (module, current) = &mut *guard;
        if *current != Some(mode.train) {
            if mode.train {
                module.f_set_train()?;
            } else {
                module.f_set_eval()?;
            }
            *current = Some(mode.train);
        }
        let out = module.forward_ts(&[x]).map_err(|e| {
            RunnerError::invalid(format!(
                "TorchScript forward failed on {:?}: {}",
                x.size(),
                first_line(&e.to_string())
            ))
        })?;
        // DynUNet in training mode stacks its deep-supervision maps on dim 1.
        Ok(if out.dim() == x.dim() + 1 {
            out.select(1, 0)
        } else {
            out
        })
    }

    /// Writes the module (with its current weights and buffers) as TorchScript.
    pub fn save(&self, path: &Path) -> Result<()> {
        let guard = self.module.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.save(path)?;
        Ok(())
    }
}

/// libtorch errors carry a C++ backtrace; the first line says what went wrong.
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
