//! The Datastore conformance suite: every method of MONAI Label's Datastore interface,
//! run unchanged against each backend pair (SQLite + folder, DynamoDB + S3).
//!
//! Each check takes a fresh, empty [`Datastore`] and a scratch folder; the backend
//! test files build those and call every check.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use medlabel_events::datastore::{Datastore, DatastoreError, DatastoreView, WriteContext};
use medlabel_events::event::Actor;
use medlabel_events::id::{ClientId, Extension, ImageId, Tag, UserName};
use medlabel_events::{Info, StoreError};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

fn id(s: &str) -> ImageId {
    ImageId::parse(s).unwrap()
}

fn tag(s: &str) -> Tag {
    Tag::parse(s).unwrap()
}

fn nii() -> Extension {
    Extension::parse(".nii.gz").unwrap()
}

fn info(value: Value) -> Info {
    value.as_object().cloned().unwrap()
}

/// An annotator writing through a client, with a fresh request id.
pub fn ctx(user: &str) -> WriteContext {
    WriteContext::fresh(Actor {
        user: UserName::parse(user).unwrap(),
        client_id: Some(ClientId::parse(format!("{user}-slicer")).unwrap()),
        subject: None,
    })
}

/// Writes `bytes` to a new file under `dir` and returns its path.
pub fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn read_all(mut reader: medlabel_events::blob::BlobReader) -> Vec<u8> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.unwrap();
    bytes
}

/// Reads what a URI from `get_image_uri`/`get_label_uri` points at: a local path, or a
/// presigned URL fetched over HTTP.
async fn read_uri(uri: &str) -> Vec<u8> {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return http_get(uri).await;
    }
    std::fs::read(uri).unwrap_or_else(|e| panic!("{uri} is not readable: {e}"))
}

async fn http_get(url: &str) -> Vec<u8> {
    // A tiny HTTP/1.1 GET over loopback (the emulator); no client library needed.
    use tokio::io::AsyncWriteExt;
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&response[..split]);
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    response[split + 4..].to_vec()
}

