//! The DynamoDB event store: one table holds every stream, the global head and the
//! request records (the layout and its trade-offs are in `docs/event-store.md`).
//!
//! Items, all keyed by partition `stream` (S) and sort key `sequence` (N):
//! - an event: `(stream, sequence ≥ 1)` with its global `position`, the GSI key
//!   `pos_bucket` (`b#<position / bucket size>`), envelope and JSON payload;
//! - the global head: `("$head", 0)` with `position`, the last global position;
//! - a request record: `("$request#<id>", 0)` with `result`, the JSON [`Appended`].
//!
//! Sequence 0 is reserved for these meta items, so no stream name can collide with them.
//!
//! An append is a consistent pre-read (the stream's version, the request record) and
//! one `TransactWriteItems`: a Put per event whose sequence slot must be free, an
//! Update of the head conditioned on its current position, and a Put of the request
//! record that must not exist yet. Because the head moves in the same transaction as the
//! events, global positions are gapless and never reused. When only the head condition
//! fails, its old image names the new head and the transaction is retried from there
//! after a jittered backoff; any other cancellation goes back to the pre-read, which
//! decides: a request record now present is a replay, a stream that moved is a conflict
//! (or, for [`ExpectedVersion::Any`], the next attempt). Appends from one process take
//! turns on a lock that also remembers the head, so they never race each other for it.
//!
//! The `by_position` GSI makes "everything after p" a Query per bucket. GSIs are
//! eventually consistent, so [`DynamoEventStore::read_all`] returns only the contiguous
//! run of positions it can see and waits briefly when the head proves a missing one
//! exists.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, StreamSpecification, StreamViewType,
    TransactWriteItem, Update,
};
use tokio::sync::Mutex;

use super::{Appended, EventStore, ExpectedVersion, StoreError, Tail, check_append};
use crate::event::{self, NewEvent, RecordedEvent, SCHEMA_VERSION, StreamId};

/// Name of the global secondary index that orders events by position.
pub const POSITION_INDEX: &str = "by_position";

/// Positions per GSI partition unless [`DynamoEventStore::with_bucket_size`] says otherwise.
pub const DEFAULT_BUCKET_SIZE: NonZeroU64 = NonZeroU64::new(1000).unwrap();

/// Attempts an append makes before giving up on a contended head or throttling.
const MAX_ATTEMPTS: u32 = 50;

/// Upper bound of one backoff sleep between contended attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// How often, and how long apart, `read_all` re-queries a gap the GSI has not filled yet.
const GAP_RETRIES: u32 = 20;
const GAP_WAIT: Duration = Duration::from_millis(50);

const HEAD_STREAM: &str = "$head";
const REQUEST_PREFIX: &str = "$request#";
const META_SEQUENCE: u64 = 0;

const A_STREAM: &str = "stream";
const A_SEQUENCE: &str = "sequence";
const A_POSITION: &str = "position";
const A_BUCKET: &str = "pos_bucket";
const A_TIMESTAMP: &str = "timestamp_ms";
const A_ACTOR: &str = "actor";
const A_REQUEST: &str = "request_id";
const A_TYPE: &str = "event_type";
const A_SCHEMA: &str = "schema_version";
const A_PAYLOAD: &str = "payload";
const A_RESULT: &str = "result";

type Item = HashMap<String, AttributeValue>;

/// An [`EventStore`] over one DynamoDB table (see the module docs for its layout).
///
/// Clones share one append lock: appends from one process take turns instead of racing
/// each other for the global head, and only contend with other processes.
#[derive(Debug, Clone)]
pub struct DynamoEventStore {
    client: Client,
    table: String,
    bucket_size: u64,
    /// Held while appending; the head as this process last saw it, if it has.
    head_hint: Arc<Mutex<Option<u64>>>,
}

/// What a failed transaction tells the append loop to do next.
enum Retry {
    /// The stream moved or the request id was recorded meanwhile: pre-read again now.
    Now,
    /// Only the global head moved, to this position: retry from there after a backoff.
    Head(u64),
    /// DynamoDB pushed back: pre-read again after a backoff.
    Later,
}

