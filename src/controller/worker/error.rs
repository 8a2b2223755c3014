//! Errors of the Worker controller.

use crate::{
    controller::error::{shared_error_conversions, ReconcileError, SharedError, WORKER_FILES},
    crd::worker::SpecError,
    recover::{failover::FailoverError, poison::PoisonError},
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
    /// Moving a poison task to failed/ failed; retried with backoff.
    #[error("worker files: {0}")]
    Poison(#[from] PoisonError),
    /// Moving pending tasks to the backup Worker failed; retried with backoff.
    #[error("worker files: {0}")]
    Failover(#[from] FailoverError),
}

shared_error_conversions!(Error);

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Shared(e) => e.metric_label(),
            Self::InvalidSpec(_) => "invalid_spec",
            Self::Serialize(_) => "serialization",
            Self::Poison(_) | Self::Failover(_) => WORKER_FILES,
        }
    }

    fn is_transient(&self) -> bool {
        !matches!(self, Self::InvalidSpec(_))
    }
}
