//! The per-worker metrics (`crate::metrics::workers`) from one look at a Worker: its phase,
//! heartbeat, restarts and escalation from the status just computed, its task files counted
//! (at most every [`TASKS_EVERY`], up to [`TASKS_CAP`] per directory), its memory and failure
//! prediction, and the time it took to be Healthy again after a failure.

use std::{path::Path, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::risk::RiskLook;
use crate::{
    confined,
    controller::Context,
    crd::worker::{ResolvedPaths, RiskResource, Worker, WorkerPhase, WorkerStatus},
    metrics::{RiskReading, TaskCounts, WorkerKey, WorkerSnapshot},
};

/// How often a Worker's task files are counted (looks in between keep the last count).
pub const TASKS_EVERY: Duration = Duration::from_secs(30);
/// Entries counted per task directory at most: a directory of millions costs no more.
pub const TASKS_CAP: u64 = 100_000;
/// The condition whose last turn to False is when a failure began.
const READY: &str = "Ready";

/// What one look read besides the status: the Worker's paths (admitted), its prediction.
pub struct Look<'a> {
    pub paths: Option<&'a ResolvedPaths>,
    pub prediction: Option<&'a RiskLook>,
    pub now: Timestamp,
}

/// Record this look at `worker` (its new `status`) in the metrics.
pub async fn record(
    ctx: &Context,
    worker: &Worker,
    previous: Option<&WorkerStatus>,
    status: &WorkerStatus,
    look: Look<'_>,
) {
    let Look {
        paths,
        prediction,
        now,
    } = look;
    let key = WorkerKey::new(worker.namespace().unwrap_or_default(), worker.name_any());
    let before = ctx.metrics.workers.snapshot(&key);
    if before.is_none() {
        ctx.metrics.track(&key);
    }
    let (tasks, counted_at) = match (paths, before.as_ref()) {
        (Some(paths), before) if due(before, now) => (count_tasks(paths).await, Some(now)),
        (Some(_), Some(b)) => (b.tasks, b.tasks_counted_at),
        _ => (None, None),
    };
    let mut snapshot = snapshot(status, worker.spec.heartbeat_timeout_seconds);
    snapshot.tasks = tasks;
    snapshot.tasks_counted_at = counted_at;
    // Descriptors are counted by a run's diagnosis only: the last count stands.
    snapshot.fds = before.as_ref().and_then(|b| b.fds);
    if let Some(p) = prediction {
        snapshot.memory = p.memory;
        snapshot.risk = Some(RiskReading {
            resource: RiskResource::Memory.to_string(),
            at_risk: p.risk.is_some(),
            seconds_to_limit: p.risk.as_ref().map(|r| r.seconds_to_limit),
        });
    }
    if let Some(took) = healed_after(previous, status, now) {
        ctx.metrics.record_healthy_after(&key, took);
    }
    ctx.metrics.workers.observe(key, snapshot);
}

fn due(before: Option<&WorkerSnapshot>, now: Timestamp) -> bool {
    before
        .and_then(|b| b.tasks_counted_at)
        .is_none_or(|at| now.duration_since(at).unsigned_abs() >= TASKS_EVERY)
}

/// The series of a status (tasks and resource readings are added by the caller).
pub fn snapshot(status: &WorkerStatus, heartbeat_timeout_seconds: u32) -> WorkerSnapshot {
    let docker_restarts = status
        .container
        .as_ref()
        .map_or(0, |c| c.docker_restart_count.max(0) as u64);
    WorkerSnapshot {
        phase: status.phase,
        up: status.phase == Some(WorkerPhase::Healthy),
        last_heartbeat: status.last_heartbeat_time.as_ref().map(|t| t.0),
        heartbeat_timeout_seconds,
        restarts: status.restart_count.max(0) as u64 + docker_restarts,
        escalation: status
            .escalation
            .as_ref()
            .map(|e| (e.level_index, e.level.clone())),
        ..Default::default()
    }
}

