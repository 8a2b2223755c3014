//! Facts about the host outside any container: the kernel log.
//!
//! The runbook greps `/var/log/syslog` for the OOM killer; these hosts have neither syslog
//! nor a journal, but the kernel ring buffer (`dmesg`) holds the same lines and is readable
//! as root.

use std::{io::ErrorKind, process::Stdio, time::Duration};

use tokio::process::Command;

use super::HostProbe;

/// How long `dmesg` may take before it counts as unreadable.
pub const DMESG_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the kernel log with `dmesg` on the host the operator runs on.
#[derive(Clone, Copy, Debug, Default)]
pub struct DmesgProbe;

#[async_trait::async_trait]
impl HostProbe for DmesgProbe {
    async fn kernel_log(&self) -> Result<String, String> {
        run_dmesg("dmesg").await
    }
}

async fn run_dmesg(program: &str) -> Result<String, String> {
    let child = Command::new(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => {
                format!("{program} is not installed on the operator's host (not on PATH)")
            }
            ErrorKind::PermissionDenied => format!("permission denied running {program}: {e}"),
            _ => format!("cannot run {program}: {e}"),
        })?;
    let output = match tokio::time::timeout(DMESG_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("{program} failed: {e}")),
        Err(_) => {
            return Err(format!(
                "{program} did not finish within {}s",
                DMESG_TIMEOUT.as_secs()
            ))
        }
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("operation not permitted") || lower.contains("permission denied") {
        // kernel.dmesg_restrict=1 and no CAP_SYSLOG (not root, or a container without it).
        Err(format!(
            "permission denied reading the kernel log (needs root or CAP_SYSLOG when kernel.dmesg_restrict=1): {stderr}"
        ))
    } else {
        Err(format!("{program} exited with {}: {stderr}", output.status))
    }
}

/// A [`HostProbe`] with a canned kernel log, for unit tests of checks.
#[cfg(test)]
pub struct FakeHost(pub Result<String, String>);

#[cfg(test)]
#[async_trait::async_trait]
impl HostProbe for FakeHost {
    async fn kernel_log(&self) -> Result<String, String> {
        self.0.clone()
    }
}

/// Helpers to build a [`CheckContext`](super::CheckContext) around a
/// [`FakeRuntime`](crate::docker::fake::FakeRuntime) in unit tests.
#[cfg(test)]
pub mod testing {
    use std::sync::Arc;

    use k8s_openapi::jiff::Timestamp;

    use super::FakeHost;
    use crate::{
        crd::worker::Worker,
        diagnose::CheckContext,
        docker::ContainerState,
        docker::{fake::FakeRuntime, ContainerInfo},
    };

    /// A Worker `marie` whose container is `marie`.
    pub fn worker() -> Worker {
        serde_yaml_ng::from_str(
            "apiVersion: workerrecovery.io/v1alpha1\nkind: Worker\nmetadata: {name: marie, namespace: default}\nspec: {container: marie}\n",
        )
        .expect("fixture parses")
    }

    /// A running container `marie` with a 64-hex ID and host PID 4242.
    pub fn running() -> ContainerInfo {
        ContainerInfo {
            id: "3f2a9c1e7b4d5a6f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f".into(),
            name: "marie".into(),
            image: Some("wro-sample-worker:dev".into()),
            status: ContainerState::Running,
            running: true,
            exit_code: Some(0),
            pid: Some(4242),
            started_at: Some("2026-11-27T10:00:00Z".parse().unwrap()),
            env: vec![
                "PATH=/usr/local/bin:/bin".into(),
                "WORKER_NAME=marie".into(),
            ],
            command: vec!["/usr/local/bin/sample-worker".into()],
            labels: [(
                crate::trust::CONSENT_LABEL.to_string(),
                crate::trust::consent_value("default", "marie"),
            )]
            .into(),
            ..Default::default()
        }
    }

    /// The same container after it exited with `code`.
    pub fn exited(code: i64) -> ContainerInfo {
        ContainerInfo {
            status: ContainerState::Exited,
            running: false,
            exit_code: Some(code),
            pid: None,
            finished_at: Some("2026-11-27T10:05:00Z".parse().unwrap()),
            ..running()
        }
    }

    /// A context whose inspection saw `container`, with `fake` as the engine.
    pub fn context(
        worker: &Worker,
        container: Result<Option<ContainerInfo>, String>,
        fake: FakeRuntime,
        kernel_log: Result<String, String>,
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
            now: "2026-11-27T10:10:00Z".parse::<Timestamp>().unwrap(),
            worker_process: Default::default(),
            crash: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_program_says_it_is_not_installed() {
        let err = run_dmesg("wro-no-such-dmesg-binary").await.unwrap_err();
        assert!(err.contains("not installed"), "{err}");
    }

    #[tokio::test]
    async fn a_failing_program_reports_its_exit_status() {
        let err = run_dmesg("false").await.unwrap_err();
        assert!(err.contains("exited with"), "{err}");
    }
}
