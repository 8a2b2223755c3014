//! Errors of the ResumePlan controller. Problems of the plan itself (a missing or refused
//! Worker, a halted batch) are reported in status, not here; every variant is transient and
//! retried with backoff.

use crate::{
    controller::error::{shared_error_conversions, ReconcileError, SharedError, WORKER_FILES},
    recover::batches::BatchError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// Reading or moving the worker's task files failed.
    #[error("worker files: {0}")]
    Files(#[from] BatchError),
}

shared_error_conversions!(Error);

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Shared(e) => e.metric_label(),
            Self::Files(_) => WORKER_FILES,
        }
    }
}
