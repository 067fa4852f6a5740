//! medlabel's HTTP surface: MONAI Label's REST API as axum routers.
//!
//! One router per function ([`routes`]: info, datastore, session, activelearning +
//! scoring, infer, train, auth, logs), each deployable as its own Lambda through
//! [`lambda`], and all of them mounted on one port by [`app()`] for the local
//! `medlabel serve`. Handlers are thin: they parse and validate what the client sent
//! ([`extract`], [`multipart`]), call the domain ([`medlabel_events::datastore`],
//! [`medlabel_events::session`]) or the [`runner::Runner`] port, and shape the reply
//! exactly as MONAI Label's clients expect ([`reply`]). Every failure is one
//! [`ApiError`] in MONAI Label's `{"detail": ...}` shape; every request has an id
//! ([`request_id`]) that is logged, echoed and used as the idempotency key of its
//! writes. With authentication on, [`auth`] checks every route's role first, and reads
//! of patient data are recorded by [`audit`].

pub mod app;
pub mod audit;
pub mod auth;
pub mod auth_cli;
pub mod catalogue;
#[cfg(feature = "aws")]
pub mod cloud;
pub mod context;
pub mod dicomweb;
pub mod downloads;
pub mod error;
pub mod extract;
pub mod inference;
pub mod lambda;
pub mod log_source;
pub mod logging;
pub mod model_import;
pub mod model_runner;
pub mod multipart;
pub mod reply;
pub mod request_id;
pub mod routes;
pub mod runner;
pub mod scoring;
pub mod scribbles;
pub mod state;
pub mod strategy;
pub mod supervisor;
pub mod volumes;
pub mod weights;

pub use app::{app, finish};
pub use error::ApiError;
pub use runner::{NoRunner, Runner};
pub use state::{AppState, Config};
