//! The `Worker` custom resource: one agent worker running in a Docker container on this host.

use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default shared root, as in the runbook (`/shared/workers`, `/shared/tasks`, `/shared/locks`).
pub const DEFAULT_SHARED_ROOT: &str = "/shared";
/// Default heartbeat timeout in seconds.
pub const DEFAULT_HEARTBEAT_TIMEOUT_SECONDS: u32 = 60;

/// A long-running agent worker in a Docker container on this host, supervised by the operator.
///
/// The operator observes the container and the worker's heartbeat file, reports the worker's
/// health in status, and (when `autoRecovery.enabled`) starts the container again when it exits.
// Repeated `printcolumn(type_ = ...)` arguments are distinct columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "workerrecovery.io",
    version = "v1alpha1",
    kind = "Worker",
    namespaced,
    status = "WorkerStatus",
    shortname = "wk",
    category = "workerrecovery",
    selectable = ".spec.nodeName",
    doc = "A long-running agent worker in a Docker container, supervised by worker-recovery-operator.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Container", type_ = "string", json_path = ".spec.container"),
    printcolumn(
        name = "Unit",
        type_ = "string",
        json_path = ".spec.runtime.systemd.unit",
        description = "The systemd service of a Worker run by systemd"
    ),
    printcolumn(
        name = "Heartbeat",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"HeartbeatFresh\")].reason",
        description = "Whether the heartbeat is fresh (HeartbeatFresh), stale, missing or not read"
    ),
    printcolumn(
        name = "Last Heartbeat",
        type_ = "date",
        json_path = ".status.lastHeartbeatTime",
        description = "The worker's last heartbeat as last written (refreshed at least every 5 minutes while nothing else changes)",
        priority = "1"
    ),
    printcolumn(
        name = "Restarts",
        type_ = "integer",
        json_path = ".status.restartCount",
        description = "Container restarts performed by the operator"
    ),
    printcolumn(
        name = "Auto",
        type_ = "boolean",
        json_path = ".spec.autoRecovery.enabled",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.container) && size(self.container) > 0) != has(self.runtime)").message("set exactly one of container (a Docker container) and runtime (a systemd unit)"))]
pub struct WorkerSpec {
    /// Name (or ID) of the Docker container that runs this worker, as `docker ps` shows it:
    /// the short form of a Docker runtime. Exactly one of `container` and `runtime` is set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 253))]
    pub container: String,

    /// The runtime of a worker that is not a Docker container: a systemd service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,

    /// The worker's name in its file layout (`tasks/<name>/`, `locks/<name>_*.lock`, ...).
    /// Defaults to the Worker's metadata.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    )]
    pub worker_name: Option<String>,

    /// The node (host) the worker's container runs on. An operator agent started with
    /// `--node-name` acts only on the Workers that name its node; an operator without it acts
    /// on every Worker. Selectable: `--field-selector spec.nodeName=NODE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node_name: Option<String>,

    /// Absolute host path of the shared root that holds `workers/`, `tasks/` and `locks/`.
    /// Every path in `paths` is resolved inside it.
    #[serde(default = "default_shared_root")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("sharedRoot must be an absolute path"))]
    #[schemars(length(min = 1, max = 1024))]
    pub shared_root: String,

    /// Where the worker keeps its files, relative to `sharedRoot`. Defaults follow the runbook.
    #[serde(default)]
    pub paths: WorkerPaths,

    /// Seconds after the last heartbeat at which the worker counts as hung (HeartbeatFresh=False).
    #[serde(default = "default_heartbeat_timeout")]
    #[schemars(range(min = 5, max = 86400))]
    pub heartbeat_timeout_seconds: u32,

    /// A task requeued this many times goes to `failed/` instead of `pending/` (dead letter).
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_retries: u32,

    /// What the operator may do on its own when the worker fails.
    #[serde(default)]
    pub auto_recovery: AutoRecoverySpec,

    /// The worker's Prometheus endpoint, as the operator reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsEndpointSpec>,

    /// Thresholds and expectations of the diagnosis; defaults are the runbook's.
    #[serde(default)]
    pub diagnostics: DiagnosticsSpec,

    /// Failure prediction (runbook: "implement predictive failure detection"): the container's
    /// memory is sampled, and a least-squares trend over a window says when it reaches its
    /// limit; under `horizonSeconds`, the Worker is `AtRisk`.
    #[serde(default)]
    pub prediction: PredictionSpec,

    /// Resource limits the container should run with (the runbook's compose file: `mem_limit`,
    /// `memswap_limit`, `cpu_quota`, `ulimits`). Drift from them is reported in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<DeclaredResources>,

    /// The runbook's escalation path: levels with the time after which each one is reached,
    /// a webhook told of every level change, and backup Workers for the last level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<EscalationSpec>,
}

