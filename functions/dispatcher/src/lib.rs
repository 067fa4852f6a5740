//! The stream dispatcher: the bridge from the event log to the GPU runners.
//!
//! In the cloud every append lands in DynamoDB, and the table's stream (NEW_IMAGE)
//! invokes this function with batches of inserted items. The ones that are
//! `JobRequested` or `JobStopRequested` events become messages on the FIFO job queue,
//! which the GPU runners consume; everything else is skipped.
//!
//! The pieces are split so the decision stays pure and testable without AWS:
//! [`record::job_message`] reads one stream record, [`medlabel_events::queue`] holds the
//! queue's contract (body, group and deduplication ids), and [`dispatch::Dispatcher`] sends and
//! reports partial batch failures. Delivery is at least once end to end (stream
//! retries, then FIFO deduplication by event position), so runners still check the
//! job's stream before they start one.

pub mod dispatch;
pub mod record;

pub use dispatch::{BatchOutcome, DispatchError, Dispatcher};
pub use medlabel_events::queue::{JobAction, JobMessage};
pub use record::{RecordError, job_message};
