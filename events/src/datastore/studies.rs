//! Import of an existing MONAI Label studies folder, and export back to that layout.
//!
//! A studies folder holds images flat at its top level, labels in `labels/<tag>/` named
//! like their image, and `datastore_v2.json` with names, descriptions and info. Import
//! records an event per image and label and content-addresses the files in place
//! (hard links, see [`FolderBlobStore::link_file`]), so the user's files are neither
//! moved nor duplicated. Import is idempotent: files already recorded with the same
//! content are skipped, and request ids derive from the content, so re-running it after
//! a crash records nothing twice. Files that do not read as volumes are skipped with
//! the reason: an image's header must read, a label must read whole, hold whole numbers
//! and lie on its image's grid.
//!
//! The folder is also a projection of the log ([`super::StudiesFolder`]), so a file may
//! hold what medlabel itself put there and has since replaced or removed (the
//! projection had not caught up when medlabel stopped). Such a file is no change by
//! another tool and is not imported: the import is told the log position the folder was
//! last projected at, and a file whose content is what the log held at that place at or
//! after that position is a leftover ([`ImportReport::leftovers`]), which the
//! projection then replaces or deletes. Anything else is another tool's work and
//! becomes a new version (design invariant 11). For a folder never projected (position
//! 0) every content the log ever held there counts as medlabel's own: a removal through
//! the API outlives the file it left behind.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use medlabel_imaging::io::{read_grid, read_volume};
use medlabel_imaging::{Grid, check_label};
use serde_json::Value;

use crate::blob::fs::FolderBlobStore;
use crate::blob::{BlobRef, BlobStore};
use crate::event::{Event, Info};
use crate::id::{ImageId, KNOWN_EXTENSIONS, Tag, split_file_name};

use super::{Datastore, Result, WriteContext};

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub images_added: usize,
    pub labels_added: usize,
    pub unchanged: usize,
    /// Files left out because they hold what medlabel put there and has since replaced
    /// or removed (see the module docs): the studies projection replaces or deletes them.
    pub leftovers: Vec<PathBuf>,
    /// Files skipped, with the reason (bad names, orphan labels, unreadable files).
    pub skipped: Vec<(PathBuf, String)>,
}

fn is_volume_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    KNOWN_EXTENSIONS.iter().any(|ext| lower.ends_with(ext)) && !name.starts_with('.')
}

/// Reads the names of the files directly in `dir` that look like images or labels.
fn volume_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if !dir.is_dir() {
        return Ok(files);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && is_volume_file(&name) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// The info recorded in `datastore_v2.json`, keyed by image id.
struct StoredMetadata {
    name: Option<String>,
    description: Option<String>,
    objects: BTreeMap<String, Value>,
}

fn read_metadata(studies: &Path) -> StoredMetadata {
    let doc: Value = std::fs::read(studies.join("datastore_v2.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    StoredMetadata {
        name: doc["name"].as_str().map(str::to_owned),
        description: doc["description"].as_str().map(str::to_owned),
        objects: doc["objects"]
            .as_object()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default(),
    }
}

fn info_at(value: &Value) -> Info {
    let mut info = value.as_object().cloned().unwrap_or_default();
    // `name` is derived from the id and extension; an old `checksum` is recomputed.
    info.remove("name");
    info.remove("checksum");
    info
}

/// What the log held at each place of one image (the image file, each tag's label) at
/// some position at or after the one the folder was projected at: what the projection
/// may have left there.
#[derive(Debug, Default)]
struct Placed {
    image: HashSet<BlobRef>,
    labels: HashMap<Tag, HashSet<BlobRef>>,
}

impl Placed {
    /// Folds the image's stream: the contents current at `since`, and every later one.
    async fn read(datastore: &Datastore, image: &ImageId, since: u64) -> Result<Self> {
        let mut at_since: (Option<BlobRef>, BTreeMap<Tag, BlobRef>) = (None, BTreeMap::new());
        let mut placed = Self::default();
        for recorded in datastore.history(image).await? {
            let later = recorded.position > since;
            match recorded.event {
                Event::ImageAdded { blob, .. } if later => {
                    placed.image.insert(blob);
                }
                Event::ImageAdded { blob, .. } => at_since.0 = Some(blob),
                Event::ImageRemoved { .. } if !later => at_since = (None, BTreeMap::new()),
                Event::LabelSaved { tag, blob, .. } if later => {
                    placed.labels.entry(tag).or_default().insert(blob);
                }
                Event::LabelSaved { tag, blob, .. } if at_since.0.is_some() => {
                    at_since.1.insert(tag, blob);
                }
                Event::LabelRemoved { tag, .. } if !later => {
                    at_since.1.remove(&tag);
                }
                _ => {}
            }
        }
        placed.image.extend(at_since.0);
        for (tag, blob) in at_since.1 {
            placed.labels.entry(tag).or_default().insert(blob);
        }
        Ok(placed)
    }
}

/// [`Placed`] per image, read from the log when first needed.
struct PlacedCache<'a> {
    datastore: &'a Datastore,
    since: u64,
    images: HashMap<ImageId, Placed>,
}

impl PlacedCache<'_> {
    async fn get(&mut self, image: &ImageId) -> Result<&Placed> {
        if !self.images.contains_key(image) {
            let placed = Placed::read(self.datastore, image, self.since).await?;
            self.images.insert(image.clone(), placed);
        }
        Ok(&self.images[image])
    }
}

