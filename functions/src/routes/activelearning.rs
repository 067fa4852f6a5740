//! The activelearning function: next-sample strategies and scoring.
//!
//! A next-sample call decides on the current view and appends a `StrategySelected`
//! event to the chosen image's stream at the version it saw; if another writer got
//! there first it decides again. A retried request (same request id) records nothing
//! and answers with the image its first attempt chose, read from the stream the store
//! says the first append went to. Scoring is delegated to the runner.

use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use medlabel_events::datastore::Decision;
use medlabel_events::event::{Event, JobKind, NewEvent};
use medlabel_events::store::{ExpectedVersion, StoreError};
use medlabel_events::{ImageId, StreamId};
use serde_json::{Map, Value, json};

use crate::context::Ctx;
use crate::error::ApiError;
use crate::extract::{QueryParams, Segment, json_body};
use crate::routes::train::{run_all, stop, task_status};
use crate::routes::{blob_uri, client_id};
use crate::state::AppState;
use crate::strategy;

/// How often a next-sample call re-decides after losing a version race.
const MAX_ATTEMPTS: usize = 16;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/activelearning/{strategy}", post(next_sample))
        .route("/scoring/{method}", post(score))
        .route(
            "/scoring/",
            post(score_all).get(scoring_status).delete(stop_scoring),
        )
}

/// `strategies` as `/info/` lists them.
pub fn strategies_info() -> Value {
    Value::Object(
        strategy::STRATEGIES
            .iter()
            .map(|(name, description)| ((*name).to_owned(), json!({"description": description})))
            .collect::<Map<String, Value>>(),
    )
}

async fn next_sample(
    State(state): State<AppState>,
    ctx: Ctx,
    name: Segment,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let strategy = name.0;
    if !strategy::is_known(&strategy) {
        return Err(ApiError::NotFound(format!("Strategy '{strategy}' NOT Found")));
    }
    let params = json_body(body).await?;
    let client = client_id(&params)
        .map(str::to_owned)
        .unwrap_or_else(|| ctx.user.to_string());
    let write = ctx.write(client_id(&params));
    let store = state.datastore.event_store().clone();
    let mut chosen: Option<(ImageId, f64)> = None;
    for _ in 0..MAX_ATTEMPTS {
        let now_ms = state.datastore.clock().now_ms();
        let decision = {
            let view = state.datastore.view().await?;
            strategy::pick(&strategy, &view, now_ms.div_euclid(1000), &mut rand::rng()).map(
                |(image, weight)| {
                    let decision = Decision {
                        stream: StreamId::image(&image),
                        expected: ExpectedVersion::from_version(view.stream_state(&image).version),
                        events: vec![Event::StrategySelected {
                            image: image.clone(),
                            strategy: strategy.clone(),
                            client_id: client.clone(),
                            ts: now_ms.div_euclid(1000),
                        }],
                    };
                    (image, weight, decision)
                },
            )
        };
        let Some((image, weight, decision)) = decision else {
            return Ok(Json(json!({})));
        };
        let events = decision
            .events
            .into_iter()
            .map(|event| NewEvent {
                event,
                actor: write.actor.clone(),
                timestamp_ms: now_ms,
            })
            .collect();
        match store
            .append(&decision.stream, decision.expected, events, &write.request_id)
            .await
        {
            Ok(appended) if appended.replayed => {
                let first = appended
                    .stream
                    .as_str()
                    .strip_prefix("image/")
                    .and_then(|id| ImageId::parse(id).ok())
                    .ok_or_else(|| {
                        ApiError::Conflict("this request id was already used for another write".into())
                    })?;
                chosen = Some((first, weight));
                break;
            }
            Ok(_) => {
                chosen = Some((image, weight));
                break;
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    let Some((image, weight)) = chosen else {
        return Err(ApiError::Conflict(format!(
            "gave up after {MAX_ATTEMPTS} version conflicts; try again"
        )));
    };
    let record = state.datastore.image(&image).await?;
    let mut reply = Map::new();
    reply.insert("id".into(), json!(image));
    reply.insert("path".into(), json!(blob_uri(&state, &record.blob).await?));
    reply.insert("weight".into(), json!(weight));
    for (key, value) in record.info {
        reply.entry(key).or_insert(value);
    }
    Ok(Json(Value::Object(reply)))
}

async fn score(
    State(state): State<AppState>,
    method: Segment,
    query: QueryParams,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let mut params = json_body(body).await?;
    if query.bool("run_sync", false)? {
        params.insert("run_sync".into(), json!(true));
    }
    Ok(Json(
        state
            .runner
            .start(JobKind::Scoring, &method.0, params)
            .await?,
    ))
}

async fn score_all(State(state): State<AppState>, body: Body) -> Result<Json<Value>, ApiError> {
    let params = json_body(body).await?;
    let methods = state.runner.describe().await?.scoring.into_keys().collect();
    Ok(Json(run_all(&state, JobKind::Scoring, methods, params).await))
}

async fn scoring_status(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    task_status(&state, JobKind::Scoring, &query).await
}

async fn stop_scoring(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    stop(&state, JobKind::Scoring).await
}
