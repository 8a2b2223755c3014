//! What runs a worker, as the controllers see it: the [`WorkerRuntime`] trait, so that
//! reconcile logic is the same for every runtime and unit-tested against a fake, with a Docker
//! implementation over bollard ([`docker`]) and a systemd one over D-Bus ([`systemd`]).

pub mod docker;
#[cfg(test)]
pub mod fake;
pub mod host_process;
pub mod resources;
pub mod systemd;

pub use docker::DockerEngine;
pub use host_process::HostProcess;

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;

/// What the operator needs to know about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: Option<String>,
    /// Docker's state.
    pub status: ContainerState,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub pid: Option<i64>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Restarts done by Docker's own restart policy.
    pub restart_count: i64,
    /// Memory limit in bytes (`-m`), when one is set.
    pub memory_limit: Option<i64>,
    /// Memory plus swap limit in bytes (`--memory-swap`), when one is set (-1: unlimited).
    pub memory_swap: Option<i64>,
    /// `nofile` ulimit (soft, hard) set on the container, when one is set.
    pub nofile_limit: Option<(i64, i64)>,
    /// `nproc` ulimit (soft, hard), when one is set.
    pub nproc_limit: Option<(i64, i64)>,
    /// CPU limit as a quota in microseconds per 100 ms period, when one is set (`--cpu-quota`
    /// with another `--cpu-period`, and `--cpus`, converted: `--cpus 1.5` is 150000).
    pub cpu_quota: Option<i64>,
    /// The container's health check (`HEALTHCHECK`, image's or `docker run --health-*`), when
    /// it has one.
    pub health_check: Option<HealthCheck>,
    /// State of the health check: `starting`, `healthy` or `unhealthy` (`State.Health.Status`);
    /// `None` without a health check.
    pub health: Option<String>,
    /// The container's environment (`KEY=value`), for its PATH.
    pub env: Vec<String>,
    /// Entrypoint followed by command: what PID 1 runs (or its child, under `--init`).
    pub command: Vec<String>,
    /// Started with `docker run --init`: PID 1 is `docker-init`, the worker is its child.
    pub init: bool,
    /// The container's labels, among them the operator's consent label.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A container health check (Docker `HEALTHCHECK`), as the operator declares and reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// What runs, `CMD` form (no shell): the command and its arguments. A `CMD-SHELL` check
    /// reads as `["/bin/sh", "-c", "<its command>"]`.
    pub command: Vec<String>,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    /// Consecutive failures that make the container `unhealthy`.
    pub retries: u32,
    pub start_period: std::time::Duration,
}

/// Docker's state of a container (`State.Status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// The engine gave no state, or one this operator does not know.
    #[default]
    Unknown,
}

impl ContainerState {
    /// Docker's word for it, as `docker ps` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
            Self::Unknown => "unknown",
        }
    }

    /// Docker's word read back (the fake engine and tests use it).
    pub fn from_word(word: &str) -> Self {
        [
            Self::Created,
            Self::Running,
            Self::Paused,
            Self::Restarting,
            Self::Removing,
            Self::Exited,
            Self::Dead,
        ]
        .into_iter()
        .find(|s| s.as_str() == word)
        .unwrap_or(Self::Unknown)
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Output of a command run inside a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
}

/// Memory use of a running container, from the stats API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub usage_bytes: u64,
    pub limit_bytes: u64,
}

/// A path inside a container's filesystem (works on stopped containers too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathStat {
    /// Unix permission and type bits as Docker reports them (Go `os.FileMode`).
    pub mode: u32,
    pub size: i64,
    pub is_dir: bool,
    /// Target when the path is a symlink.
    pub link_target: Option<String>,
}

impl ContainerInfo {
    /// The container ID in the short form `docker ps` prints.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// What asking the engine about a container gave.
#[derive(Clone, Debug, PartialEq)]
pub enum ContainerObservation {
    Found(Box<ContainerInfo>),
    NotFound,
    /// The engine could not be asked, or refused to answer.
    Unavailable(RuntimeError),
}

impl ContainerObservation {
    /// Inspect `container` and fold the answer into an observation.
    pub async fn of(docker: &dyn WorkerRuntime, container: &str) -> Self {
        match docker.inspect(container).await {
            Ok(Some(info)) => Self::Found(Box::new(info)),
            Ok(None) => Self::NotFound,
            Err(e) => Self::Unavailable(e),
        }
    }
}

/// Result of asking the engine to start a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// It was already running (someone else started it first): nothing to do.
    AlreadyRunning,
}

/// A copy of a container, for the runbook's "Start with Debugging".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloneSpec {
    /// Name of the copy.
    pub name: String,
    /// Environment variables set (or replaced) in the copy.
    pub env: Vec<(String, String)>,
    /// Labels added to (or replaced in) the copy's labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Allow core dumps of any size (`--ulimit core=-1`).
    pub core_unlimited: bool,
    /// A host directory mounted (read-write) into the copy: where its cores go.
    pub core_dir: Option<BindMount>,
    /// The copy's working directory, when it is not the original's.
    pub working_dir: Option<String>,
}

