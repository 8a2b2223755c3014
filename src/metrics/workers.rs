//! Per-worker series (labels `namespace`, `worker`): what the Worker controller last saw of
//! each Worker, rendered at scrape time. The series of a Worker are exactly its entry here, so
//! they go when the entry goes (the Worker was deleted, or moved to another agent's node), and
//! their number is bounded by the Workers times a fixed set of phases, task states and run
//! outcomes.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
};

use k8s_openapi::jiff::Timestamp;
use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::crd::worker::WorkerPhase;

/// Phases a Worker can be in, each a series of `workerrecovery_worker_phase` (1 for the current
/// one, 0 for the others), as kube-state-metrics does for pods.
const PHASES: [WorkerPhase; 6] = [
    WorkerPhase::Healthy,
    WorkerPhase::Degraded,
    WorkerPhase::Down,
    WorkerPhase::Unknown,
    WorkerPhase::Refused,
    WorkerPhase::Escalated,
];

/// A Worker, as its series are labelled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerKey {
    pub namespace: String,
    pub worker: String,
}

impl WorkerKey {
    pub fn new(namespace: impl Into<String>, worker: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            worker: worker.into(),
        }
    }

    /// `namespace/worker`, as the Worker controller keys what it remembers.
    pub fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.worker)
    }
}

/// Task files by directory, each count capped (`capped` when a directory held more).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub pending: u64,
    pub active: u64,
    pub staged: u64,
    pub failed: u64,
    pub quarantine: u64,
    /// A directory held more entries than were counted.
    pub capped: bool,
}

impl TaskCounts {
    fn by_state(&self) -> [(&'static str, u64); 5] {
        [
            ("pending", self.pending),
            ("active", self.active),
            ("staged", self.staged),
            ("failed", self.failed),
            ("quarantine", self.quarantine),
        ]
    }
}

/// A resource reading against its limit (memory in bytes, file descriptors).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub used: f64,
    pub limit: Option<f64>,
}

/// The failure prediction of a Worker: whether a resource's trend reaches its limit within
/// the horizon, and when.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RiskReading {
    pub resource: String,
    pub at_risk: bool,
    pub seconds_to_limit: Option<f64>,
}

/// What one look at a Worker found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerSnapshot {
    pub phase: Option<WorkerPhase>,
    /// Container running and heartbeat fresh.
    pub up: bool,
    pub last_heartbeat: Option<Timestamp>,
    pub heartbeat_timeout_seconds: u32,
    /// Restarts of its container: the operator's and the engine's restart policy's.
    pub restarts: u64,
    /// The escalation level reached (index and name), `None` when not escalated.
    pub escalation: Option<(u32, String)>,
    pub tasks: Option<TaskCounts>,
    pub memory: Option<Usage>,
    pub fds: Option<Usage>,
    /// The failure prediction, when it runs for this Worker.
    pub risk: Option<RiskReading>,
    /// When `tasks` was counted (not a series: counts are kept between looks).
    pub tasks_counted_at: Option<Timestamp>,
}

/// How a recovery run ended, as `workerrecovery_worker_recovery_runs_total` labels it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunOutcome {
    pub mode: String,
    pub outcome: String,
    /// `RootCause` as the API spells it, `None` when no cause was found.
    pub root_cause: String,
}

/// The outcome of a failed run (`RecoveryPhase::Failed`).
pub const FAILED: &str = "Failed";

#[derive(Default)]
struct State {
    snapshots: BTreeMap<WorkerKey, WorkerSnapshot>,
    runs: BTreeMap<WorkerKey, BTreeMap<RunOutcome, u64>>,
    halts: BTreeMap<WorkerKey, u64>,
}

/// The per-worker series, a [`Collector`] registered with the operator's registry.
pub struct WorkerSeries {
    descs: Vec<Desc>,
    state: Mutex<State>,
}

// Indexes of the families in [`FAMILIES`].
const PHASE: usize = 0;
const UP: usize = 1;
const HEARTBEAT_AGE: usize = 2;
const HEARTBEAT_TIMEOUT: usize = 3;
const RESTARTS: usize = 4;
const ESCALATION: usize = 5;
const TASKS: usize = 6;
const MEMORY: usize = 7;
const FDS: usize = 9;
const RUNS: usize = 11;
const FAILURES: usize = 12;
const HALTS: usize = 13;
const WORKERS: usize = 14;
const AT_RISK: usize = 15;
const SECONDS_TO_LIMIT: usize = 16;

