//! Published models, as events: one writer, one fold.
//!
//! A model is a stream (`model/<name>`): `ModelPublished` makes weights and a config
//! (both blobs) the version inference uses, counting up from 1; `ModelDeleted`
//! withdraws the model (a later publication brings it back at the next version).
//! Training runs, `PUT /model/{name}`, imports and the starter model all publish
//! through [`Models::publish`], and every reader (`/info/`, inference, the runner
//! materialising model folders) reads [`ModelsView`], so every model version, its
//! metric and the run that produced it stay on record and are seen the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLockReadGuard};

use crate::blob::BlobRef;
use crate::clock::Clock;
use crate::datastore::WriteContext;
use crate::decision::{self, Decision, WriteError};
use crate::event::{Event, RecordedEvent, StreamId};
use crate::id::{ModelName, RunId};
use crate::projection::{Projected, Projection};
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// The files of a model folder, as the runner loads it and the worker, the starter
/// model and imports write it: `config.json` (whose `format` names the weights file),
/// the weights, and `.version` (`"<model version> <weights sha256>"`), written last by
/// a worker materialising a published version so a server can tell which it holds.
pub mod folder {
    pub const CONFIG_FILE: &str = "config.json";
    pub const VERSION_FILE: &str = ".version";
    /// Weights of the native networks, by MONAI state-dict name (the default format).
    pub const SAFETENSORS_FILE: &str = "model.safetensors";
    /// `torch.save(state_dict)`, read without running pickle code.
    pub const PYTORCH_FILE: &str = "model.pt";
    /// A TorchScript archive.
    pub const TORCHSCRIPT_FILE: &str = "model.ts";

    /// The weights file a config's `format` (`None`: absent, the default) names.
    pub fn weights_file(format: Option<&str>) -> Option<&'static str> {
        match format {
            None | Some("safetensors") => Some(SAFETENSORS_FILE),
            Some("pytorch") => Some(PYTORCH_FILE),
            Some("torchscript") => Some(TORCHSCRIPT_FILE),
            Some(_) => None,
        }
    }

    /// The weights file named by the config JSON `config`.
    pub fn weights_file_of(config: &[u8]) -> Result<&'static str, String> {
        let config: serde_json::Value = serde_json::from_slice(config)
            .map_err(|e| format!("{CONFIG_FILE} is not JSON: {e}"))?;
        let format = config.get("format").and_then(serde_json::Value::as_str);
        weights_file(format).ok_or_else(|| format!("unknown weights format {format:?}"))
    }
}

/// Why a model operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// MONAI Label's 404 text.
    #[error("Model File NOT Found for {0}")]
    NotFound(String),
    #[error("gave up after {0} version conflicts; try again")]
    Contended(usize),
    #[error("request id {0:?} was already used for a different write")]
    RequestIdReused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WriteError for ModelError {
    fn contended(attempts: usize) -> Self {
        Self::Contended(attempts)
    }
    fn request_id_reused(request_id: &str) -> Self {
        Self::RequestIdReused(request_id.to_owned())
    }
}

/// A model version inference can use.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PublishedModel {
    pub model: ModelName,
    pub version: u32,
    pub weights: BlobRef,
    pub config: BlobRef,
    pub metric: Option<f64>,
    pub training_run: Option<RunId>,
    pub published_at_ms: i64,
}

/// The published models, folded from the log.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelsView {
    position: u64,
    models: BTreeMap<ModelName, PublishedModel>,
    /// Per model: the stream's version and the last version number published (kept
    /// across a deletion, so numbers never repeat).
    streams: HashMap<ModelName, (u64, u32)>,
}

impl Projection for ModelsView {
    fn position(&self) -> u64 {
        self.position
    }

    fn apply(&mut self, recorded: &RecordedEvent) {
        self.position = recorded.position;
        match &recorded.event {
            Event::ModelPublished {
                model,
                version,
                weights,
                config,
                metric,
                training_run,
            } => {
                self.streams
                    .insert(model.clone(), (recorded.sequence, *version));
                self.models.insert(
                    model.clone(),
                    PublishedModel {
                        model: model.clone(),
                        version: *version,
                        weights: weights.clone(),
                        config: config.clone(),
                        metric: *metric,
                        training_run: training_run.clone(),
                        published_at_ms: recorded.timestamp_ms,
                    },
                );
            }
            Event::ModelDeleted { model } => {
                self.bump(model, recorded.sequence);
                self.models.remove(model);
            }
            // An undecodable event's stream version still counts (see the datastore view).
            Event::Unreadable { .. } => {
                if let Some(model) = recorded
                    .stream
                    .as_str()
                    .strip_prefix("model/")
                    .and_then(|name| ModelName::parse(name).ok())
                {
                    self.bump(&model, recorded.sequence);
                }
            }
            _ => {}
        }
    }
}

