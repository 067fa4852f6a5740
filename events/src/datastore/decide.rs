//! Datastore decisions: pure functions from the current view and a command to the
//! events to record, the stream they go to and the version they were decided against.

use crate::blob::BlobRef;
use crate::event::{Event, Info, StreamId};
use crate::id::{ImageId, Tag};
use crate::store::ExpectedVersion;

use super::{DatastoreError, DatastoreView, Result, Strategy};

pub use crate::decision::Decision;

impl Decision {
    fn on_image(view: &DatastoreView, image: &ImageId, events: Vec<Event>) -> Self {
        Self {
            stream: StreamId::image(image),
            expected: ExpectedVersion::from_version(view.stream_state(image).version),
            events,
        }
    }
}

fn image_not_found(image: &ImageId) -> DatastoreError {
    DatastoreError::ImageNotFound(image.to_string())
}

fn label_not_found(image: &ImageId, tag: &Tag) -> DatastoreError {
    DatastoreError::LabelNotFound {
        image: image.to_string(),
        tag: tag.to_string(),
    }
}

/// Renaming is a plain overwrite: last writer wins, no version check needed.
pub fn rename(name: &str) -> Decision {
    Decision {
        stream: StreamId::datastore(),
        expected: ExpectedVersion::Any,
        events: vec![Event::DatastoreRenamed { name: name.into() }],
    }
}

pub fn describe(description: &str) -> Decision {
    Decision {
        stream: StreamId::datastore(),
        expected: ExpectedVersion::Any,
        events: vec![Event::DatastoreDescribed {
            description: description.into(),
        }],
    }
}

pub fn add_image(view: &DatastoreView, image: &ImageId, blob: BlobRef, info: Info) -> Decision {
    let ext = blob.ext.clone();
    Decision::on_image(
        view,
        image,
        vec![Event::ImageAdded {
            image: image.clone(),
            ext,
            blob,
            info,
        }],
    )
}

/// Records that `image`'s series was fetched and converted into `blob`; `None` when
/// the image no longer holds `source` (fetched already, or its series changed since).
pub fn fetched(
    view: &DatastoreView,
    image: &ImageId,
    source: &BlobRef,
    blob: BlobRef,
    slices: BlobRef,
) -> Result<Option<Decision>> {
    let record = view.image(image).ok_or_else(|| image_not_found(image))?;
    if &record.blob != source {
        return Ok(None);
    }
    Ok(Some(Decision::on_image(
        view,
        image,
        vec![Event::ImageFetched {
            image: image.clone(),
            source: source.clone(),
            ext: blob.ext.clone(),
            blob,
            slices,
        }],
    )))
}

pub fn remove_image(view: &DatastoreView, image: &ImageId) -> Result<Decision> {
    view.image(image).ok_or_else(|| image_not_found(image))?;
    Ok(Decision::on_image(
        view,
        image,
        vec![Event::ImageRemoved {
            image: image.clone(),
        }],
    ))
}

pub fn update_image_info(view: &DatastoreView, image: &ImageId, info: &Info) -> Result<Decision> {
    view.image(image).ok_or_else(|| image_not_found(image))?;
    Ok(Decision::on_image(
        view,
        image,
        vec![Event::ImageInfoUpdated {
            image: image.clone(),
            info: info.clone(),
        }],
    ))
}

pub fn save_label(
    view: &DatastoreView,
    image: &ImageId,
    tag: &Tag,
    blob: BlobRef,
    info: Info,
) -> Result<Decision> {
    view.image(image).ok_or_else(|| image_not_found(image))?;
    let state = view.stream_state(image);
    let version = state.last_label_version.get(tag).copied().unwrap_or(0) + 1;
    Ok(Decision::on_image(
        view,
        image,
        vec![Event::LabelSaved {
            image: image.clone(),
            tag: tag.clone(),
            version,
            ext: blob.ext.clone(),
            blob,
            info,
        }],
    ))
}

/// `None` when there is no such label: removing it again changes nothing.
pub fn remove_label(view: &DatastoreView, image: &ImageId, tag: &Tag) -> Option<Decision> {
    view.label(image, tag)?;
    Some(Decision::on_image(
        view,
        image,
        vec![Event::LabelRemoved {
            image: image.clone(),
            tag: tag.clone(),
        }],
    ))
}

pub fn update_label_info(
    view: &DatastoreView,
    image: &ImageId,
    tag: &Tag,
    info: &Info,
) -> Result<Decision> {
    view.label(image, tag)
        .ok_or_else(|| label_not_found(image, tag))?;
    Ok(Decision::on_image(
        view,
        image,
        vec![Event::LabelInfoUpdated {
            image: image.clone(),
            tag: tag.clone(),
            info: info.clone(),
        }],
    ))
}

/// Picks the next image for `client_id` with `strategy` and hands it out: records the
/// selection (MONAI Label writes it into image info) and leases the image to the client
/// for `lease_ms`. `None` when no image is left for this client.
pub fn hand_out(
    view: &DatastoreView,
    strategy: Strategy,
    strategy_name: &str,
    client_id: &str,
    now_ms: i64,
    lease_ms: i64,
    random: &dyn Fn(usize) -> usize,
) -> Option<Decision> {
    let image = view.selection().pick(strategy, client_id, now_ms, random)?;
    Some(Decision::on_image(
        view,
        &image,
        vec![
            Event::StrategySelected {
                image: image.clone(),
                strategy: strategy_name.into(),
                client_id: client_id.into(),
                ts: now_ms.div_euclid(1000),
            },
            Event::ImageLeased {
                image: image.clone(),
                client_id: client_id.into(),
                expires_at_ms: now_ms + lease_ms,
            },
        ],
    ))
}