/// Every read and write method, with MONAI Label's semantics (and the filters it
/// ignores honoured).
pub async fn every_method(ds: &Datastore, dir: &Path) {
    // name / description
    assert_eq!(ds.name().await.unwrap(), "new-dataset");
    ds.set_name(&ctx("alice"), "spleen-ct").await.unwrap();
    ds.set_description(&ctx("alice"), "Spleen CT, round 1")
        .await
        .unwrap();
    assert_eq!(ds.name().await.unwrap(), "spleen-ct");
    assert_eq!(ds.description().await.unwrap(), "Spleen CT, round 1");

    // add_image / get_image / get_image_info / get_image_uri / list_images
    let scan = file(dir, "spleen_1.nii.gz", b"image one");
    ds.add_image(
        &ctx("alice"),
        &id("spleen_1"),
        &scan,
        &nii(),
        info(json!({"PatientID": "p1"})),
    )
    .await
    .unwrap();
    let scan2 = file(dir, "spleen_2.nii.gz", b"image two");
    ds.add_image(&ctx("alice"), &id("spleen_2"), &scan2, &nii(), Info::new())
        .await
        .unwrap();
    let scan3 = file(dir, "liver_3.nrrd", b"image three");
    ds.add_image(
        &ctx("alice"),
        &id("liver_3"),
        &scan3,
        &Extension::parse(".nrrd").unwrap(),
        Info::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        ds.list_images().await.unwrap(),
        vec![id("liver_3"), id("spleen_1"), id("spleen_2")]
    );
    let (record, reader) = ds.get_image(&id("spleen_1")).await.unwrap();
    assert_eq!(read_all(reader).await, b"image one");
    assert_eq!(record.file_name(&id("spleen_1")), "spleen_1.nii.gz");
    let image_info = ds.get_image_info(&id("spleen_1")).await.unwrap().unwrap();
    assert_eq!(image_info["PatientID"], "p1");
    assert_eq!(image_info["user"], "alice");
    assert_eq!(image_info["name"], "spleen_1.nii.gz");
    assert!(image_info["ts"].as_i64().unwrap() > 1_600_000_000);
    assert!(image_info.contains_key("path"));
    assert_eq!(ds.get_image_info(&id("nope")).await.unwrap(), None);
    let uri = ds.get_image_uri(&id("spleen_2")).await.unwrap();
    assert_eq!(read_uri(&uri).await, b"image two");
    assert!(matches!(
        ds.get_image(&id("nope")).await,
        Err(DatastoreError::ImageNotFound(_))
    ));

    // update_image_info merges
    ds.update_image_info(
        &ctx("alice"),
        &id("spleen_1"),
        info(json!({"phase": "arterial"})),
    )
    .await
    .unwrap();
    let image_info = ds.get_image_info(&id("spleen_1")).await.unwrap().unwrap();
    assert_eq!(
        (image_info["phase"].clone(), image_info["PatientID"].clone()),
        (json!("arterial"), json!("p1"))
    );

    // save_label / get_label / get_label_info / get_label_uri / versions
    let label_info =
        info(json!({"label_info": [{"name": "spleen", "idx": 1}], "client_id": "alice-slicer"}));
    let v1 = ds
        .save_label(
            &ctx("alice"),
            &id("spleen_1"),
            &Tag::final_tag(),
            &file(dir, "l1.nii.gz", b"label v1"),
            &nii(),
            label_info.clone(),
        )
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let v2 = ds
        .save_label(
            &ctx("bob"),
            &id("spleen_1"),
            &Tag::final_tag(),
            &file(dir, "l2.nii.gz", b"label v2"),
            &nii(),
            label_info.clone(),
        )
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.saved_by.user.as_str(), "bob");
    let (label, reader) = ds
        .get_label(&id("spleen_1"), &Tag::final_tag())
        .await
        .unwrap();
    assert_eq!(read_all(reader).await, b"label v2");
    assert_eq!(label.versions.len(), 2);
    let (old, reader) = ds
        .get_label_version(&id("spleen_1"), &Tag::final_tag(), 1)
        .await
        .unwrap();
    assert_eq!(read_all(reader).await, b"label v1");
    assert_eq!(old.saved_by.user.as_str(), "alice");
    let uri = ds
        .get_label_uri(&id("spleen_1"), &Tag::final_tag())
        .await
        .unwrap();
    assert_eq!(read_uri(&uri).await, b"label v2");
    let stored_info = ds
        .get_label_info(&id("spleen_1"), &Tag::final_tag())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored_info["label_info"][0]["name"], "spleen");
    assert_eq!(stored_info["name"], "spleen_1.nii.gz");
    assert_eq!(
        ds.get_label_info(&id("spleen_2"), &Tag::final_tag())
            .await
            .unwrap(),
        None
    );

    ds.save_label(
        &ctx("alice"),
        &id("spleen_2"),
        &Tag::original(),
        &file(dir, "l3.nii.gz", b"model proposal"),
        &nii(),
        info(json!({"label_names": {"spleen": 1}})),
    )
    .await
    .unwrap();
    ds.save_label(
        &ctx("alice"),
        &id("liver_3"),
        &tag("alice"),
        &file(dir, "l4.nrrd", b"alice's liver"),
        &Extension::parse(".nrrd").unwrap(),
        info(json!({"label_info": [{"name": "liver", "idx": 1}]})),
    )
    .await
    .unwrap();

    // update_label_info
    ds.update_label_info(
        &ctx("alice"),
        &id("spleen_1"),
        &Tag::final_tag(),
        info(json!({"reviewed": true})),
    )
    .await
    .unwrap();
    let stored_info = ds
        .get_label_info(&id("spleen_1"), &Tag::final_tag())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            stored_info["reviewed"].clone(),
            stored_info["label_info"][0]["idx"].clone()
        ),
        (json!(true), json!(1))
    );
    assert!(matches!(
        ds.update_label_info(
            &ctx("alice"),
            &id("spleen_2"),
            &Tag::final_tag(),
            Info::new()
        )
        .await,
        Err(DatastoreError::LabelNotFound { .. })
    ));

    // get_label_by_image_id / get_labels_by_image_id
    assert_eq!(
        ds.get_label_by_image_id(&id("spleen_1"), &Tag::final_tag())
            .await
            .unwrap(),
        Some(id("spleen_1"))
    );
    assert_eq!(
        ds.get_label_by_image_id(&id("spleen_2"), &Tag::final_tag())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        ds.get_labels_by_image_id(&id("spleen_2")).await.unwrap(),
        vec![(Tag::original(), id("spleen_2"))]
    );

    // labeled / unlabeled with tag and label-name filters
    assert_eq!(
        ds.get_labeled_images(&Tag::final_tag(), &[]).await.unwrap(),
        vec![id("spleen_1")]
    );
    assert_eq!(
        ds.get_unlabeled_images(&Tag::final_tag(), &[])
            .await
            .unwrap(),
        vec![id("liver_3"), id("spleen_2")]
    );
    assert_eq!(
        ds.get_labeled_images(&Tag::original(), &[]).await.unwrap(),
        vec![id("spleen_2")]
    );
    assert_eq!(
        ds.get_labeled_images(&tag("alice"), &["liver".into()])
            .await
            .unwrap(),
        vec![id("liver_3")]
    );
    assert!(
        ds.get_labeled_images(&tag("alice"), &["spleen".into()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ds.get_unlabeled_images(&tag("alice"), &["spleen".into()])
            .await
            .unwrap(),
        vec![id("liver_3"), id("spleen_1"), id("spleen_2")]
    );
    assert_eq!(
        ds.get_labeled_images(&Tag::original(), &["spleen".into()])
            .await
            .unwrap(),
        vec![id("spleen_2")]
    );

    // status / json / datalist
    let status = ds.status().await.unwrap();
    assert_eq!((status.total, status.completed), (3, 1));
    assert_eq!(status.label_tags.get("final"), Some(&1));
    assert_eq!(status.label_tags.get("original"), Some(&1));
    assert_eq!(status.label_tags.get("alice"), Some(&1));
    let doc = ds.json().await.unwrap();
    assert_eq!(doc["name"], "spleen-ct");
    assert_eq!(doc["objects"]["spleen_1"]["image"]["ext"], ".nii.gz");
    assert_eq!(doc["objects"]["liver_3"]["labels"]["alice"]["ext"], ".nrrd");
    assert_eq!(
        doc["objects"]["spleen_1"]["labels"]["final"]["info"]["reviewed"],
        true
    );
    let datalist = ds.datalist(&Tag::final_tag()).await.unwrap();
    assert_eq!(datalist.len(), 1);
    assert_eq!(read_uri(&datalist[0].0).await, b"image one");
    assert_eq!(read_uri(&datalist[0].1).await, b"label v2");

    // get_dataset_archive
    let archive_dir = tempfile::tempdir().unwrap();
    let zip_path = ds
        .get_dataset_archive(archive_dir.path(), None)
        .await
        .unwrap();
    let mut zip = zip_reader(&zip_path);
    let mut names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "image/spleen_1.nii.gz",
            "label/spleen_1.nii.gz",
            "metadata.json"
        ]
    );
    let mut label_bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut zip.by_name("label/spleen_1.nii.gz").unwrap(),
        &mut label_bytes,
    )
    .unwrap();
    assert_eq!(label_bytes, b"label v2");

    // remove_label (missing is not an error) / remove_image
    assert!(
        ds.remove_label(&ctx("alice"), &id("spleen_2"), &Tag::original())
            .await
            .unwrap()
    );
    assert!(
        !ds.remove_label(&ctx("alice"), &id("spleen_2"), &Tag::original())
            .await
            .unwrap()
    );
    assert!(
        ds.get_labeled_images(&Tag::original(), &[])
            .await
            .unwrap()
            .is_empty()
    );
    ds.remove_image(&ctx("alice"), &id("liver_3"))
        .await
        .unwrap();
    assert!(matches!(
        ds.remove_image(&ctx("alice"), &id("liver_3")).await,
        Err(DatastoreError::ImageNotFound(_))
    ));
    let status = ds.status().await.unwrap();
    assert_eq!((status.total, status.completed), (2, 1));
    assert!(!status.label_tags.contains_key("alice"));

    // history keeps who did what
    let history = ds.history(&id("spleen_1")).await.unwrap();
    let saves: Vec<_> = history
        .iter()
        .filter(|e| e.event_type == "LabelSaved")
        .map(|e| e.actor.user.as_str().to_owned())
        .collect();
    assert_eq!(saves, ["alice", "bob"]);

    // refresh is a no-op when nothing changed
    let before = ds.json().await.unwrap();
    ds.refresh().await.unwrap();
    assert_eq!(ds.json().await.unwrap(), before);
}

