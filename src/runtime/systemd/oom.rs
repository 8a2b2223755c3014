//! Whether the kernel's OOM killer ended a unit's main process. systemd says so itself
//! (`Result=oom-kill`) only on cgroup v2; on cgroup v1 the same kill reads `Result=signal`,
//! status 9, like any SIGKILL. The kernel log tells them apart: its OOM-killer lines name the
//! unit's cgroup and are stamped with the time since boot, the clock of the unit's
//! `ExecMain*TimestampMonotonic`. Pure.

use std::time::Duration;

use super::unit::{ServiceResult, UnitInfo};
use crate::diagnose::checks::memory::kernel_oom_lines;

/// How far a kernel line may lie outside the main process's run and still count: the kernel's
/// stamps and the monotonic clock drift apart by a fraction of a second over a day.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(2);

/// Whether `u` needs the kernel log to say if it was OOM-killed: it stopped by SIGKILL, and
/// systemd did not say why.
pub fn needs_kernel_log(u: &UnitInfo) -> bool {
    !u.running()
        && u.result == ServiceResult::Signal
        && u.exec_main_status == libc::SIGKILL
        && u.started_monotonic.is_some()
        && u.exited_monotonic.is_some()
}

/// The kernel's OOM-killer lines about `u` (from `dmesg`) stamped while its last main process
/// ran, give or take [`CLOCK_MARGIN`]; empty when there are none or the unit's run is unknown.
pub fn kills_in_last_run(log: &str, u: &UnitInfo) -> Vec<String> {
    let (Some(started), Some(exited)) = (u.started_monotonic, u.exited_monotonic) else {
        return Vec::new();
    };
    let from = started.saturating_sub(CLOCK_MARGIN);
    let until = exited + CLOCK_MARGIN;
    kernel_oom_lines(log, &u.name, &[])
        .lines
        .into_iter()
        .filter(|line| stamp(line).is_some_and(|t| t >= from && t <= until))
        .collect()
}

/// The time since boot a `dmesg` line is stamped with (`[ 1234.567890] ...`).
fn stamp(line: &str) -> Option<Duration> {
    let inner = line.trim_start().strip_prefix('[')?;
    let secs: f64 = inner[..inner.find(']')?].trim().parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "agent-worker-marie.service";

    fn killed(started: f64, exited: f64) -> UnitInfo {
        UnitInfo {
            name: UNIT.into(),
            load_state: "loaded".into(),
            active_state: super::super::unit::ActiveState::Failed,
            sub_state: "failed".into(),
            result: ServiceResult::Signal,
            exec_main_status: 9,
            main_pid: None,
            n_restarts: 0,
            started_at: None,
            exited_at: None,
            started_monotonic: Some(Duration::from_secs_f64(started)),
            exited_monotonic: Some(Duration::from_secs_f64(exited)),
            environment: Vec::new(),
            memory_max: Some(64 << 20),
            memory_current: None,
            nofile_limit: None,
            control_group: String::new(),
            job: None,
        }
    }

    fn oom_at(t: f64, cgroup: &str) -> String {
        format!(
            "[{t:>12.6}] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={cgroup},task_memcg={cgroup},task=sample-worker,pid=4242,uid=0\n\
             [{t:>12.6}] Memory cgroup out of memory: Killed process 4242 (sample-worker) total-vm:221080kB\n"
        )
    }

    #[test]
    fn an_oom_kill_in_the_units_cgroup_during_its_run_counts() {
        let cgroup = format!("/docker/abc/system.slice/{UNIT}");
        let log = format!("{}[  101.000000] unrelated\n", oom_at(100.5, &cgroup));
        let u = killed(90.0, 100.6);
        assert!(needs_kernel_log(&u));
        let lines = kills_in_last_run(&log, &u);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("Killed process 4242"));
    }

    #[test]
    fn a_kill_of_an_earlier_run_or_another_unit_does_not() {
        let own = format!("/system.slice/{UNIT}");
        // An earlier run of the same unit, ended long before this one started.
        assert!(kills_in_last_run(&oom_at(50.0, &own), &killed(90.0, 100.0)).is_empty());
        // A unit whose name ends like this one's.
        let other = "/system.slice/x-agent-worker-marie.service";
        assert!(kills_in_last_run(&oom_at(95.0, other), &killed(90.0, 100.0)).is_empty());
        // Within the margin of the exit: the kernel's stamp runs a little ahead.
        assert_eq!(
            kills_in_last_run(&oom_at(101.5, &own), &killed(90.0, 100.0)).len(),
            2
        );
    }

    #[test]
    fn only_a_sigkill_systemd_did_not_explain_needs_the_kernel_log() {
        let mut u = killed(1.0, 2.0);
        u.exec_main_status = 15;
        assert!(!needs_kernel_log(&u), "SIGTERM is no OOM kill");
        let mut u = killed(1.0, 2.0);
        u.result = ServiceResult::OomKill;
        assert!(!needs_kernel_log(&u), "systemd said so itself");
        let mut u = killed(1.0, 2.0);
        u.exited_monotonic = None;
        assert!(!needs_kernel_log(&u));
    }

    #[test]
    fn stamps_are_read_from_dmesg_lines() {
        assert_eq!(
            stamp("[49616.994212] x"),
            Some(Duration::from_micros(49_616_994_212))
        );
        assert_eq!(
            stamp("[    5.100000] x"),
            Some(Duration::from_millis(5_100))
        );
        assert_eq!(stamp("no stamp"), None);
        assert_eq!(stamp("[-1.0] x"), None);
    }
}
