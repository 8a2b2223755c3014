//! Pure decisions of the Worker controller: from what was observed to health, action and status.

use crate::runtime::ContainerState;
use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

pub use crate::runtime::ContainerObservation;

use crate::{
    controller::conditions::{self, ConditionState, ConditionStatus, Health, Judged},
    crd::worker::{
        ContainerSummary, HeartbeatSummary, HeartbeatTimeSource, PauseSpec, WorkerPhase,
        WorkerStatus,
    },
    observe::heartbeat::{self, Heartbeat, HeartbeatObservation, TimeSource},
    runtime::ContainerInfo,
    trust::{Refusal, RefusalReason},
};

pub const CONTAINER_RUNNING: &str = "ContainerRunning";
pub const HEARTBEAT_FRESH: &str = "HeartbeatFresh";
pub const READY: &str = "Ready";
/// Condition: automatic recovery gave up and the worker is on the escalation path.
pub const ESCALATED: &str = "Escalated";
/// Whether the operator may manage the Worker at all (`crate::trust`).
pub const ACCEPTED: &str = "Accepted";

/// Everything one reconcile observed about a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub container: ContainerObservation,
    /// `None`: not read, as no container consents to this Worker's files being read.
    pub heartbeat: Option<HeartbeatObservation>,
    pub now: Timestamp,
}

/// The worker's health as judged from an observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub phase: WorkerPhase,
    pub container_running: ConditionState,
    pub heartbeat_fresh: ConditionState,
    pub ready: ConditionState,
    /// Set when the worker is escalated (`escalated`).
    pub escalated: Option<ConditionState>,
}

/// Judge the worker's health.
pub fn assess(obs: &Observation, heartbeat_timeout: Duration) -> Assessment {
    // A file-only Worker (no container, its files read by grant) is judged by its heartbeat.
    let file_only =
        matches!(obs.container, ContainerObservation::NotFound) && obs.heartbeat.is_some();
    let container_running = if file_only {
        ConditionState {
            type_: CONTAINER_RUNNING,
            status: ConditionStatus::Unknown,
            reason: "FileOnly",
            message: "no container: a file-only Worker is judged by its heartbeat".into(),
        }
    } else {
        container_condition(&obs.container)
    };
    let heartbeat_fresh = heartbeat_condition(obs.heartbeat.as_ref(), obs.now, heartbeat_timeout);
    let container_ok = file_only || container_running.status == ConditionStatus::True;
    let phase = match (&obs.container, container_ok, heartbeat_fresh.status) {
        (ContainerObservation::Unavailable(_), _, _) => WorkerPhase::Unknown,
        (_, true, ConditionStatus::True) => WorkerPhase::Healthy,
        (_, true, _) => WorkerPhase::Degraded,
        _ => WorkerPhase::Down,
    };
    let ready = match phase {
        WorkerPhase::Healthy => ConditionState {
            type_: READY,
            status: ConditionStatus::True,
            reason: "WorkerHealthy",
            message: "container running and heartbeat fresh".into(),
        },
        WorkerPhase::Unknown => ConditionState {
            type_: READY,
            status: ConditionStatus::Unknown,
            reason: "ObservationFailed",
            message: container_running.message.clone(),
        },
        _ => {
            let failing = if container_ok {
                &heartbeat_fresh
            } else {
                &container_running
            };
            ConditionState {
                type_: READY,
                status: ConditionStatus::False,
                reason: failing.reason,
                message: failing.message.clone(),
            }
        }
    };
    Assessment {
        phase,
        container_running,
        heartbeat_fresh,
        ready,
        escalated: None,
    }
}

fn container_condition(container: &ContainerObservation) -> ConditionState {
    let (status, reason, message) = match container {
        ContainerObservation::Unavailable(e) => (
            ConditionStatus::Unknown,
            "DockerUnavailable",
            format!("cannot inspect the container: {e}"),
        ),
        ContainerObservation::NotFound => (
            ConditionStatus::False,
            "ContainerNotFound",
            "no such container on this host".to_string(),
        ),
        ContainerObservation::Found(c) if c.status == ContainerState::Paused => (
            ConditionStatus::False,
            "Paused",
            format!("container {} is paused", c.name),
        ),
        ContainerObservation::Found(c) if c.status == ContainerState::Restarting => (
            ConditionStatus::False,
            "Restarting",
            format!("Docker's restart policy is restarting container {}", c.name),
        ),
        ContainerObservation::Found(c) if c.running => (
            ConditionStatus::True,
            "Running",
            format!("container {} ({}) is running", c.name, c.short_id()),
        ),
        ContainerObservation::Found(c) => (
            ConditionStatus::False,
            if c.oom_killed { "OOMKilled" } else { "Exited" },
            exit_description(c),
        ),
    };
    ConditionState {
        type_: CONTAINER_RUNNING,
        status,
        reason,
        message,
    }
}

/// "container marie exited with code 137 (OOM-killed) at 2026-..."
pub fn exit_description(c: &ContainerInfo) -> String {
    let mut text = format!("container {} is {}", c.name, c.status);
    if let Some(code) = c.exit_code {
        text.push_str(&format!(", exit code {code}"));
    }
    if c.oom_killed {
        text.push_str(", killed by the OOM killer");
    }
    if let Some(at) = c.finished_at {
        text.push_str(&format!(", since {at}"));
    }
    text
}