/// Declared limits of the worker's container. Sizes are bytes with an optional unit: `512m`,
/// `2g`, `2Gi`, `1073741824`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredResources {
    /// Memory limit (`mem_limit`, `docker run -m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?([kKmMgGtT]i?[bB]?)?$"))]
    pub memory: Option<String>,
    /// Memory plus swap limit (`memswap_limit`); equal to `memory` means no swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?([kKmMgGtT]i?[bB]?)?$"))]
    pub memory_swap: Option<String>,
    /// CPU quota in microseconds per 100 ms period (`cpu_quota`; 100000 is one CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000, max = 100000000))]
    pub cpu_quota: Option<i64>,
    /// Open files limit (`ulimits.nofile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<UlimitSpec>,
    /// Processes limit (`ulimits.nproc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nproc: Option<UlimitSpec>,
    /// The container's health check (Docker `HEALTHCHECK`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Put the declared settings in place when the container differs: `Never` only reports
    /// the drift; `OnRestart` recreates the container with them at its next automatic restart
    /// (keeping its image, command, environment, labels and mounts), and updates the memory
    /// limits in place, which needs no recreate.
    #[serde(default)]
    pub apply: ApplyPolicy,
}

/// A soft and hard ulimit.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.soft <= self.hard").message("soft must not exceed hard"))]
pub struct UlimitSpec {
    #[schemars(range(min = 1))]
    pub soft: i64,
    #[schemars(range(min = 1))]
    pub hard: i64,
}

/// A container health check.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// Command run in the container (`CMD` form, no shell): exit 0 is healthy.
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
    #[serde(default = "default_health_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,
    #[serde(default = "default_health_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
    #[serde(default = "default_health_retries")]
    #[schemars(range(min = 1, max = 100))]
    pub retries: u32,
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub start_period_seconds: u32,
}

/// Whether declared settings are put in place.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApplyPolicy {
    /// Report drift only.
    #[default]
    Never,
    /// Recreate the container with the declared settings at its next automatic restart.
    OnRestart,
}

/// The escalation path (runbook "Escalation Path").
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EscalationSpec {
    /// Levels, each reached `afterSeconds` after the incident began (when automatic recovery
    /// gave up); taken in order of `afterSeconds`. Default: the runbook's Automated (0), L1
    /// (300), L2 (900), L3 (1800).
    #[serde(default = "default_levels")]
    #[schemars(length(min = 1, max = 10))]
    pub levels: Vec<EscalationLevel>,
    /// Told of every level change with a JSON POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
    /// Workers (same namespace) that take this Worker's pending tasks at the last level.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub backup_workers: Vec<String>,
}

/// One level of the escalation path.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EscalationLevel {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[schemars(range(min = 0, max = 604800))]
    pub after_seconds: u32,
}

/// Where escalations are posted.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// `http://` or `https://` URL that receives `{"worker", "namespace", "level", "rootCause",
    /// "run", ...}`.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must be an http(s):// URL"))]
    #[schemars(length(min = 8, max = 2048))]
    pub url: String,
    /// Attempts per notification before it is given up (with backoff between them).
    #[serde(default = "default_webhook_attempts")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: u32,
    /// Seconds one attempt may take.
    #[serde(default = "default_webhook_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: u32,
    /// Seconds after a level change by which its notification is delivered or given up, over
    /// all attempts (also across operator restarts).
    #[serde(default = "default_webhook_deliver_within")]
    #[schemars(range(min = 10, max = 3600))]
    pub deliver_within_seconds: u32,
}

fn default_health_interval() -> u32 {
    30
}
fn default_health_timeout() -> u32 {
    10
}
fn default_health_retries() -> u32 {
    3
}
fn default_webhook_attempts() -> u32 {
    5
}
fn default_webhook_timeout() -> u32 {
    5
}
fn default_webhook_deliver_within() -> u32 {
    600
}
fn default_levels() -> Vec<EscalationLevel> {
    [("Automated", 0), ("L1", 300), ("L2", 900), ("L3", 1800)]
        .into_iter()
        .map(|(name, after_seconds)| EscalationLevel {
            name: name.into(),
            after_seconds,
        })
        .collect()
}

/// Where the worker serves `/metrics`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricsEndpointSpec {
    /// `http://` or `https://` URL of the metrics endpoint (runbook:
    /// `http://<worker>:9091/metrics`). The operator's URL policy decides which addresses it may
    /// reach.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must be an http(s):// URL"))]
    #[schemars(length(min = 8, max = 2048))]
    pub url: String,
}

/// Failure prediction settings: memory samples every `sampleIntervalSeconds`, a trend over the
/// last `windowSeconds` (PromQL's `predict_linear`), `AtRisk` when the limit is reached within
/// `horizonSeconds`. Only a running container with a memory limit is predicted.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.sampleIntervalSeconds * 3 <= self.windowSeconds").message("windowSeconds must hold at least three samples (3 x sampleIntervalSeconds)"))]
pub struct PredictionSpec {
    /// Sample and predict. On by default.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds between two memory samples (one call to the engine's stats API).
    #[serde(default = "default_sample_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub sample_interval_seconds: u32,
    /// The trend is fitted over the samples of the last this many seconds.
    #[serde(default = "default_prediction_window")]
    #[schemars(range(min = 3, max = 86400))]
    pub window_seconds: u32,
    /// `AtRisk` when the trend reaches the limit within this many seconds.
    #[serde(default = "default_prediction_horizon")]
    #[schemars(range(min = 1, max = 604800))]
    pub horizon_seconds: u32,
}