impl DynamoEventStore {
    /// A store over `table`, which [`DynamoEventStore::create_table`] (or the
    /// deployment template) created.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            bucket_size: DEFAULT_BUCKET_SIZE.get(),
            head_hint: Arc::new(Mutex::new(None)),
        }
    }

    /// Sets how many consecutive positions share one GSI partition. The bucket size is
    /// part of the table's format: every store over one table must use the same value.
    /// Small values exercise bucket boundaries in tests; production keeps the default.
    pub fn with_bucket_size(mut self, size: NonZeroU64) -> Self {
        self.bucket_size = size.get();
        self
    }

    /// Creates the table with its `by_position` GSI, on-demand billing and a
    /// `NEW_IMAGE` stream for the dispatcher, and waits until it is active.
    pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
        let attribute = |name: &str, kind| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
                .map_err(backend)
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(backend)
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(POSITION_INDEX)
            .key_schema(key(A_BUCKET, KeyType::Hash)?)
            .key_schema(key(A_POSITION, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(backend)?;
        let stream = StreamSpecification::builder()
            .stream_enabled(true)
            .stream_view_type(StreamViewType::NewImage)
            .build()
            .map_err(backend)?;
        client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute(A_STREAM, ScalarAttributeType::S)?)
            .attribute_definitions(attribute(A_SEQUENCE, ScalarAttributeType::N)?)
            .attribute_definitions(attribute(A_BUCKET, ScalarAttributeType::S)?)
            .attribute_definitions(attribute(A_POSITION, ScalarAttributeType::N)?)
            .key_schema(key(A_STREAM, KeyType::Hash)?)
            .key_schema(key(A_SEQUENCE, KeyType::Range)?)
            .global_secondary_indexes(index)
            .stream_specification(stream)
            .send()
            .await
            .map_err(backend)?;
        use aws_sdk_dynamodb::client::Waiters;
        client
            .wait_until_table_exists()
            .table_name(table)
            .wait(Duration::from_secs(300))
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn bucket(&self, position: u64) -> String {
        format!("b#{}", position / self.bucket_size)
    }

    /// The result stored for `request_id`, marked as replayed, if it was recorded.
    async fn request_record(&self, request_id: &str) -> Result<Option<Appended>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(A_STREAM, s(format!("{REQUEST_PREFIX}{request_id}")))
            .key(A_SEQUENCE, n(META_SEQUENCE))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        let Some(item) = output.item else {
            return Ok(None);
        };
        let mut appended: Appended = serde_json::from_str(get_s(&item, A_RESULT)?)
            .map_err(|err| StoreError::Corrupt(format!("request record {request_id}: {err}")))?;
        appended.replayed = true;
        Ok(Some(appended))
    }

    /// Builds the transaction that records `appended` and runs it.
    async fn commit(
        &self,
        appended: &Appended,
        events: &[NewEvent],
        payloads: &[String],
        request_id: &str,
    ) -> Result<Result<(), Retry>, StoreError> {
        let mut items = Vec::with_capacity(events.len() + 2);
        for item in self.event_items(appended, events, payloads, request_id)? {
            items.push(put_new(&self.table, item)?);
        }
        let old_head = appended.first_position - 1;
        let head = Update::builder()
            .table_name(&self.table)
            .key(A_STREAM, s(HEAD_STREAM))
            .key(A_SEQUENCE, n(META_SEQUENCE))
            .update_expression("SET #p = :new")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_names("#p", A_POSITION)
            .expression_attribute_values(":new", n(appended.last_position));
        let head = if old_head == 0 {
            head.condition_expression("attribute_not_exists(#p)")
        } else {
            head.condition_expression("#p = :old")
                .expression_attribute_values(":old", n(old_head))
        };
        items.push(
            TransactWriteItem::builder()
                .update(head.build().map_err(backend)?)
                .build(),
        );
        let record = serde_json::to_string(appended)
            .map_err(|err| StoreError::Corrupt(format!("request record: {err}")))?;
        let record = HashMap::from([
            (
                A_STREAM.to_owned(),
                s(format!("{REQUEST_PREFIX}{request_id}")),
            ),
            (A_SEQUENCE.to_owned(), n(META_SEQUENCE)),
            (A_RESULT.to_owned(), s(record)),
        ]);
        items.push(put_new(&self.table, record)?);

        // A fresh token per attempt: the SDK's own resends of this very transaction are
        // then deduplicated by DynamoDB, while our next attempt (new positions) is not.
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .client_request_token(uuid::Uuid::new_v4().to_string())
            .send()
            .await;
        let err = match result {
            Ok(_) => return Ok(Ok(())),
            Err(SdkError::ServiceError(err)) => err.into_err(),
            Err(other) => return Err(backend(other)),
        };
        let retry = match &err {
            TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                retry_after_cancel(cancelled.cancellation_reasons(), events.len())
            }
            TransactWriteItemsError::TransactionInProgressException(_)
            | TransactWriteItemsError::ThrottlingException(_)
            | TransactWriteItemsError::ProvisionedThroughputExceededException(_)
            | TransactWriteItemsError::RequestLimitExceeded(_)
            | TransactWriteItemsError::InternalServerError(_) => Some(Retry::Later),
            _ => None,
        };
        retry.map(Err).ok_or_else(|| backend(err))
    }

    /// The items that record `events` (encoded as `payloads`) as `appended`.
    fn event_items(
        &self,
        appended: &Appended,
        events: &[NewEvent],
        payloads: &[String],
        request_id: &str,
    ) -> Result<Vec<Item>, StoreError> {
        events
            .iter()
            .zip(payloads)
            .zip(0..)
            .map(|((new, payload), offset)| {
                self.event_item(
                    &appended.stream,
                    appended.first_sequence + offset,
                    appended.first_position + offset,
                    new,
                    payload,
                    request_id,
                )
            })
            .collect()
    }

    fn event_item(
        &self,
        stream: &StreamId,
        sequence: u64,
        position: u64,
        new: &NewEvent,
        payload: &str,
        request_id: &str,
    ) -> Result<Item, StoreError> {
        let actor = serde_json::to_string(&new.actor)
            .map_err(|err| StoreError::Corrupt(format!("actor: {err}")))?;
        Ok(HashMap::from([
            (A_STREAM.to_owned(), s(stream.as_str())),
            (A_SEQUENCE.to_owned(), n(sequence)),
            (A_POSITION.to_owned(), n(position)),
            (A_BUCKET.to_owned(), s(self.bucket(position))),
            (
                A_TIMESTAMP.to_owned(),
                AttributeValue::N(new.timestamp_ms.to_string()),
            ),
            (A_ACTOR.to_owned(), s(actor)),
            (A_REQUEST.to_owned(), s(request_id)),
            (A_TYPE.to_owned(), s(new.event.event_type())),
            (A_SCHEMA.to_owned(), n(SCHEMA_VERSION)),
            (A_PAYLOAD.to_owned(), s(payload)),
        ]))
    }

    /// Events at positions `from..=to` within one bucket that the GSI already shows.
    /// The stream's last event item, read strongly by one reverse query (only its
    /// sequence when `sequence_only`).
    async fn last_item(
        &self,
        stream: &StreamId,
        sequence_only: bool,
    ) -> Result<Option<Item>, StoreError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#s = :s AND #q > :meta")
            .expression_attribute_names("#s", A_STREAM)
            .expression_attribute_names("#q", A_SEQUENCE)
            .expression_attribute_values(":s", s(stream.as_str()))
            .expression_attribute_values(":meta", n(META_SEQUENCE))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true);
        let query = if sequence_only {
            query.projection_expression("#q")
        } else {
            query
        };
        let page = query.send().await.map_err(backend)?;
        Ok(page.items.unwrap_or_default().into_iter().next())
    }

    async fn query_bucket(&self, from: u64, to: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(POSITION_INDEX)
                .key_condition_expression("#b = :b AND #p BETWEEN :from AND :to")
                .expression_attribute_names("#b", A_BUCKET)
                .expression_attribute_names("#p", A_POSITION)
                .expression_attribute_values(":b", s(self.bucket(from)))
                .expression_attribute_values(":from", n(from))
                .expression_attribute_values(":to", n(to))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend)?;
            for item in page.items() {
                events.push(decode_event(item)?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(events);
            }
        }
    }
}

