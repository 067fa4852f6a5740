//! The studies folder as a projection of the log, through the real `medlabel serve`:
//! what is uploaded and labelled through the API appears under MONAI Label's names,
//! as links to the blobs; a folder that drifted while medlabel was stopped is rebuilt
//! at the next start; and MONAI Label's own `LocalDatastore` (pip `monailabel`) reads
//! the folder medlabel left and finds the same images, labels and label info.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn python(script_args: &[&std::ffi::OsStr]) {
    let script = common::manifest_dir().join("tests/python/studies_folder.py");
    let output = Command::new(common::cache_dir().join("py/bin/python"))
        .arg(script)
        .args(script_args)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "studies_folder.py {script_args:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn serve(studies: &Path) -> common::LocalServer {
    common::LocalServer::start(studies, &["--runner".as_ref(), "/nonexistent".as_ref()])
}

/// Waits until `datastore_v2.json` lists `images` (sorted) and `case_1`'s final label
/// info carries `reviewed`: the projection has written what the API recorded.
fn wait_for_metadata(studies: &Path, images: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let doc = std::fs::read(studies.join("datastore_v2.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
        if let Some(doc) = doc {
            let listed: Vec<&str> = doc["objects"]
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let reviewed = &doc["objects"]["case_1"]["labels"]["final"]["info"]["reviewed"];
            if listed == images && reviewed == "yes" {
                return doc;
            }
        }
        assert!(
            Instant::now() < deadline,
            "datastore_v2.json never caught up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The images' and final labels' files, with their bytes.
fn files(studies: &Path) -> Vec<(String, Vec<u8>)> {
    [
        "case_0.nii.gz",
        "case_1.nii.gz",
        "labels/final/case_0.nii.gz",
        "labels/final/case_1.nii.gz",
    ]
    .iter()
    .map(|name| (name.to_string(), std::fs::read(studies.join(name)).unwrap()))
    .collect()
}

#[test]
fn the_studies_folder_follows_the_log_and_reads_as_monai_labels() {
    let studies = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = studies.path();
    let server = serve(dir);
    python(&[
        "write".as_ref(),
        server.url.as_ref(),
        work.path().as_os_str(),
    ]);
    let doc = wait_for_metadata(dir, &["case_0", "case_1"]);
    // MONAI Label's own layout of an object.
    let case_0 = &doc["objects"]["case_0"];
    assert_eq!(case_0["image"]["ext"], ".nii.gz");
    assert_eq!(case_0["labels"]["final"]["ext"], ".nii.gz");
    assert!(case_0["image"]["info"]["ts"].is_number(), "{case_0}");
    // The removed image left the folder.
    assert!(!dir.join("case_2.nii.gz").exists());
    let placed = files(dir);
    server.stop();

    // Drift while stopped: an image, a label and the metadata deleted.
    std::fs::remove_file(dir.join("case_1.nii.gz")).unwrap();
    std::fs::remove_file(dir.join("labels/final/case_0.nii.gz")).unwrap();
    std::fs::remove_file(dir.join("datastore_v2.json")).unwrap();
    let server = serve(dir);
    let again = wait_for_metadata(dir, &["case_0", "case_1"]);
    // Rebuilt from the log, not imported anew: the same objects, versions and info.
    assert_eq!(again["objects"], doc["objects"]);
    assert_eq!(files(dir), placed);
    server.stop();

    python(&["read".as_ref(), dir.as_os_str()]);
}