fn heartbeat_condition(
    heartbeat: Option<&HeartbeatObservation>,
    now: Timestamp,
    timeout: Duration,
) -> ConditionState {
    let Some(heartbeat) = heartbeat else {
        return ConditionState {
            type_: HEARTBEAT_FRESH,
            status: ConditionStatus::Unknown,
            reason: "NotRead",
            message: "the heartbeat is read only while the Worker's container exists and consents"
                .into(),
        };
    };
    let (status, reason, message) = match heartbeat {
        HeartbeatObservation::Missing => (
            ConditionStatus::False,
            "HeartbeatMissing",
            "no heartbeat file".to_string(),
        ),
        HeartbeatObservation::Unreadable(e) => {
            (ConditionStatus::False, "HeartbeatUnreadable", e.clone())
        }
        HeartbeatObservation::Invalid(e) => (ConditionStatus::False, "HeartbeatInvalid", e.clone()),
        HeartbeatObservation::Present(hb) => {
            let judged = heartbeat::freshness(hb.at, now, timeout);
            let source = match hb.source {
                TimeSource::Content { .. } => String::new(),
                TimeSource::FileModified => match &hb.issue {
                    Some(issue) => format!(" (by the file's modification time; {issue})"),
                    None => " (by the file's modification time)".to_string(),
                },
            };
            // No age in the message: it would change at every look, and so would the status
            // (lastHeartbeatTime has the time; the stale message names the heartbeat's time).
            if judged.fresh {
                (
                    ConditionStatus::True,
                    "HeartbeatFresh",
                    format!(
                        "the worker heartbeats within the {}s timeout{source}",
                        timeout.as_secs()
                    ),
                )
            } else {
                (
                    ConditionStatus::False,
                    "HeartbeatStale",
                    format!(
                        "no heartbeat since {}, over the {}s timeout{source}",
                        hb.at,
                        timeout.as_secs()
                    ),
                )
            }
        }
    };
    ConditionState {
        type_: HEARTBEAT_FRESH,
        status,
        reason,
        message,
    }
}

/// A restart the controller performed during this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct RestartRecord {
    pub at: Timestamp,
}

/// The status to write, from the previous one, the observation and what was done.
pub fn next_status(
    previous: Option<&WorkerStatus>,
    generation: Option<i64>,
    obs: &Observation,
    assessment: &Assessment,
    restart: Option<&RestartRecord>,
) -> WorkerStatus {
    let previous_conditions = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let conditions = conditions::merge(
        previous_conditions,
        &[
            accepted_condition(&obs.container, obs.heartbeat.is_some()),
            assessment.container_running.clone(),
            assessment.heartbeat_fresh.clone(),
            assessment.ready.clone(),
            assessment.escalated.clone().unwrap_or(ConditionState {
                type_: ESCALATED,
                status: ConditionStatus::False,
                reason: "NotEscalated",
                message: "automatic recovery has not given up".into(),
            }),
        ],
        generation,
        obs.now,
    );
    let (last_heartbeat_time, heartbeat) = match &obs.heartbeat {
        Some(HeartbeatObservation::Present(hb)) => (Some(Time(hb.at)), Some(summarize(hb))),
        // Keep what we knew: the column then shows how long the worker has been silent.
        _ => (
            previous.and_then(|s| s.last_heartbeat_time.clone()),
            previous.and_then(|s| s.heartbeat.clone()),
        ),
    };
    let container = container_summary(&obs.container, previous);
    let previous_restarts = previous.map(|s| s.restart_count).unwrap_or(0);
    let last_progress_time = last_progress_time(previous, &obs.heartbeat, heartbeat.as_ref());
    WorkerStatus {
        phase: Some(assessment.phase),
        conditions,
        observed_generation: generation,
        last_heartbeat_time,
        heartbeat,
        container,
        restart_count: previous_restarts + i32::from(restart.is_some()),
        last_restart_time: restart
            .map(|r| Time(r.at))
            .or_else(|| previous.and_then(|s| s.last_restart_time.clone())),
        last_progress_time,
        last_observed_time: Some(Time(obs.now)),
        paused: None,
        // The policy's record is carried over; the reconcile updates it.
        auto_recovery: previous.and_then(|s| s.auto_recovery.clone()),
        escalation: previous.and_then(|s| s.escalation.clone()),
        drift: previous.map(|s| s.drift.clone()).unwrap_or_default(),
        // Kept while the Worker is blind (its container briefly gone); the reconcile records
        // it anew when the Worker is admitted.
        claim: previous.and_then(|s| s.claim.clone()),
        // The reconcile sets it from this look's prediction.
        at_risk: None,
        // Carried over; the reconcile advances it (`crate::postmortem::timeline`).
        incident: previous.and_then(|s| s.incident.clone()),
        incidents_total: previous.map_or(0, |s| s.incidents_total),
    }
}

/// What the status shows of the container: as observed, `notFound`, or (while the engine
/// cannot say) what it showed before.
fn container_summary(
    container: &ContainerObservation,
    previous: Option<&WorkerStatus>,
) -> Option<ContainerSummary> {
    match container {
        ContainerObservation::Found(c) => Some(ContainerSummary {
            id: Some(c.short_id().to_string()),
            state: c.status.to_string(),
            exit_code: (!c.running).then_some(c.exit_code).flatten(),
            oom_killed: c.oom_killed,
            started_at: c.started_at.map(Time),
            finished_at: if c.running {
                None
            } else {
                c.finished_at.map(Time)
            },
            image: c.image.clone(),
            docker_restart_count: c.restart_count,
        }),
        ContainerObservation::NotFound => Some(ContainerSummary {
            state: "notFound".into(),
            ..Default::default()
        }),
        ContainerObservation::Unavailable(_) => previous.and_then(|s| s.container.clone()),
    }
}

