//! Errors of the WorkerRecovery controller. Problems of the run itself (a missing Worker, an
//! invalid Worker spec, a failing check) are reported in status, not here.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed; retried with backoff.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// Label for the `error` dimension of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
        }
    }
}
