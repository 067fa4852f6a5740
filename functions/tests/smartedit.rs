//! Slicer's and OHIF's SmartEdit requests (DeepGrow, DeepEdit) through the real
//! `monailabel` client against `medlabel serve` with the runner and the shipped
//! click-guided starter models.

use std::process::Command;

mod common;

/// A synthetic CT (spleen and liver labelled) from a seed the models never saw, the
/// server with both starter models, and `client_smartedit.py`: masks with Dice ≥ 0.8
/// for the clicked organs, MONAI Label's result fields, 422 for a click outside the
/// image or an unknown label name, and no label saved.
#[test]
fn python_client_sends_deepgrow_and_deepedit_clicks() {
    let sample = tempfile::tempdir().unwrap();
    let runner = common::runner_binary();
    let made = Command::new(&runner)
        .args(["make-sample", "--liver", "--cases", "1", "--seed", "4242"])
        .args(["--dims", "128,128,80", "--spacing", "1.5,1.5,2.5", "--out"])
        .arg(sample.path())
        .status()
        .unwrap();
    assert!(made.success());
    let work = tempfile::tempdir().unwrap();
    let name = "spleen_000.nii.gz";
    std::fs::copy(sample.path().join(name), work.path().join("ct.nii.gz")).unwrap();
    std::fs::copy(
        sample.path().join("labels/final").join(name),
        work.path().join("truth.nii.gz"),
    )
    .unwrap();

    let studies = tempfile::tempdir().unwrap();
    let models = common::manifest_dir().join("../gpu-runner/models");
    let (deepgrow, deepedit) = (
        models.join("deepgrow_3d"),
        models.join("deepedit_spleen_liver"),
    );
    let server = common::LocalServer::start(
        studies.path(),
        &[
            "--runner".as_ref(),
            runner.as_os_str(),
            "--starter-model".as_ref(),
            deepgrow.as_os_str(),
            "--starter-model".as_ref(),
            deepedit.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
        ],
    );
    let report = common::run_python("client_smartedit.py", &server.url, work.path(), &[]);
    assert_eq!(report["ok"], true, "{report}");
}
