//! From one DynamoDB stream record to the job message it calls for, if any.
//!
//! The event table (see `medlabel_events::store::dynamo`) holds three kinds of items;
//! only one of them is an event, and only two event types are jobs:
//!
//! - an INSERT of an event item (`stream`, `sequence ≥ 1`, `position`, `event_type`,
//!   JSON `payload`, …) whose `event_type` is `JobRequested` or `JobStopRequested`
//!   becomes a [`JobMessage`];
//! - every other record is skipped: MODIFY/REMOVE (events are immutable, so those are
//!   the `$head` item moving or an operator's hand), the `$head` and `$request#…` meta
//!   items (sequence 0), and all other event types.
//!
//! The event source mapping's filter already drops most of these before the function
//! runs; this module does not rely on it. A record that claims to be a job event but
//! cannot be read is an error, not a skip: dropping it would lose a job silently, while
//! failing it sends it, after the retries, to the failure queue where someone sees it.

use aws_lambda_events::dynamodb::EventRecord;
use medlabel_events::event::{self, Event, StreamId};
use serde::Deserialize;

use medlabel_events::queue::{JobAction, JobMessage};

/// Sequence number of the event table's meta items (`$head`, `$request#…`).
const META_SEQUENCE: u64 = 0;

/// Why a job record could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("stream record {event_id}: the new image is not an event item: {reason}")]
    NotAnEvent { event_id: String, reason: String },
    #[error("stream record {event_id}: the {event_type} payload does not decode: {reason}")]
    Payload {
        event_id: String,
        event_type: String,
        reason: String,
    },
    #[error("stream record {event_id}: event_type says {stored} but the payload is {actual}")]
    TypeMismatch {
        event_id: String,
        stored: String,
        actual: &'static str,
    },
}

/// The attributes of an event item that a job message needs (the rest are ignored).
#[derive(Debug, Deserialize)]
struct EventItem {
    stream: String,
    sequence: u64,
    position: u64,
    event_type: String,
    payload: String,
}

/// The job message `record` calls for: `Ok(None)` for every record that is not the
/// insertion of a `JobRequested` or `JobStopRequested` event.
pub fn job_message(record: &EventRecord) -> Result<Option<JobMessage>, RecordError> {
    if record.event_name != "INSERT" {
        return Ok(None);
    }
    let image = &record.change.new_image;
    // Look at the type before decoding the whole item: most events are not jobs, and a
    // meta item (no event_type at all) must not be mistaken for a damaged event.
    let event_type = match image.get("event_type") {
        Some(serde_dynamo::AttributeValue::S(t)) => t.as_str(),
        _ => return Ok(None),
    };
    if !matches!(event_type, "JobRequested" | "JobStopRequested") {
        return Ok(None);
    }
    let item: EventItem =
        serde_dynamo::from_item(image.clone()).map_err(|err| RecordError::NotAnEvent {
            event_id: record.event_id.clone(),
            reason: err.to_string(),
        })?;
    if item.sequence == META_SEQUENCE || item.stream.starts_with('$') {
        return Ok(None);
    }
    let event = event::decode(&item.payload).map_err(|err| RecordError::Payload {
        event_id: record.event_id.clone(),
        event_type: item.event_type.clone(),
        reason: err.to_string(),
    })?;
    let mismatch = |actual| RecordError::TypeMismatch {
        event_id: record.event_id.clone(),
        stored: item.event_type.clone(),
        actual,
    };
    if event.event_type() != item.event_type {
        return Err(mismatch(event.event_type()));
    }
    let (job, action) = match event {
        Event::JobRequested { job, .. } => (job, JobAction::Run),
        Event::JobStopRequested { job } => (job, JobAction::Stop),
        // Unreachable after the two checks above, but an error costs nothing here.
        other => return Err(mismatch(other.event_type())),
    };
    Ok(Some(JobMessage {
        job,
        stream: StreamId::from_stored(item.stream),
        sequence: item.sequence,
        position: item.position,
        action,
    }))
}

