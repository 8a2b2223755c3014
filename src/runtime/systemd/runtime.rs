//! A systemd service as a worker runtime: the operator's runtime trait over [`Systemd`], so
//! that everything above it (observation, diagnosis, recovery runs, automatic recovery,
//! escalation, metrics) works for a unit as for a container. The unit's name stands where a
//! container's name or ID would; its consent is the `WORKERRECOVERY_WORKER` entry of its
//! `Environment=`, reported as the consent label.
//!
//! What a unit cannot do (a debug copy, a recreate, a command run inside it, files copied out
//! of it) is refused with [`RuntimeError::Unsupported`], and
//! [`Capabilities`] says so beforehand, so that a run needing it fails with that reason.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;

use super::{
    oom,
    unit::{ActiveState, ServiceResult, UnitInfo},
    Systemd, SystemdError,
};
use crate::{
    diagnose::HostProbe,
    runtime::{
        host_process, resources::Declared, Capabilities, CloneSpec, ContainerEvent, ContainerInfo,
        ContainerState, ExecOutput, HostProcess, Job, JobOutput, Limits, MemoryStats, PathStat,
        RuntimeError, RuntimeKind, StartOutcome, WorkerRuntime,
    },
    trust::CONSENT_LABEL,
};

/// How long a start job may take before the call gives up waiting (the unit's own
/// `TimeoutStartSec=` still applies).
const JOB_WAIT: Duration = Duration::from_secs(120);

/// The systemd runtime.
#[derive(Clone)]
pub struct SystemdRuntime {
    systemd: Systemd,
    /// Where the units' journal is (`/var/log/journal`, `/run/log/journal`).
    journal_dirs: Vec<std::path::PathBuf>,
    /// The kernel log, which tells an OOM kill from another SIGKILL on cgroup v1.
    host: Arc<dyn HostProbe>,
    /// What the kernel log said about each unit's last exit (by its monotonic time), so that
    /// it is read once per exit.
    oom_verdicts: Arc<Mutex<HashMap<String, (Duration, bool)>>>,
    /// The operator's `/proc`, where a unit's processes are looked at.
    proc_root: std::path::PathBuf,
}

impl SystemdRuntime {
    pub fn new(
        systemd: Systemd,
        journal_dirs: Vec<std::path::PathBuf>,
        host: Arc<dyn HostProbe>,
    ) -> Self {
        Self {
            systemd,
            journal_dirs,
            host,
            oom_verdicts: Arc::default(),
            proc_root: "/proc".into(),
        }
    }

    async fn known(&self, unit: &str) -> Result<UnitInfo, RuntimeError> {
        let info = self.systemd.unit(unit).await.map_err(engine_error)?;
        if info.exists() {
            Ok(info)
        } else {
            Err(RuntimeError::NotFound(unit.into()))
        }
    }

    /// The unit as a container, OOM-killed when systemd or (on cgroup v1) the kernel says so.
    async fn observed(&self, u: &UnitInfo) -> ContainerInfo {
        ContainerInfo {
            oom_killed: self.oom_killed(u).await,
            ..container_info(u)
        }
    }

    /// Whether the OOM killer ended the unit's last main process: systemd says so
    /// (`Result=oom-kill`), or on cgroup v1 the kernel log does.
    async fn oom_killed(&self, u: &UnitInfo) -> bool {
        u.result == ServiceResult::OomKill || self.oom_killed_per_kernel(u).await
    }

    /// Whether the kernel's OOM killer ended the unit's last main process, for a SIGKILL
    /// systemd did not explain (see [`oom`]); `false` while the kernel log cannot be read.
    async fn oom_killed_per_kernel(&self, u: &UnitInfo) -> bool {
        let (true, Some(exited)) = (oom::needs_kernel_log(u), u.exited_monotonic) else {
            return false;
        };
        if let Some((at, verdict)) = self.oom_verdicts.lock().unwrap().get(&u.name) {
            if *at == exited {
                return *verdict;
            }
        }
        let Ok(log) = self.host.kernel_log().await else {
            return false;
        };
        let verdict = !oom::kills_in_last_run(&log, u).is_empty();
        self.oom_verdicts
            .lock()
            .unwrap()
            .insert(u.name.clone(), (exited, verdict));
        verdict
    }
}