impl Default for PredictionSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_interval_seconds: default_sample_interval(),
            window_seconds: default_prediction_window(),
            horizon_seconds: default_prediction_horizon(),
        }
    }
}

fn default_sample_interval() -> u32 {
    30
}
fn default_prediction_window() -> u32 {
    600
}
fn default_prediction_horizon() -> u32 {
    900
}

/// A worker run by something other than Docker.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// A systemd service on the node, managed over D-Bus (the operator's `--systemd-bus`).
    pub systemd: SystemdRuntimeSpec,
}

/// A worker run as a systemd service (runbook: `systemctl restart agent-worker-marie`).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SystemdRuntimeSpec {
    /// The service unit, e.g. `agent-worker-marie.service`. It consents to this Worker with
    /// `Environment=WORKERRECOVERY_WORKER=<namespace>/<name>`.
    #[schemars(
        length(min = 9, max = 256),
        regex(pattern = r"^[A-Za-z0-9:_.@-]+\.service$")
    )]
    pub unit: String,
}

/// Diagnosis settings. Paths are relative to `sharedRoot`, like `paths`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticsSpec {
    /// A task in `active/` older than this many seconds counts as stuck (runbook: 600).
    #[serde(default = "default_stuck_task_seconds")]
    #[schemars(range(min = 1, max = 604800))]
    pub stuck_task_seconds: u32,
    /// A lock file older than this many seconds counts as stale (runbook: 300).
    #[serde(default = "default_stale_lock_seconds")]
    #[schemars(range(min = 1, max = 604800))]
    pub stale_lock_seconds: u32,
    /// Lines of container log to read (runbook: `docker logs --tail 100`).
    #[serde(default = "default_log_tail_lines")]
    #[schemars(range(min = 1, max = 5000))]
    pub log_tail_lines: u32,
    /// Only log lines newer than this many seconds (runbook: `--since 10m`).
    #[serde(default = "default_log_window_seconds")]
    #[schemars(range(min = 1, max = 604800))]
    pub log_window_seconds: u32,
    /// The worker's application log file, whose tail is read too (runbook: `/var/log/agents/<worker>.log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RELATIVE_PATH_RULE).message(RELATIVE_PATH_MESSAGE))]
    #[schemars(length(max = 1024))]
    pub app_log_file: Option<String>,
    /// Binaries that must be on the container's PATH and executable (runbook: `claude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub required_binaries: Vec<String>,
    /// Python packages that `pip list` inside the container must show (runbook:
    /// `opentelemetry`, `prometheus`, `structlog`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub required_python_packages: Vec<String>,
    /// Named pipes (FIFOs) that must exist, relative to `sharedRoot` (runbook: `pipes/*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub named_pipes: Vec<String>,
    /// The worker's process as `ps` names it (`/proc/<pid>/comm`), when it is neither PID 1 nor
    /// the main child of an init (`docker run --init`, tini, ...), which are found without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^/\s]+$"))]
    pub process_name: Option<String>,
    /// Directory, relative to `sharedRoot` (`{worker}` for the worker's name), where the debug
    /// copy of a `Debug` run dumps core files (runbook "Analyze Crash Dump"): each run gets a
    /// directory `<run>` in it. Unset: cores are not collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RELATIVE_PATH_RULE).message(RELATIVE_PATH_MESSAGE))]
    #[schemars(length(max = 1024))]
    pub core_dump_dir: Option<String>,
    /// Longest time one check may take before it is reported as failed.
    #[serde(default = "default_check_timeout_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub check_timeout_seconds: u32,
}

impl Default for DiagnosticsSpec {
    fn default() -> Self {
        Self {
            stuck_task_seconds: default_stuck_task_seconds(),
            stale_lock_seconds: default_stale_lock_seconds(),
            log_tail_lines: default_log_tail_lines(),
            log_window_seconds: default_log_window_seconds(),
            app_log_file: None,
            required_binaries: Vec::new(),
            required_python_packages: Vec::new(),
            named_pipes: Vec::new(),
            process_name: None,
            core_dump_dir: None,
            check_timeout_seconds: default_check_timeout_seconds(),
        }
    }
}

fn default_stuck_task_seconds() -> u32 {
    600
}
fn default_stale_lock_seconds() -> u32 {
    300
}
fn default_log_tail_lines() -> u32 {
    100
}
fn default_log_window_seconds() -> u32 {
    600
}
fn default_check_timeout_seconds() -> u32 {
    10
}