/// Name and help of each family, in the order they are rendered. A limit follows its reading.
const FAMILIES: [(&str, &str); 17] = [
    ("workerrecovery_worker_phase", "1 for the phase the Worker is in, 0 for the others"),
    ("workerrecovery_worker_up", "1 when the container runs and the heartbeat is fresh"),
    ("workerrecovery_worker_heartbeat_age_seconds", "Seconds since the last heartbeat, at scrape time"),
    ("workerrecovery_worker_heartbeat_timeout_seconds", "spec.heartbeatTimeoutSeconds"),
    ("workerrecovery_worker_restarts_total", "Restarts of the container, by the operator or the engine's restart policy"),
    ("workerrecovery_worker_escalation_level", "Index of the escalation level reached (spec.escalation.levels), -1 when not escalated"),
    ("workerrecovery_worker_tasks", "Task files by directory (counted up to a cap; capped=\"true\" when a directory held more)"),
    ("workerrecovery_worker_memory_bytes", "Memory the container uses"),
    ("workerrecovery_worker_memory_limit_bytes", "The container's memory limit"),
    ("workerrecovery_worker_open_fds", "File descriptors the worker's process holds"),
    ("workerrecovery_worker_fd_limit", "The worker's process' limit of open file descriptors"),
    ("workerrecovery_worker_recovery_runs_total", "Recovery runs finished, by mode, outcome and root cause"),
    ("workerrecovery_worker_recovery_failures_total", "Recovery runs that ended Failed (0 from the first look at a Worker, so that the first failure is an increase)"),
    ("workerrecovery_worker_resume_halts_total", "Gradual resumes halted because a batch failed too much"),
    ("workerrecovery_workers", "Workers this operator has series for"),
    ("workerrecovery_worker_at_risk", "1 when the resource's trend reaches its limit within the prediction horizon (AtRisk)"),
    ("workerrecovery_worker_seconds_to_limit", "Seconds until the resource's trend reaches its limit, while at risk"),
];

impl Default for WorkerSeries {
    fn default() -> Self {
        let descs = FAMILIES
            .iter()
            .map(|(name, help)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec![],
                    Default::default(),
                )
                .expect("valid metric name")
            })
            .collect();
        Self {
            descs,
            state: Mutex::new(State::default()),
        }
    }
}

impl WorkerSeries {
    /// Record the latest look at `key`.
    pub fn observe(&self, key: WorkerKey, snapshot: WorkerSnapshot) {
        self.state.lock().unwrap().snapshots.insert(key, snapshot);
    }

    /// The latest look at `key`.
    pub fn snapshot(&self, key: &WorkerKey) -> Option<WorkerSnapshot> {
        self.state.lock().unwrap().snapshots.get(key).cloned()
    }

    /// Count a finished recovery run of `key`.
    pub fn record_run(&self, key: WorkerKey, outcome: RunOutcome) {
        let mut state = self.state.lock().unwrap();
        *state
            .runs
            .entry(key)
            .or_default()
            .entry(outcome)
            .or_default() += 1;
    }

    /// The file descriptors a diagnosis counted for `key` (kept until the next count).
    pub fn record_fds(&self, key: &WorkerKey, fds: Usage) {
        if let Some(s) = self.state.lock().unwrap().snapshots.get_mut(key) {
            s.fds = Some(fds);
        }
    }

    /// Count a gradual resume of `key` that halted.
    pub fn record_halt(&self, key: WorkerKey) {
        *self.state.lock().unwrap().halts.entry(key).or_default() += 1;
    }

    /// Drop the series of every Worker whose `namespace/worker` is not in `live`.
    pub fn forget_all_but(&self, live: &HashSet<String>) -> Vec<WorkerKey> {
        let mut state = self.state.lock().unwrap();
        let gone: Vec<WorkerKey> = state
            .snapshots
            .keys()
            .chain(state.runs.keys())
            .chain(state.halts.keys())
            .filter(|k| !live.contains(&k.path()))
            .cloned()
            .collect();
        for key in &gone {
            state.snapshots.remove(key);
            state.runs.remove(key);
            state.halts.remove(key);
        }
        gone
    }

