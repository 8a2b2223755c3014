//! The `WorkerRecovery` custom resource: one run of the runbook against one Worker.
//!
//! A run is a list of steps chosen by its mode (diagnose, quick, clean, debug), each carried out
//! as an idempotent, crash-safe step whose progress is recorded in `status.steps`. A finished
//! run is immutable: a new recovery is a new object.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One recovery run for one Worker, following the crash runbook.
// Repeated `printcolumn(type_ = ...)` arguments are distinct columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "workerrecovery.io",
    version = "v1alpha1",
    kind = "WorkerRecovery",
    namespaced,
    status = "WorkerRecoveryStatus",
    shortname = "wrec",
    category = "workerrecovery",
    doc = "One recovery run of the crash runbook against a Worker.",
    printcolumn(name = "Worker", type_ = "string", json_path = ".spec.workerRef.name"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Step",
        type_ = "string",
        json_path = ".status.currentStep",
        description = "The step running now, or the last one"
    ),
    printcolumn(
        name = "Root Cause",
        type_ = "string",
        json_path = ".status.diagnosis.verdict.topCause",
        description = "Most likely root cause found by the diagnosis"
    ),
    printcolumn(
        name = "Trace",
        type_ = "string",
        json_path = ".status.trace.traceId",
        description = "OpenTelemetry trace id of the run",
        priority = "1"
    ),
    printcolumn(
        name = "Dry Run",
        type_ = "boolean",
        json_path = ".spec.dryRun",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("the spec of a recovery run is immutable; create a new WorkerRecovery"))]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecoverySpec {
    /// The Worker (in the same namespace) to recover.
    pub worker_ref: WorkerReference,
    /// What the run does: `Diagnose` (read only), `Quick` (diagnose, restart, verify), `Clean`
    /// (diagnose, clean state, restart, verify, resume) or `Debug` (diagnose, clean state,
    /// start a debug copy of the container, verify, resume).
    #[serde(default)]
    pub mode: RecoveryMode,
    /// Compute and record what every step would do, and change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Seconds the worker may take to stop on SIGTERM before it is killed, when the run stops or
    /// restarts it.
    #[serde(default = "default_stop_grace")]
    #[schemars(range(min = 0, max = 3600))]
    pub stop_grace_period_seconds: u32,
    /// How long the verify step waits for the worker to be healthy: running, a heartbeat newer
    /// than the restart, and the metrics endpoint answering when one is declared.
    #[serde(default = "default_verify_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub verify_timeout_seconds: u32,
    /// Settings of the debug container (mode `Debug`).
    #[serde(default)]
    pub debug: DebugSpec,
    /// The gradual resume of the `Resume` step (modes `Clean` and `Debug`): the ResumePlan it
    /// creates.
    #[serde(default)]
    pub resume: ResumeSettings,
    /// Set by the operator on the runs of automatic recovery: what triggered the run, and what
    /// was seen of the failure before anything changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<RecoveryTrigger>,
    /// Seconds between two scrapes of the worker's metrics endpoint while the run verifies and
    /// resumes (the runbook's monitor polls every 10 s).
    #[serde(default = "default_monitor_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub monitor_interval_seconds: u32,
}

/// What started an automatic run, as the operator saw it.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryTrigger {
    /// `exit code 3`, `OOM-killed`, `heartbeat missed`, ...
    pub reason: String,
    /// The container's exit code at the crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Docker's OOMKilled flag at the crash (it is cleared by the next start).
    #[serde(default)]
    pub oom_killed: bool,
    /// When the container stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The operator already started (or restarted) the container at this time, before the run
    /// was created, so that a crash costs as little downtime as possible; the Restart step then
    /// only records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<Time>,
}

/// How the `Resume` step releases the pending tasks: the spec of the ResumePlan it creates.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResumeSettings {
    /// Tasks moved from `pending/` to `staged/` per batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: u32,
    /// Seconds a batch is given before it is judged and the next one is released.
    #[serde(default = "default_batch_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub batch_delay_seconds: u32,
    /// Halt when a batch's failures exceed this fraction of the batch.
    #[serde(default = "default_max_failure_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_failure_ratio: f64,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        Self {
            batch_size: default_batch_size(),
            batch_delay_seconds: default_batch_delay(),
            max_failure_ratio: default_max_failure_ratio(),
        }
    }
}

fn default_batch_size() -> u32 {
    5
}
fn default_batch_delay() -> u32 {
    30
}
fn default_max_failure_ratio() -> f64 {
    0.5
}
fn default_monitor_interval() -> u32 {
    10
}

/// What a recovery run does.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Read only: the runbook's checks and a ranked root cause.
    Diagnose,
    /// The runbook's Quick Recovery: diagnose, restart, verify.
    #[default]
    Quick,
    /// Clean recovery: diagnose, clean state (requeue active tasks, remove stale locks, reset
    /// state, clear tmp) with the container stopped, restart, verify, resume.
    Clean,
    /// Start with debugging: diagnose, clean state, start `<container>-debug` with debug logging,
    /// tracing and core dumps, verify it, resume gradually into it. The original stays stopped.
    Debug,
}

impl RecoveryMode {
    /// The steps of a run in this mode, in order.
    pub fn steps(self) -> &'static [StepName] {
        use StepName::*;
        match self {
            Self::Diagnose => &[Diagnose],
            Self::Quick => &[Diagnose, Restart, VerifyHealth],
            Self::Clean => &[Diagnose, CleanState, Restart, VerifyHealth, Resume],
            Self::Debug => &[Diagnose, CleanState, DebugStart, VerifyHealth, Resume],
        }
    }
}