/// When the worker last made progress. Progress is the pair (progress counter, current task):
/// a change of either is progress, timed by the heartbeat that shows it.
fn last_progress_time(
    previous: Option<&WorkerStatus>,
    observed: &Option<HeartbeatObservation>,
    heartbeat: Option<&HeartbeatSummary>,
) -> Option<Time> {
    let previous_progress = previous
        .and_then(|s| s.heartbeat.as_ref())
        .map(|h| (h.progress, h.current_task.clone()));
    let current_progress = heartbeat.map(|h| (h.progress, h.current_task.clone()));
    match (
        observed,
        previous.and_then(|s| s.last_progress_time.clone()),
    ) {
        (Some(HeartbeatObservation::Present(_)), Some(t))
            if previous_progress == current_progress =>
        {
            Some(t)
        }
        (Some(HeartbeatObservation::Present(hb)), _) => Some(Time(hb.at)),
        (_, kept) => kept,
    }
}

/// `Accepted`: whether the operator may read and change the Worker's files. `files_read`
/// says whether they were (a consenting container, or a file-only grant).
pub(super) fn accepted_condition(
    container: &ContainerObservation,
    files_read: bool,
) -> ConditionState {
    let (status, reason, message) = match (container, files_read) {
        (ContainerObservation::Found(_), _) => (
            ConditionStatus::True,
            "Accepted",
            "the shared root is inside an allowed root; its container carries the consent label",
        ),
        (ContainerObservation::NotFound, true) => (
            ConditionStatus::True,
            "FileOnly",
            "the shared root is inside an allowed root; the operator's administrator lets this Worker's files be reached without a container",
        ),
        (ContainerObservation::NotFound, false) => (
            ConditionStatus::False,
            "ContainerNotFound",
            "its container does not exist: a Worker's files are read and changed only while its container consents (label workerrecovery.io/worker)",
        ),
        (ContainerObservation::Unavailable(_), _) => (
            ConditionStatus::Unknown,
            "ContainerStateUnknown",
            "the Docker engine cannot say whether its container exists and consents; nothing is read or changed until it can",
        ),
    };
    ConditionState {
        type_: ACCEPTED,
        status,
        reason,
        message: message.to_string(),
    }
}

/// Most characters of a heartbeat's text fields kept in status: the file is the worker's,
/// up to 64 KiB, and must not fill the Worker object.
const MAX_HEARTBEAT_TEXT: usize = 256;

/// The heartbeat as status shows it.
fn summarize(hb: &Heartbeat) -> HeartbeatSummary {
    let clip = |s: &String| crate::bounded::clip(s, MAX_HEARTBEAT_TEXT);
    let (time_source, time_field) = match hb.source {
        TimeSource::Content { field } => (HeartbeatTimeSource::Content, Some(field.to_string())),
        TimeSource::FileModified => (HeartbeatTimeSource::FileModified, None),
    };
    HeartbeatSummary {
        status: hb.status.as_ref().map(clip),
        current_task: hb.current_task.as_ref().map(clip),
        progress: hb.progress,
        time_source: Some(time_source),
        time_field,
        content_issue: hb.issue.as_ref().map(|i| clip(&i.to_string())),
    }
}

/// The status of a Worker the operator may not manage: `Accepted=False`, `Ready=False` and
/// `Stalled=True` with the refusal's reason, phase `Refused`, and nothing observed: what an earlier, accepted
/// observation wrote about files or the container is dropped, and a container that exists is
/// reported only as existing.
pub fn refused_status(
    previous: Option<&WorkerStatus>,
    generation: Option<i64>,
    refusal: &Refusal,
    now: Timestamp,
) -> WorkerStatus {
    let reason = refusal.reason.as_str();
    // A human must lift the refusal: Stalled (kstatus Failed).
    let [reconciling, stalled] =
        Judged::new(Health::Failed, reason, refusal.message.clone()).progress();
    let conditions = conditions::merge(
        previous
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default(),
        &[
            ConditionState {
                type_: ACCEPTED,
                status: ConditionStatus::False,
                reason,
                message: refusal.message.clone(),
            },
            ConditionState {
                type_: READY,
                status: ConditionStatus::False,
                reason,
                message: refusal.message.clone(),
            },
            reconciling,
            stalled,
        ],
        generation,
        now,
    );
    let container = (refusal.reason == RefusalReason::NotManaged).then(|| ContainerSummary {
        state: "notManaged".into(),
        ..Default::default()
    });
    WorkerStatus {
        phase: Some(WorkerPhase::Refused),
        conditions,
        observed_generation: generation,
        container,
        // What the operator did is history, not an observation: it stays.
        restart_count: previous.map(|s| s.restart_count).unwrap_or(0),
        last_restart_time: previous.and_then(|s| s.last_restart_time.clone()),
        incidents_total: previous.map_or(0, |s| s.incidents_total),
        last_observed_time: Some(Time(now)),
        ..Default::default()
    }
}

/// Status is written when something a reader acts on changed, and else at least this often,
/// so that `lastObservedTime` and `lastHeartbeatTime` stay recent without a write at every look
/// (as kubelet reports an unchanged node status every 5 minutes).
pub const STATUS_REFRESH: Duration = Duration::from_secs(300);

/// Whether `next` is worth writing over `previous`: it differs in more than the times of the
/// last look and the last heartbeat, or the last write is `refresh` old (by default
/// [`STATUS_REFRESH`]).
pub fn worth_writing(
    previous: Option<&WorkerStatus>,
    next: &WorkerStatus,
    refresh: Duration,
) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    let without_times = |s: &WorkerStatus| WorkerStatus {
        last_observed_time: None,
        last_heartbeat_time: None,
        ..s.clone()
    };
    if without_times(previous) != without_times(next) {
        return true;
    }
    match (&previous.last_observed_time, &next.last_observed_time) {
        (Some(before), Some(now)) => now.0.duration_since(before.0).unsigned_abs() >= refresh,
        _ => true,
    }
}

