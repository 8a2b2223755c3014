//! Errors of the Worker controller.

use crate::{
    controller::error::{shared_error_conversions, ReconcileError, SharedError, WORKER_FILES},
    crd::worker::SpecError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kubernetes, Docker or a blocking task failed; retried with backoff.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// The spec cannot be acted on; waits for the user to change it.
    #[error("invalid Worker spec: {0}")]
    InvalidSpec(#[from] SpecError),
    #[error("cannot serialize status: {0}")]
    Serialize(#[from] serde_json::Error),
    /// Moving the worker's task files (poison tasks, failover) failed; retried with backoff.
    #[error("worker files: {0}")]
    Files(String),
}

shared_error_conversions!(Error);

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Shared(e) => e.metric_label(),
            Self::InvalidSpec(_) => "invalid_spec",
            Self::Serialize(_) => "serialization",
            Self::Files(_) => WORKER_FILES,
        }
    }

    fn is_transient(&self) -> bool {
        !matches!(self, Self::InvalidSpec(_))
    }
}
