//! Weight files read as data: PyTorch state dicts without executing their pickle
//! ([`state_dict`], over the restricted reader in [`pickle`]). Safetensors files are
//! read by tch, TorchScript archives by libtorch ([`crate::networks::torchscript`]).

pub mod pickle;
pub mod state_dict;