/// Paths of the worker's files relative to `sharedRoot`; `{worker}` stands for the worker's name.
/// Paths must be relative and may not contain `..`, so nothing outside the shared root is touched.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPaths {
    /// Heartbeat JSON file. Default `workers/{worker}/heartbeat.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RELATIVE_PATH_RULE).message(RELATIVE_PATH_MESSAGE))]
    #[schemars(length(max = 1024))]
    pub heartbeat_file: Option<String>,
    /// Task directory with `pending/`, `active/`, `staged/`, `failed/`. Default `tasks/{worker}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RELATIVE_PATH_RULE).message(RELATIVE_PATH_MESSAGE))]
    #[schemars(length(max = 1024))]
    pub tasks_dir: Option<String>,
    /// Directory of lock files named `{worker}_<task>.lock`. Default `locks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RELATIVE_PATH_RULE).message(RELATIVE_PATH_MESSAGE))]
    #[schemars(length(max = 1024))]
    pub locks_dir: Option<String>,
    /// Worker state file. Default `workers/{worker}/state.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RELATIVE_PATH_RULE).message(RELATIVE_PATH_MESSAGE))]
    #[schemars(length(max = 1024))]
    pub state_file: Option<String>,
    /// Temporary directory cleared on clean recovery. Default `tmp/{worker}` (the runbook's
    /// `/tmp/<worker>`, kept inside the shared root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RELATIVE_PATH_RULE).message(RELATIVE_PATH_MESSAGE))]
    #[schemars(length(max = 1024))]
    pub tmp_dir: Option<String>,
}

const RELATIVE_PATH_RULE: &str =
    "!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)') && self != ''";
const RELATIVE_PATH_MESSAGE: &str = "must be a non-empty relative path without '..'";

/// Automatic recovery: the runbook's supervisor as a policy. Each automatic attempt is a
/// WorkerRecovery owned by the Worker.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoRecoverySpec {
    /// Recover the worker when its container exits or its heartbeat is missed. Off by default:
    /// opt in per Worker.
    #[serde(default)]
    pub enabled: bool,
    /// How an automatic attempt recovers: `Quick` (restart at once, then diagnose and verify)
    /// or `Clean` (diagnose, clean state, restart, verify, resume).
    #[serde(default)]
    pub mode: AutoRecoveryMode,
    /// Attempts allowed within `windowSeconds`; when they are used up the worker is left
    /// stopped and escalated (runbook: 3).
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_restarts: u32,
    /// The window in which attempts are counted.
    #[serde(default = "default_window")]
    #[schemars(range(min = 1, max = 604800))]
    pub window_seconds: u32,
    /// Least time between two attempts (runbook: 60). The first attempt after a healthy spell
    /// is immediate.
    #[serde(default = "default_cooldown")]
    #[schemars(range(min = 0, max = 86400))]
    pub cooldown_seconds: u32,
    /// Growing wait between attempts while the worker keeps failing (as kubelet does).
    #[serde(default)]
    pub backoff: BackoffSpec,
    /// Automatic recovery runs kept; older ones are deleted.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: u32,
    /// A task found in `active/` at this many consecutive crashes is moved to `failed/` with
    /// reason `poison`, so one bad task cannot keep the worker crash-looping. 0 turns it off.
    #[serde(default = "default_poison_after")]
    #[schemars(range(min = 0, max = 100))]
    pub poison_after_crashes: u32,
    /// What the diagnosis may change before a restart, within bounds.
    #[serde(default)]
    pub remediation: RemediationSpec,
    /// Stop every automatic action for this Worker (maintenance, an investigation), while the
    /// operator keeps observing it. Recovery runs applied by hand still run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseSpec>,
}

impl Default for AutoRecoverySpec {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: AutoRecoveryMode::default(),
            max_restarts: default_max_restarts(),
            window_seconds: default_window(),
            cooldown_seconds: default_cooldown(),
            backoff: BackoffSpec::default(),
            history_limit: default_history_limit(),
            poison_after_crashes: default_poison_after(),
            remediation: RemediationSpec::default(),
            pause: None,
        }
    }
}

/// How an automatic attempt recovers.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoRecoveryMode {
    #[default]
    Quick,
    Clean,
}

/// Exponential backoff between attempts: `initialSeconds`, times `factor` per further failure,
/// at most `maxSeconds`; back to immediate after `resetAfterSeconds` healthy (kubelet: 10 s
/// doubling to 300 s, reset after 10 minutes).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackoffSpec {
    #[serde(default = "default_backoff_initial")]
    #[schemars(range(min = 0, max = 86400))]
    pub initial_seconds: u32,
    #[serde(default = "default_backoff_factor")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub factor: f64,
    #[serde(default = "default_backoff_max")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_seconds: u32,
    #[serde(default = "default_backoff_reset")]
    #[schemars(range(min = 1, max = 604800))]
    pub reset_after_seconds: u32,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            initial_seconds: default_backoff_initial(),
            factor: default_backoff_factor(),
            max_seconds: default_backoff_max(),
            reset_after_seconds: default_backoff_reset(),
        }
    }
}

