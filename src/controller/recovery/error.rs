//! Errors of the WorkerRecovery controller. Problems of the run itself (a missing Worker, an
//! invalid Worker spec, a failing check) are reported in status, not here.

//! Every variant is transient: the step stays `Running` and is retried with backoff.

use crate::docker::DockerError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The Docker engine failed or could not be reached.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// Reading or changing the worker's files failed.
    #[error("worker files: {0}")]
    CleanState(String),
    /// A blocking task could not finish.
    #[error("background task: {0}")]
    Blocking(String),
}

impl Error {
    /// Label for the `error` dimension of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Docker(DockerError::Unavailable(_)) => "docker_unavailable",
            Self::Docker(DockerError::NotFound(_)) => "docker_not_found",
            Self::Docker(DockerError::Refused { .. }) => "docker_refused",
            Self::CleanState(_) => "worker_files",
            Self::Blocking(_) => "blocking_task",
        }
    }
}