/// Gives the image back: `None` when `client_id` holds no lease on it.
pub fn release(view: &DatastoreView, image: &ImageId, client_id: &str) -> Option<Decision> {
    let lease = view.selection().lease(image)?;
    (lease.client_id == client_id).then(|| {
        Decision::on_image(
            view,
            image,
            vec![Event::LeaseReleased {
                image: image.clone(),
                client_id: client_id.into(),
            }],
        )
    })
}

/// Records a scoring result for the image, or for its label under `label_tag`.
pub fn score(
    view: &DatastoreView,
    image: &ImageId,
    method: &str,
    label_tag: Option<&Tag>,
    values: &Info,
) -> Result<Decision> {
    view.image(image).ok_or_else(|| image_not_found(image))?;
    if let Some(tag) = label_tag {
        view.label(image, tag)
            .ok_or_else(|| label_not_found(image, tag))?;
    }
    Ok(Decision::on_image(
        view,
        image,
        vec![Event::ScoreRecorded {
            image: image.clone(),
            method: method.into(),
            label_tag: label_tag.cloned(),
            values: values.clone(),
        }],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, RecordedEvent};
    use crate::id::Extension;

    fn blob(n: u8) -> BlobRef {
        BlobRef {
            sha256: format!("{n:02x}").repeat(32),
            size: 10,
            ext: Extension::parse(".nii.gz").unwrap(),
        }
    }

    /// Applies a decision as a store would, numbering sequences and positions.
    fn record(view: &mut DatastoreView, decision: Decision) {
        for event in decision.events {
            let sequence = match &event {
                Event::DatastoreRenamed { .. } | Event::DatastoreDescribed { .. } => {
                    view.datastore_version + 1
                }
                Event::ImageAdded { image, .. }
                | Event::LabelSaved { image, .. }
                | Event::ImageRemoved { image }
                | Event::LabelRemoved { image, .. } => view.stream_state(image).version + 1,
                _ => unreachable!("not used in these tests"),
            };
            let recorded = RecordedEvent {
                stream: decision.stream.clone(),
                sequence,
                position: view.position + 1,
                timestamp_ms: 1_700_000_000_000,
                actor: Actor::admin(),
                request_id: format!("r{}", view.position + 1),
                event_type: event.event_type().into(),
                schema_version: crate::event::SCHEMA_VERSION,
                event,
            };
            view.apply(&recorded);
        }
    }

    #[test]
    fn label_versions_count_up_across_removal() {
        let mut view = DatastoreView::default();
        let image = ImageId::parse("ct_1").unwrap();
        let tag = Tag::final_tag();
        let decision = add_image(&view, &image, blob(1), Info::new());
        record(&mut view, decision);
        let first = save_label(&view, &image, &tag, blob(2), Info::new()).unwrap();
        assert_eq!(first.expected, ExpectedVersion::Exact(1));
        record(&mut view, first);
        let decision = remove_label(&view, &image, &tag).unwrap();
        record(&mut view, decision);
        assert!(remove_label(&view, &image, &tag).is_none());
        let again = save_label(&view, &image, &tag, blob(3), Info::new()).unwrap();
        assert!(matches!(
            again.events[0],
            Event::LabelSaved { version: 2, .. }
        ));
        assert_eq!(again.expected, ExpectedVersion::Exact(3));
    }

    #[test]
    fn refuses_labels_and_updates_for_unknown_images() {
        let view = DatastoreView::default();
        let image = ImageId::parse("missing").unwrap();
        assert!(matches!(
            save_label(&view, &image, &Tag::final_tag(), blob(1), Info::new()),
            Err(DatastoreError::ImageNotFound(_))
        ));
        assert!(remove_image(&view, &image).is_err());
        assert!(update_image_info(&view, &image, &Info::new()).is_err());
        assert!(update_label_info(&view, &image, &Tag::original(), &Info::new()).is_err());
    }

    #[test]
    fn unlabeled_index_follows_labels() {
        let mut view = DatastoreView::default();
        let ids: Vec<_> = (0..4)
            .map(|i| ImageId::parse(format!("img{i}")).unwrap())
            .collect();
        for id in &ids {
            let decision = add_image(&view, id, blob(1), Info::new());
            record(&mut view, decision);
        }
        let tag = Tag::final_tag();
        let decision = save_label(&view, &ids[1], &tag, blob(2), Info::new()).unwrap();
        record(&mut view, decision);
        assert_eq!(view.unlabeled_images(&tag, &[]).len(), 3);
        assert_eq!(view.labeled_images(&tag, &[]), vec![ids[1].clone()]);
        let decision = remove_image(&view, &ids[1]).unwrap();
        record(&mut view, decision);
        assert_eq!(view.status().completed, 0);
        assert_eq!(view.unlabeled_images(&tag, &[]).len(), 3);
        let decision = add_image(&view, &ids[1], blob(1), Info::new());
        record(&mut view, decision);
        assert_eq!(view.unlabeled_images(&tag, &[]).len(), 4);
        assert_eq!(view.status().total, 4);
    }
}