/// How soon to look again: often enough to see a heartbeat go stale close to its timeout.
pub fn requeue_interval(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// What failed, for the automatic recovery policy: a container that stopped (`exited`, or
/// `created` and never started; a paused one was paused on purpose, a restarting one is
/// Docker's own policy at work), or a running container whose last heartbeat, and its start,
/// are both older than the timeout (a hang: the worker stopped writing it).
pub fn failure(obs: &Observation, heartbeat_timeout: Duration) -> Option<FailureKind> {
    let ContainerObservation::Found(c) = &obs.container else {
        return None;
    };
    if !c.running {
        return matches!(c.status, ContainerState::Exited | ContainerState::Created).then(|| {
            FailureKind::Stopped {
                state: c.status,
                exit_code: c.exit_code,
                oom_killed: c.oom_killed,
            }
        });
    }
    let Some(HeartbeatObservation::Present(hb)) = &obs.heartbeat else {
        return None;
    };
    let stale = !heartbeat::freshness(hb.at, obs.now, heartbeat_timeout).fresh;
    let started_long_ago = c
        .started_at
        .is_none_or(|s| !heartbeat::freshness(s, obs.now, heartbeat_timeout).fresh);
    (stale && started_long_ago).then(|| FailureKind::Hung {
        heartbeat_age: obs.now.duration_since(hb.at).unsigned_abs(),
        timeout: heartbeat_timeout,
    })
}

/// A failure the policy acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The container is not running (`exited`, or `created` and never started): start it.
    Stopped {
        state: ContainerState,
        exit_code: Option<i64>,
        oom_killed: bool,
    },
    /// The container runs but the worker is hung (its heartbeat is this old): restart it.
    Hung {
        heartbeat_age: Duration,
        timeout: Duration,
    },
}

impl FailureKind {
    /// What triggered the attempt, for humans: `exit code 3`, `OOM-killed (exit code 137)`,
    /// `heartbeat missed: ...`.
    pub fn trigger(&self) -> String {
        match self {
            Self::Stopped {
                oom_killed: true,
                exit_code: Some(code),
                ..
            } => format!("OOM-killed (exit code {code})"),
            Self::Stopped {
                oom_killed: true, ..
            } => "OOM-killed".to_string(),
            Self::Stopped {
                state: ContainerState::Exited,
                exit_code: Some(code),
                ..
            } => format!("exit code {code}"),
            Self::Stopped { state, .. } => format!("container {state}"),
            Self::Hung {
                heartbeat_age,
                timeout,
            } => format!(
                "heartbeat missed: the last one is {}s old (timeout {}s)",
                heartbeat_age.as_secs(),
                timeout.as_secs()
            ),
        }
    }

    /// The worker exited with 127, a shell's "command not found": a missing dependency.
    pub fn command_not_found(&self) -> bool {
        matches!(
            self,
            Self::Stopped {
                exit_code: Some(127),
                oom_killed: false,
                ..
            }
        )
    }
}

/// Of the cached object's status and the one this process wrote last, the newer (by
/// `lastObservedTime`, which every write sets).
pub fn newest_status<'a>(
    cached: Option<&'a WorkerStatus>,
    written: Option<&'a WorkerStatus>,
) -> Option<&'a WorkerStatus> {
    let time =
        |s: Option<&WorkerStatus>| s.and_then(|s| s.last_observed_time.as_ref()).map(|t| t.0);
    match (cached, written) {
        (Some(c), Some(w)) if time(Some(w)) > time(Some(c)) => Some(w),
        (None, w) => w,
        (c, _) => c,
    }
}

/// An escalated worker: phase `Escalated`, and `Ready` says where it stands on the path.
pub fn escalated(assessment: &mut Assessment, e: &crate::crd::worker::EscalationStatus) {
    if assessment.phase == WorkerPhase::Healthy {
        return;
    }
    assessment.escalated = Some(ConditionState {
        type_: ESCALATED,
        status: ConditionStatus::True,
        reason: "AutoRecoveryGaveUp",
        message: format!(
            "level {} (#{}) since {}: {}",
            e.level,
            e.level_index + 1,
            e.level_time
                .as_ref()
                .map_or("an unknown time".to_string(), |t| t.0.to_string()),
            e.reason
        ),
    });
    assessment.phase = WorkerPhase::Escalated;
    assessment.ready = ConditionState {
        type_: READY,
        status: ConditionStatus::False,
        reason: "Escalated",
        message: format!(
            "automatic recovery gave up; escalation level {}: {}",
            e.level, e.reason
        ),
    };
}

/// The pause in force at `now`: `spec.autoRecovery.pause` without an end, or with one still
/// ahead.
pub fn active_pause(pause: Option<&PauseSpec>, now: Timestamp) -> Option<&PauseSpec> {
    pause.filter(|p| p.until.as_ref().is_none_or(|until| until.0 > now))
}

/// Safety net: every Worker is looked at least this often even when nothing happens.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How far past a heartbeat's deadline the controller looks, so that the look finds it stale.
const PAST_DEADLINE: Duration = Duration::from_millis(20);

