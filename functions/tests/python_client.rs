//! The real MONAI Label Python client (monailabel 0.8.5) against a spawned
//! `medlabel serve`: the compatibility the whole product promises.

use std::path::Path;
use std::process::Command;

mod common;

/// The Python that `scripts/setup.sh` installs `monailabel==0.8.5` into.
fn python() -> std::path::PathBuf {
    let cache = std::env::var_os("MEDLABEL_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".cache/medlabel")
        });
    cache.join("py/bin/python")
}

fn start(studies: &Path, extra: &[&std::ffi::OsStr]) -> (common::LocalServer, String) {
    let server = common::LocalServer::start(studies, extra);
    let url = server.url.clone();
    (server, url)
}

/// Runs `tests/python/<script> <url> <work>` and checks it reports `{"ok": true}`.
fn run_script(script: &str, url: &str, work: &Path) {
    let path = common::manifest_dir().join("tests/python").join(script);
    let output = Command::new(python())
        .arg(&path)
        .arg(url)
        .arg(work)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["ok"], true);
}

#[test]
fn python_client_works_against_medlabel_serve() {
    let studies = tempfile::tempdir().unwrap();
    std::fs::write(
        studies.path().join("imported_1.nii.gz"),
        common::ct_volume(1),
    )
    .unwrap();
    let labels = studies.path().join("labels").join("final");
    std::fs::create_dir_all(&labels).unwrap();
    std::fs::write(
        labels.join("imported_1.nii.gz"),
        common::label_volume(1, 60),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();

    // No runner: the app has no models, as a MONAI Label app without models.
    let (_server, url) = start(
        studies.path(),
        &["--runner".as_ref(), "/nonexistent".as_ref()],
    );
    run_script("client_compat.py", &url, work.path());
    // The events live where the brief says: the studies folder's .medlabel directory.
    assert!(studies.path().join(".medlabel/events.db").is_file());
}

/// With the GPU runner (a child process on the same event log) and the starter model:
/// inference, training and train stats through the real client.
#[test]
fn python_client_infers_and_trains_with_the_runner() {
    let studies = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let runner = common::runner_binary();
    let starter = common::manifest_dir().join("../gpu-runner/models/segmentation_spleen");
    let (_server, url) = start(
        studies.path(),
        &[
            "--runner".as_ref(),
            runner.as_os_str(),
            "--starter-model".as_ref(),
            starter.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
        ],
    );
    run_script("client_models.py", &url, work.path());
}
