//! The jobs and models contract: one job of a kind at a time (also when requests race,
//! across service instances), one claim per job, leases that end a job whose runner
//! went away, stops that end a job at once, progress and results on record; model
//! versions counting up, also across a deletion.

use std::sync::Arc;
use std::time::Duration;

use medlabel_events::clock::ManualClock;
use medlabel_events::datastore::WriteContext;
use medlabel_events::event::{Actor, JobKind, JobStatus, LabelVersionRef};
use medlabel_events::id::{Extension, ImageId, ModelName, Tag};
use medlabel_events::jobs::{JobError, Jobs};
use medlabel_events::models::{ModelError, Models};
use medlabel_events::pinned::pin;
use medlabel_events::{BlobRef, BlobStore, EventStore, Info, SystemClock};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);

fn blob_ref(hex: char) -> BlobRef {
    BlobRef {
        sha256: hex.to_string().repeat(64),
        size: 1,
        ext: Extension::parse(".nii.gz").unwrap(),
    }
}

fn ctx() -> WriteContext {
    WriteContext::fresh(Actor::admin())
}

pub async fn lifecycle(store: Arc<dyn EventStore>, blobs: Arc<dyn BlobStore>) {
    let jobs = Jobs::new(store.clone(), Arc::new(SystemClock));
    let model = ModelName::parse("segmentation_spleen").unwrap();
    let params = json!({"max_epochs": 2}).as_object().cloned().unwrap();
    // The pinned labels are a blob the request names, however many there are.
    let labels: Vec<LabelVersionRef> = (0..3)
        .map(|n| LabelVersionRef {
            image: ImageId::parse(format!("ct_{n}")).unwrap(),
            tag: Tag::final_tag(),
            version: n + 1,
            image_blob: blob_ref('a'),
            label_blob: blob_ref('b'),
        })
        .collect();
    let pinned = pin(blobs.as_ref(), &labels, 7).await.unwrap();
    let retried = ctx();
    let job = jobs
        .request(
            &retried,
            JobKind::Train,
            Some(model.clone()),
            params.clone(),
            Some(pinned.clone()),
            false,
        )
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Submitted);
    assert_eq!(job.as_of_position, Some(7));
    assert_eq!(job.labels_blob.as_ref(), Some(&pinned.blob));
    assert_eq!(
        medlabel_events::pinned::pinned(blobs.as_ref(), &job)
            .await
            .unwrap(),
        labels
    );
    let again = jobs
        .request(
            &retried,
            JobKind::Train,
            Some(model.clone()),
            params.clone(),
            Some(pinned.clone()),
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
            None,
            false
        )
        .await,
        Err(JobError::AlreadyRunning(JobKind::Train))
    ));
    // Another kind runs beside it.
    jobs.request(&ctx(), JobKind::Scoring, None, Info::new(), None, false)
        .await
        .unwrap();

    // Two runners race for the claim: exactly one wins.
    let (first, second) = (ctx(), ctx());
    let (a, b) = tokio::join!(
        jobs.claim(&first, &job, "runner-a", LEASE),
        jobs.claim(&second, &job, "runner-b", LEASE)
    );
    assert_eq!(
        [a.unwrap(), b.unwrap()].iter().filter(|won| **won).count(),
        1
    );
    let running = jobs.view().await.unwrap().job(&job.id).cloned().unwrap();
    assert_eq!(running.status, JobStatus::Running);
    assert!(running.lease_until_ms.is_some());
    assert!(
        !jobs
            .claim(&ctx(), &running, "runner-c", LEASE)
            .await
            .unwrap()
    );

    let stats = json!({"epoch": 1, "total_epochs": 2, "best_metric": 0.5})
        .as_object()
        .cloned()
        .unwrap();
    jobs.progress(&ctx(), &running, stats).await.unwrap();
    assert_eq!(
        jobs.view().await.unwrap().train_stats(&model).unwrap()["epoch"],
        1
    );

    // A stop ends the job at once, as MONAI Label's kill does, saying how far it got;
    // the runner's own ending afterwards records nothing.
    let stopped = jobs.stop(&ctx(), JobKind::Train).await.unwrap().unwrap();
    assert_eq!(stopped.status, JobStatus::Stopped);
    let details = stopped.to_task_json()["details"].clone();
    assert!(
        details[0].as_str().unwrap().contains("after epoch 1 of 2"),
        "{details}"
    );
    let head = store.head().await.unwrap();
    jobs.finish(&ctx(), &stopped, JobStatus::Done, Info::new())
        .await
        .unwrap();
    assert_eq!(store.head().await.unwrap(), head);
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
    let models = Models::new(store.clone(), Arc::new(SystemClock));
    let ext = Extension::parse(".safetensors").unwrap();
    let config_ext = Extension::parse(".json").unwrap();
    for (version, bytes) in [(1u32, b"weights one"), (2, b"weights two")] {
        let weights = blobs.put_bytes(bytes.to_vec(), &ext).await.unwrap();
        let config = blobs.put_bytes(b"{}".to_vec(), &config_ext).await.unwrap();
        let published = models
            .publish(
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
    models.delete(&ctx(), &model).await.unwrap();
    assert!(models.view().await.unwrap().model(&model).is_none());
    assert!(matches!(
        models.delete(&ctx(), &model).await,
        Err(ModelError::NotFound(_))
    ));
    // Numbers never repeat: a model published again after a deletion is version 3.
    let weights = blobs
        .put_bytes(b"weights three".to_vec(), &ext)
        .await
        .unwrap();
    let config = blobs.put_bytes(b"{}".to_vec(), &config_ext).await.unwrap();
    let again = models
        .publish(&ctx(), &model, weights, config, None, None)
        .await
        .unwrap();
    assert_eq!(again.version, 3);
}

/// Eight requests for the train slot at once, through eight service instances (as
/// eight Lambda instances or processes would): exactly one is accepted.
pub async fn concurrent_requests_accept_one(store: Arc<dyn EventStore>) {
    let model = ModelName::parse("segmentation_spleen").unwrap();
    let requests = (0..8).map(|_| {
        let jobs = Jobs::new(store.clone(), Arc::new(SystemClock));
        let model = model.clone();
        tokio::spawn(async move {
            jobs.request(
                &ctx(),
                JobKind::Train,
                Some(model),
                Info::new(),
                None,
                false,
            )
            .await
        })
    });
    let outcomes = futures::future::join_all(requests).await;
    let accepted = outcomes
        .iter()
        .filter(|outcome| outcome.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(accepted, 1, "{outcomes:?}");
    for outcome in outcomes {
        if let Err(err) = outcome.unwrap() {
            assert!(
                matches!(err, JobError::AlreadyRunning(JobKind::Train)),
                "{err}"
            );
        }
    }
    let view = Jobs::new(store.clone(), Arc::new(SystemClock));
    assert_eq!(view.view().await.unwrap().all(JobKind::Train).len(), 1);
}

/// A runner that stops renewing its lease loses the job: whoever meets the lapsed job
/// next ends it as ERROR, so the slot frees; renewals keep it; a runner known to be
/// dead has its jobs ended at once.
pub async fn leases_end_jobs_of_runners_that_went_away(store: Arc<dyn EventStore>) {
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let jobs = Jobs::new(store.clone(), clock.clone());
    let model = ModelName::parse("segmentation_spleen").unwrap();
    let train = Some(model);
    let request = |jobs| {
        let (train, jobs): (_, &Jobs) = (train.clone(), jobs);
        async move {
            jobs.request(&ctx(), JobKind::Train, train, Info::new(), None, false)
                .await
        }
    };
    let job = request(&jobs).await.unwrap();
    assert!(jobs.claim(&ctx(), &job, "runner-a", LEASE).await.unwrap());

    // Renewed before it lapses: still held, still refusing a second request.
    clock.advance_ms(20_000);
    assert!(
        jobs.renew_lease(&ctx(), &job.id, "runner-a", LEASE)
            .await
            .unwrap()
    );
    assert!(
        !jobs
            .renew_lease(&ctx(), &job.id, "runner-b", LEASE)
            .await
            .unwrap()
    );
    clock.advance_ms(20_000);
    assert!(matches!(
        request(&jobs).await,
        Err(JobError::AlreadyRunning(_))
    ));
    assert_eq!(jobs.expire_lapsed(&ctx()).await.unwrap(), 0);

    // Not renewed: the next request ends it and is accepted.
    clock.advance_ms(31_000);
    let next = request(&jobs).await.unwrap();
    let (expired, active) = {
        let view = jobs.view().await.unwrap();
        let active = view.active(JobKind::Train).unwrap().id.clone();
        (view.job(&job.id).unwrap().clone(), active)
    };
    assert_eq!(expired.status, JobStatus::Error);
    let details = expired.to_task_json()["details"].to_string();
    assert!(
        details.contains("runner-a stopped renewing its lease"),
        "{details}"
    );
    assert_eq!(active, next.id);
    // The runner that lost it cannot renew it back.
    assert!(
        !jobs
            .renew_lease(&ctx(), &job.id, "runner-a", LEASE)
            .await
            .unwrap()
    );

    // A dead runner's jobs end at once, without waiting for the lease.
    assert!(jobs.claim(&ctx(), &next, "runner-b", LEASE).await.unwrap());
    assert_eq!(jobs.abandon(&ctx(), "runner-x", "exited").await.unwrap(), 0);
    assert_eq!(
        jobs.abandon(&ctx(), "runner-b", "exited (signal: 9)")
            .await
            .unwrap(),
        1
    );
    let ended = jobs.view().await.unwrap().job(&next.id).cloned().unwrap();
    assert_eq!(ended.status, JobStatus::Error);
    assert!(
        ended.to_task_json()["details"]
            .to_string()
            .contains("signal: 9")
    );
    request(&jobs).await.unwrap();
}
