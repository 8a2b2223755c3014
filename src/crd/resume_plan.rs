//! The `ResumePlan` custom resource: the runbook's gradual task resume, in batches.
//!
//! The knobs are the runbook's (`batch_size=5`, `delay=30`, stop when failures exceed half a
//! batch). The plan's status is the record of what it moved: each batch's task names are
//! written before the first of them moves, so an operator killed mid-batch finishes that batch
//! and never moves a task twice.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{monitoring::MetricsWatch, worker_recovery::WorkerReference};

/// Most batch results kept in status (the totals count every batch): with their name samples,
/// the status stays far below the API server's object size limit.
pub const MAX_BATCH_HISTORY: usize = 20;

/// Gradual resume of a Worker's pending tasks in batches, halted when failures climb.
// Repeated `printcolumn(type_ = ...)` arguments are distinct columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "workerrecovery.io",
    version = "v1alpha1",
    kind = "ResumePlan",
    namespaced,
    status = "ResumePlanStatus",
    shortname = "rplan",
    category = "workerrecovery",
    doc = "Gradual resume of a Worker's pending tasks in batches.",
    printcolumn(name = "Worker", type_ = "string", json_path = ".spec.workerRef.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Batches",
        type_ = "integer",
        json_path = ".status.batchesDone",
        description = "Batches released and judged"
    ),
    printcolumn(
        name = "Staged",
        type_ = "integer",
        json_path = ".status.tasksStaged",
        description = "Tasks moved from pending/ to staged/"
    ),
    printcolumn(
        name = "Remaining",
        type_ = "integer",
        json_path = ".status.tasksRemaining",
        description = "Tasks of the plan still in pending/"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.tasksFailed",
        description = "Failures counted in the plan's batches"
    ),
    printcolumn(
        name = "Batch Size",
        type_ = "integer",
        json_path = ".spec.batchSize",
        priority = "1"
    ),
    printcolumn(
        name = "Next Batch",
        type_ = "date",
        json_path = ".status.nextBatchTime",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ResumePlanSpec {
    /// The Worker (in the same namespace) whose pending tasks are resumed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("workerRef is immutable; create a new ResumePlan"))]
    pub worker_ref: WorkerReference,
    /// Tasks moved from `pending/` to `staged/` per batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: u32,
    /// Seconds a batch is given before it is judged and the next one is released.
    #[serde(default = "default_batch_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub batch_delay_seconds: u32,
    /// Halt when a batch's failures exceed this fraction of the batch. A failure is a task of
    /// the batch that reached `failed/`, or a rise of the worker's `task_failed_total` while the
    /// batch ran, whichever is larger.
    #[serde(default = "default_max_failure_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_failure_ratio: f64,
    /// Pause between batches; set back to false to continue where the plan stood. A halted plan
    /// continues after any change of its spec (for example a higher `maxFailureRatio`).
    #[serde(default)]
    pub paused: bool,
    /// While the plan runs, set `status: recovering` in the worker's `state.json` (what the
    /// runbook's clean recovery writes), and `status: running` when it completes, so a worker
    /// that honours it takes tasks only from `staged/`. A halted plan leaves it `recovering`.
    #[serde(default = "default_true")]
    pub mark_worker_state: bool,
    /// Seconds between two scrapes of the worker's metrics endpoint while the plan runs.
    #[serde(default = "default_monitor_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub monitor_interval_seconds: u32,
}

/// Observed state of a resume plan.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResumePlanStatus {
    /// Where the plan is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ResumePhase>,
    /// Standard conditions of the plan: `Completed`, `Halted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the plan started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the plan completed or halted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The plan covers the tasks in `pending/` last modified at or before this time; tasks that
    /// arrive later wait for the plan to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutoff_time: Option<Time>,
    /// Tasks of the plan found in `pending/` when it started.
    #[serde(default)]
    pub tasks_total: u64,
    /// Tasks moved to `staged/` so far.
    #[serde(default)]
    pub tasks_staged: u64,
    /// Tasks of the plan still in `pending/` at the last look.
    #[serde(default)]
    pub tasks_remaining: u64,
    /// Failures counted over every judged batch.
    #[serde(default)]
    pub tasks_failed: u64,
    /// Batches released and judged.
    #[serde(default)]
    pub batches_done: u32,
    /// The batch being released or waited for. Its task names are recorded before the first one
    /// moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_batch: Option<CurrentBatch>,
    /// The judged batches, latest last (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<BatchResult>,
    /// When the next batch is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_batch_time: Option<Time>,
    /// Why the plan halted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt_reason: Option<String>,
    /// Tasks in `pending/` the plan leaves there (a name already taken in `staged/`, not a
    /// regular file, not UTF-8), with why; at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// The worker's `active_tasks` and `task_failed_total` while the plan runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MetricsWatch>,
}

/// The batch in flight.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CurrentBatch {
    /// 1 for the first batch.
    pub number: u32,
    /// File names of the batch's tasks, oldest first (at most 32 KiB of names: a batch of
    /// long names is smaller than `batchSize`).
    pub tasks: Vec<String>,
    /// Tasks of the batch already in `failed/` when it was chosen: not counted as its failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_before: Vec<String>,
    /// Set once every task of the batch was moved to `staged/`; unset while it is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_time: Option<Time>,
    /// Tasks actually moved (the others were claimed by the worker first, or collided).
    #[serde(default)]
    pub moved: u32,
    /// `monitoring.taskFailedIncrease` when the batch was released.
    #[serde(default)]
    pub failed_increase_at_release: i64,
}

/// One judged batch.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    pub number: u32,
    /// Tasks in the batch.
    pub size: u32,
    /// Tasks moved to `staged/`.
    pub moved: u32,
    /// Failures counted: the larger of `failedFiles` and `metricFailures`.
    pub failed: u32,
    /// Tasks of the batch that reached `failed/`.
    pub failed_files: u32,
    /// Rise of `task_failed_total` while the batch ran.
    pub metric_failures: u32,
    /// File names of the batch's first tasks, oldest first (a sample: at most 5, 2 KiB).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// Names of the batch's tasks in `failed/` (a sample: at most 5, 2 KiB; `failedFiles`
    /// counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_tasks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged_time: Option<Time>,
}

/// Phase of a resume plan.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumePhase {
    /// Not started (for example waiting for its Worker).
    Pending,
    /// Releasing batches.
    Running,
    /// `spec.paused`: stopped between batches.
    Paused,
    /// A batch failed too much; no more batches until the spec changes.
    Halted,
    /// Every task of the plan was released and its last batch judged.
    Completed,
    /// The plan cannot run (its Worker is refused or invalid).
    Failed,
}

impl ResumePhase {
    /// No more batches until the spec changes.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Halted | Self::Completed | Self::Failed)
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
fn default_true() -> bool {
    true
}
fn default_monitor_interval() -> u32 {
    10
}
