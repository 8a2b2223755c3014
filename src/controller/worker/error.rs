//! Errors of the Worker controller.

use crate::{crd::worker::SpecError, docker::DockerError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be acted on; waits for the user to change it.
    #[error("invalid Worker spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// The Docker engine failed or could not be reached; retried with backoff.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The Kubernetes API failed; retried with backoff.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot serialize status: {0}")]
    Serialize(#[from] serde_json::Error),
    /// Moving the worker's task files (poison tasks, failover) failed; retried with backoff.
    #[error("worker files: {0}")]
    Files(String),
}

impl Error {
    /// Label for the `error` dimension of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "invalid_spec",
            Self::Docker(DockerError::Unavailable(_)) => "docker_unavailable",
            Self::Docker(DockerError::NotFound(_)) => "docker_not_found",
            Self::Docker(DockerError::Refused { .. }) => "docker_refused",
            Self::Kube(_) => "kube_api",
            Self::Serialize(_) => "serialization",
            Self::Files(_) => "worker_files",
        }
    }

    /// Whether retrying without a spec change can help.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::InvalidSpec(_))
    }
}