/// Imports `studies` into `datastore`, whose blob store must be `blobs`. `projected` is
/// the log position the folder was last projected at ([`super::StudiesFolder`]; 0 for
/// a folder medlabel never wrote).
pub async fn import_studies(
    datastore: &Datastore,
    blobs: &FolderBlobStore,
    studies: &Path,
    ctx: &WriteContext,
    projected: u64,
) -> Result<ImportReport> {
    let metadata = read_metadata(studies);
    let mut report = ImportReport::default();
    let mut placed = PlacedCache {
        datastore,
        since: projected,
        images: HashMap::new(),
    };
    {
        let (name, description) = {
            let view = datastore.view().await?;
            (view.name.clone(), view.description.clone())
        };
        if let Some(new) = metadata.name.as_deref().filter(|n| *n != name) {
            datastore
                .set_name(&derived(ctx, &format!("import-name:{new}")), new)
                .await?;
        }
        if let Some(new) = metadata
            .description
            .as_deref()
            .filter(|d| *d != description)
        {
            datastore
                .set_description(&derived(ctx, &format!("import-description:{new}")), new)
                .await?;
        }
    }

    // The grid of each image file in the folder, for its labels.
    let mut images: BTreeMap<ImageId, Grid> = BTreeMap::new();
    for path in volume_files(studies)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let (id, ext) = match split_file_name(&name) {
            Ok(parsed) => parsed,
            Err(err) => {
                report.skipped.push((path.clone(), err.to_string()));
                continue;
            }
        };
        // The header alone: reading every voxel of a folder of CTs at each start would
        // take minutes, and an image's voxels are read whole when first used.
        let grid = match read_grid(&path) {
            Ok(grid) => grid,
            Err(err) => {
                report
                    .skipped
                    .push((path.clone(), format!("not a readable volume: {err}")));
                continue;
            }
        };
        let blob = blobs.link_file(&path, &ext).await?;
        let current = datastore.view().await?.image(&id).map(|r| r.blob.clone());
        if current.as_ref() == Some(&blob) {
            images.insert(id.clone(), grid);
            report.unchanged += 1;
            continue;
        }
        if placed.get(&id).await?.image.contains(&blob) {
            report.leftovers.push(path.clone());
            continue;
        }
        images.insert(id.clone(), grid);
        let info = info_at(
            &metadata
                .objects
                .get(id.as_str())
                .cloned()
                .unwrap_or_default()["image"]["info"],
        );
        let request = derived(ctx, &format!("import-image:{id}:{}", blob.sha256));
        datastore.add_image_blob(&request, &id, blob, info).await?;
        report.images_added += 1;
    }

    let labels_dir = studies.join("labels");
    if labels_dir.is_dir() {
        let mut tags: Vec<PathBuf> = std::fs::read_dir(&labels_dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        tags.sort();
        for tag_dir in tags {
            let tag_name = tag_dir.file_name().unwrap_or_default().to_string_lossy();
            let tag = match Tag::parse(tag_name.as_ref()) {
                Ok(tag) => tag,
                Err(err) => {
                    report.skipped.push((tag_dir.clone(), err.to_string()));
                    continue;
                }
            };
            for path in volume_files(&tag_dir)? {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let Ok((id, ext)) = split_file_name(&name) else {
                    report
                        .skipped
                        .push((path.clone(), "invalid label file name".into()));
                    continue;
                };
                let blob = blobs.link_file(&path, &ext).await?;
                let (current, recorded_image) = {
                    let view = datastore.view().await?;
                    let current = view.label(&id, &tag).map(|l| l.latest().blob.clone());
                    (current, view.image(&id).map(|r| r.blob.clone()))
                };
                if current.as_ref() == Some(&blob) {
                    report.unchanged += 1;
                    continue;
                }
                let left = placed.get(&id).await?.labels.get(&tag);
                if left.is_some_and(|blobs| blobs.contains(&blob)) {
                    report.leftovers.push(path.clone());
                    continue;
                }
                let grid = match (images.get(&id), &recorded_image) {
                    (Some(grid), _) => Some(*grid),
                    (None, Some(image)) => blobs.local_path(image).and_then(|p| read_grid(p).ok()),
                    (None, None) => {
                        report
                            .skipped
                            .push((path.clone(), "label without an image".into()));
                        continue;
                    }
                };
                if let Err(why) = check_label_file(&path, grid).await {
                    report.skipped.push((path.clone(), why));
                    continue;
                }
                let info = info_at(
                    &metadata
                        .objects
                        .get(id.as_str())
                        .cloned()
                        .unwrap_or_default()["labels"][tag.as_str()]["info"],
                );
                let request = derived(ctx, &format!("import-label:{id}:{tag}:{}", blob.sha256));
                datastore
                    .save_label_blob(&request, &id, &tag, blob, info)
                    .await?;
                report.labels_added += 1;
            }
        }
    }
    Ok(report)
}

