//! The `WorkerRecovery` custom resource: one run of the runbook against one Worker.
//!
//! Only the reference to the Worker exists so far; the diagnosis and the recovery steps that
//! later fill this resource will add their fields to the spec and status.

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
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Root Cause",
        type_ = "string",
        json_path = ".status.diagnosis.verdict.topCause",
        description = "Most likely root cause found by the diagnosis"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.workerRef == oldSelf.workerRef").message("workerRef is immutable"))]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecoverySpec {
    /// The Worker (in the same namespace) to recover.
    pub worker_ref: WorkerReference,
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
    /// Standard conditions of the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// What the diagnosis found: findings with evidence and the ranked root cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<super::diagnosis::Diagnosis>,
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
