//! Facts about the host outside any container: the kernel log.
//!
//! The runbook greps `/var/log/syslog` for the OOM killer; these hosts have neither syslog
//! nor a journal, but the kernel ring buffer (`dmesg`) holds the same lines and is readable
//! as root. It is read with `syslog(2)` (needs `CAP_SYSLOG` where `kernel.dmesg_restrict=1`),
//! so the operator's `FROM scratch` image needs no `dmesg`; where that call is refused, with
//! `dmesg` when it is installed.

use std::{
    io::{self, ErrorKind},
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};

use tokio::process::Command;

use super::HostProbe;

/// How long `dmesg` may take before it counts as unreadable.
pub const DMESG_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the kernel log of the host the operator runs on.
#[derive(Clone, Copy, Debug, Default)]
pub struct DmesgProbe;

#[async_trait::async_trait]
impl HostProbe for DmesgProbe {
    async fn kernel_log(&self) -> Result<String, KernelLogError> {
        let direct = tokio::task::spawn_blocking(read_ring_buffer)
            .await
            .unwrap_or_else(|e| Err(KernelLogError::Syscall(Arc::new(io::Error::other(e)))));
        match direct {
            Ok(log) => Ok(log),
            // A `dmesg` may read `/dev/kmsg` where the call is refused; without one, the
            // call's own error says why.
            Err(refused) => match run_dmesg("dmesg").await {
                Err(KernelLogError::NotInstalled { .. }) => Err(refused),
                other => other,
            },
        }
    }

    /// Not namespaced: a container sees the host's.
    async fn core_pattern(&self) -> Result<String, String> {
        tokio::fs::read_to_string("/proc/sys/kernel/core_pattern")
            .await
            .map_err(|e| format!("cannot read /proc/sys/kernel/core_pattern: {e}"))
    }
}

/// Why the kernel log cannot be read. Clone, so that a test's fake host can answer it again.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KernelLogError {
    #[error("{program} is not installed on the operator's host (not on PATH)")]
    NotInstalled { program: String },
    #[error("permission denied running {program}")]
    Denied {
        program: String,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("{program} failed")]
    Wait {
        program: String,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("cannot read the kernel's ring buffer with syslog(2)")]
    Syscall(#[source] Arc<io::Error>),
    #[error("{program} did not finish within {}s", DMESG_TIMEOUT.as_secs())]
    TimedOut { program: String },
    /// kernel.dmesg_restrict=1 and no CAP_SYSLOG (not root, or a container without it).
    #[error("permission denied reading the kernel log (needs root or CAP_SYSLOG when kernel.dmesg_restrict=1): {stderr}")]
    Restricted { stderr: String },
    #[error("{program} exited with {status}: {stderr}")]
    Failed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// The kernel's ring buffer as `dmesg` prints it (`[seconds] message` lines), through
/// `syslog(2)`: `SYSLOG_ACTION_SIZE_BUFFER`, then `SYSLOG_ACTION_READ_ALL` (which leaves the
/// buffer as it is). Blocking.
pub fn read_ring_buffer() -> Result<String, KernelLogError> {
    const READ_ALL: libc::c_int = 3;
    const SIZE_BUFFER: libc::c_int = 10;
    let failed = || {
        let e = io::Error::last_os_error();
        match e.kind() {
            ErrorKind::PermissionDenied => KernelLogError::Restricted {
                stderr: format!("syslog(2): {e}"),
            },
            _ => KernelLogError::Syscall(Arc::new(e)),
        }
    };
    // SAFETY: SIZE_BUFFER reads no buffer; READ_ALL writes at most `size` bytes into `buf`,
    // which holds `size` bytes.
    let size = unsafe { libc::klogctl(SIZE_BUFFER, std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(failed());
    }
    let mut buf = vec![0u8; size as usize];
    let read = unsafe { libc::klogctl(READ_ALL, buf.as_mut_ptr().cast(), size) };
    if read < 0 {
        return Err(failed());
    }
    buf.truncate(read as usize);
    Ok(without_levels(&String::from_utf8_lossy(&buf)))
}

/// `<6>[ 12.345678] message` (what `syslog(2)` gives) as `dmesg` prints it: without the level.
pub fn without_levels(text: &str) -> String {
    text.lines()
        .map(|line| {
            line.strip_prefix('<')
                .and_then(|rest| rest.split_once('>'))
                .filter(|(level, _)| level.bytes().all(|b| b.is_ascii_digit()))
                .map_or(line, |(_, message)| message)
        })
        .fold(String::with_capacity(text.len()), |mut out, line| {
            out.push_str(line);
            out.push('\n');
            out
        })
}

async fn run_dmesg(program: &str) -> Result<String, KernelLogError> {
    let program_name = || program.to_string();
    let child = Command::new(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => KernelLogError::NotInstalled {
                program: program_name(),
            },
            ErrorKind::PermissionDenied => KernelLogError::Denied {
                program: program_name(),
                source: Arc::new(e),
            },
            _ => KernelLogError::Spawn {
                program: program_name(),
                source: Arc::new(e),
            },
        })?;
    let output = match tokio::time::timeout(DMESG_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            return Err(KernelLogError::Wait {
                program: program_name(),
                source: Arc::new(e),
            })
        }
        Err(_) => {
            return Err(KernelLogError::TimedOut {
                program: program_name(),
            })
        }
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("operation not permitted") || lower.contains("permission denied") {
        Err(KernelLogError::Restricted { stderr })
    } else {
        Err(KernelLogError::Failed {
            program: program_name(),
            status: output.status,
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_program_says_it_is_not_installed() {
        let err = run_dmesg("wro-no-such-dmesg-binary")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not installed"), "{err}");
    }

    #[test]
    fn levels_are_cut_as_dmesg_does() {
        let raw = "<6>[    5.100000] usb 1-1: new device\n<3>[49616.994267] Memory cgroup out of memory: Killed process 24710 (sample-worker)\nno level\n<x> kept\n";
        assert_eq!(
            without_levels(raw),
            "[    5.100000] usb 1-1: new device\n[49616.994267] Memory cgroup out of memory: Killed process 24710 (sample-worker)\nno level\n<x> kept\n"
        );
    }

    #[tokio::test]
    async fn a_failing_program_reports_its_exit_status() {
        let err = run_dmesg("false").await.unwrap_err().to_string();
        assert!(err.contains("exited with"), "{err}");
    }
}