/// Remediations the diagnosis may choose, within bounds.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemediationSpec {
    /// After an OOM kill, multiply the container's memory limit by this factor before the
    /// restart (in place, no recreate), up to `memoryCeiling`. Unset: no change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 16.0))]
    pub memory_factor: Option<f64>,
    /// The highest memory limit a remediation may set (`4g`, `8Gi`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?([kKmMgGtT]i?[bB]?)?$"))]
    pub memory_ceiling: Option<String>,
    /// After file-descriptor exhaustion, multiply the `nofile` limit by this factor, up to
    /// `nofileCeiling`; needs a recreate of the container, so only with `resources.apply:
    /// OnRestart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 16.0))]
    pub nofile_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub nofile_ceiling: Option<i64>,
    /// A missing dependency is not restarted in a loop (a restart cannot install it): escalate
    /// at once. On by default.
    #[serde(default = "default_true")]
    pub escalate_missing_dependency: bool,
    /// When the memory trend puts the Worker `AtRisk`, raise the limit by `memoryFactor` up to
    /// `memoryCeiling` in place at once, before the OOM kill.
    #[serde(default)]
    pub proactive: bool,
}

impl Default for RemediationSpec {
    fn default() -> Self {
        Self {
            memory_factor: None,
            memory_ceiling: None,
            nofile_factor: None,
            nofile_ceiling: None,
            escalate_missing_dependency: true,
            proactive: false,
        }
    }
}

fn default_max_restarts() -> u32 {
    3
}
fn default_window() -> u32 {
    600
}
fn default_cooldown() -> u32 {
    60
}
fn default_history_limit() -> u32 {
    10
}
fn default_poison_after() -> u32 {
    3
}
fn default_backoff_initial() -> u32 {
    10
}
fn default_backoff_factor() -> f64 {
    2.0
}
fn default_backoff_max() -> u32 {
    300
}
fn default_backoff_reset() -> u32 {
    600
}
fn default_true() -> bool {
    true
}

/// A pause of automatic actions.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PauseSpec {
    /// The pause ends by itself at this time; without it, it lasts until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Time>,
    /// Why, for the humans who find the Worker paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// Observed state of a Worker.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// Summary of the worker's health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WorkerPhase>,
    /// Standard conditions: `Accepted` (the operator may manage this Worker: its shared root is
    /// inside an allowed root and its container carries the consent label), `ContainerRunning`,
    /// `HeartbeatFresh` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Time of the worker's last heartbeat: from its content, or the file's modification time
    /// when the content has no time (`heartbeat.timeSource` says which). Status is written when
    /// something else changes, and at least every 5 minutes; `HeartbeatFresh` says whether the
    /// heartbeat is fresh now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// Content of the last readable heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatSummary>,
    /// What Docker reported about the container at the last observation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSummary>,
    /// Container restarts the operator performed for this Worker.
    #[serde(default)]
    pub restart_count: i32,
    /// When the operator last restarted the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_time: Option<Time>,
    /// When the heartbeat last showed a change of progress or current task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
    /// When the operator last wrote what it observed: at every change, and at least every 5
    /// minutes while nothing changes (the operator looks more often than it writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_observed_time: Option<Time>,
    /// Automatic actions are paused (`spec.autoRecovery.pause`): until when, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PauseSpec>,
    /// The automatic recovery policy's record: attempts in the window, backoff, the next
    /// attempt, crash counts of active tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_recovery: Option<AutoRecoveryStatus>,
    /// Where the worker stands on the escalation path, once automatic recovery gave up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<EscalationStatus>,
    /// Differences between the running container and `spec.resources`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<DriftItem>,
    /// The paths this Worker holds since it was admitted with them: no other Worker may use
    /// them (`PathsClaimed`). Kept while its container is briefly gone; dropped when the Worker
    /// is refused or its paths change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<PathClaim>,
    /// What the failure prediction found while the Worker is `AtRisk`: the resource, its limit
    /// and when the trend reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_risk: Option<RiskStatus>,
    /// The incident under way, from the first failure to healthy again or to the last
    /// escalation level: its timeline, from which the post-mortem is written (a ConfigMap
    /// `<worker>-postmortems`). A closed one stays until the Worker is Healthy again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<IncidentStatus>,
    /// Incidents ever opened for this Worker (numbers them).
    #[serde(default)]
    pub incidents_total: u32,
}

/// An incident: what happened to the Worker between its first failure and its recovery (or
/// the last escalation level).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IncidentStatus {
    /// Its number among the Worker's incidents (1, 2, ...).
    pub number: u32,
    /// When the failure was detected.
    pub started: Option<Time>,
    /// When it ended; unset while it is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Time>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<IncidentOutcome>,
    /// What happened, oldest first (at most 100 entries; the first ones are kept).
    pub timeline: Vec<TimelineEntry>,
    /// The WorkerRecoveries of the incident (automatic attempts).
    #[serde(default)]
    pub runs: Vec<String>,
    /// Timeline entries the post-mortem in the ConfigMap covers (written when it lags).
    #[serde(default)]
    pub reported: u32,
}

