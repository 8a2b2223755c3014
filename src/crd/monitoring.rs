//! What the operator watches while a worker recovers: the runbook's "Monitoring During
//! Recovery" (`active_tasks` and `task_failed_total` from the worker's metrics endpoint), kept
//! in the status of the run and of the resume plan.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The worker's task metrics as scraped during recovery, and how they moved.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricsWatch {
    /// Latest `active_tasks` (summed over its series).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_tasks: Option<i64>,
    /// `active_tasks` at the first scrape of this watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_tasks_at_start: Option<i64>,
    /// Latest `task_failed_total` (summed over its series).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_failed_total: Option<i64>,
    /// How much `task_failed_total` rose since the first scrape of this watch. A counter that
    /// went down (the worker restarted) counts from zero again, as Prometheus' `increase()`.
    #[serde(default)]
    pub task_failed_increase: i64,
    /// Scrapes that answered.
    #[serde(default)]
    pub scrapes: u32,
    /// When the endpoint was last asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrape_time: Option<Time>,
    /// Why the last scrape gave no figures; empty when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
