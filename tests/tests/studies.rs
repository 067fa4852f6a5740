//! Import of an existing MONAI Label studies folder into the embedded store, and export
//! back to that layout.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::datastore::{Datastore, WriteContext, export_studies, import_studies};
use medlabel_events::event::Actor;
use medlabel_events::id::{ImageId, Tag};
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_imaging::nifti::write_nifti_bytes;
use medlabel_imaging::nrrd::write_nrrd_bytes;
use medlabel_imaging::{DataType, IDENTITY, Volume};
use serde_json::json;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

const DIMS: [usize; 3] = [6, 5, 4];

/// A volume on the folder's grid: `n` seeds the voxels (`label`: 0/1 uint8, else int16).
fn volume(n: u32, label: bool) -> Volume<f32> {
    let voxels = DIMS.iter().product::<usize>() as u32;
    let data = (0..voxels)
        .map(|i| match label {
            true => f32::from(u8::from((i + n).is_multiple_of(3))),
            false => ((i * 7 + n * 13) % 200) as f32 - 50.0,
        })
        .collect();
    Volume::new(data, DIMS, IDENTITY).unwrap()
}

fn nifti(n: u32, label: bool) -> Vec<u8> {
    let datatype = if label { DataType::U8 } else { DataType::I16 };
    write_nifti_bytes(&volume(n, label), datatype, true).unwrap()
}

/// A studies folder as MONAI Label leaves it, with a few files that cannot be imported.
fn monai_studies(dir: &Path) {
    write(&dir.join("spleen_1.nii.gz"), &nifti(1, false));
    write(&dir.join("spleen_2.nii.gz"), &nifti(2, false));
    write(
        &dir.join("a.b.nrrd"),
        &write_nrrd_bytes(&volume(3, false), DataType::I16, true).unwrap(),
    );
    write(&dir.join("labels/final/spleen_1.nii.gz"), &nifti(1, true));
    write(
        &dir.join("labels/original/spleen_2.nii.gz"),
        &nifti(2, true),
    );
    write(&dir.join("labels/final/orphan.nii.gz"), &nifti(4, true));
    write(&dir.join("notes.txt"), b"not a volume");
    // Not imported: an image that does not read, and a label of another shape.
    write(&dir.join("broken.nii.gz"), b"not a volume at all");
    let wrong = Volume::new(vec![0.0; 6 * 5 * 3], [6, 5, 3], IDENTITY).unwrap();
    write(
        &dir.join("labels/final/a.b.nrrd"),
        &write_nrrd_bytes(&wrong, DataType::U8, true).unwrap(),
    );
    let doc = json!({
        "name": "Spleen", "description": "MSD spleen", "images_dir": ".", "labels_dir": "labels",
        "objects": {
            "spleen_1": {"image": {"ext": ".nii.gz", "info": {"ts": 1_650_000_000, "name": "spleen_1.nii.gz", "PatientID": "p1", "checksum": "SHA256:00"}},
                         "labels": {"final": {"ext": ".nii.gz", "info": {"ts": 1_650_000_100, "name": "spleen_1.nii.gz", "label_info": [{"name": "spleen", "idx": 1}]}}}},
            "spleen_2": {"image": {"ext": ".nii.gz", "info": {"ts": 1_650_000_000, "strategy": {"random": {"ts": 1_650_000_050, "client_id": "x"}}}}, "labels": {}}
        }
    });
    write(
        &dir.join("datastore_v2.json"),
        serde_json::to_string_pretty(&doc).unwrap().as_bytes(),
    );
}

async fn open(state: &Path) -> (Datastore, FolderBlobStore) {
    let store = SqliteEventStore::open(state.join("events.db")).unwrap();
    let blobs = FolderBlobStore::open_with_inline(state.join("blobs"), &store).unwrap();
    let ds = Datastore::open(Arc::new(store), Arc::new(blobs.clone()))
        .await
        .unwrap();
    (ds, blobs)
}