/// How an incident ended.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncidentOutcome {
    /// The Worker was Healthy again.
    Recovered,
    /// The last escalation level was reached: from here on it is in human hands.
    LastLevel,
}

/// One event of an incident.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub time: Option<Time>,
    /// `detected`, `attempt`, `escalated`, `notified`, `failover`, `poison`, `atRisk`,
    /// `phase`, `recovered`.
    pub kind: String,
    pub message: String,
}

/// A resource whose trend reaches its limit within the prediction horizon.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RiskStatus {
    /// The resource (`Memory`).
    pub resource: RiskResource,
    /// Its limit, in bytes.
    pub limit_bytes: i64,
    /// When the trend reaches the limit.
    pub predicted_time: Option<Time>,
    /// Since when the Worker is at risk.
    pub since: Option<Time>,
}

/// A resource the prediction watches.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RiskResource {
    /// The container's memory against its memory limit.
    #[default]
    Memory,
}

impl std::fmt::Display for RiskResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Paths a Worker holds, as resolved through symlinks when it was admitted.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PathClaim {
    /// Since when: of two Workers that claim the same path, the earlier keeps it.
    pub since: Option<Time>,
    pub task_directory: String,
    pub state_file: String,
    pub heartbeat_file: String,
    pub tmp_directory: String,
    /// The locks directory, shared by design, and the name whose `<name>_` prefix is held in it.
    pub locks_directory: String,
    pub worker_name: String,
    /// The core dump directory, when the Worker declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_dump_directory: Option<String>,
}

/// The record of the automatic recovery policy.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoRecoveryStatus {
    /// Automatic attempts, oldest first (those within the window, at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    /// Automatic attempts ever made for this Worker (names the runs: `<worker>-auto-<n>`).
    #[serde(default)]
    pub attempts_total: u64,
    /// Failures in a row without a healthy spell of `backoff.resetAfterSeconds` between them.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The wait before the next attempt, in seconds (0: the next one is immediate).
    #[serde(default)]
    pub backoff_seconds: u32,
    /// When the next attempt may start, while one is held back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,
    /// Why the next attempt is held back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
    /// Since when the worker has been healthy without a break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<Time>,
    /// The failure being handled, so that one crash gets one attempt: the container's
    /// `finishedAt` for a crash, the last heartbeat's time for a hang.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_failure: Option<String>,
    /// For each task in `active/` at the last crashes, at how many consecutive crashes it was
    /// there (poison detection; at most 100 tasks, fewer when their names are long).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub task_crash_counts: std::collections::BTreeMap<String, u32>,
    /// Tasks moved to `failed/` as poison (the last 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poisoned_tasks: Vec<String>,
}

/// One automatic attempt.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub time: Time,
    /// The WorkerRecovery that carries it out.
    pub run: String,
    /// What triggered it: `exit code 3`, `OOM-killed`, `heartbeat missed`, ...
    pub trigger: String,
    /// What was changed before the restart (`memory 256Mi -> 384Mi`), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
}

/// Where the worker stands on the escalation path.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EscalationStatus {
    /// The level reached (`spec.escalation.levels[].name`).
    pub level: String,
    /// Its index in `spec.escalation.levels`.
    pub level_index: u32,
    /// When the incident began: when automatic recovery gave up.
    pub since: Option<Time>,
    /// When this level was reached.
    pub level_time: Option<Time>,
    /// Why automatic recovery gave up.
    pub reason: String,
    /// The root cause of the last attempt, when one was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_cause: Option<crate::crd::diagnosis::RootCause>,
    /// The last automatic recovery run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The webhook's answer for the last level change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<NotificationStatus>,
    /// The failover of pending tasks to a backup Worker at the last level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverStatus>,
}

/// The webhook notification of the level reached.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStatus {
    /// The level it tells of.
    pub level: String,
    /// The level before it, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_level: Option<String>,
    /// `Pending` until the delivery ends, then `Delivered`, or `Failed` (refused, out of
    /// attempts, or past `deliverWithinSeconds`).
    pub state: NotificationState,
    /// Attempts made (written when the delivery ends).
    pub attempts: u32,
    /// Why it was not delivered; a URL is named only by `scheme://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was queued; `deliverWithinSeconds` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_time: Option<Time>,
    /// When the delivery ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Where a notification stands.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotificationState {
    /// Queued or being delivered, off the reconcile path.
    #[default]
    Pending,
    /// The webhook answered with a 2xx status.
    Delivered,
    /// Refused, out of attempts, or past `deliverWithinSeconds`: given up.
    Failed,
}

/// The move of pending tasks to a backup Worker. The batch's names are recorded before the
/// first one moves, like a resume plan's.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    /// The backup Worker.
    pub to: String,
    pub state: FailoverState,
    /// Tasks of the batch being moved (recorded before the move).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<String>,
    /// Tasks moved so far.
    #[serde(default)]
    pub moved: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a failover stands.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailoverState {
    /// Tasks are being moved, a batch at a time.
    #[default]
    Moving,
    /// Every pending task was moved.
    Done,
    /// No backup Worker could take them.
    Failed,
}