/// The debug container of mode `Debug` (runbook "Start with Debugging").
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DebugSpec {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` of the debug container.
    #[serde(default = "default_otlp_endpoint")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("otlpEndpoint must be an http(s):// URL"))]
    #[schemars(length(min = 8, max = 2048))]
    pub otlp_endpoint: String,
}

impl Default for DebugSpec {
    fn default() -> Self {
        Self {
            otlp_endpoint: default_otlp_endpoint(),
        }
    }
}

fn default_otlp_endpoint() -> String {
    "http://otel-collector:4317".into()
}
fn default_stop_grace() -> u32 {
    10
}
fn default_verify_timeout() -> u32 {
    60
}

/// A reference to a Worker in the same namespace.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct WorkerReference {
    /// metadata.name of the Worker.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Observed state of a recovery run.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecoveryStatus {
    /// Where the run is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RecoveryPhase>,
    /// Standard conditions of the run: `Diagnosed`, `Completed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the run started; also the `last_failure` time written into requeued tasks, so that
    /// a step resumed after an operator restart writes exactly what it wrote before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The step running now, or the last one that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<StepName>,
    /// One entry per step of the mode, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub steps: Vec<StepStatus>,
    /// The failure reason written into requeued tasks, from the diagnosis (`oom`, `deadlock`,
    /// ..., `worker_crash` when no cause was found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// When the container (or its debug copy) was started by the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_started_at: Option<Time>,
    /// What the diagnosis found: findings with evidence and the ranked root cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<super::diagnosis::Diagnosis>,
    /// The run's OpenTelemetry trace: one trace per run, kept across operator restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceRef>,
    /// The worker's `active_tasks` and `task_failed_total` while the run verifies and resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<super::monitoring::MetricsWatch>,
    /// The ResumePlan created by the `Resume` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_plan: Option<String>,
    /// Core files the debug copy of a `Debug` run dumped into the Worker's
    /// `diagnostics.coreDumpDir`, oldest first (at most 5), with their analysis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub core_dumps: Vec<CoreDump>,
}

/// A core file dumped by a run's debug copy (runbook "Analyze Crash Dump").
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CoreDump {
    /// The core file on the host.
    pub file: String,
    pub size_bytes: u64,
    /// When the kernel wrote it (the file's modification time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The signal that made the process dump, e.g. `SIGABRT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The command line the kernel kept (at most 80 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The executable, as mapped in the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// The analyzer's backtrace (`thread apply all bt full`), or why there is none.
    pub analysis: CoreAnalysis,
}

/// What the analyzer made of a core.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CoreAnalysis {
    pub state: AnalysisState,
    /// Why the state is what it is, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The analyzer's output, at most 16 KiB (cut at the end, which says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backtrace: Option<String>,
}

/// How the analysis of a core went.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AnalysisState {
    /// The analyzer ran and its backtrace is kept.
    Analyzed,
    /// No analyzer image is configured (`--core-analyzer-image`).
    #[default]
    NotConfigured,
    /// The core or its executable could not be read, or the analyzer failed.
    Failed,
}

/// Where a run's spans are: its trace and the id of its root span `worker_recovery`.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TraceRef {
    /// W3C trace id, 32 lowercase hex digits: search it in the trace backend.
    #[schemars(regex(pattern = r"^[0-9a-f]{32}$"))]
    pub trace_id: String,
    /// Span id of the root span, 16 lowercase hex digits.
    #[schemars(regex(pattern = r"^[0-9a-f]{16}$"))]
    pub span_id: String,
}

/// A step of a recovery run.
#[derive(
    JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum StepName {
    /// The runbook's checks and a ranked root cause (span `check_crash_reason`).
    Diagnose,
    /// Requeue active tasks, dead-letter and quarantine, remove stale locks, reset state, clear
    /// tmp, with the container stopped (span `clean_state`).
    CleanState,
    /// Start the container again (span `restart_worker`).
    Restart,
    /// Start `<container>-debug`, a copy with debug logging, tracing and core dumps.
    DebugStart,
    /// Running, a fresh heartbeat, metrics answering, within the deadline (span `verify_health`).
    VerifyHealth,
    /// Hand the requeued tasks to gradual resume (span `resume`).
    Resume,
}

/// Where a step is.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl StepState {
    pub fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Skipped | Self::Failed)
    }
}

/// One step of a run as it went.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    pub name: StepName,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,
    /// How many times the step was started (more than 1 after an operator restart mid-step).
    #[serde(default)]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The step's own figures, e.g. `requeued`, `deadLettered`, `quarantined`, `locksRemoved`,
    /// `tmpEntriesRemoved`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, i64>,
    /// What is behind the figures (a sample of at most 20 names and 8 KiB each): which tasks,
    /// locks and tmp entries were (or, in a dry run, would be) touched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, Vec<String>>,
    /// Span id of the step's span in the run's trace (fixed when the step first starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

impl StepStatus {
    pub fn pending(name: StepName) -> Self {
        Self {
            name,
            state: StepState::Pending,
            start_time: None,
            finish_time: None,
            attempt: 0,
            message: None,
            figures: BTreeMap::new(),
            details: BTreeMap::new(),
            span_id: None,
        }
    }
}
/// Phase of a recovery run.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryPhase {
    /// Waiting to start (for example for its Worker to exist).
    Pending,
    /// Steps are running.
    Running,
    /// Every step finished.
    Succeeded,
    /// The run cannot go on (for example an invalid Worker spec).
    Failed,
}

impl RecoveryPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}
