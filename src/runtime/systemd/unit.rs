//! A systemd service as the operator sees it, read from the properties of its unit and service
//! interfaces (`org.freedesktop.systemd1.Unit`, `.Service`). Pure: the D-Bus side hands over
//! plain values ([`Prop`]), so that the reading is unit-tested with fixtures.

use std::{collections::HashMap, time::Duration};

use k8s_openapi::jiff::Timestamp;

/// The environment variable by which a unit lets one Worker manage it
/// (`WORKERRECOVERY_WORKER=<namespace>/<name>`), as the consent label does for a container.
pub const CONSENT_VARIABLE: &str = "WORKERRECOVERY_WORKER";

/// A property value, as far as the operator reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prop {
    Unsigned(u64),
    Signed(i64),
    Text(String),
    Texts(Vec<String>),
    /// A type the operator does not read.
    Other,
}

/// Properties by name.
pub type Props = HashMap<String, Prop>;

/// `ActiveState` of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveState {
    Active,
    Reloading,
    Inactive,
    Failed,
    Activating,
    Deactivating,
    Maintenance,
    Refreshing,
    Unknown,
}

impl ActiveState {
    fn parse(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "reloading" => Self::Reloading,
            "inactive" => Self::Inactive,
            "failed" => Self::Failed,
            "activating" => Self::Activating,
            "deactivating" => Self::Deactivating,
            "maintenance" => Self::Maintenance,
            "refreshing" => Self::Refreshing,
            _ => Self::Unknown,
        }
    }

    /// A job is changing it (start, stop, restart under way).
    pub fn in_transition(self) -> bool {
        matches!(
            self,
            Self::Activating | Self::Deactivating | Self::Reloading
        )
    }
}

/// `Result` of a service: why it last stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceResult {
    Success,
    ExitCode,
    Signal,
    CoreDump,
    OomKill,
    Watchdog,
    Timeout,
    StartLimitHit,
    Other(String),
}

impl ServiceResult {
    fn parse(s: &str) -> Self {
        match s {
            "success" => Self::Success,
            "exit-code" => Self::ExitCode,
            "signal" => Self::Signal,
            "core-dump" => Self::CoreDump,
            "oom-kill" => Self::OomKill,
            "watchdog" => Self::Watchdog,
            "timeout" => Self::Timeout,
            "start-limit-hit" => Self::StartLimitHit,
            other => Self::Other(other.to_string()),
        }
    }
}

/// One service unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    pub name: String,
    /// `loaded`, `not-found`, `masked`, `error`, ...
    pub load_state: String,
    pub active_state: ActiveState,
    /// `running`, `exited`, `dead`, `failed`, `auto-restart`, ...
    pub sub_state: String,
    pub result: ServiceResult,
    /// Exit status of the main process, or the signal that ended it.
    pub exec_main_status: i32,
    /// The main process while it runs.
    pub main_pid: Option<u32>,
    /// Restarts done by systemd's own `Restart=`.
    pub n_restarts: u32,
    pub started_at: Option<Timestamp>,
    pub exited_at: Option<Timestamp>,
    /// The same two on the monotonic clock (time since boot), as the kernel's log stamps its
    /// lines.
    pub started_monotonic: Option<Duration>,
    pub exited_monotonic: Option<Duration>,
    /// `Environment=` entries (`KEY=value`).
    pub environment: Vec<String>,
    /// `MemoryMax=` in bytes; `None` for infinity.
    pub memory_max: Option<u64>,
    /// Memory used now, when accounted.
    pub memory_current: Option<u64>,
    /// The soft `LimitNOFILE=`.
    pub nofile_limit: Option<u64>,
    /// The unit's cgroup (`/system.slice/<unit>`), empty when it has none.
    pub control_group: String,
    /// The id of the job queued or running for the unit (a start, a stop).
    pub job: Option<u32>,
}

impl UnitInfo {
    /// Read a unit from the properties of its `Unit` and `Service` interfaces.
    pub fn from_props(name: &str, unit: &Props, service: &Props) -> Self {
        let text = |p: &Props, k: &str| match p.get(k) {
            Some(Prop::Text(s)) => s.clone(),
            _ => String::new(),
        };
        let unsigned = |p: &Props, k: &str| match p.get(k) {
            Some(Prop::Unsigned(v)) => Some(*v),
            _ => None,
        };
        // systemd says "unset" or "infinity" with u64::MAX.
        let bounded = |v: Option<u64>| v.filter(|v| *v != u64::MAX);
        let time = |k: &str| unsigned(service, k).filter(|us| *us > 0).and_then(micros);
        let monotonic = |k: &str| {
            unsigned(service, k)
                .filter(|us| *us > 0)
                .map(Duration::from_micros)
        };
        Self {
            name: name.to_string(),
            load_state: text(unit, "LoadState"),
            active_state: ActiveState::parse(&text(unit, "ActiveState")),
            sub_state: text(unit, "SubState"),
            result: ServiceResult::parse(&text(service, "Result")),
            exec_main_status: match service.get("ExecMainStatus") {
                Some(Prop::Signed(v)) => *v as i32,
                _ => 0,
            },
            main_pid: unsigned(service, "MainPID")
                .filter(|p| *p > 0)
                .map(|p| p as u32),
            n_restarts: unsigned(service, "NRestarts").unwrap_or(0) as u32,
            started_at: time("ExecMainStartTimestamp"),
            exited_at: time("ExecMainExitTimestamp"),
            started_monotonic: monotonic("ExecMainStartTimestampMonotonic"),
            exited_monotonic: monotonic("ExecMainExitTimestampMonotonic"),
            environment: match service.get("Environment") {
                Some(Prop::Texts(v)) => v.clone(),
                _ => Vec::new(),
            },
            memory_max: bounded(unsigned(service, "MemoryMax")),
            memory_current: bounded(unsigned(service, "MemoryCurrent")),
            nofile_limit: bounded(unsigned(service, "LimitNOFILESoft")),
            control_group: text(service, "ControlGroup"),
            job: unsigned(unit, "Job")
                .filter(|id| *id > 0)
                .and_then(|id| u32::try_from(id).ok()),
        }
    }

    /// Whether systemd knows the unit (a unit file exists and loaded).
    pub fn exists(&self) -> bool {
        self.load_state != "not-found"
    }

    /// The Worker the unit consents to be managed by (`<namespace>/<name>`), from its
    /// `Environment=`.
    pub fn consent(&self) -> Option<&str> {
        self.environment
            .iter()
            .rev()
            .find_map(|kv| kv.strip_prefix(CONSENT_VARIABLE)?.strip_prefix('='))
    }

    pub fn running(&self) -> bool {
        self.active_state == ActiveState::Active && self.main_pid.is_some()
    }
}

fn micros(us: u64) -> Option<Timestamp> {
    Timestamp::from_microsecond(i64::try_from(us).ok()?).ok()
}

#[cfg(test)]
mod tests;
