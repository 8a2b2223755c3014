//! Helpers for the unit tests of the checks: a [`CheckContext`] around a
//! [`FakeRuntime`], with the crate's fixtures ([`crate::testing`]) re-exported.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

pub use crate::testing::*;
use crate::{
    crd::worker::Worker,
    diagnose::{CheckContext, KernelLogError},
    docker::{fake::FakeRuntime, ContainerInfo},
};

/// The `now` of every test context.
pub const NOW: &str = "2026-11-27T10:10:00Z";

/// A context whose inspection saw `container`, with `fake` as the engine.
pub fn context(
    worker: &Worker,
    container: Result<Option<ContainerInfo>, String>,
    fake: FakeRuntime,
    kernel_log: Result<String, KernelLogError>,
) -> CheckContext {
    let paths = worker.resolved_paths().expect("valid paths");
    CheckContext {
        worker_name: paths.worker_name.clone(),
        spec: worker.spec.clone(),
        paths,
        previous: None,
        container,
        docker: Arc::new(fake),
        host: Arc::new(FakeHost(kernel_log)),
        http: crate::http::testing::client(),
        now: NOW.parse::<Timestamp>().unwrap(),
        worker_process: Default::default(),
        crash: None,
    }
}