/// How long the Worker took to be Healthy again, when this look found it Healthy after a
/// failure: from when `Ready` last turned False (kept in the previous status).
pub fn healed_after(
    previous: Option<&WorkerStatus>,
    status: &WorkerStatus,
    now: Timestamp,
) -> Option<Duration> {
    let previous = previous?;
    if status.phase != Some(WorkerPhase::Healthy) || previous.phase == Some(WorkerPhase::Healthy) {
        return None;
    }
    let failed = previous
        .conditions
        .iter()
        .find(|c| c.type_ == READY && c.status == "False")?;
    Some(
        now.duration_since(failed.last_transition_time.0)
            .unsigned_abs(),
    )
}

/// Count the task files of the Worker's directories (blocking reads, off the runtime). A
/// directory that cannot be read counts as none: the metric is a gauge, not a verdict.
async fn count_tasks(paths: &ResolvedPaths) -> Option<TaskCounts> {
    let root = paths.trusted_root.clone();
    let tasks = paths.tasks_dir.clone();
    crate::blocking::run(move || count_in(&root, &tasks))
        .await
        .ok()
}

fn count_in(root: &Path, tasks: &Path) -> TaskCounts {
    let mut counts = TaskCounts::default();
    let mut count = |sub: &str| match confined::count_entries(root, &tasks.join(sub), TASKS_CAP) {
        Ok(Some((n, capped))) => {
            counts.capped |= capped;
            n
        }
        Ok(None) | Err(_) => 0,
    };
    let pending = count("pending");
    let active = count("active");
    let staged = count("staged");
    let failed = count("failed");
    let quarantine = count("quarantine");
    TaskCounts {
        pending,
        active,
        staged,
        failed,
        quarantine,
        ..counts
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::crd::worker::{ContainerSummary, EscalationStatus};

    fn ready(status: &str, at: Timestamp) -> Condition {
        Condition {
            type_: READY.into(),
            status: status.into(),
            last_transition_time: Time(at),
            message: String::new(),
            reason: "Test".into(),
            observed_generation: None,
        }
    }

    #[test]
    fn the_snapshot_adds_both_kinds_of_restart_and_reads_the_escalation() {
        let status = WorkerStatus {
            phase: Some(WorkerPhase::Escalated),
            restart_count: 3,
            container: Some(ContainerSummary {
                docker_restart_count: 2,
                ..Default::default()
            }),
            escalation: Some(EscalationStatus {
                level: "L2".into(),
                level_index: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = snapshot(&status, 30);
        assert_eq!(s.restarts, 5);
        assert!(!s.up);
        assert_eq!(s.escalation, Some((2, "L2".into())));
        assert_eq!(s.heartbeat_timeout_seconds, 30);
    }

    #[test]
    fn healthy_after_a_failure_measures_from_when_ready_turned_false() {
        let now = Timestamp::now();
        let failed_at = now - Duration::from_secs(42);
        let down = WorkerStatus {
            phase: Some(WorkerPhase::Down),
            conditions: vec![ready("False", failed_at)],
            ..Default::default()
        };
        let healthy = WorkerStatus {
            phase: Some(WorkerPhase::Healthy),
            conditions: vec![ready("True", now)],
            ..Default::default()
        };
        assert_eq!(
            healed_after(Some(&down), &healthy, now),
            Some(Duration::from_secs(42))
        );
        // Healthy before, or the first look: nothing to measure.
        assert_eq!(healed_after(Some(&healthy), &healthy, now), None);
        assert_eq!(healed_after(None, &healthy, now), None);
        // Not Healthy yet.
        assert_eq!(healed_after(Some(&down), &down, now), None);
    }

    #[test]
    fn tasks_are_counted_by_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let tasks = tmp.path().join("tasks/w");
        for (sub, n) in [("pending", 3), ("active", 1), ("quarantine", 2)] {
            std::fs::create_dir_all(tasks.join(sub)).unwrap();
            for i in 0..n {
                std::fs::write(tasks.join(sub).join(format!("t{i}.json")), b"{}").unwrap();
            }
        }
        let counts = count_in(tmp.path(), &tasks);
        assert_eq!(
            counts,
            TaskCounts {
                pending: 3,
                active: 1,
                staged: 0,
                failed: 0,
                quarantine: 2,
                capped: false
            }
        );
    }
}