    fn families(&self, now: Timestamp) -> Vec<MetricFamily> {
        let state = self.state.lock().unwrap();
        let mut out: Vec<Vec<Metric>> = vec![Vec::new(); FAMILIES.len()];
        for (key, s) in &state.snapshots {
            for (i, metric) in snapshot_metrics(key, s, now) {
                out[i].push(metric);
            }
        }
        for (key, runs) in &state.runs {
            for (run, count) in runs {
                let labels = [
                    ("mode", run.mode.as_str()),
                    ("outcome", run.outcome.as_str()),
                    ("root_cause", run.root_cause.as_str()),
                ];
                out[RUNS].push(counter(key, &labels, *count as f64));
            }
        }
        // Counters a first event must be an increase of: 0 from the first look at a Worker.
        let keys: std::collections::BTreeSet<&WorkerKey> = state
            .snapshots
            .keys()
            .chain(state.runs.keys())
            .chain(state.halts.keys())
            .collect();
        for key in keys {
            let failures: u64 = state.runs.get(key).map_or(0, |runs| {
                runs.iter()
                    .filter(|(run, _)| run.outcome == FAILED)
                    .map(|(_, n)| n)
                    .sum()
            });
            out[FAILURES].push(counter(key, &[], failures as f64));
            let halts = state.halts.get(key).copied().unwrap_or(0);
            out[HALTS].push(counter(key, &[], halts as f64));
        }
        out[WORKERS].push(gauge_of(&[], state.snapshots.len() as f64));
        FAMILIES
            .iter()
            .zip(out)
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|((name, help), metrics)| family(name, help, metrics))
            .collect()
    }
}

/// The series of one Worker's snapshot, each with the index of its family in [`FAMILIES`].
fn snapshot_metrics(key: &WorkerKey, s: &WorkerSnapshot, now: Timestamp) -> Vec<(usize, Metric)> {
    let mut out = Vec::new();
    if let Some(phase) = s.phase {
        for p in PHASES {
            let value = if p == phase { 1.0 } else { 0.0 };
            out.push((PHASE, gauge(key, &[("phase", &p.to_string())], value)));
        }
    }
    out.push((UP, gauge(key, &[], if s.up { 1.0 } else { 0.0 })));
    if let Some(at) = s.last_heartbeat {
        let age = now.duration_since(at).as_secs_f64().max(0.0);
        out.push((HEARTBEAT_AGE, gauge(key, &[], age)));
    }
    let timeout = f64::from(s.heartbeat_timeout_seconds);
    out.push((HEARTBEAT_TIMEOUT, gauge(key, &[], timeout)));
    out.push((RESTARTS, counter(key, &[], s.restarts as f64)));
    let (index, level) = match &s.escalation {
        Some((index, level)) => (f64::from(*index), level.as_str()),
        None => (-1.0, ""),
    };
    out.push((ESCALATION, gauge(key, &[("level", level)], index)));
    if let Some(tasks) = &s.tasks {
        let capped = if tasks.capped { "true" } else { "false" };
        for (state, n) in tasks.by_state() {
            let labels = [("state", state), ("capped", capped)];
            out.push((TASKS, gauge(key, &labels, n as f64)));
        }
    }
    for (i, usage) in [(MEMORY, s.memory), (FDS, s.fds)] {
        if let Some(u) = usage {
            out.push((i, gauge(key, &[], u.used)));
            if let Some(limit) = u.limit {
                out.push((i + 1, gauge(key, &[], limit)));
            }
        }
    }
    if let Some(r) = &s.risk {
        let labels = [("resource", r.resource.as_str())];
        let at_risk = if r.at_risk { 1.0 } else { 0.0 };
        out.push((AT_RISK, gauge(key, &labels, at_risk)));
        if let Some(seconds) = r.seconds_to_limit {
            out.push((SECONDS_TO_LIMIT, gauge(key, &labels, seconds)));
        }
    }
    out
}

impl Collector for WorkerSeries {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families(Timestamp::now())
    }
}

fn labels(key: &WorkerKey, extra: &[(&str, &str)]) -> Vec<LabelPair> {
    let mut pairs: Vec<(&str, &str)> = vec![("namespace", &key.namespace), ("worker", &key.worker)];
    pairs.extend_from_slice(extra);
    pairs
        .into_iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

fn gauge_of(labels: &[LabelPair], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_gauge(g);
    m.set_label(labels.to_vec());
    m
}

fn gauge(key: &WorkerKey, extra: &[(&str, &str)], value: f64) -> Metric {
    gauge_of(&labels(key, extra), value)
}

fn counter(key: &WorkerKey, extra: &[(&str, &str)], value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::default();
    m.set_counter(c);
    m.set_label(labels(key, extra));
    m
}

fn family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let kind = if name.ends_with("_total") {
        MetricType::COUNTER
    } else {
        MetricType::GAUGE
    };
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

#[cfg(test)]
mod tests;
