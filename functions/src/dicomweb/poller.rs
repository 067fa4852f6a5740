//! Following the PACS: each poll searches it by QIDO-RS and records what changed.

use std::collections::HashSet;
use std::time::Duration;

use medlabel_events::ImageId;

use super::labels::ImportError;
use super::reference::{SEARCH_FIELDS, SeriesEntry};
use crate::error::ApiError;
use crate::state::AppState;

/// What one poll recorded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollReport {
    /// Series recorded as images (new, or changed in the PACS).
    pub images: usize,
    /// Images removed because their series left the PACS.
    pub removed: usize,
    /// SEG series recorded as labels.
    pub labels: usize,
}

/// Polls every `interval` until the process ends; a failed poll is logged and retried
/// at the next.
pub async fn poll_forever(state: AppState, interval: Duration) {
    loop {
        match poll_once(&state).await {
            Ok(report) if report != PollReport::default() => {
                tracing::info!(?report, "DICOMweb poll recorded changes");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "DICOMweb poll failed"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// One poll: new and changed series become images, series gone from the PACS leave,
/// new SEG series become `final` labels.
pub async fn poll_once(state: &AppState) -> Result<PollReport, ApiError> {
    let studies = state
        .studies
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("the datastore is not a DICOMweb server".into()))?;
    let client = studies.client();
    let base = &client.server().url;
    let mut report = PollReport::default();

    let listed: Vec<SeriesEntry> = client
        .search_series(&studies.filter, &SEARCH_FIELDS)
        .await?
        .iter()
        .filter_map(|o| SeriesEntry::from_qido(o, base))
        .filter(|e| e.modality != "SEG")
        .collect();
    for entry in &listed {
        if studies.record_series(entry).await? {
            report.images += 1;
        }
    }

    // A recorded series missing from the listing may only be outside the filter (looked
    // up on demand): it leaves only when the server no longer has it at all.
    let listed_ids: HashSet<&str> = listed.iter().map(|e| e.series.as_str()).collect();
    let missing: Vec<ImageId> = {
        let view = state.datastore.view().await?;
        view.images()
            .filter(|(id, record)| {
                record.series_reference().is_some() && !listed_ids.contains(id.as_str())
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    for image in missing {
        let filter = [("SeriesInstanceUID".to_owned(), image.to_string())];
        if client.search_series(&filter, &[]).await?.is_empty() {
            let ctx = studies.write(&format!("gone:{image}"));
            state.datastore.remove_image(&ctx, &image).await?;
            report.removed += 1;
        }
    }

    let filter = [("Modality".to_owned(), "SEG".to_owned())];
    let segs: Vec<SeriesEntry> = client
        .search_series(&filter, &SEARCH_FIELDS)
        .await?
        .iter()
        .filter_map(|o| SeriesEntry::from_qido(o, base))
        .collect();
    let known = recorded_segs(state).await?;
    let labels = crate::routes::model_labels(state, None).await;
    for entry in segs {
        let skip = known.contains(&entry.series)
            || studies
                .stowing
                .lock()
                .expect("stowing set")
                .contains(&entry.series)
            || studies
                .refused
                .lock()
                .expect("refused set")
                .contains_key(&entry.series);
        if skip {
            continue;
        }
        match studies.import_seg(&entry, &labels).await {
            Ok(()) => report.labels += 1,
            Err(ImportError::Refused(why)) => {
                tracing::warn!(seg = %entry.series, reason = %why, "SEG series not recorded as a label");
                studies
                    .refused
                    .lock()
                    .expect("refused set")
                    .insert(entry.series.clone(), why);
            }
            Err(ImportError::Failed(why)) => {
                tracing::warn!(seg = %entry.series, reason = %why, "SEG series not recorded yet; retried at the next poll");
            }
        }
    }
    Ok(report)
}

/// The SEG series every recorded label version came from.
async fn recorded_segs(state: &AppState) -> Result<HashSet<String>, ApiError> {
    let view = state.datastore.view().await?;
    Ok(view
        .images()
        .flat_map(|(_, record)| record.labels.values())
        .flat_map(|label| &label.versions)
        .filter_map(|v| v.info.get("SeriesInstanceUID")?.as_str().map(str::to_owned))
        .collect())
}