/// What the runtime cannot do, as a refusal naming the runtime.
fn unsupported(operation: &'static str) -> RuntimeError {
    RuntimeError::Unsupported {
        operation,
        runtime: RuntimeKind::Systemd,
    }
}

fn engine_error(e: SystemdError) -> RuntimeError {
    match e {
        SystemdError::Unavailable(m) => RuntimeError::unavailable(RuntimeKind::Systemd, m),
        SystemdError::Refused {
            operation, message, ..
        } => RuntimeError::refused(RuntimeKind::Systemd, operation, message),
        e @ SystemdError::NotSettled { .. } => {
            RuntimeError::unavailable(RuntimeKind::Systemd, e.to_string())
        }
    }
}

/// A unit as the controllers see a container. Pure.
pub fn container_info(u: &UnitInfo) -> ContainerInfo {
    let status = match u.active_state {
        ActiveState::Active | ActiveState::Reloading | ActiveState::Refreshing => {
            ContainerState::Running
        }
        ActiveState::Activating => ContainerState::Restarting,
        ActiveState::Deactivating => ContainerState::Removing,
        ActiveState::Inactive | ActiveState::Failed | ActiveState::Maintenance => {
            ContainerState::Exited
        }
        ActiveState::Unknown => ContainerState::Unknown,
    };
    let running = u.running();
    // Docker's convention: 128 + the signal for a process a signal ended.
    let killed = matches!(
        u.result,
        ServiceResult::Signal
            | ServiceResult::CoreDump
            | ServiceResult::OomKill
            | ServiceResult::Watchdog
    );
    let exit_code = (!running && u.exited_at.is_some()).then(|| {
        let status = i64::from(u.exec_main_status);
        if killed {
            128 + status
        } else {
            status
        }
    });
    ContainerInfo {
        id: u.name.clone(),
        name: u.name.clone(),
        image: None,
        status,
        running,
        exit_code,
        oom_killed: u.result == ServiceResult::OomKill,
        pid: u.main_pid.map(i64::from),
        started_at: u.started_at,
        finished_at: u.exited_at,
        restart_count: i64::from(u.n_restarts),
        memory_limit: u.memory_max.and_then(|m| i64::try_from(m).ok()),
        nofile_limit: u
            .nofile_limit
            .and_then(|n| i64::try_from(n).ok())
            .map(|n| (n, n)),
        env: u.environment.clone(),
        labels: u
            .consent()
            .map(|c| (CONSENT_LABEL.to_string(), c.to_string()))
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// A unit's change as an engine event of its Worker; `None` for a unit that consents to none.
pub fn unit_event(u: &UnitInfo) -> Option<ContainerEvent> {
    let consent = u.consent()?;
    let action = if u.running() {
        "start"
    } else if u.result == ServiceResult::OomKill {
        "oom"
    } else if u.active_state.in_transition() {
        return None;
    } else {
        "die"
    };
    Some(ContainerEvent {
        action: action.into(),
        container_id: u.name.clone(),
        labels: [(CONSENT_LABEL.to_string(), consent.to_string())].into(),
        time: u.exited_at.filter(|_| action != "start").or(u.started_at),
    })
}

#[async_trait]
impl WorkerRuntime for SystemdRuntime {
    fn capabilities(&self) -> Capabilities {
        Capabilities::SYSTEMD
    }

    async fn inspect(&self, unit: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        match self.known(unit).await {
            Ok(info) => Ok(Some(self.observed(&info).await)),
            Err(RuntimeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn start(&self, unit: &str) -> Result<StartOutcome, RuntimeError> {
        if self.known(unit).await?.running() {
            return Ok(StartOutcome::AlreadyRunning);
        }
        self.systemd
            .start(unit, JOB_WAIT)
            .await
            .map_err(engine_error)?;
        Ok(StartOutcome::Started)
    }

    /// The main process, mapped into the operator's PID namespace through its cgroup.
    async fn host_process(&self, unit: &str) -> Result<Option<HostProcess>, RuntimeError> {
        let info = self.known(unit).await?;
        let Some(pid) = info.main_pid.filter(|_| info.running()) else {
            return Ok(None);
        };
        let proc_root = self.proc_root.clone();
        tokio::task::spawn_blocking(move || {
            host_process::find(&proc_root, pid, &info.control_group)
        })
        .await
        .map_err(|e| RuntimeError::unavailable(RuntimeKind::Systemd, e.to_string()))
    }

    async fn exec(&self, _: &str, _: &[&str]) -> Result<ExecOutput, RuntimeError> {
        Err(unsupported("exec"))
    }

    async fn logs(
        &self,
        unit: &str,
        tail: u32,
        since: Timestamp,
    ) -> Result<Vec<String>, RuntimeError> {
        let (dirs, unit) = (self.journal_dirs.clone(), unit.to_string());
        tokio::task::spawn_blocking(move || super::journal::tail(&dirs, &unit, tail, since))
            .await
            .map_err(|e| RuntimeError::unavailable(RuntimeKind::Systemd, e.to_string()))?
            .map_err(|why| RuntimeError::refused(RuntimeKind::Systemd, "logs", why))
    }

    async fn memory_stats(&self, unit: &str) -> Result<MemoryStats, RuntimeError> {
        let info = self.known(unit).await?;
        Ok(MemoryStats {
            usage_bytes: info.memory_current.unwrap_or(0),
            limit_bytes: info.memory_max.unwrap_or(0),
        })
    }

    /// systemd keeps no event history: the last exit, when it was an OOM kill in the window.
    async fn oom_events(
        &self,
        unit: &str,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<Timestamp>, RuntimeError> {
        let info = self.known(unit).await?;
        let oom_killed = self.oom_killed(&info).await;
        Ok(info
            .exited_at
            .filter(|t| oom_killed && *t >= since && *t <= until)
            .into_iter()
            .collect())
    }

    async fn stat_path(&self, _: &str, _: &str) -> Result<Option<PathStat>, RuntimeError> {
        Err(unsupported("stat"))
    }

    async fn stop(&self, unit: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.known(unit).await?;
        self.systemd.stop(unit, grace).await.map_err(engine_error)?;
        Ok(())
    }

    async fn restart(&self, unit: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.known(unit).await?;
        self.systemd
            .restart(unit, grace, JOB_WAIT)
            .await
            .map_err(engine_error)?;
        Ok(())
    }

    async fn create_clone(&self, _: &str, _: &CloneSpec) -> Result<String, RuntimeError> {
        Err(unsupported("debug copy"))
    }

    async fn remove(&self, _: &str) -> Result<bool, RuntimeError> {
        Err(unsupported("remove"))
    }

    async fn copy_file_out(&self, _: &str, _: &str, _: u64) -> Result<Vec<u8>, RuntimeError> {
        Err(unsupported("copy"))
    }

    async fn run_job(&self, _: &Job, _: usize) -> Result<JobOutput, RuntimeError> {
        Err(unsupported("job"))
    }

    async fn update_resources(&self, unit: &str, limits: Limits) -> Result<(), RuntimeError> {
        if limits.memory_swap.is_some() || limits.cpu_quota.is_some() {
            return Err(unsupported("update of swap or CPU"));
        }
        match limits.memory.and_then(|m| u64::try_from(m).ok()) {
            Some(bytes) => self
                .systemd
                .set_memory_max(unit, bytes)
                .await
                .map_err(engine_error),
            None => Ok(()),
        }
    }

    async fn recreate(&self, _: &str, _: &Declared, _: Duration) -> Result<String, RuntimeError> {
        Err(unsupported("recreate"))
    }

    async fn rename(&self, _: &str, _: &str) -> Result<(), RuntimeError> {
        Err(unsupported("rename"))
    }

    /// Changes of consenting units, from systemd's `PropertiesChanged` signals: `start` when
    /// one runs again, `oom` or `die` when it stopped. systemd replays nothing: after a break
    /// every Worker is looked at again (the follower does that).
    fn events(
        &self,
        _label: &str,
        _since: Option<Timestamp>,
    ) -> futures::stream::BoxStream<'static, Result<ContainerEvent, RuntimeError>> {
        use futures::{StreamExt, TryFutureExt, TryStreamExt};
        let systemd = self.systemd.clone();
        let changes = async move {
            let stream = systemd.unit_changes().await.map_err(engine_error)?;
            Ok(stream.map_err(engine_error))
        }
        .try_flatten_stream()
        .try_filter_map(|unit| async move { Ok(unit_event(&unit)) });
        changes.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::systemd::unit::{Prop, Props};

    fn unit(active: &str, result: &str, status: i64, pid: u64) -> UnitInfo {
        let p = |e: &[(&str, Prop)]| -> Props {
            e.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
        };
        UnitInfo::from_props(
            "agent-worker-marie.service",
            &p(&[
                ("LoadState", Prop::Text("loaded".into())),
                ("ActiveState", Prop::Text(active.into())),
            ]),
            &p(&[
                ("Result", Prop::Text(result.into())),
                ("ExecMainStatus", Prop::Signed(status)),
                ("MainPID", Prop::Unsigned(pid)),
                ("NRestarts", Prop::Unsigned(1)),
                (
                    "ExecMainStartTimestamp",
                    Prop::Unsigned(1_795_000_000_000_000),
                ),
                (
                    "ExecMainExitTimestamp",
                    Prop::Unsigned(if pid == 0 { 1_795_000_010_000_000 } else { 0 }),
                ),
                (
                    "Environment",
                    Prop::Texts(vec!["WORKERRECOVERY_WORKER=team-a/marie".into()]),
                ),
                ("MemoryMax", Prop::Unsigned(64 << 20)),
            ]),
        )
    }

    #[test]
    fn a_running_unit_is_a_running_container_that_consents() {
        let c = container_info(&unit("active", "success", 0, 4242));
        assert_eq!(c.name, "agent-worker-marie.service");
        assert_eq!(
            (c.status, c.running, c.pid),
            (ContainerState::Running, true, Some(4242))
        );
        assert_eq!(c.exit_code, None);
        assert_eq!(c.labels[CONSENT_LABEL], "team-a/marie");
        assert_eq!((c.memory_limit, c.restart_count), (Some(64 << 20), 1));
    }

    #[test]
    fn exits_read_as_docker_reports_them() {
        let crashed = container_info(&unit("failed", "exit-code", 3, 0));
        assert_eq!(
            (crashed.status, crashed.exit_code, crashed.oom_killed),
            (ContainerState::Exited, Some(3), false)
        );
        let oom = container_info(&unit("failed", "oom-kill", 9, 0));
        assert_eq!((oom.exit_code, oom.oom_killed), (Some(137), true));
        let abort = container_info(&unit("failed", "core-dump", 6, 0));
        assert_eq!(abort.exit_code, Some(134));
        assert!(crashed.finished_at > crashed.started_at);
    }

    #[test]
    fn unit_changes_are_events_of_the_consenting_worker() {
        let died = unit_event(&unit("failed", "exit-code", 3, 0)).unwrap();
        assert_eq!(
            (died.action.as_str(), died.container_id.as_str()),
            ("die", "agent-worker-marie.service")
        );
        assert_eq!(died.labels[CONSENT_LABEL], "team-a/marie");
        assert_eq!(
            unit_event(&unit("failed", "oom-kill", 9, 0))
                .unwrap()
                .action,
            "oom"
        );
        assert_eq!(
            unit_event(&unit("active", "success", 0, 7)).unwrap().action,
            "start"
        );
        assert!(
            unit_event(&unit("deactivating", "success", 0, 0)).is_none(),
            "still changing"
        );
        let mut stranger = unit("failed", "exit-code", 3, 0);
        stranger.environment.clear();
        assert!(unit_event(&stranger).is_none(), "no consent, no Worker");
    }

    #[test]
    fn what_a_unit_cannot_do_is_refused_by_name() {
        let e = unsupported("debug copy");
        assert_eq!(e.to_string(), "debug copy is not supported by systemd");
    }
}
