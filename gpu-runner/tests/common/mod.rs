//! Shared by the bundle tests (the runner's, and the API's `functions/tests/bundles.rs`):
//! the Python test tooling (`tests/python/bundles.py`, run
//! with the venv `scripts/setup.sh` makes) and the bundles it builds once per test
//! binary.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The venv `scripts/setup.sh` installs torch, MONAI and nibabel into.
fn venv() -> PathBuf {
    std::env::var_os("MEDLABEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/medlabel")
        })
        .join("py")
}

/// The tooling script, found from any crate of the workspace (the API's tests build
/// bundles with it too).
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gpu-runner/tests/python/bundles.py")
}

/// A command running `tests/python/bundles.py` with MONAI importable: the CUDA stand-ins
/// setup.sh builds come last on the library path, after any real CUDA libraries.
pub fn bundles_py() -> Command {
    let venv = venv();
    let site = std::fs::read_dir(venv.join("lib"))
        .expect("the venv from scripts/setup.sh")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
        .expect("a site-packages folder");
    let mut paths: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    paths.push(site.join("nvidia/cu13/lib"));
    paths.push(venv.join("cuda-stubs"));
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(script())
        .env(
            "LD_LIBRARY_PATH",
            std::env::join_paths(paths).expect("paths"),
        )
        .env("OMP_NUM_THREADS", "1")
        .env("PYTHONWARNINGS", "ignore");
    cmd
}

/// Runs `bundles.py` with `args`; panics with its output unless it reports ok.
pub fn run(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = bundles_py().args(args).output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bundles.py {args:?} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a report line")).expect("JSON");
    assert_eq!(report["ok"], true);
    report
}

/// The six test bundles (UNet, SegResNet, DynUNet × state dict, TorchScript) with
/// MONAI's own results: `<root>/<network>_<pt|ts>/`. Built once and kept in cargo's
/// test scratch folder under a hash of the tooling, so every test binary (and the next
/// run) reuses them until `bundles.py` changes.
pub fn suite() -> &'static Path {
    static SUITE: OnceLock<PathBuf> = OnceLock::new();
    SUITE.get_or_init(|| {
        let bytes = std::fs::read(script()).expect("bundles.py");
        // FNV-1a: a stable name for this version of the tooling.
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bundle-suite-{hash:016x}"));
        if !root.join("done").is_file() {
            let _ = std::fs::remove_dir_all(&root);
            run(&["suite".as_ref(), root.as_os_str()]);
            std::fs::write(root.join("done"), b"").expect("marker");
        }
        root
    })
}
