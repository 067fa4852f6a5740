//! `GET /datastore/dataset`: a zip of the final-labelled cases, laid out as MONAI Label
//! lays it out (`image/<name>`, `label/<name>`, `metadata.json`).

use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;

use crate::blob::BlobRef;
use crate::id::Tag;

use super::{Datastore, DatastoreError, Result};

/// Writes `dataset.zip` into `dir`. Blobs are copied one at a time through a spool
/// file, so neither the archive nor any volume is ever held whole in memory.
pub async fn write_dataset_archive(
    datastore: &Datastore,
    dir: &Path,
    limit_cases: Option<usize>,
) -> Result<PathBuf> {
    let (metadata, mut cases) = {
        let view = datastore.view().await?;
        let cases: Vec<(String, BlobRef, BlobRef)> = view
            .labeled_images(&Tag::final_tag(), &[])
            .iter()
            .filter_map(|id| {
                let record = view.image(id)?;
                let label = record.labels.get(&Tag::final_tag())?;
                Some((
                    record.file_name(id),
                    record.blob.clone(),
                    label.latest().blob.clone(),
                ))
            })
            .collect();
        (view.to_json(), cases)
    };
    if cases.is_empty() {
        return Err(DatastoreError::NothingToArchive);
    }
    if let Some(n) = limit_cases.filter(|n| (1..cases.len()).contains(n)) {
        cases.truncate(n);
    }

    let path = dir.join("dataset.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path)?);
    // Volumes are already compressed (.nii.gz); deflating them again buys nothing.
    let stored = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for (name, image, label) in cases {
        for (folder, blob) in [("image", image), ("label", label)] {
            let spool = spool(datastore, &blob, dir).await?;
            zip.start_file(format!("{folder}/{name}"), stored)
                .map_err(zip_error)?;
            std::io::copy(&mut std::fs::File::open(spool.path())?, &mut zip)?;
        }
    }
    zip.start_file("metadata.json", SimpleFileOptions::default())
        .map_err(zip_error)?;
    zip.write_all(
        serde_json::to_string_pretty(&metadata)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    zip.finish().map_err(zip_error)?;
    Ok(path)
}

/// A local file holding the blob's bytes: the blob itself for folder stores, else a
/// temporary download.
async fn spool(datastore: &Datastore, blob: &BlobRef, dir: &Path) -> Result<Spool> {
    if let Some(path) = datastore.blob_store().local_path(blob) {
        return Ok(Spool::Local(path));
    }
    let temp = tempfile::NamedTempFile::new_in(dir)?;
    let mut file = tokio::fs::File::create(temp.path()).await?;
    let mut reader = datastore.blob_store().get(blob).await?;
    tokio::io::copy(&mut reader, &mut file).await?;
    Ok(Spool::Temp(temp))
}

enum Spool {
    Local(PathBuf),
    Temp(tempfile::NamedTempFile),
}

impl Spool {
    fn path(&self) -> &Path {
        match self {
            Spool::Local(path) => path,
            Spool::Temp(temp) => temp.path(),
        }
    }
}

fn zip_error(err: zip::result::ZipError) -> DatastoreError {
    DatastoreError::Io(std::io::Error::other(err))
}
