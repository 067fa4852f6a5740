//! Slicer's and OHIF's SmartEdit requests (DeepGrow, DeepEdit) through the real
//! `monailabel` client against `medlabel serve` with the runner and the shipped
//! click-guided starter models.

mod common;

/// A synthetic CT (spleen and liver labelled) from a seed the models never saw, the
/// server with the three click-guided starter models, and `client_smartedit.py`: masks
/// with Dice ≥ 0.8 for the clicked organs (on the clicked slice for 2D DeepGrow, which
/// labels no other), `dimension` 2 and 3 in `/info/`, MONAI Label's result fields, 422
/// for a click outside the image, an unknown label name or a `slice` without a click,
/// and no label saved.
#[test]
fn python_client_sends_deepgrow_and_deepedit_clicks() {
    let sample = tempfile::tempdir().unwrap();
    common::make_sample(sample.path(), 1, 4242, "128,128,80", "1.5,1.5,2.5", true);
    let runner = common::runner_binary();
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
    let (deepgrow, deepgrow_2d, deepedit) = (
        models.join("deepgrow_3d"),
        models.join("deepgrow_2d"),
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
            deepgrow_2d.as_os_str(),
            "--starter-model".as_ref(),
            deepedit.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
        ],
    );
    let report = common::run_python("client_smartedit.py", &server.url, work.path(), &[]);
    eprintln!("client_smartedit.py: {report}");
}

/// `POST /train/{model}` on the shipped DeepEdit model: the runner fine-tunes it with
/// simulated clicks on the studies' spleen and liver labels, the job ends DONE with the
/// epochs asked for and a validation Dice, and the model still answers a click (served
/// by whatever version the run left published).
#[test]
fn deepedit_trains_through_the_api_with_simulated_clicks() {
    let studies = tempfile::tempdir().unwrap();
    common::make_sample(studies.path(), 4, 77, "64,64,40", "3,3,4", true);
    let runner = common::runner_binary();
    let model = common::manifest_dir().join("../gpu-runner/models/deepedit_spleen_liver");
    let server = common::LocalServer::start(
        studies.path(),
        &[
            "--runner".as_ref(),
            runner.as_os_str(),
            "--starter-model".as_ref(),
            model.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
        ],
    );
    let url = server.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .unwrap();
        let reply = client
            .post(format!("{url}/train/deepedit_spleen_liver"))
            .json(&serde_json::json!({"max_epochs": 2, "val_split": 0.5, "val_interval": 1}))
            .send()
            .await
            .unwrap();
        let status = reply.status();
        assert_eq!(status, 200, "{}", reply.text().await.unwrap());
        let done = common::training_outcome(&url, std::time::Duration::from_secs(600)).await;
        assert_eq!(done["status"], "DONE", "{done}");
        let stats = &done["result"]["train_stats"];
        assert_eq!(stats["total_epochs"], 2, "{done}");
        let best = stats["best_metric"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&best), "validation Dice: {done}");

        // A click at the middle of the first study's spleen still gets a spleen back.
        let click = spleen_centre(&studies.path().join("labels/final/spleen_000.nii.gz"));
        let reply = client
            .post(format!(
                "{url}/infer/deepedit_spleen_liver?image=spleen_000&output=image"
            ))
            .multipart(
                reqwest::multipart::Form::new().text(
                    "params",
                    serde_json::json!({"label": "spleen", "spleen": [click], "background": []})
                        .to_string(),
                ),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        let bytes = reply.bytes().await.unwrap();
        let mask =
            medlabel_imaging::nifti::read_nifti_bytes(&bytes, bytes.starts_with(&[0x1f, 0x8b]))
                .unwrap();
        let spleen = mask.data.iter().filter(|&&v| v == 1.0).count();
        assert!(spleen > 100, "{spleen} spleen voxels after a click on it");
    });
    server.stop();
}

/// The voxel (i, j, k) at the centre of the spleen (label 1) of a label file.
fn spleen_centre(path: &std::path::Path) -> [usize; 3] {
    let bytes = std::fs::read(path).unwrap();
    let label = medlabel_imaging::nifti::read_nifti_bytes(&bytes, bytes.starts_with(&[0x1f, 0x8b]))
        .unwrap();
    let [ni, nj, _] = label.dims;
    let (mut sum, mut count) = ([0usize; 3], 0usize);
    for (index, _) in label.data.iter().enumerate().filter(|(_, v)| **v == 1.0) {
        let voxel = [index % ni, index / ni % nj, index / (ni * nj)];
        for a in 0..3 {
            sum[a] += voxel[a];
        }
        count += 1;
    }
    assert!(count > 0, "no spleen in {}", path.display());
    sum.map(|s| s / count)
}