/// One setting of the running container that differs from `spec.resources`.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DriftItem {
    /// `memory`, `memorySwap`, `cpuQuota`, `nofile`, `nproc`, `healthCheck`.
    pub field: String,
    pub declared: String,
    pub actual: String,
}

/// Health summary of a Worker.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerPhase {
    /// Container running and heartbeat fresh.
    Healthy,
    /// Container running but the heartbeat is stale, missing or unreadable.
    Degraded,
    /// Container exited, missing, or never started.
    Down,
    /// The operator could not observe the container (Docker engine unreachable).
    Unknown,
    /// The operator may not manage this Worker: its shared root is outside the allowed roots,
    /// or its container does not carry the consent label. Nothing is read or touched.
    Refused,
    /// Automatic recovery gave up (restarts used up, or a failure a restart cannot fix): the
    /// worker is left stopped and escalated (`status.escalation`).
    Escalated,
}

impl std::fmt::Display for WorkerPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Heartbeat content as last read.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSummary {
    /// Status the worker reported (for example `idle` or `working`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Task the worker was working on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task: Option<String>,
    /// The worker's progress counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u64>,
    /// Where the heartbeat's time came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_source: Option<HeartbeatTimeSource>,
    /// The content field the time was read from, when `timeSource` is `Content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_field: Option<String>,
    /// What is wrong with the heartbeat's content (empty, not JSON, a time field that is not a
    /// time), when something is. Freshness is then judged by the file's modification time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_issue: Option<String>,
}

/// Where a heartbeat's time came from.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatTimeSource {
    /// A time field of the content (`timestamp`, `ts`, `time` or `last_heartbeat`).
    Content,
    /// The file's modification time: the content has no readable time field.
    FileModified,
}

/// Docker's view of the container.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSummary {
    /// Container ID (short form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Docker state: created, running, paused, restarting, exited, dead; `notFound` when no
    /// such container exists; `notManaged` when it exists without the consent label (then
    /// nothing else about it is reported).
    pub state: String,
    /// Exit code of the last run, when the container has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended the last run.
    #[serde(default)]
    pub oom_killed: bool,
    /// When the current or last run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the last run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Image the container runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Restarts done by Docker's own restart policy.
    #[serde(default)]
    pub docker_restart_count: i64,
}

fn default_shared_root() -> String {
    DEFAULT_SHARED_ROOT.to_string()
}

fn default_max_retries() -> u32 {
    3
}

fn default_heartbeat_timeout() -> u32 {
    DEFAULT_HEARTBEAT_TIMEOUT_SECONDS
}

/// Absolute host paths of a worker's files, resolved from the spec and its defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPaths {
    pub worker_name: String,
    pub shared_root: PathBuf,
    /// Where every confined walk to these paths starts: the allowed root that holds the
    /// shared root once the Worker is admitted (`crate::trust`), the shared root before.
    /// Walking down from it with `O_NOFOLLOW` refuses a symlink swapped in after admission.
    pub trusted_root: PathBuf,
    pub heartbeat_file: PathBuf,
    pub tasks_dir: PathBuf,
    pub locks_dir: PathBuf,
    pub state_file: PathBuf,
    pub tmp_dir: PathBuf,
    /// `diagnostics.coreDumpDir`, when declared.
    pub core_dump_dir: Option<PathBuf>,
}

/// A spec that the schema should have refused but that reached us anyway (for example from
/// an older CRD). Reported in status; the controller waits for the spec to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

impl Worker {
    /// What runs the worker, by the name its runtime knows it by: the container, or the
    /// systemd unit.
    pub fn target(&self) -> &str {
        match &self.spec.runtime {
            Some(r) => &r.systemd.unit,
            None => &self.spec.container,
        }
    }

    /// Whether the worker is a systemd service.
    pub fn is_systemd(&self) -> bool {
        self.spec.runtime.is_some()
    }

