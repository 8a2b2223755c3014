//! Read-only observation of a worker: its heartbeat file ([`heartbeat`], read through
//! [`crate::confined`]), its metrics endpoint ([`monitor`], [`prometheus_text`]) and the trend
//! of its resource samples ([`trend`]).

pub mod heartbeat;
pub mod monitor;
pub mod prometheus_text;
pub mod trend;