/// A host directory or file mounted into a container (`-v host:target[:ro]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub host: std::path::PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// A one-off container run to its end, then removed: the core analyzer. It runs without a
/// network, with a read-only root filesystem (and a small `/tmp`), without new privileges and
/// with every capability dropped but reading files regardless of their owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The container's name; a leftover of this name carrying `labels` is removed first.
    pub name: String,
    pub image: String,
    /// Entrypoint and arguments.
    pub command: Vec<String>,
    pub mounts: Vec<BindMount>,
    /// Labels of the container; the first one marks it as the operator's.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The job is killed after this long.
    pub timeout: std::time::Duration,
    pub memory_bytes: i64,
}

/// How a [`Job`] ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobOutput {
    /// `None` when it was killed at its timeout.
    pub exit_code: Option<i64>,
    /// stdout and stderr, interleaved, at most `max_output` bytes.
    pub output: String,
    pub truncated: bool,
}

/// One event of the engine about a container that carries the consent label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// `die`, `oom`, `start`, `stop`, `destroy`, `health_status: unhealthy`, ...
    pub action: String,
    pub container_id: String,
    /// The container's labels, as the engine reports them with the event.
    pub labels: std::collections::BTreeMap<String, String>,
    /// When it happened (the engine's clock).
    pub time: Option<Timestamp>,
}

/// Actions of the event stream that can change what the Worker controller sees.
pub const WATCHED_ACTIONS: [&str; 6] = ["die", "oom", "health_status", "start", "stop", "destroy"];

/// Which runtime an error comes from; its messages name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    Docker,
    Systemd,
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Docker => "Docker engine",
            Self::Systemd => "systemd",
        })
    }
}

/// Errors talking to a worker runtime.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The container or unit does not exist.
    #[error("{0:?} not found")]
    NotFound(String),
    #[error("{runtime} unreachable: {message}")]
    Unavailable {
        runtime: RuntimeKind,
        message: String,
    },
    #[error("{runtime} refused {operation}: {message}")]
    Refused {
        runtime: RuntimeKind,
        operation: &'static str,
        message: String,
    },
    /// The Worker's runtime cannot do this at all (see [`Capabilities`]).
    #[error("{operation} is not supported by {runtime}")]
    Unsupported {
        operation: &'static str,
        runtime: RuntimeKind,
    },
}

/// What a worker runtime can do beyond observing, starting, stopping and restarting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Which runtime this is, as messages name it.
    pub runtime: RuntimeKind,
    /// `Debug` runs: a copy of the worker with debug settings.
    pub debug_copy: bool,
    /// Commands run inside the worker (`docker exec`): process, descriptor and dependency
    /// checks.
    pub exec: bool,
    /// The worker's processes are processes of the operator's host, read from its `/proc`
    /// ([`WorkerRuntime::host_process`]) where `exec` is not possible.
    pub host_processes: bool,
    /// The worker's log (`docker logs`).
    pub logs: bool,
    /// A replacement with new settings (`nofile`, health checks): `resources.apply: OnRestart`.
    pub recreate: bool,
}

impl Capabilities {
    pub const DOCKER: Self = Self {
        runtime: RuntimeKind::Docker,
        debug_copy: true,
        exec: true,
        host_processes: false,
        logs: true,
        recreate: true,
    };
    pub const SYSTEMD: Self = Self {
        runtime: RuntimeKind::Systemd,
        debug_copy: false,
        exec: false,
        host_processes: true,
        logs: true,
        recreate: false,
    };
}

/// Limits changed in place by [`WorkerRuntime::update_resources`]; `None` leaves a limit as
/// it is. Sizes are bytes, the CPU quota is microseconds per 100 ms period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub cpu_quota: Option<i64>,
}

impl RuntimeError {
    /// The runtime could not be reached, or the connection broke.
    pub fn unavailable(runtime: RuntimeKind, message: impl Into<String>) -> Self {
        Self::Unavailable {
            runtime,
            message: message.into(),
        }
    }

    /// The runtime refused `operation`, saying `message`.
    pub fn refused(
        runtime: RuntimeKind,
        operation: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::Refused {
            runtime,
            operation,
            message: message.into(),
        }
    }

    /// Label for the `error` dimension of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        use RuntimeKind::{Docker, Systemd};
        match self {
            Self::NotFound(_) => "runtime_not_found",
            Self::Unavailable {
                runtime: Docker, ..
            } => "docker_unavailable",
            Self::Unavailable {
                runtime: Systemd, ..
            } => "systemd_unavailable",
            Self::Refused {
                runtime: Docker, ..
            } => "docker_refused",
            Self::Refused {
                runtime: Systemd, ..
            } => "systemd_refused",
            Self::Unsupported { .. } => "runtime_unsupported",
        }
    }
}