impl DynamoEventStore {
    /// [`EventStore::append`] of `events`, already encoded as `payloads`.
    async fn append_encoded(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        payloads: &[String],
        request_id: &str,
    ) -> Result<Appended, StoreError> {
        let count = events.len() as u64;
        let mut attempt = 0;
        'read: while attempt < MAX_ATTEMPTS {
            // Appends from this process take turns from the pre-read on: a conflict is
            // then found by a read, not by a cancelled transaction.
            let mut hint = self.head_hint.lock().await;
            let (version, recorded) =
                tokio::try_join!(self.stream_version(stream), self.request_record(request_id))?;
            if let Some(appended) = recorded {
                return Ok(appended);
            }
            if !expected.matches(version) {
                return Err(StoreError::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual: version,
                });
            }
            // A stale hint costs one cancelled transaction, which reports the real head.
            let mut head = match *hint {
                Some(head) => head,
                None => self.head().await?,
            };
            while attempt < MAX_ATTEMPTS {
                attempt += 1;
                let appended = Appended {
                    stream: stream.clone(),
                    first_sequence: version + 1,
                    last_sequence: version + count,
                    first_position: head + 1,
                    last_position: head + count,
                    replayed: false,
                };
                match self.commit(&appended, events, payloads, request_id).await? {
                    Ok(()) => {
                        *hint = Some(appended.last_position);
                        return Ok(appended);
                    }
                    // Another process moved the head; stream and request id are still
                    // as read, so only the positions change.
                    Err(Retry::Head(current)) => {
                        head = current;
                        *hint = Some(current);
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    Err(Retry::Now) => continue 'read,
                    Err(Retry::Later) => {
                        tokio::time::sleep(backoff(attempt)).await;
                        continue 'read;
                    }
                }
            }
        }
        Err(StoreError::Backend(format!(
            "append to {stream} gave up after {MAX_ATTEMPTS} attempts: the global head or \
             the table stayed contended"
        )))
    }
}