impl ModelsView {
    fn bump(&mut self, model: &ModelName, sequence: u64) {
        let last = self.streams.get(model).map_or(0, |v| v.1);
        self.streams.insert(model.clone(), (sequence, last));
    }

    pub fn model(&self, name: &ModelName) -> Option<&PublishedModel> {
        self.models.get(name)
    }

    /// Every published model, by name.
    pub fn models(&self) -> impl Iterator<Item = &PublishedModel> {
        self.models.values()
    }
}

/// Model decisions: pure functions of the view.
pub mod decide {
    use super::*;

    fn on_model(view: &ModelsView, model: &ModelName, event: Event) -> Decision {
        let (stream_version, _) = view.streams.get(model).copied().unwrap_or((0, 0));
        Decision {
            stream: StreamId::model(model),
            expected: ExpectedVersion::from_version(stream_version),
            events: vec![event],
        }
    }

    /// `weights` + `config` as the next version of `model`.
    pub fn publish(
        view: &ModelsView,
        model: &ModelName,
        weights: BlobRef,
        config: BlobRef,
        metric: Option<f64>,
        training_run: Option<RunId>,
    ) -> Decision {
        let last = view.streams.get(model).map_or(0, |v| v.1);
        on_model(
            view,
            model,
            Event::ModelPublished {
                model: model.clone(),
                version: last + 1,
                weights,
                config,
                metric,
                training_run,
            },
        )
    }

    /// Withdraws a published model.
    pub fn delete(view: &ModelsView, model: &ModelName) -> Result<Decision, ModelError> {
        view.model(model)
            .ok_or_else(|| ModelError::NotFound(model.to_string()))?;
        Ok(on_model(
            view,
            model,
            Event::ModelDeleted {
                model: model.clone(),
            },
        ))
    }
}

/// The models service.
pub struct Models {
    clock: Arc<dyn Clock>,
    view: Projected<ModelsView>,
}

impl Models {
    pub fn new(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            view: Projected::new(store),
            clock,
        }
    }

    /// Models over `view`, a view restored elsewhere (`crate::cold_start`) that its
    /// first read catches up with the log.
    pub fn starting_at(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        view: ModelsView,
    ) -> Self {
        Self {
            view: Projected::starting_at(store, view),
            clock,
        }
    }

    /// The models view, caught up with the log.
    pub async fn view(&self) -> Result<RwLockReadGuard<'_, ModelsView>, ModelError> {
        Ok(self.view.read().await?)
    }

    /// The current version of `name`, caught up with the log.
    pub async fn current(&self, name: &ModelName) -> Result<PublishedModel, ModelError> {
        self.view()
            .await?
            .model(name)
            .cloned()
            .ok_or_else(|| ModelError::NotFound(name.to_string()))
    }

    /// Makes `weights` + `config` the version inference uses, as the next version.
    pub async fn publish(
        &self,
        ctx: &WriteContext,
        model: &ModelName,
        weights: BlobRef,
        config: BlobRef,
        metric: Option<f64>,
        training_run: Option<RunId>,
    ) -> Result<PublishedModel, ModelError> {
        decision::execute(
            &self.view,
            ctx,
            || self.clock.now_ms(),
            |view| {
                Ok::<_, ModelError>(Some(decide::publish(
                    view,
                    model,
                    weights.clone(),
                    config.clone(),
                    metric,
                    training_run.clone(),
                )))
            },
        )
        .await?;
        // Absent only when the request id was already spent on another model's publication.
        self.view
            .peek()
            .model(model)
            .cloned()
            .ok_or_else(|| ModelError::NotFound(model.to_string()))
    }

    /// Withdraws a model (MONAI Label's `DELETE /model/{m}`).
    pub async fn delete(&self, ctx: &WriteContext, model: &ModelName) -> Result<(), ModelError> {
        decision::execute(
            &self.view,
            ctx,
            || self.clock.now_ms(),
            |view| decide::delete(view, model).map(Some),
        )
        .await
        .map(drop)
    }
}