    /// The worker's name in its file layout.
    pub fn worker_name(&self) -> String {
        self.spec
            .worker_name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// Resolve every path of the worker under its declared shared root, refusing anything that
    /// could leave it. Pure: nothing on disk is looked at.
    pub fn resolved_paths(&self) -> Result<ResolvedPaths, SpecError> {
        let root = PathBuf::from(&self.spec.shared_root);
        self.resolved_paths_at(&root, &root)
    }

    /// Resolve every path of the worker under `root` (the shared root as resolved through
    /// symlinks), with confined walks starting from `trusted_root`.
    pub fn resolved_paths_at(
        &self,
        root: &Path,
        trusted_root: &Path,
    ) -> Result<ResolvedPaths, SpecError> {
        let name = self.worker_name();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(SpecError {
                field: "spec.workerName",
                reason: format!("{name:?} is not a valid worker name"),
            });
        }
        if !Path::new(&self.spec.shared_root).is_absolute() {
            return Err(SpecError {
                field: "spec.sharedRoot",
                reason: format!("{:?} is not an absolute path", self.spec.shared_root),
            });
        }
        let p = &self.spec.paths;
        let resolve = |field: &'static str, value: &Option<String>, default: &str| {
            let template = value.as_deref().unwrap_or(default);
            confined_join(root, &template.replace("{worker}", &name)).map_err(|e| SpecError {
                field,
                reason: e.to_string(),
            })
        };
        Ok(ResolvedPaths {
            heartbeat_file: resolve(
                "spec.paths.heartbeatFile",
                &p.heartbeat_file,
                "workers/{worker}/heartbeat.json",
            )?,
            tasks_dir: resolve("spec.paths.tasksDir", &p.tasks_dir, "tasks/{worker}")?,
            locks_dir: resolve("spec.paths.locksDir", &p.locks_dir, "locks")?,
            state_file: resolve(
                "spec.paths.stateFile",
                &p.state_file,
                "workers/{worker}/state.json",
            )?,
            tmp_dir: resolve("spec.paths.tmpDir", &p.tmp_dir, "tmp/{worker}")?,
            core_dump_dir: match &self.spec.diagnostics.core_dump_dir {
                Some(dir) => Some(resolve(
                    "spec.diagnostics.coreDumpDir",
                    &Some(dir.clone()),
                    "",
                )?),
                None => None,
            },
            shared_root: root.to_path_buf(),
            trusted_root: trusted_root.to_path_buf(),
            worker_name: name,
        })
    }
}

/// Why a path of the spec cannot be joined under the shared root; the text is a
/// [`SpecError`]'s reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum RelativePathError {
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} must be relative and must not contain '..'")]
    Escapes(String),
}

/// Join a relative path under `root`, refusing absolute paths and `..` components.
fn confined_join(root: &Path, relative: &str) -> Result<PathBuf, RelativePathError> {
    use std::path::Component;
    let rel = Path::new(relative);
    if relative.is_empty() {
        return Err(RelativePathError::Empty);
    }
    for component in rel.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            _ => return Err(RelativePathError::Escapes(relative.into())),
        }
    }
    Ok(root.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(yaml: &str) -> Worker {
        serde_yaml_ng::from_str(yaml).expect("fixture parses")
    }

    #[test]
    fn defaults_follow_the_runbook_layout() {
        let w = worker(
            "apiVersion: workerrecovery.io/v1alpha1\nkind: Worker\nmetadata: {name: marie, namespace: default}\nspec: {container: marie}\n",
        );
        assert_eq!(w.spec.shared_root, "/shared");
        assert_eq!(w.spec.heartbeat_timeout_seconds, 60);
        assert!(!w.spec.auto_recovery.enabled);
        let p = w.resolved_paths().unwrap();
        assert_eq!(
            p.heartbeat_file,
            Path::new("/shared/workers/marie/heartbeat.json")
        );
        assert_eq!(p.tasks_dir, Path::new("/shared/tasks/marie"));
        assert_eq!(p.locks_dir, Path::new("/shared/locks"));
        assert_eq!(p.state_file, Path::new("/shared/workers/marie/state.json"));
        assert_eq!(p.tmp_dir, Path::new("/shared/tmp/marie"));
    }

    #[test]
    fn worker_name_and_templates_override_defaults() {
        let w = worker(
            "apiVersion: workerrecovery.io/v1alpha1\nkind: Worker\nmetadata: {name: w1}\nspec: {container: c, workerName: anga, sharedRoot: /srv/x, paths: {heartbeatFile: 'hb/{worker}.json'}}\n",
        );
        let p = w.resolved_paths().unwrap();
        assert_eq!(p.worker_name, "anga");
        assert_eq!(p.heartbeat_file, Path::new("/srv/x/hb/anga.json"));
    }

    #[test]
    fn paths_escaping_the_shared_root_are_refused() {
        for bad in ["/etc/passwd", "../x", "a/../../b", ""] {
            let mut w = worker(
                "apiVersion: workerrecovery.io/v1alpha1\nkind: Worker\nmetadata: {name: w}\nspec: {container: c}\n",
            );
            w.spec.paths.tasks_dir = Some(bad.to_string());
            let err = w.resolved_paths().unwrap_err();
            assert_eq!(err.field, "spec.paths.tasksDir", "{bad}");
            let reason = if bad.is_empty() {
                "must not be empty".to_string()
            } else {
                format!("{bad:?} must be relative and must not contain '..'")
            };
            assert_eq!(err.reason, reason);
        }
        let mut w = worker(
            "apiVersion: workerrecovery.io/v1alpha1\nkind: Worker\nmetadata: {name: w}\nspec: {container: c, workerName: '..'}\n",
        );
        assert!(w.resolved_paths().is_err());
        w.spec.worker_name = None;
        w.spec.shared_root = "relative".into();
        assert_eq!(w.resolved_paths().unwrap_err().field, "spec.sharedRoot");
    }
}