#[async_trait]
impl EventStore for DynamoEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        request_id: &str,
    ) -> Result<Appended, StoreError> {
        // check_append bounds each event and their sum to what one transaction takes.
        let payloads = check_append(&events, request_id)?;
        self.append_encoded(stream, expected, &events, &payloads, request_id)
            .await
    }

    /// When the append's first position is the one right after `after`, the log between
    /// them is the append itself: the transaction moved the head from `after` to its
    /// last position. The tail is then decoded from the items just written, exactly as
    /// a read would decode them, and the write costs no read (two round trips fewer).
    async fn append_and_read(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        request_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Appended, Tail), StoreError> {
        let payloads = check_append(&events, request_id)?;
        let appended = self
            .append_encoded(stream, expected, &events, &payloads, request_id)
            .await?;
        if appended.replayed || appended.first_position != after + 1 {
            let tail = self.read_all(after, limit).await?;
            return Ok((appended, tail.into()));
        }
        let recorded = self
            .event_items(&appended, &events, &payloads, request_id)?
            .iter()
            .map(decode_event)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((appended, Tail::after(recorded.into(), after, limit)))
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_sequence: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#s = :s AND #q >= :from")
                .expression_attribute_names("#s", A_STREAM)
                .expression_attribute_names("#q", A_SEQUENCE)
                .expression_attribute_values(":s", s(stream.as_str()))
                .expression_attribute_values(":from", n(from_sequence.max(1)))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend)?;
            for item in page.items() {
                events.push(decode_event(item)?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(events);
            }
        }
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        match self.last_item(stream, true).await? {
            Some(item) => get_n(&item, A_SEQUENCE),
            None => Ok(0),
        }
    }

    async fn last_event(&self, stream: &StreamId) -> Result<Option<RecordedEvent>, StoreError> {
        self.last_item(stream, false)
            .await?
            .map(|item| decode_event(&item))
            .transpose()
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let head = self.head().await?;
        let end = head.min(after.saturating_add(limit as u64));
        let mut events = Vec::new();
        let mut next = after.saturating_add(1);
        let mut gap_retries = 0;
        while next <= end {
            let bucket_end = (next / self.bucket_size + 1)
                .saturating_mul(self.bucket_size)
                .saturating_sub(1)
                .min(end);
            for event in self.query_bucket(next, bucket_end).await? {
                if event.position != next {
                    break;
                }
                events.push(event);
                next += 1;
            }
            if next <= bucket_end {
                // The head proves `next` was committed: the GSI has not caught up yet.
                if gap_retries == GAP_RETRIES {
                    break;
                }
                gap_retries += 1;
                tokio::time::sleep(GAP_WAIT).await;
            }
        }
        Ok(events)
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(A_STREAM, s(HEAD_STREAM))
            .key(A_SEQUENCE, n(META_SEQUENCE))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        match output.item {
            Some(item) => get_n(&item, A_POSITION),
            None => Ok(0),
        }
    }
}