fn zip_reader(path: &Path) -> zip::ZipArchive<std::fs::File> {
    zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap()
}

/// `limit_cases` applies only when `1 <= n < total`; no final labels is an error.
pub async fn dataset_archive_limits(ds: &Datastore, dir: &Path) {
    let archive_dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        ds.get_dataset_archive(archive_dir.path(), None).await,
        Err(DatastoreError::NothingToArchive)
    ));
    for i in 0..3 {
        let image = id(&format!("case_{i}"));
        ds.add_image(
            &ctx("alice"),
            &image,
            &file(dir, &format!("i{i}"), format!("img{i}").as_bytes()),
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
        ds.save_label(
            &ctx("alice"),
            &image,
            &Tag::final_tag(),
            &file(dir, &format!("l{i}"), format!("lab{i}").as_bytes()),
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    }
    for (limit, cases) in [
        (None, 3),
        (Some(0), 3),
        (Some(2), 2),
        (Some(3), 3),
        (Some(9), 3),
    ] {
        let path = ds
            .get_dataset_archive(archive_dir.path(), limit)
            .await
            .unwrap();
        assert_eq!(zip_reader(&path).len(), cases * 2 + 1, "limit {limit:?}");
    }
}

/// Bad input is refused with a clear error and writes nothing.
pub async fn bad_input_changes_nothing(ds: &Datastore, dir: &Path) {
    ds.add_image(
        &ctx("alice"),
        &id("ok"),
        &file(dir, "ok.nii.gz", b"ok"),
        &nii(),
        Info::new(),
    )
    .await
    .unwrap();
    let head = ds.event_store().head().await.unwrap();

    for bad in [
        "../etc/passwd",
        "a/b",
        "a\\b",
        "x\0y",
        "..",
        &"x".repeat(256),
    ] {
        assert!(ImageId::parse(bad).is_err(), "{bad:?}");
        assert!(Tag::parse(bad).is_err(), "{bad:?}");
    }
    let missing = ds
        .save_label(
            &ctx("alice"),
            &id("missing"),
            &Tag::final_tag(),
            &file(dir, "m.nii.gz", b"x"),
            &nii(),
            Info::new(),
        )
        .await;
    assert!(
        matches!(missing, Err(DatastoreError::ImageNotFound(_))),
        "{missing:?}"
    );
    let huge = info(json!({"blob": "x".repeat(500 * 1024)}));
    let too_large = ds.update_image_info(&ctx("alice"), &id("ok"), huge).await;
    assert!(
        matches!(
            too_large,
            Err(DatastoreError::Store(StoreError::EventTooLarge { .. }))
        ),
        "{too_large:?}"
    );
    assert!(
        ds.update_image_info(&ctx("alice"), &id("missing"), Info::new())
            .await
            .is_err()
    );
    assert!(
        ds.remove_image(&ctx("alice"), &id("missing"))
            .await
            .is_err()
    );
    assert_eq!(
        ds.event_store().head().await.unwrap(),
        head,
        "a refused write recorded events"
    );
}

/// The same request id twice records once, and the retried call reports the same label
/// version.
pub async fn request_ids_are_idempotent(ds: &Datastore, dir: &Path) {
    ds.add_image(
        &ctx("alice"),
        &id("img"),
        &file(dir, "img", b"img"),
        &nii(),
        Info::new(),
    )
    .await
    .unwrap();
    let retried = ctx("alice");
    let label = file(dir, "label", b"the label");
    let first = ds
        .save_label(
            &retried,
            &id("img"),
            &Tag::final_tag(),
            &label,
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    let head = ds.event_store().head().await.unwrap();
    let second = ds
        .save_label(
            &retried,
            &id("img"),
            &Tag::final_tag(),
            &label,
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    assert_eq!(first.version, second.version);
    assert_eq!(ds.event_store().head().await.unwrap(), head);
    assert_eq!(
        ds.label(&id("img"), &Tag::final_tag())
            .await
            .unwrap()
            .versions
            .len(),
        1
    );
}

/// 32 writers saving labels at once, on one image and on 32 images: every acknowledged
/// save is readable afterwards as its own version, nothing lost.
pub async fn concurrent_writers(ds: Arc<Datastore>, dir: &Path) {
    ds.add_image(
        &ctx("alice"),
        &id("shared"),
        &file(dir, "shared", b"shared"),
        &nii(),
        Info::new(),
    )
    .await
    .unwrap();
    for i in 0..32 {
        ds.add_image(
            &ctx("alice"),
            &id(&format!("own_{i}")),
            &file(dir, &format!("own{i}"), format!("own {i}").as_bytes()),
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..32 {
        let ds = ds.clone();
        let label = file(
            dir,
            &format!("label{i}"),
            format!("label from writer {i}").as_bytes(),
        );
        tasks.push(tokio::spawn(async move {
            let writer = ctx(&format!("writer{i}"));
            let shared = ds
                .save_label(
                    &writer,
                    &id("shared"),
                    &Tag::final_tag(),
                    &label,
                    &nii(),
                    Info::new(),
                )
                .await;
            let own = ds
                .save_label(
                    &ctx(&format!("writer{i}")),
                    &id(&format!("own_{i}")),
                    &Tag::final_tag(),
                    &label,
                    &nii(),
                    Info::new(),
                )
                .await;
            (i, shared, own)
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        let (i, shared, own) = task.await.unwrap();
        let shared = shared.unwrap_or_else(|e| panic!("writer {i} on the shared image: {e}"));
        own.unwrap_or_else(|e| panic!("writer {i} on its own image: {e}"));
        versions.push(shared.version);
    }
    versions.sort();
    assert_eq!(
        versions,
        (1..=32).collect::<Vec<u32>>(),
        "each acknowledged save has its own version"
    );
    let shared = ds.label(&id("shared"), &Tag::final_tag()).await.unwrap();
    assert_eq!(shared.versions.len(), 32);
    for version in &shared.versions {
        let (_, reader) = ds
            .get_label_version(&id("shared"), &Tag::final_tag(), version.version)
            .await
            .unwrap();
        let bytes = read_all(reader).await;
        let writer = version.saved_by.user.as_str().trim_start_matches("writer");
        assert_eq!(bytes, format!("label from writer {writer}").as_bytes());
    }
    assert_eq!(ds.status().await.unwrap().completed, 33);
}

/// Concurrent appends that race on one stream version surface as conflicts in the store.
pub async fn conflicts_are_reported(ds: &Datastore, dir: &Path) {
    use medlabel_events::event::{Event, NewEvent, StreamId};
    use medlabel_events::store::ExpectedVersion;
    ds.add_image(
        &ctx("alice"),
        &id("raced"),
        &file(dir, "raced", b"raced"),
        &nii(),
        Info::new(),
    )
    .await
    .unwrap();
    let stream = StreamId::image(&id("raced"));
    let version = ds.event_store().stream_version(&stream).await.unwrap();
    let update = |key: &str| NewEvent {
        event: Event::ImageInfoUpdated {
            image: id("raced"),
            info: info(json!({key: 1})),
        },
        actor: Actor::admin(),
        timestamp_ms: 0,
    };
    let store = ds.event_store();
    let (a, b) = tokio::join!(
        store.append(
            &stream,
            ExpectedVersion::Exact(version),
            vec![update("a")],
            "race-a"
        ),
        store.append(
            &stream,
            ExpectedVersion::Exact(version),
            vec![update("b")],
            "race-b"
        ),
    );
    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "exactly one racer wins"
    );
    let loser = if outcomes[0] { b } else { a };
    assert!(
        matches!(loser, Err(StoreError::Conflict { actual, .. }) if actual == version + 1),
        "{loser:?}"
    );
}

/// Folding the whole log into a fresh view, and opening a second Datastore over the same
/// stores, both give exactly the live `json()`.
pub async fn rebuild_gives_identical_json(ds: &Datastore, reopened: &Datastore) {
    let live = ds.json().await.unwrap();
    assert_eq!(reopened.json().await.unwrap(), live);
    let mut view = DatastoreView::default();
    let mut after = 0;
    loop {
        let batch = ds.event_store().read_all(after, 100).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for event in &batch {
            view.apply(event);
        }
        after = batch.last().unwrap().position;
    }
    assert_eq!(view.to_json(), live);
    assert_eq!(view.status(), ds.status().await.unwrap());
}

/// A write acknowledged through one Datastore is seen by the next read through another
/// over the same stores (invariant 4 across processes or Lambda instances).
pub async fn writes_are_visible_across_instances(
    first: &Datastore,
    second: &Datastore,
    dir: &Path,
) {
    first
        .add_image(
            &ctx("alice"),
            &id("seen"),
            &file(dir, "seen", b"seen"),
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    assert_eq!(second.list_images().await.unwrap(), vec![id("seen")]);
    second
        .save_label(
            &ctx("bob"),
            &id("seen"),
            &Tag::final_tag(),
            &file(dir, "seen-label", b"l"),
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    assert_eq!(first.status().await.unwrap().completed, 1);
    assert_eq!(first.json().await.unwrap(), second.json().await.unwrap());

    // Writes decided on a view that missed the other instance's writes. A label: the
    // image stream moved on, so the first decision conflicts and the second one, on a
    // caught-up view, makes version 3 after the other instance's version 2.
    let label = |name: &str| file(dir, name, name.as_bytes());
    let tag = Tag::final_tag();
    let other = first
        .save_label(
            &ctx("alice"),
            &id("seen"),
            &tag,
            &label("v2"),
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    let stale = second
        .save_label(
            &ctx("bob"),
            &id("seen"),
            &tag,
            &label("v3"),
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    assert_eq!((other.version, stale.version), (2, 3));
    // A refusal: the image is unknown to the stale view, so that answer is checked on a
    // caught-up view before it is given, and the removal goes through.
    first
        .add_image(
            &ctx("alice"),
            &id("late"),
            &file(dir, "late", b"late"),
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    second.remove_image(&ctx("bob"), &id("late")).await.unwrap();
    assert_eq!(first.list_images().await.unwrap(), vec![id("seen")]);
}

/// A seeded random source as the server uses one: `random(n)` below `n`.
pub fn seeded(seed: u64) -> impl Fn(usize) -> usize + Sync {
    let state = std::sync::Mutex::new(seed.wrapping_mul(6364136223846793005).wrapping_add(1));
    move |n| {
        let mut s = state.lock().unwrap();
        // xorshift64*: small, seedable, good enough to spread picks.
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        (s.wrapping_mul(0x2545F4914F6CDD1D) >> 33) as usize % n
    }
}

/// Eight annotators asking at once over `images` unlabeled images, each giving its
/// image back and asking again: the log proves that no image was leased to a second
/// annotator before the first one's lease ended, and that every image was handed out
/// once before any was handed out again.
pub async fn annotators_never_share_images(ds: Arc<Datastore>, dir: &Path, images: usize) {
    use medlabel_events::datastore::Strategy;
    use medlabel_events::event::Event;
    use std::collections::{BTreeSet, HashMap};
    use std::time::Duration;
    let blob = file(dir, "unlabeled.nii.gz", b"unlabeled");
    for i in 0..images {
        ds.add_image(
            &ctx("admin"),
            &id(&format!("u{i:05}")),
            &blob,
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    }
    let random = Arc::new(seeded(7));
    let handed_out = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut annotators = Vec::new();
    for a in 0..8 {
        let (ds, random, handed_out) = (ds.clone(), random.clone(), handed_out.clone());
        annotators.push(tokio::spawn(async move {
            let client = format!("annotator{a}");
            while handed_out.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < images + 16 {
                let image = ds
                    .next_sample(
                        &ctx(&client),
                        Strategy::Random,
                        "random",
                        &client,
                        Duration::from_secs(1800),
                        &*random,
                    )
                    .await
                    .unwrap()
                    .expect("images are left")
                    .image;
                assert!(
                    ds.release_lease(&ctx(&client), &image, &client)
                        .await
                        .unwrap()
                );
            }
        }));
    }
    for annotator in annotators {
        annotator.await.unwrap();
    }

    let mut selections = Vec::new();
    let mut holder: HashMap<ImageId, Option<String>> = HashMap::new();
    let mut after = 0;
    loop {
        let batch = ds.event_store().read_all(after, 500).await.unwrap();
        let Some(last) = batch.last() else { break };
        after = last.position;
        for recorded in batch {
            match recorded.event {
                Event::StrategySelected { image, .. } => selections.push(image),
                Event::ImageLeased {
                    image, client_id, ..
                } => {
                    let previous = holder
                        .insert(image.clone(), Some(client_id.clone()))
                        .flatten();
                    assert!(
                        previous.is_none() || previous.as_deref() == Some(client_id.as_str()),
                        "{image} leased to {client_id} while {previous:?} held it"
                    );
                }
                Event::LeaseReleased { image, .. } => {
                    holder.insert(image, None);
                }
                _ => {}
            }
        }
    }
    assert_eq!(selections.len(), images + 16);
    let first_round: BTreeSet<_> = selections[..images].iter().collect();
    assert_eq!(
        first_round.len(),
        images,
        "an image was handed out twice before all were handed out"
    );
}

/// A final label ends the lease, an expired lease frees the image, and the same client
/// asking again gets its leased image back.
pub async fn leases_end_and_expire(
    ds: &Datastore,
    clock: &medlabel_events::clock::ManualClock,
    dir: &Path,
) {
    use medlabel_events::datastore::Strategy;
    use std::time::Duration;
    let blob = file(dir, "leased.nii.gz", b"leased");
    for name in ["a", "b", "c"] {
        ds.add_image(&ctx("admin"), &id(name), &blob, &nii(), Info::new())
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(60);
    let first = |client: &'static str| async move {
        ds.next_sample(
            &ctx(client),
            Strategy::First,
            "first",
            client,
            lease,
            &|_| 0,
        )
        .await
        .unwrap()
        .map(|handout| handout.image)
    };
    assert_eq!(first("ann1").await, Some(id("a")));
    assert_eq!(
        first("ann1").await,
        Some(id("a")),
        "the same client gets its image back"
    );
    assert_eq!(first("ann2").await, Some(id("b")));
    // A final label ends ann1's lease and takes the image out of the pool.
    ds.save_label_blob(
        &ctx("ann1"),
        &id("a"),
        &Tag::final_tag(),
        blob_of(ds, "a").await,
        Info::new(),
    )
    .await
    .unwrap();
    assert_eq!(first("ann1").await, Some(id("c")));
    assert_eq!(
        first("ann3").await,
        None,
        "b and c are leased, a is labelled"
    );
    clock.advance_ms(61_000);
    assert_eq!(
        first("ann3").await,
        Some(id("b")),
        "an expired lease frees the image"
    );
    assert!(
        !ds.release_lease(&ctx("ann2"), &id("b"), "ann2")
            .await
            .unwrap(),
        "ann2's lease was taken over"
    );
    assert!(
        ds.release_lease(&ctx("ann3"), &id("b"), "ann3")
            .await
            .unwrap()
    );
    let info = ds.get_image_info(&id("b")).await.unwrap().unwrap();
    assert_eq!(info["strategy"]["first"]["client_id"], "ann3");
}

async fn blob_of(ds: &Datastore, name: &str) -> medlabel_events::BlobRef {
    ds.image(&id(name)).await.unwrap().blob
}

/// Epistemic picks follow the stored uncertainty scores.
pub async fn epistemic_follows_scores(ds: &Datastore, dir: &Path) {
    use medlabel_events::datastore::Strategy;
    use std::time::Duration;
    let blob = file(dir, "scored.nii.gz", b"scored");
    for (name, entropy) in [("low", 0.1), ("high", 0.9), ("mid", 0.5)] {
        ds.add_image(&ctx("admin"), &id(name), &blob, &nii(), Info::new())
            .await
            .unwrap();
        ds.record_score(
            &ctx("runner"),
            &id(name),
            "epistemic",
            None,
            info(json!({"epistemic_entropy": entropy})),
        )
        .await
        .unwrap();
    }
    let mut order = Vec::new();
    for client in ["a", "b", "c"] {
        let image = ds
            .next_sample(
                &ctx(client),
                Strategy::Epistemic,
                "epistemic",
                client,
                Duration::from_secs(60),
                &|_| 0,
            )
            .await
            .unwrap()
            .unwrap()
            .image;
        order.push(image.to_string());
    }
    assert_eq!(order, ["high", "mid", "low"]);
}

/// The order `random` hands images out in, over `images` fresh images, with `seed`.
pub async fn random_order(ds: &Datastore, dir: &Path, images: usize, seed: u64) -> Vec<ImageId> {
    use medlabel_events::datastore::Strategy;
    use std::time::Duration;
    let blob = file(dir, "seeded.nii.gz", b"seeded");
    for i in 0..images {
        ds.add_image(
            &ctx("admin"),
            &id(&format!("s{i:03}")),
            &blob,
            &nii(),
            Info::new(),
        )
        .await
        .unwrap();
    }
    let random = seeded(seed);
    let mut order = Vec::new();
    for n in 0..images {
        let client = format!("annotator{n}");
        let image = ds
            .next_sample(
                &ctx(&client),
                Strategy::Random,
                "random",
                &client,
                Duration::from_secs(60),
                &random,
            )
            .await
            .unwrap()
            .unwrap()
            .image;
        order.push(image);
    }
    order
}

/// A datastore opened from a snapshot (as a cold Lambda function opens it) sees exactly
/// what a fold of the whole log sees: right after the start that recorded the snapshot,
/// and after more writes on top of it. The jobs view restores the same way.
pub async fn snapshots_restore_what_a_fold_sees(
    store: Arc<dyn medlabel_events::EventStore>,
    blobs: Arc<dyn medlabel_events::BlobStore>,
    dir: &Path,
) {
    use medlabel_events::clock::SystemClock;
    use medlabel_events::cold_start::{self, StartViews};
    use medlabel_events::jobs::Jobs;
    use medlabel_events::models::Models;
    use medlabel_events::snapshot::{self, SNAPSHOT_AFTER_EVENTS};

    let clock = Arc::new(SystemClock);
    let full_fold = || async {
        let ds = Datastore::open(store.clone(), blobs.clone()).await.unwrap();
        ds.view().await.unwrap().clone()
    };
    let ds = Datastore::open(store.clone(), blobs.clone()).await.unwrap();
    for i in 0..SNAPSHOT_AFTER_EVENTS {
        let name = format!("snap{i:03}");
        let path = file(dir, &name, name.as_bytes());
        ds.add_image(
            &ctx("alice"),
            &id(&name),
            &path,
            &nii(),
            info(json!({"n": i})),
        )
        .await
        .unwrap();
    }
    let label = file(dir, "snap-label", b"label");
    ds.save_label(
        &ctx("bob"),
        &id("snap001"),
        &Tag::final_tag(),
        &label,
        &nii(),
        Info::new(),
    )
    .await
    .unwrap();

    // This start folds everything and records a snapshot of where it got to.
    let cold = cold_start::open(store.clone(), blobs.clone(), clock.clone())
        .await
        .unwrap()
        .datastore;
    let restored = snapshot::load::<StartViews>(&*store, &*blobs)
        .await
        .unwrap()
        .expect("a start that folded that many events records a snapshot");
    assert!(restored.view.datastore.position >= SNAPSHOT_AFTER_EVENTS);
    let expected = full_fold().await;
    assert_eq!(*cold.view().await.unwrap(), expected);

    // More writes: a start from the snapshot folds them on top of it.
    ds.remove_image(&ctx("alice"), &id("snap002"))
        .await
        .unwrap();
    let late = file(dir, "snap-late", b"late");
    ds.add_image(&ctx("alice"), &id("late"), &late, &nii(), Info::new())
        .await
        .unwrap();
    let started = cold_start::open(store.clone(), blobs.clone(), clock.clone())
        .await
        .unwrap();
    let expected = full_fold().await;
    let warm = started.datastore;
    assert_eq!(*warm.view().await.unwrap(), expected);
    assert!(warm.image(&id("snap002")).await.is_err());

    let jobs_folded = Jobs::new(store.clone(), clock.clone());
    let expected = jobs_folded.view().await.unwrap().clone();
    assert_eq!(*started.jobs.view().await.unwrap(), expected);
    let models_folded = Models::new(store.clone(), clock);
    let expected = models_folded.view().await.unwrap().clone();
    assert_eq!(*started.models.view().await.unwrap(), expected);
}
