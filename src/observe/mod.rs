//! Read-only observation of a worker: its heartbeat file ([`heartbeat`], read through
//! [`crate::confined`]) and its metrics endpoint ([`monitor`], [`prometheus_text`]).

pub mod heartbeat;
pub mod monitor;
pub mod prometheus_text;
