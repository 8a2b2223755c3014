//! Errors of the WorkerRecovery controller. Problems of the run itself (a missing Worker, an
//! invalid Worker spec, a failing check) are reported in status, not here.
//!
//! Every variant is transient: the step stays `Running` and is retried with backoff.

use crate::{
    controller::error::{shared_error_conversions, ReconcileError, SharedError, WORKER_FILES},
    recover::clean_state::CleanStateError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// Changing the worker's files failed.
    #[error("worker files: {0}")]
    CleanState(#[from] CleanStateError),
    /// Reading the worker's files failed.
    #[error("worker files: {0}")]
    Files(#[from] crate::confined::FsError),
}

shared_error_conversions!(Error);

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Shared(e) => e.metric_label(),
            Self::CleanState(_) | Self::Files(_) => WORKER_FILES,
        }
    }
}