/// When to look at the Worker again, when no Docker event comes first.
///
/// * A running container with a fresh heartbeat: just after that heartbeat's deadline. If the
///   worker wrote a newer one meanwhile, the look finds it fresh and sets the next deadline;
///   if not, the look marks it stale within [`PAST_DEADLINE`].
/// * A running container without a fresh heartbeat: polled (a new heartbeat is a file write,
///   which sends no event).
/// * A container that is not running, or missing: the event stream says when that changes;
///   only the safety net.
pub fn next_look(obs: &Observation, heartbeat_timeout: Duration) -> Duration {
    let poll = requeue_interval(heartbeat_timeout);
    let running = match &obs.container {
        ContainerObservation::Found(c) => c.running,
        // A file-only Worker (its files read without a container): its heartbeat is all there
        // is to watch, so it is watched like a running worker's.
        ContainerObservation::NotFound => obs.heartbeat.is_some(),
        ContainerObservation::Unavailable(_) => return poll,
    };
    if !running {
        return RESYNC;
    }
    match &obs.heartbeat {
        Some(HeartbeatObservation::Present(hb)) => {
            let f = heartbeat::freshness(hb.at, obs.now, heartbeat_timeout);
            if !f.fresh {
                return poll;
            }
            let until_deadline =
                heartbeat_timeout.saturating_sub(f.age.try_into().unwrap_or(Duration::ZERO));
            (until_deadline + PAST_DEADLINE).min(RESYNC)
        }
        _ => poll,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{observe::heartbeat::ContentIssue, runtime::RuntimeError};

    const NOW: i64 = 1_795_823_941;

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    fn container(status: &str, running: bool) -> Box<ContainerInfo> {
        Box::new(ContainerInfo {
            id: "0123456789abcdef0123".into(),
            name: "marie".into(),
            image: Some("wro-sample-worker:dev".into()),
            status: ContainerState::from_word(status),
            running,
            exit_code: Some(if running { 0 } else { 3 }),
            oom_killed: false,
            pid: running.then_some(42),
            started_at: Some(Timestamp::from_second(NOW - 100).unwrap()),
            finished_at: (!running).then(|| Timestamp::from_second(NOW - 10).unwrap()),
            restart_count: 0,
            ..Default::default()
        })
    }

    fn beat(age_secs: i64) -> HeartbeatObservation {
        HeartbeatObservation::Present(Heartbeat {
            at: Timestamp::from_second(NOW - age_secs).unwrap(),
            source: TimeSource::Content { field: "timestamp" },
            status: Some("working".into()),
            current_task: Some("t1".into()),
            progress: Some(7),
            issue: None,
        })
    }

    #[test]
    fn the_worst_worker_status_stays_far_below_the_object_size_limit() {
        use crate::{
            bounded::json_len,
            crd::worker::{
                AttemptRecord, AutoRecoveryStatus, DriftItem, EscalationStatus, FailoverStatus,
                NotificationStatus,
            },
            recover::{failover, poison},
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        // Names and texts that JSON escapes six-fold, as long as the code lets them be.
        let esc = |n: usize| "\u{1}".repeat(n);
        let name = |i: usize, len: usize| format!("{i:04}{}.json", esc(len - 9));
        let text = esc(64 * 1024);
        let hb = Heartbeat {
            at: now(),
            source: TimeSource::Content { field: "timestamp" },
            status: Some(text.clone()),
            current_task: Some(text.clone()),
            progress: Some(u64::MAX),
            issue: Some(ContentIssue::Corrupt(text.clone())),
        };
        let active: Vec<String> = (0..2000).map(|i| name(i, 255)).collect();
        let (counts, _) = poison::count_crash(&Default::default(), &active, 0);
        let mut used = 0;
        let batch = (0..100)
            .map(|i| name(i, 200))
            .take_while(|n| {
                used += json_len(n);
                used <= failover::MAX_BATCH_NAME_BYTES
            })
            .collect();
        let k = "k".repeat(1024);
        let condition = |t: &str| Condition {
            type_: t.into(),
            status: "False".into(),
            reason: "Reason".into(),
            message: k.clone(),
            last_transition_time: Time(now()),
            observed_generation: Some(i64::MAX),
        };
        let status = WorkerStatus {
            conditions: ["Accepted", "ContainerRunning", "HeartbeatFresh", "Ready"]
                .map(condition)
                .into(),
            heartbeat: Some(summarize(&hb)),
            auto_recovery: Some(AutoRecoveryStatus {
                attempts: (0..crate::controller::worker::policy::MAX_ATTEMPT_RECORDS)
                    // Runs are `<worker>-auto-<n>` (253 at most); triggers (`exit code 3`,
                    // `heartbeat missed`) and remediations (`memory 256Mi -> 384Mi`) are
                    // the operator's own short texts.
                    .map(|_| AttemptRecord {
                        time: Time(now()),
                        run: "r".repeat(253),
                        trigger: "t".repeat(64),
                        remediation: Some("m".repeat(128)),
                    })
                    .collect(),
                waiting_reason: Some(k.clone()),
                handled_failure: Some(k.clone()),
                task_crash_counts: counts,
                // The last 50, names of at most 200 bytes (`quarantine_poison` refuses more).
                poisoned_tasks: (0..50).map(|i| name(i, 200)).collect(),
                ..Default::default()
            }),
            escalation: Some(EscalationStatus {
                level: k.clone(),
                reason: k.clone(),
                notification: Some(NotificationStatus {
                    last_error: Some(k.clone()),
                    ..Default::default()
                }),
                failover: Some(FailoverStatus {
                    batch,
                    message: Some(k.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            drift: (0..6)
                .map(|_| DriftItem {
                    field: "memorySwap".into(),
                    declared: k.clone(),
                    actual: k.clone(),
                })
                .collect(),
            // A shared root and a path of 1024 characters each (the schema's limits).
            claim: Some(crate::crd::worker::PathClaim {
                since: Some(Time(now())),
                task_directory: esc(2048),
                state_file: esc(2048),
                heartbeat_file: esc(2048),
                tmp_directory: esc(2048),
                locks_directory: esc(2048),
                worker_name: esc(253),
                core_dump_directory: Some(esc(2048)),
            }),
            ..Default::default()
        };
        let len = serde_json::to_vec(&status).unwrap().len();
        eprintln!("worst Worker status: {len} bytes");
        assert!(len < 256 * 1024, "{len}");
    }

    fn obs(container: ContainerObservation, heartbeat: HeartbeatObservation) -> Observation {
        Observation {
            container,
            heartbeat: Some(heartbeat),
            now: now(),
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn the_next_look_is_just_past_the_heartbeat_deadline_or_left_to_events() {
        let running = || ContainerObservation::Found(container("running", true));
        // 5 s old against 30 s: the deadline is in 25 s.
        assert_eq!(
            next_look(&obs(running(), beat(5)), TIMEOUT),
            Duration::from_secs(25) + PAST_DEADLINE
        );
        // Stale or missing: polled, since a new heartbeat sends no event.
        assert_eq!(
            next_look(&obs(running(), beat(31)), TIMEOUT),
            requeue_interval(TIMEOUT)
        );
        assert_eq!(
            next_look(&obs(running(), HeartbeatObservation::Missing), TIMEOUT),
            requeue_interval(TIMEOUT)
        );
        // Not running or gone: the event stream says when that changes.
        let exited = ContainerObservation::Found(container("exited", false));
        assert_eq!(next_look(&obs(exited, beat(5)), TIMEOUT), RESYNC);
        // A file-only Worker (no container, its heartbeat read) is watched by its heartbeat.
        assert_eq!(
            next_look(&obs(ContainerObservation::NotFound, beat(5)), TIMEOUT),
            Duration::from_secs(25) + PAST_DEADLINE
        );
        let gone = Observation {
            heartbeat: None,
            ..obs(ContainerObservation::NotFound, beat(5))
        };
        assert_eq!(next_look(&gone, TIMEOUT), RESYNC);
        // A long timeout is capped by the safety net; a heartbeat from the future counts from now.
        assert_eq!(
            next_look(&obs(running(), beat(5)), Duration::from_secs(3600)),
            RESYNC
        );
        assert_eq!(
            next_look(&obs(running(), beat(-3)), TIMEOUT),
            TIMEOUT + PAST_DEADLINE
        );
    }

    #[test]
    fn running_with_fresh_heartbeat_is_healthy() {
        let a = assess(
            &obs(
                ContainerObservation::Found(container("running", true)),
                beat(5),
            ),
            TIMEOUT,
        );
        assert_eq!(a.phase, WorkerPhase::Healthy);
        assert_eq!(a.ready.status, ConditionStatus::True);
        assert_eq!(a.heartbeat_fresh.reason, "HeartbeatFresh");
    }

    #[test]
    fn running_with_stale_or_bad_heartbeat_is_degraded() {
        for hb in [
            beat(31),
            HeartbeatObservation::Missing,
            HeartbeatObservation::Invalid("x".into()),
            HeartbeatObservation::Unreadable("y".into()),
        ] {
            let a = assess(
                &obs(
                    ContainerObservation::Found(container("running", true)),
                    hb.clone(),
                ),
                TIMEOUT,
            );
            assert_eq!(a.phase, WorkerPhase::Degraded, "{hb:?}");
            assert_eq!(a.heartbeat_fresh.status, ConditionStatus::False);
            assert_eq!(a.ready.reason, a.heartbeat_fresh.reason);
        }
        let a = assess(
            &obs(
                ContainerObservation::Found(container("running", true)),
                beat(31),
            ),
            TIMEOUT,
        );
        assert_eq!(a.heartbeat_fresh.reason, "HeartbeatStale");
        assert!(
            a.heartbeat_fresh.message.contains("no heartbeat since")
                && a.heartbeat_fresh.message.contains("over the 30s timeout"),
            "{}",
            a.heartbeat_fresh.message
        );
    }

    #[test]
    fn a_heartbeat_without_time_is_judged_by_the_file_and_says_so() {
        let by_file = |age_secs: i64, issue: Option<ContentIssue>| {
            HeartbeatObservation::Present(Heartbeat {
                at: Timestamp::from_second(NOW - age_secs).unwrap(),
                source: TimeSource::FileModified,
                status: Some("ok".into()),
                current_task: None,
                progress: None,
                issue,
            })
        };
        let running = || ContainerObservation::Found(container("running", true));
        let o = obs(running(), by_file(1, None));
        let a = assess(&o, TIMEOUT);
        assert_eq!(a.phase, WorkerPhase::Healthy);
        assert!(a.heartbeat_fresh.message.contains("modification time"));
        let status = next_status(None, Some(1), &o, &a, None);
        let hb = status.heartbeat.unwrap();
        assert_eq!(hb.time_source, Some(HeartbeatTimeSource::FileModified));
        assert_eq!(hb.time_field, None);
        assert_eq!(
            status.last_heartbeat_time,
            Some(Time(Timestamp::from_second(NOW - 1).unwrap()))
        );

        // Corrupt content rewritten a second ago: fresh, and the issue is reported.
        let o = obs(
            running(),
            by_file(1, Some(ContentIssue::Corrupt("eof".into()))),
        );
        let a = assess(&o, TIMEOUT);
        assert_eq!(a.heartbeat_fresh.status, ConditionStatus::True);
        let status = next_status(None, Some(1), &o, &a, None);
        assert!(status
            .heartbeat
            .unwrap()
            .content_issue
            .unwrap()
            .contains("eof"));
        // An old file is stale whatever its content.
        let a = assess(&obs(running(), by_file(31, None)), TIMEOUT);
        assert_eq!(a.heartbeat_fresh.reason, "HeartbeatStale");
    }

    #[test]
    fn a_refused_worker_shows_nothing_it_observed_before() {
        let o = obs(
            ContainerObservation::Found(container("running", true)),
            beat(2),
        );
        let before = next_status(None, Some(1), &o, &assess(&o, TIMEOUT), None);
        assert!(before.heartbeat.is_some() && before.container.is_some());
        let accepted = before
            .conditions
            .iter()
            .find(|c| c.type_ == ACCEPTED)
            .unwrap();
        assert_eq!(accepted.status, "True");

        let refusal = Refusal {
            reason: RefusalReason::NotManaged,
            message: "container \"marie\" exists but does not carry the label".into(),
        };
        let refused = refused_status(Some(&before), Some(2), &refusal, now());
        assert_eq!(refused.phase, Some(WorkerPhase::Refused));
        assert_eq!(refused.heartbeat, None);
        assert_eq!(refused.last_heartbeat_time, None);
        let container = refused.container.unwrap();
        assert_eq!(container.state, "notManaged");
        assert_eq!(container.id, None);
        assert_eq!(container.image, None);
        for type_ in [ACCEPTED, READY] {
            let c = refused
                .conditions
                .iter()
                .find(|c| c.type_ == type_)
                .unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "NotManaged")
            );
        }

        let refusal = Refusal {
            reason: RefusalReason::SharedRootNotAllowed,
            message: "not inside".into(),
        };
        let refused = refused_status(Some(&before), Some(2), &refusal, now());
        assert_eq!(refused.container, None, "nothing about the container");
    }

    #[test]
    fn heartbeat_from_a_clock_ahead_counts_as_fresh() {
        let a = assess(
            &obs(
                ContainerObservation::Found(container("running", true)),
                beat(-20),
            ),
            TIMEOUT,
        );
        assert_eq!(a.phase, WorkerPhase::Healthy);
    }

    #[test]
    fn exited_missing_paused_restarting_are_down() {
        let mut oom = container("exited", false);
        oom.oom_killed = true;
        oom.exit_code = Some(137);
        for (c, reason) in [
            (
                ContainerObservation::Found(container("exited", false)),
                "Exited",
            ),
            (ContainerObservation::Found(oom), "OOMKilled"),
            (ContainerObservation::NotFound, "ContainerNotFound"),
            (
                ContainerObservation::Found(container("paused", true)),
                "Paused",
            ),
            (
                ContainerObservation::Found(container("restarting", false)),
                "Restarting",
            ),
        ] {
            let mut o = obs(c, beat(1));
            if o.container == ContainerObservation::NotFound {
                // Without a container nothing of the files is read.
                o.heartbeat = None;
            }
            let a = assess(&o, TIMEOUT);
            assert_eq!(a.phase, WorkerPhase::Down, "{reason}");
            assert_eq!(a.container_running.reason, reason);
            assert_eq!(
                a.ready.reason, reason,
                "Ready names the first failing check"
            );
        }
    }

    #[test]
    fn a_file_only_worker_is_judged_by_its_heartbeat() {
        let fresh = assess(&obs(ContainerObservation::NotFound, beat(1)), TIMEOUT);
        assert_eq!(fresh.phase, WorkerPhase::Healthy);
        assert_eq!(fresh.container_running.reason, "FileOnly");
        let stale = assess(&obs(ContainerObservation::NotFound, beat(31)), TIMEOUT);
        assert_eq!(stale.phase, WorkerPhase::Degraded);
        assert_eq!(
            stale.ready.reason, "HeartbeatStale",
            "Ready names the heartbeat"
        );
    }

    #[test]
    fn docker_unreachable_is_unknown() {
        let a = assess(
            &obs(
                ContainerObservation::Unavailable(RuntimeError::unavailable(
                    crate::runtime::RuntimeKind::Docker,
                    "socket",
                )),
                beat(1),
            ),
            TIMEOUT,
        );
        assert_eq!(a.phase, WorkerPhase::Unknown);
        assert_eq!(a.container_running.status, ConditionStatus::Unknown);
        assert_eq!(
            a.container_running.message,
            "cannot inspect the container: Docker engine unreachable: socket"
        );
        assert_eq!(a.ready.status, ConditionStatus::Unknown);
    }

    #[test]
    fn a_stopped_container_or_a_hang_is_a_failure() {
        let exited = obs(
            ContainerObservation::Found(container("exited", false)),
            beat(5),
        );
        let stopped = failure(&exited, TIMEOUT).unwrap();
        assert_eq!(stopped.trigger(), "exit code 3");
        assert!(!stopped.command_not_found());
        let mut oom = container("exited", false);
        oom.oom_killed = true;
        oom.exit_code = Some(137);
        assert_eq!(
            failure(&obs(ContainerObservation::Found(oom), beat(5)), TIMEOUT)
                .unwrap()
                .trigger(),
            "OOM-killed (exit code 137)"
        );
        // Running for 100 s with a 31 s old heartbeat: hung.
        let hung = obs(
            ContainerObservation::Found(container("running", true)),
            beat(31),
        );
        assert!(
            matches!(failure(&hung, TIMEOUT), Some(f @ FailureKind::Hung { .. }) if f.trigger().contains("31s old"))
        );
        // Just restarted: its old heartbeat is not a hang yet.
        let mut fresh_start = container("running", true);
        fresh_start.started_at = Some(Timestamp::from_second(NOW - 2).unwrap());
        assert_eq!(
            failure(
                &obs(ContainerObservation::Found(fresh_start), beat(31)),
                TIMEOUT
            ),
            None
        );
        let healthy = obs(
            ContainerObservation::Found(container("running", true)),
            beat(5),
        );
        assert_eq!(failure(&healthy, TIMEOUT), None);
        // No heartbeat file at all is not taken for a hang (the path may be wrong).
        let silent = obs(
            ContainerObservation::Found(container("running", true)),
            HeartbeatObservation::Missing,
        );
        assert_eq!(failure(&silent, TIMEOUT), None);
        assert_eq!(
            failure(&obs(ContainerObservation::NotFound, beat(5)), TIMEOUT),
            None
        );
    }

    #[test]
    fn the_newest_status_wins_over_a_stale_cache() {
        let at = |s: i64| WorkerStatus {
            last_observed_time: Some(Time(Timestamp::from_second(NOW + s).unwrap())),
            restart_count: s as i32,
            ..Default::default()
        };
        let (old, new) = (at(1), at(2));
        assert_eq!(newest_status(Some(&old), Some(&new)), Some(&new));
        assert_eq!(newest_status(Some(&new), Some(&old)), Some(&new));
        assert_eq!(newest_status(None, Some(&old)), Some(&old));
        assert_eq!(newest_status(Some(&old), None), Some(&old));
    }

    #[test]
    fn a_pause_holds_until_its_end() {
        let at = |s: i64| Time(Timestamp::from_second(NOW + s).unwrap());
        let forever = PauseSpec {
            until: None,
            reason: Some("disk swap".into()),
        };
        assert_eq!(active_pause(Some(&forever), now()), Some(&forever));
        let later = PauseSpec {
            until: Some(at(60)),
            reason: None,
        };
        assert_eq!(active_pause(Some(&later), now()), Some(&later));
        let over = PauseSpec {
            until: Some(at(0)),
            reason: None,
        };
        assert_eq!(active_pause(Some(&over), now()), None, "ends at its time");
        assert_eq!(active_pause(None, now()), None);
    }

    #[test]
    fn only_an_exited_or_never_started_container_is_a_stop_failure() {
        // Paused on purpose, or Docker's own restart policy at work: left alone.
        for other in [
            ContainerObservation::Found(container("paused", false)),
            ContainerObservation::Found(container("restarting", false)),
            ContainerObservation::Found(container("dead", false)),
            ContainerObservation::Unavailable(RuntimeError::unavailable(
                crate::runtime::RuntimeKind::Docker,
                "x",
            )),
        ] {
            assert_eq!(
                failure(&obs(other.clone(), beat(5)), TIMEOUT),
                None,
                "{other:?}"
            );
        }
        assert_eq!(
            failure(
                &obs(
                    ContainerObservation::Found(container("created", false)),
                    beat(5)
                ),
                TIMEOUT
            ),
            Some(FailureKind::Stopped {
                state: ContainerState::Created,
                exit_code: Some(3),
                oom_killed: false,
            })
        );
        let mut not_found = container("exited", false);
        not_found.exit_code = Some(127);
        let failure = failure(
            &obs(ContainerObservation::Found(not_found), beat(5)),
            TIMEOUT,
        );
        assert!(failure.unwrap().command_not_found(), "exit 127");
    }

    #[test]
    fn status_counts_restarts_and_keeps_the_last_heartbeat() {
        let o = obs(
            ContainerObservation::Found(container("running", true)),
            beat(2),
        );
        let a = assess(&o, TIMEOUT);
        let first = next_status(None, Some(1), &o, &a, None);
        assert_eq!(first.restart_count, 0);
        assert_eq!(first.phase, Some(WorkerPhase::Healthy));
        assert_eq!(first.heartbeat.as_ref().unwrap().progress, Some(7));
        assert_eq!(
            first.container.as_ref().unwrap().id.as_deref(),
            Some("0123456789ab")
        );
        assert_eq!(first.container.as_ref().unwrap().exit_code, None);

        let o2 = obs(
            ContainerObservation::Found(container("exited", false)),
            HeartbeatObservation::Missing,
        );
        let a2 = assess(&o2, TIMEOUT);
        let restart = RestartRecord { at: now() };
        let second = next_status(Some(&first), Some(1), &o2, &a2, Some(&restart));
        assert_eq!(second.restart_count, 1);
        assert_eq!(second.last_restart_time, Some(Time(now())));
        assert_eq!(
            second.last_heartbeat_time, first.last_heartbeat_time,
            "last known heartbeat kept"
        );
        assert_eq!(second.container.as_ref().unwrap().exit_code, Some(3));

        assert_eq!(
            first.last_progress_time, first.last_heartbeat_time,
            "first sight is progress"
        );
        assert_eq!(
            second.last_progress_time, first.last_progress_time,
            "no heartbeat: kept"
        );

        let third = next_status(Some(&second), Some(1), &o, &a, None);
        assert_eq!(third.restart_count, 1);
        assert_eq!(third.last_restart_time, Some(Time(now())));
        let types: Vec<_> = third.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [
                ACCEPTED,
                CONTAINER_RUNNING,
                HEARTBEAT_FRESH,
                READY,
                ESCALATED
            ]
        );
    }

    #[test]
    fn progress_time_moves_only_when_progress_changes() {
        let o = obs(
            ContainerObservation::Found(container("running", true)),
            beat(20),
        );
        let a = assess(&o, TIMEOUT);
        let first = next_status(None, Some(1), &o, &a, None);
        // A newer heartbeat with the same progress and task: the progress time stays.
        let o2 = obs(
            ContainerObservation::Found(container("running", true)),
            beat(1),
        );
        let second = next_status(Some(&first), Some(1), &o2, &assess(&o2, TIMEOUT), None);
        assert_eq!(second.last_progress_time, first.last_progress_time);
        assert_ne!(second.last_heartbeat_time, first.last_heartbeat_time);
        // Progress moves: so does the time.
        let mut moved = beat(0);
        if let HeartbeatObservation::Present(hb) = &mut moved {
            hb.progress = Some(8);
        }
        let o3 = obs(
            ContainerObservation::Found(container("running", true)),
            moved,
        );
        let third = next_status(Some(&second), Some(1), &o3, &assess(&o3, TIMEOUT), None);
        assert_eq!(third.last_progress_time, Some(Time(now())));
    }

    #[test]
    fn requeue_interval_is_bounded() {
        assert_eq!(
            requeue_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            requeue_interval(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
        assert_eq!(
            requeue_interval(Duration::from_secs(3600)),
            Duration::from_secs(15)
        );
    }
}