#[tokio::test]
async fn imports_in_place_and_exports_back() {
    let studies = tempfile::tempdir().unwrap();
    monai_studies(studies.path());
    let inode_before = std::fs::metadata(studies.path().join("spleen_1.nii.gz"))
        .unwrap()
        .ino();
    let state = studies.path().join(".medlabel");
    let (ds, blobs) = open(&state).await;
    let ctx = WriteContext::fresh(Actor::admin());

    let report = import_studies(&ds, &blobs, studies.path(), &ctx, 0)
        .await
        .unwrap();
    assert_eq!((report.images_added, report.labels_added), (3, 2));
    let skipped: Vec<(String, &str)> = report
        .skipped
        .iter()
        .map(|(path, why)| {
            let name = path.strip_prefix(studies.path()).unwrap();
            (name.display().to_string(), why.as_str())
        })
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped[0].0 == "broken.nii.gz" && skipped[0].1.contains("not a readable volume"));
    assert!(skipped[1].0 == "labels/final/a.b.nrrd" && skipped[1].1.contains("shape mismatch"));
    assert!(
        skipped[2].0 == "labels/final/orphan.nii.gz" && skipped[2].1.contains("without an image")
    );

    // The user's files are where they were, untouched, and the blobs share their inode.
    let image = studies.path().join("spleen_1.nii.gz");
    assert_eq!(std::fs::read(&image).unwrap(), nifti(1, false));
    assert_eq!(std::fs::metadata(&image).unwrap().ino(), inode_before);
    let uri = ds
        .get_image_uri(&ImageId::parse("spleen_1").unwrap())
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(&uri).unwrap().ino(),
        inode_before,
        "imported by hard link, not copied"
    );

    let doc = ds.json().await.unwrap();
    assert_eq!(
        (doc["name"].clone(), doc["description"].clone()),
        (json!("Spleen"), json!("MSD spleen"))
    );
    let spleen_1 = &doc["objects"]["spleen_1"];
    assert_eq!(
        spleen_1["image"]["info"]["ts"], 1_650_000_000,
        "original timestamps are kept"
    );
    assert_eq!(spleen_1["image"]["info"]["PatientID"], "p1");
    assert_eq!(
        spleen_1["labels"]["final"]["info"]["label_info"][0]["name"],
        "spleen"
    );
    assert_eq!(doc["objects"]["a.b"]["image"]["ext"], ".nrrd");
    assert_eq!(
        doc["objects"]["spleen_2"]["image"]["info"]["strategy"]["random"]["ts"],
        1_650_000_050
    );
    let status = ds.status().await.unwrap();
    assert_eq!((status.total, status.completed), (3, 1));
    assert_eq!(
        ds.get_labeled_images(&Tag::original(), &[]).await.unwrap(),
        vec![ImageId::parse("spleen_2").unwrap()]
    );

    // Importing again records nothing; a changed file becomes a new version.
    let head = ds.event_store().head().await.unwrap();
    let again = import_studies(
        &ds,
        &blobs,
        studies.path(),
        &WriteContext::fresh(Actor::admin()),
        0,
    )
    .await
    .unwrap();
    assert_eq!(
        (again.images_added, again.labels_added, again.unchanged),
        (0, 0, 5)
    );
    assert_eq!(ds.event_store().head().await.unwrap(), head);
    let corrected = nifti(5, true);
    write(
        &studies.path().join("labels/final/spleen_1.nii.gz"),
        &corrected,
    );
    let changed = import_studies(
        &ds,
        &blobs,
        studies.path(),
        &WriteContext::fresh(Actor::admin()),
        0,
    )
    .await
    .unwrap();
    assert_eq!(changed.labels_added, 1);
    let label = ds
        .label(&ImageId::parse("spleen_1").unwrap(), &Tag::final_tag())
        .await
        .unwrap();
    assert_eq!(label.versions.len(), 2);

    // Export gives MONAI Label's layout back, with the latest versions.
    let out = tempfile::tempdir().unwrap();
    export_studies(&ds, out.path()).await.unwrap();
    assert_eq!(
        std::fs::read(out.path().join("spleen_2.nii.gz")).unwrap(),
        nifti(2, false)
    );
    assert_eq!(
        std::fs::read(out.path().join("a.b.nrrd")).unwrap(),
        std::fs::read(studies.path().join("a.b.nrrd")).unwrap()
    );
    assert_eq!(
        std::fs::read(out.path().join("labels/final/spleen_1.nii.gz")).unwrap(),
        corrected
    );
    assert_eq!(
        std::fs::read(out.path().join("labels/original/spleen_2.nii.gz")).unwrap(),
        nifti(2, true)
    );
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("datastore_v2.json")).unwrap())
            .unwrap();
    assert_eq!(exported, ds.json().await.unwrap());

    // The exported folder imports into a fresh store with the same document.
    let (fresh, fresh_blobs) = open(&out.path().join(".medlabel")).await;
    import_studies(
        &fresh,
        &fresh_blobs,
        out.path(),
        &WriteContext::fresh(Actor::admin()),
        0,
    )
    .await
    .unwrap();
    let mut expected = ds.json().await.unwrap();
    let mut actual = fresh.json().await.unwrap();
    for doc in [&mut expected, &mut actual] {
        // Users differ (the importer records itself); everything else must match.
        for object in doc["objects"].as_object_mut().unwrap().values_mut() {
            object["image"]["info"]
                .as_object_mut()
                .unwrap()
                .remove("user");
        }
    }
    assert_eq!(actual, expected);
}

/// A removal through the API outlives the files still in a folder medlabel never
/// projected: the next import leaves them out as leftovers, until a file's content
/// changes.
#[tokio::test]
async fn removed_images_and_labels_stay_removed_at_the_next_import() {
    let studies = tempfile::tempdir().unwrap();
    monai_studies(studies.path());
    let (ds, blobs) = open(&studies.path().join(".medlabel")).await;
    let ctx = WriteContext::fresh(Actor::admin());
    let import = || import_studies(&ds, &blobs, studies.path(), &ctx, 0);
    import().await.unwrap();
    let (one, two) = (
        ImageId::parse("spleen_1").unwrap(),
        ImageId::parse("spleen_2").unwrap(),
    );
    ds.remove_image(&WriteContext::fresh(Actor::admin()), &two)
        .await
        .unwrap();
    ds.remove_label(
        &WriteContext::fresh(Actor::admin()),
        &one,
        &Tag::final_tag(),
    )
    .await
    .unwrap();

    let head = ds.event_store().head().await.unwrap();
    let again = import().await.unwrap();
    // The image, the label that left with it, and the label removed on its own.
    assert_eq!(
        (
            again.images_added,
            again.labels_added,
            again.leftovers.len()
        ),
        (0, 0, 3)
    );
    assert_eq!(ds.event_store().head().await.unwrap(), head);
    assert!(ds.view().await.unwrap().image(&two).is_none());
    assert!(
        ds.view()
            .await
            .unwrap()
            .label(&one, &Tag::final_tag())
            .is_none()
    );

    // A new file under the removed name is a new image.
    write(&studies.path().join("spleen_2.nii.gz"), &nifti(9, false));
    let changed = import().await.unwrap();
    assert_eq!(changed.images_added, 1);
    assert!(ds.view().await.unwrap().image(&two).is_some());
}
