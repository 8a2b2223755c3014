//! Errors of the ResumePlan controller. Problems of the plan itself (a missing or refused
//! Worker, a halted batch) are reported in status, not here; every variant is transient and
//! retried with backoff.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The Docker engine failed or could not be reached.
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    /// Reading or moving the worker's task files failed.
    #[error("worker files: {0}")]
    Files(String),
    /// A blocking task could not finish.
    #[error("background task: {0}")]
    Blocking(String),
}

impl Error {
    /// Label for the `error` dimension of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Docker(crate::docker::DockerError::Unavailable(_)) => "docker_unavailable",
            Self::Docker(crate::docker::DockerError::NotFound(_)) => "docker_not_found",
            Self::Docker(crate::docker::DockerError::Refused { .. }) => "docker_refused",
            Self::Files(_) => "worker_files",
            Self::Blocking(_) => "blocking_task",
        }
    }
}