/// How to go on after a cancelled transaction, from its per-item reasons (events first,
/// then the head at `head_index`, then the request record); `None` when retrying
/// cannot help.
fn retry_after_cancel(reasons: &[CancellationReason], head_index: usize) -> Option<Retry> {
    let mut retry = None;
    for (index, reason) in reasons.iter().enumerate() {
        match reason.code().unwrap_or("None") {
            "None" => {}
            // The head's old image names the position another writer moved it to.
            "ConditionalCheckFailed" if index == head_index => {
                let current = reason.item().and_then(|item| get_n(item, A_POSITION).ok());
                retry = retry.or(Some(current.map_or(Retry::Later, Retry::Head)));
            }
            // An event slot was taken or the request record exists: the pre-read decides.
            "ConditionalCheckFailed" => retry = Some(Retry::Now),
            "TransactionConflict"
            | "ThrottlingError"
            | "ProvisionedThroughputExceeded"
            | "RequestLimitExceeded" => retry = Some(Retry::Later),
            _ => return None,
        }
    }
    retry
}

/// A Put that must not overwrite an existing item.
fn put_new(table: &str, item: Item) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(#s)")
        .expression_attribute_names("#s", A_STREAM)
        .build()
        .map_err(backend)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

fn decode_event(item: &Item) -> Result<RecordedEvent, StoreError> {
    let stream = get_s(item, A_STREAM)?;
    let position = get_n(item, A_POSITION)?;
    let (event, actor) = event::decode_or_quarantine(
        position,
        stream,
        get_s(item, A_PAYLOAD)?,
        get_s(item, A_ACTOR)?,
    );
    Ok(RecordedEvent {
        stream: StreamId::from_stored(stream.to_owned()),
        sequence: get_n(item, A_SEQUENCE)?,
        position,
        timestamp_ms: get_n(item, A_TIMESTAMP)?,
        actor,
        request_id: get_s(item, A_REQUEST)?.to_owned(),
        event_type: get_s(item, A_TYPE)?.to_owned(),
        schema_version: get_n(item, A_SCHEMA)?,
        event,
    })
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value),
        _ => Err(StoreError::Corrupt(format!(
            "item lacks string attribute {name}"
        ))),
    }
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().map_err(|_| {
            StoreError::Corrupt(format!("attribute {name} = {value} is out of range"))
        }),
        _ => Err(StoreError::Corrupt(format!(
            "item lacks number attribute {name}"
        ))),
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl Into<u64>) -> AttributeValue {
    AttributeValue::N(value.into().to_string())
}

/// Full-jitter exponential backoff: uniform in [0, min(5 ms · 2^attempt, 250 ms)].
fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(5)
        .saturating_mul(1 << attempt.min(10))
        .min(MAX_BACKOFF);
    // uuid's v4 generator is the crate's only randomness; jitter needs no more.
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    cap.mul_f64(random as f64 / u64::MAX as f64)
}

fn backend(err: impl std::error::Error) -> StoreError {
    StoreError::Backend(DisplayErrorContext(err).to_string())
}
