//! The jobs and models contract: one job of a kind at a time, one claim per job,
//! progress and results on record, model versions counting up.

use std::sync::Arc;

use medlabel_events::datastore::WriteContext;
use medlabel_events::event::{Actor, JobKind, JobStatus};
use medlabel_events::id::{Extension, ModelName};
use medlabel_events::jobs::{JobError, Jobs};
use medlabel_events::{BlobStore, EventStore, Info, SystemClock};
use serde_json::json;

fn ctx() -> WriteContext {
    WriteContext::fresh(Actor::admin())
}

pub async fn lifecycle(store: Arc<dyn EventStore>, blobs: Arc<dyn BlobStore>) {
    let jobs = Jobs::new(store.clone(), Arc::new(SystemClock));
    let model = ModelName::parse("segmentation_spleen").unwrap();
    let params = json!({"max_epochs": 2}).as_object().cloned().unwrap();
    let retried = ctx();
    let job = jobs
        .request(
            &retried,
            JobKind::Train,
            Some(model.clone()),
            params.clone(),
            vec![],
            Some(7),
            false,
        )
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Submitted);
    let again = jobs
        .request(
            &retried,
            JobKind::Train,
            Some(model.clone()),
            params.clone(),
            vec![],
            Some(7),
            true,
        )
        .await
        .unwrap();
    assert_eq!(again.id, job.id, "a retried request names the same job");
    assert_eq!(jobs.view().await.unwrap().all(JobKind::Train).len(), 1);
    assert!(matches!(
        jobs.request(
            &ctx(),
            JobKind::Train,
            Some(model.clone()),
            params.clone(),
            vec![],
            None,
            false
        )
        .await,
        Err(JobError::AlreadyRunning(JobKind::Train))
    ));
    // Another kind runs beside it.
    jobs.request(
        &ctx(),
        JobKind::Scoring,
        None,
        Info::new(),
        vec![],
        None,
        false,
    )
    .await
    .unwrap();

    // Two runners race for the claim: exactly one wins.
    let (first, second) = (ctx(), ctx());
    let (a, b) = tokio::join!(
        jobs.claim(&first, &job, "runner-a"),
        jobs.claim(&second, &job, "runner-b")
    );
    assert_eq!(
        [a.unwrap(), b.unwrap()].iter().filter(|won| **won).count(),
        1
    );
    let running = jobs.view().await.unwrap().job(&job.id).cloned().unwrap();
    assert_eq!(running.status, JobStatus::Running);
    assert!(!jobs.claim(&ctx(), &running, "runner-c").await.unwrap());

    let stats = json!({"epoch": 1, "total_epochs": 2, "best_metric": 0.5})
        .as_object()
        .cloned()
        .unwrap();
    jobs.progress(&ctx(), &running, stats).await.unwrap();
    assert_eq!(
        jobs.view().await.unwrap().train_stats(&model).unwrap()["epoch"],
        1
    );

    let stopped = jobs.stop(&ctx(), JobKind::Train).await.unwrap().unwrap();
    assert!(stopped.stop_requested && stopped.status == JobStatus::Running);
    jobs.finish(&ctx(), &stopped, JobStatus::Stopped, Info::new())
        .await
        .unwrap();
    assert!(jobs.view().await.unwrap().active(JobKind::Train).is_none());
    assert!(jobs.stop(&ctx(), JobKind::Train).await.unwrap().is_none());
    let task = jobs
        .view()
        .await
        .unwrap()
        .latest(JobKind::Train)
        .unwrap()
        .to_task_json();
    assert_eq!(task["status"], "STOPPED");
    assert_eq!(task["request"]["model"], "segmentation_spleen");
    assert!(task["end_ts"].is_string());

    // Model versions count up; deleting withdraws the model.
    let ext = Extension::parse(".safetensors").unwrap();
    let config_ext = Extension::parse(".json").unwrap();
    for (version, bytes) in [(1u32, b"weights one"), (2, b"weights two")] {
        let weights = blobs.put_bytes(bytes.to_vec(), &ext).await.unwrap();
        let config = blobs.put_bytes(b"{}".to_vec(), &config_ext).await.unwrap();
        let published = jobs
            .publish_model(
                &ctx(),
                &model,
                weights.clone(),
                config,
                Some(0.9),
                Some(job.id.clone()),
            )
            .await
            .unwrap();
        assert_eq!((published.version, published.weights), (version, weights));
    }
    jobs.delete_model(&ctx(), &model).await.unwrap();
    assert!(jobs.view().await.unwrap().model(&model).is_none());
    assert!(matches!(
        jobs.delete_model(&ctx(), &model).await,
        Err(JobError::ModelNotFound(_))
    ));
}
