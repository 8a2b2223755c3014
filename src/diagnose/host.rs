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
