//! The failures all controllers share, each with one metric label, and what a controller does
//! after a failed reconcile.
//!
//! Each controller has its own error enum (`recovery::Error`, `resume_plan::Error`,
//! `worker::Error`): the variants of its own layer, plus [`SharedError`] for the ones every
//! controller meets. Problems of a run or a Worker the user can act on (a missing Worker, a
//! refused one, a failing check) are not errors: they are written into status.

use std::sync::Arc;

use kube::{runtime::controller::Action, Resource, ResourceExt};
use tracing::warn;

use super::{object_key, Context};
use crate::{blocking::BlockingError, runtime::RuntimeError};

/// Failures every controller can meet. All are transient: retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The worker's runtime (Docker engine, systemd) failed or could not be reached.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Work handed to a blocking thread did not finish.
    #[error(transparent)]
    Blocking(#[from] BlockingError),
}

impl SharedError {
    /// Label for the `error` dimension of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Runtime(e) => e.metric_label(),
            Self::Blocking(_) => "blocking_task",
        }
    }
}

/// Label of every failure to read or change a worker's files, in every controller.
pub const WORKER_FILES: &str = "worker_files";

/// What the generic error policy needs to know of a controller's error.
pub trait ReconcileError: std::fmt::Display {
    /// Label for the `error` dimension of the failure metric.
    fn metric_label(&self) -> &'static str;
    /// Whether retrying without a spec change can help.
    fn is_transient(&self) -> bool {
        true
    }
}

/// `From` the shared failures for a controller's error enum with a `Shared(SharedError)`
/// variant, so that `?` works on a Kubernetes, Docker or blocking-task result.
macro_rules! shared_error_conversions {
    ($error:ty) => {
        impl From<kube::Error> for $error {
            fn from(e: kube::Error) -> Self {
                Self::Shared(e.into())
            }
        }
        impl From<$crate::runtime::RuntimeError> for $error {
            fn from(e: $crate::runtime::RuntimeError) -> Self {
                Self::Shared(e.into())
            }
        }
        impl From<$crate::blocking::BlockingError> for $error {
            fn from(e: $crate::blocking::BlockingError) -> Self {
                Self::Shared(e.into())
            }
        }
    };
}
pub(crate) use shared_error_conversions;

/// The error policy of `controller`: count the failure; retry a transient one with backoff,
/// wait for a spec change otherwise.
pub fn error_policy<K, E>(controller: &'static str) -> impl Fn(Arc<K>, &E, Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
    E: ReconcileError,
{
    move |obj, error, ctx| {
        ctx.metrics
            .reconcile_failure(controller, error.metric_label());
        let object = obj.name_any();
        if error.is_transient() {
            let delay = ctx.backoff.next_delay(&object_key(obj.as_ref()));
            warn!(controller, %object, %error, retry_in = ?delay, "reconcile failed");
            Action::requeue(delay)
        } else {
            warn!(controller, %object, %error, "waiting for the spec to change");
            Action::await_change()
        }
    }
}
