//! Read-only observation of a worker's files.

pub mod fs_safe;
pub mod heartbeat;
pub mod monitor;
pub mod prometheus_text;
