//! Read-only observation of a worker's files.

pub mod heartbeat;