#[cfg(test)]
mod tests {
    use medlabel_events::blob::BlobRef;
    use medlabel_events::event::{JobKind, LabelVersionRef, encode};
    use medlabel_events::id::{Extension, ImageId, ModelName, RunId, Tag};
    use medlabel_events::{Event, Info};
    use serde_json::{Value, json};

    use super::*;

    /// A stream record as Lambda delivers it (the shape of the AWS sample events).
    fn record(event_name: &str, new_image: Value) -> EventRecord {
        let keys = json!({
            "stream": new_image["stream"].clone(),
            "sequence": new_image["sequence"].clone(),
        });
        serde_json::from_value(json!({
            "eventID": "c4ca4238a0b923820dcc509a6f75849b",
            "eventName": event_name,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": {
                "ApproximateCreationDateTime": 1_764_000_000,
                "Keys": keys,
                "NewImage": new_image,
                "SequenceNumber": "4421584500000000017450439091",
                "SizeBytes": 812,
                "StreamViewType": "NEW_IMAGE"
            },
            "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/events/stream/2026-11-27T00:00:00.000"
        }))
        .expect("a well-formed stream record")
    }

    /// The item the DynamoDB event store writes for `event` (every attribute it sets).
    fn event_image(stream: &str, sequence: u64, position: u64, event: &Event) -> Value {
        json!({
            "stream": {"S": stream},
            "sequence": {"N": sequence.to_string()},
            "position": {"N": position.to_string()},
            "pos_bucket": {"S": format!("b#{}", position / 1000)},
            "timestamp_ms": {"N": "1764201600000"},
            "actor": {"S": r#"{"user":"admin","client_id":"slicer-1"}"#},
            "request_id": {"S": "req-7"},
            "event_type": {"S": event.event_type()},
            "schema_version": {"N": "1"},
            "payload": {"S": encode(event).unwrap()},
        })
    }

    fn blob(hex_char: char, ext: &str) -> BlobRef {
        BlobRef {
            sha256: hex_char.to_string().repeat(64),
            size: 1234,
            ext: Extension::parse(ext).unwrap(),
        }
    }

    fn train_request() -> Event {
        let mut params = Info::new();
        params.insert("max_epochs".into(), json!(3));
        Event::JobRequested {
            job: RunId::parse("run-1").unwrap(),
            kind: JobKind::Train,
            model: Some(ModelName::parse("segmentation_spleen").unwrap()),
            params,
            labels: vec![],
            labels_blob: Some(blob('c', ".json")),
            as_of_position: Some(1041),
        }
    }

    /// A request from a log written before the pinned labels became a blob.
    fn inline_train_request() -> Event {
        Event::JobRequested {
            job: RunId::parse("run-0").unwrap(),
            kind: JobKind::Train,
            model: Some(ModelName::parse("segmentation_spleen").unwrap()),
            params: Info::new(),
            labels: vec![LabelVersionRef {
                image: ImageId::parse("spleen_3").unwrap(),
                tag: Tag::parse("final").unwrap(),
                version: 2,
                image_blob: blob('a', ".nii.gz"),
                label_blob: blob('b', ".nii.gz"),
            }],
            labels_blob: None,
            as_of_position: Some(1041),
        }
    }

    #[test]
    fn a_job_request_becomes_a_run_message_with_its_log_coordinates() {
        let rec = record(
            "INSERT",
            event_image("tasks/train", 3, 1042, &train_request()),
        );
        let message = job_message(&rec).unwrap().expect("a job message");
        assert_eq!(message.job.as_str(), "run-1");
        assert_eq!(message.stream.as_str(), "tasks/train");
        assert_eq!((message.sequence, message.position), (3, 1042));
        assert_eq!(message.action, JobAction::Run);
        let old = record(
            "INSERT",
            event_image("train/run-0", 1, 17, &inline_train_request()),
        );
        let message = job_message(&old).unwrap().expect("a job message");
        assert_eq!(
            (message.job.as_str(), message.action),
            ("run-0", JobAction::Run)
        );
    }

    #[test]
    fn a_stop_request_becomes_a_stop_message() {
        let event = Event::JobStopRequested {
            job: RunId::parse("run-1").unwrap(),
        };
        let rec = record("INSERT", event_image("train/run-1", 4, 1100, &event));
        let message = job_message(&rec).unwrap().expect("a stop message");
        assert_eq!(message.action, JobAction::Stop);
        assert_eq!((message.sequence, message.position), (4, 1100));
    }

    #[test]
    fn events_that_are_not_jobs_are_skipped() {
        let events = [
            Event::ImageRemoved {
                image: ImageId::parse("spleen_3").unwrap(),
            },
            Event::JobStarted {
                job: RunId::parse("run-1").unwrap(),
                worker: "gpu-0".into(),
                lease_until_ms: Some(1_800_000_000_000),
            },
            Event::JobFinished {
                job: RunId::parse("run-1").unwrap(),
                status: medlabel_events::event::JobStatus::Done,
                result: Info::new(),
            },
        ];
        for event in &events {
            let rec = record("INSERT", event_image("job/run-1", 2, 7, event));
            assert!(job_message(&rec).unwrap().is_none(), "{event:?}");
        }
    }

    #[test]
    fn only_inserts_dispatch() {
        let image = event_image("train/run-1", 1, 1042, &train_request());
        for name in ["MODIFY", "REMOVE"] {
            assert!(job_message(&record(name, image.clone())).unwrap().is_none());
        }
    }

    #[test]
    fn meta_items_are_skipped() {
        let head =
            json!({"stream": {"S": "$head"}, "sequence": {"N": "0"}, "position": {"N": "1042"}});
        let request = json!({
            "stream": {"S": "$request#req-7"},
            "sequence": {"N": "0"},
            "result": {"S": r#"{"stream":"train/run-1","first_sequence":1}"#},
        });
        // Even a meta item that carried job attributes is not an event.
        let mut forged = event_image("$head", 0, 1042, &train_request());
        forged["sequence"] = json!({"N": "0"});
        for image in [head, request, forged] {
            assert!(job_message(&record("INSERT", image)).unwrap().is_none());
        }
    }

    #[test]
    fn a_job_record_that_cannot_be_read_is_an_error_not_a_skip() {
        let mut garbled = event_image("train/run-1", 1, 1042, &train_request());
        garbled["payload"] = json!({"S": r#"{"type":"JobRequested","data":{"job":"run-1"}}"#});
        assert!(matches!(
            job_message(&record("INSERT", garbled)),
            Err(RecordError::Payload { .. })
        ));

        let mut no_position = event_image("train/run-1", 1, 1042, &train_request());
        no_position.as_object_mut().unwrap().remove("position");
        assert!(matches!(
            job_message(&record("INSERT", no_position)),
            Err(RecordError::NotAnEvent { .. })
        ));

        let mut position_as_string = event_image("train/run-1", 1, 1042, &train_request());
        position_as_string["position"] = json!({"S": "1042"});
        assert!(matches!(
            job_message(&record("INSERT", position_as_string)),
            Err(RecordError::NotAnEvent { .. })
        ));
    }

    #[test]
    fn a_payload_that_contradicts_its_event_type_is_refused() {
        let stop = Event::JobStopRequested {
            job: RunId::parse("run-1").unwrap(),
        };
        let mut image = event_image("train/run-1", 4, 1100, &stop);
        image["event_type"] = json!({"S": "JobRequested"});
        let err = job_message(&record("INSERT", image)).unwrap_err();
        assert!(
            matches!(&err, RecordError::TypeMismatch { stored, actual, .. }
                if stored == "JobRequested" && *actual == "JobStopRequested"),
            "{err}"
        );
    }
}