/// Reads a label file whole and checks it against its image's grid (when the image's
/// header could be read); the reason it cannot be imported otherwise.
async fn check_label_file(path: &Path, image: Option<Grid>) -> std::result::Result<(), String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let label = read_volume(&path).map_err(|err| format!("not a readable volume: {err}"))?;
        check_label(&label, &image.unwrap_or_else(|| label.grid()))
            .map_err(|err| format!("not a label of its image: {err}"))
    })
    .await
    .map_err(|err| format!("label check failed: {err}"))?
}

/// A per-item request id under the import's own, bounded to the store's 128 characters.
fn derived(ctx: &WriteContext, suffix: &str) -> WriteContext {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(format!("{}|{suffix}", ctx.request_id)));
    WriteContext::new(ctx.actor.clone(), format!("import-{}", &digest[..48]))
}

/// Writes the current datastore to `dir` in MONAI Label's layout: images flat,
/// `labels/<tag>/<id><ext>` (latest versions) and `datastore_v2.json`.
pub async fn export_studies(datastore: &Datastore, dir: &Path) -> Result<()> {
    let (json, files) = {
        let view = datastore.view().await?;
        let mut files = Vec::new();
        for (id, record) in view.images() {
            files.push((PathBuf::from(record.file_name(id)), record.blob.clone()));
            for (tag, label) in &record.labels {
                let latest = label.latest();
                files.push((
                    Path::new("labels")
                        .join(tag.as_str())
                        .join(format!("{id}{}", latest.ext)),
                    latest.blob.clone(),
                ));
            }
        }
        (view.to_json(), files)
    };
    for tag in ["final", "original"] {
        tokio::fs::create_dir_all(dir.join("labels").join(tag)).await?;
    }
    for (relative, blob) in files {
        let target = dir.join(&relative);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut reader = datastore.blob_store().get(&blob).await?;
        let mut file = tokio::fs::File::create(&target).await?;
        tokio::io::copy(&mut reader, &mut file).await?;
        file.sync_all().await?;
    }
    let doc = serde_json::to_string_pretty(&json).unwrap_or_default();
    tokio::fs::write(dir.join("datastore_v2.json"), doc).await?;
    Ok(())
}
