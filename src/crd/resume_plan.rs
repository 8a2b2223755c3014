//! The `ResumePlan` custom resource: the runbook's gradual task resume, in batches.
//!
//! The knobs are the runbook's (`batch_size=5`, `delay=30`, stop when failures exceed half a
//! batch). The controller that carries out a plan comes with the recovery runs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::worker_recovery::WorkerReference;

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
    printcolumn(name = "Batch", type_ = "integer", json_path = ".spec.batchSize"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ResumePlanSpec {
    /// The Worker (in the same namespace) whose pending tasks are resumed.
    pub worker_ref: WorkerReference,
    /// Tasks moved from `pending/` to `staged/` per batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: u32,
    /// Seconds to wait for a batch before judging it.
    #[serde(default = "default_batch_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub batch_delay_seconds: u32,
    /// Halt when failed tasks exceed this fraction of a batch.
    #[serde(default = "default_max_failure_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_failure_ratio: f64,
}

/// Observed state of a resume plan.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResumePlanStatus {
    /// Where the plan is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ResumePhase>,
    /// Standard conditions of the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Phase of a resume plan.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumePhase {
    Pending,
    Running,
    Paused,
    Halted,
    Completed,
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