/// What runs a worker, as the controllers act on it: a Docker container ([`DockerEngine`]) or a
/// systemd service ([`crate::runtime::systemd::runtime::SystemdRuntime`]), named by what the runtime
/// knows it by (the "container" of the methods). Held in the controller context.
#[async_trait]
pub trait WorkerRuntime: Send + Sync + 'static {
    /// What this runtime can do: a run that needs more fails with a reason.
    fn capabilities(&self) -> Capabilities {
        Capabilities::DOCKER
    }
    /// Inspect a container; `Ok(None)` when it does not exist.
    async fn inspect(&self, container: &str) -> Result<Option<ContainerInfo>, RuntimeError>;
    /// Start a stopped container (idempotent: a running one is left as it is).
    async fn start(&self, container: &str) -> Result<StartOutcome, RuntimeError>;
    /// The worker's main process as the operator's `/proc` shows it, when the runtime's
    /// [`Capabilities::host_processes`]; `Ok(None)` when it does not run or is not visible
    /// from the operator's PID namespace.
    async fn host_process(&self, _container: &str) -> Result<Option<HostProcess>, RuntimeError> {
        Ok(None)
    }
    /// Run `cmd` inside a running container and collect its output.
    async fn exec(&self, container: &str, cmd: &[&str]) -> Result<ExecOutput, RuntimeError>;
    /// The last `tail` lines of the container's log (stdout and stderr) since `since`; at most
    /// 1 MiB is read (`engine::MAX_LOG_BYTES`): a log of huge lines gives what fits.
    async fn logs(
        &self,
        container: &str,
        tail: u32,
        since: Timestamp,
    ) -> Result<Vec<String>, RuntimeError>;
    /// Memory usage and limit of a running container.
    async fn memory_stats(&self, container: &str) -> Result<MemoryStats, RuntimeError>;
    /// Times of Docker `oom` events of the container between `since` and `until`.
    async fn oom_events(
        &self,
        container: &str,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<Timestamp>, RuntimeError>;
    /// Stat a path in the container's filesystem; `Ok(None)` when it does not exist.
    async fn stat_path(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<PathStat>, RuntimeError>;
    /// Stop a container: SIGTERM, then SIGKILL after `grace` (idempotent: a stopped one is left).
    async fn stop(&self, container: &str, grace: std::time::Duration) -> Result<(), RuntimeError>;
    /// Stop (with `grace`) and start a container; a stopped one is just started.
    async fn restart(
        &self,
        container: &str,
        grace: std::time::Duration,
    ) -> Result<(), RuntimeError>;
    /// Create (not start) a copy of `source` with its image, command, environment, mounts,
    /// labels and network, changed as `clone` says; returns the copy's ID.
    async fn create_clone(&self, source: &str, clone: &CloneSpec) -> Result<String, RuntimeError>;
    /// Remove a container, stopping it first; `Ok(false)` when it did not exist.
    async fn remove(&self, container: &str) -> Result<bool, RuntimeError>;
    /// The regular file `path` of a container (running or stopped), at most `limit` bytes
    /// (`docker cp`); a larger one, or one that is not a regular file, is refused.
    async fn copy_file_out(
        &self,
        container: &str,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, RuntimeError>;
    /// Run `job` to its end (or its timeout) and remove it; its output is kept up to
    /// `max_output` bytes.
    async fn run_job(&self, job: &Job, max_output: usize) -> Result<JobOutput, RuntimeError>;
    /// Change the limits of a running or stopped container in place (`docker update`).
    ///
    /// Docker refuses a memory limit above the container's memory+swap limit, so when
    /// `memory` is raised above the current swap limit and `memory_swap` is `None`, the swap
    /// limit is raised to `memory` with it (no swap; see [`resources::swap_for_update`]). A
    /// container limited with `--cpus` gets the quota as `--cpus` (Docker cannot switch one
    /// to a quota in place).
    async fn update_resources(&self, container: &str, limits: Limits) -> Result<(), RuntimeError>;
    /// Replace a container by one with the same name, image, command, entrypoint, environment,
    /// labels, mounts (anonymous volumes included: the new one gets the same volumes), network
    /// (mode, aliases, other networks), working dir, user, init flag, restart policy and every
    /// other `HostConfig` setting, with `declared` applied on top, and start it; returns the
    /// new ID.
    ///
    /// Crash-aware: the new container is created under `<name>`[`resources::NEW_SUFFIX`]
    /// first (a leftover of that name carrying the same consent label is removed before),
    /// then the old one is stopped (SIGTERM, SIGKILL after `grace`) and removed, then the new
    /// one is renamed to `<name>` and started. Interrupted after the old one went, the
    /// container to adopt is `<name>-wro-new`; interrupted before, the old one is still there
    /// and a later recreate starts over.
    async fn recreate(
        &self,
        container: &str,
        declared: &resources::Declared,
        grace: std::time::Duration,
    ) -> Result<String, RuntimeError>;
    /// Rename a container.
    async fn rename(&self, container: &str, new_name: &str) -> Result<(), RuntimeError>;
    /// The engine's events ([`WATCHED_ACTIONS`]) about containers that carry the label
    /// `label`, from `since` (replayed by the engine) on. The stream ends or fails when the
    /// engine goes away.
    fn events(
        &self,
        label: &str,
        since: Option<Timestamp>,
    ) -> futures::stream::BoxStream<'static, Result<ContainerEvent, RuntimeError>>;
}
