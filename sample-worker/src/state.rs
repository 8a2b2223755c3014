//! State shared between the main loop, the heartbeat thread and the metrics
//! server.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, MutexGuard};

use crate::heartbeat::Status;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Tasks this process currently holds in `active/` (0 or 1).
    pub active: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Unix time (ms) of the last successful heartbeat write; 0 = never.
    pub heartbeat_ms: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct HbState {
    pub status: Status,
    pub current_task: Option<String>,
}

#[derive(Debug)]
pub struct Shared {
    pub metrics: Metrics,
    pub hb: Mutex<HbState>,
    /// Serialises heartbeat writes.
    pub hb_write: Mutex<()>,
    /// Set by the hang fault: no more heartbeats.
    pub hb_stopped: AtomicBool,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            metrics: Metrics::default(),
            hb: Mutex::new(HbState {
                status: Status::Starting,
                current_task: None,
            }),
            hb_write: Mutex::new(()),
            hb_stopped: AtomicBool::new(false),
        }
    }
}

/// Locks a mutex, ignoring poisoning (a panicked thread must not take the
/// whole worker down).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
