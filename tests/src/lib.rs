//! Support for medlabel's integration tests: the AWS emulator harness and the
//! contract suites every event-store and blob-store backend must pass.

pub mod crash;
pub mod datastore_contract;
pub mod emulator;
pub mod jobs_contract;
pub mod store_contract;
