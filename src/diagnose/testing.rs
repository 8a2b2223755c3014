//! Helpers for the unit tests of the checks: a [`CheckContext`] around a
//! [`FakeRuntime`], canned exec answers and file times, with the crate's fixtures
//! ([`crate::testing`]) re-exported.

use std::{path::Path, sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;

pub use crate::testing::*;
use crate::{
    crd::worker::Worker,
    diagnose::{CheckContext, Finding, FindingKind, KernelLogError},
    runtime::{fake::FakeRuntime, ContainerInfo, ExecOutput, RuntimeError},
};

/// The `now` of every test context.
pub const NOW: &str = "2026-11-27T10:10:00Z";

/// A context whose inspection saw `container`, with `fake` as the engine.
pub fn context(
    worker: &Worker,
    container: Result<Option<ContainerInfo>, RuntimeError>,
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

/// A context for the Worker [`worker`] with its shared root at `root`, whose inspection saw
/// `container`, with `fake` as the engine (for the checks that read files).
pub fn context_in(
    root: &Path,
    container: Result<Option<ContainerInfo>, RuntimeError>,
    fake: FakeRuntime,
) -> CheckContext {
    let mut w = worker();
    w.spec.shared_root = root.display().to_string();
    context(&w, container, fake, Ok(String::new()))
}

/// [`context_in`] `root` with the container running and an engine that knows nothing.
pub fn context_at(root: &Path) -> CheckContext {
    context_in(root, Ok(Some(running())), FakeRuntime::default())
}

/// A command that printed `stdout` and exited 0, for [`FakeRuntime::exec`].
pub fn exec_ok(stdout: &str) -> Result<ExecOutput, String> {
    Ok(ExecOutput {
        exit_code: Some(0),
        stdout: stdout.into(),
        stderr: String::new(),
    })
}

/// Set the modification time of the file at `path`.
pub fn set_modified(path: &Path, at: Timestamp) {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(at.as_millisecond() as u64);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

/// The kinds of `findings`, in order.
pub fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
    findings.iter().map(|f| f.kind).collect()
}
