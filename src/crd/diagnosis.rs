//! What a diagnosis reports: findings with evidence, and a ranked root-cause verdict.
//! These are API types (the `status.diagnosis` schema of a WorkerRecovery); the diagnosis in
//! `crate::diagnose` builds them, and nothing here depends on it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The checks of the runbook, one per finding source.
#[derive(
    JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "camelCase")]
pub enum CheckName {
    Container,
    Process,
    Heartbeat,
    CrashLogs,
    Memory,
    FileDescriptors,
    Deadlock,
    Dependencies,
    MetricsEndpoint,
}

impl CheckName {
    pub const ALL: [CheckName; 9] = [
        CheckName::Container,
        CheckName::Process,
        CheckName::Heartbeat,
        CheckName::CrashLogs,
        CheckName::Memory,
        CheckName::FileDescriptors,
        CheckName::Deadlock,
        CheckName::Dependencies,
        CheckName::MetricsEndpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Process => "process",
            Self::Heartbeat => "heartbeat",
            Self::CrashLogs => "crashLogs",
            Self::Memory => "memory",
            Self::FileDescriptors => "fileDescriptors",
            Self::Deadlock => "deadlock",
            Self::Dependencies => "dependencies",
            Self::MetricsEndpoint => "metricsEndpoint",
        }
    }
}

/// How bad a finding is.
#[derive(
    JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum Severity {
    /// Context: all is well, or a fact worth knowing.
    Info,
    /// Something is off but does not explain a failure on its own.
    Warning,
    /// Explains (part of) a failure.
    Critical,
}

/// What was found. Each kind names one fact the runbook looks for.
#[derive(
    JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum FindingKind {
    // Container
    ContainerRunning,
    ContainerExited,
    ContainerNotFound,
    ContainerRestarting,
    ContainerPaused,
    OomKilled,
    // Process
    ProcessAlive,
    ProcessMissing,
    // Heartbeat
    HeartbeatFresh,
    HeartbeatStale,
    HeartbeatMissing,
    HeartbeatInvalid,
    NoProgress,
    // Logs
    LogErrors,
    LogClean,
    AppLogUnavailable,
    // Memory
    MemoryUsage,
    MemoryNearLimit,
    OomEvent,
    KernelOomKill,
    KernelLogUnavailable,
    // File descriptors
    FdUsage,
    FdExhausted,
    FdNearLimit,
    SystemFileTable,
    // Deadlock
    StuckTask,
    StaleLock,
    TasksOk,
    MalformedTask,
    UnsafePath,
    // Dependencies
    BinaryPresent,
    BinaryMissing,
    BinaryNotExecutable,
    PackageMissing,
    PackagePresent,
    PipeMissing,
    PipeNotFifo,
    PipePresent,
    // Metrics endpoint
    MetricsReachable,
    MetricsUnreachable,
    MetricsNotDeclared,
    // The check itself could not run (exec refused, file unreadable, timeout).
    CheckFailed,
}

/// One fact a check established, with the evidence for it.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// The check that produced it.
    pub check: CheckName,
    pub kind: FindingKind,
    pub severity: Severity,
    /// One line a human can read.
    pub summary: String,
    /// Numbers, paths, log lines and timestamps that back the summary.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evidence: BTreeMap<String, String>,
    /// When it was observed.
    pub observed_at: Time,
}

/// A likely root cause of the worker's failure.
#[derive(
    JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum RootCause {
    /// Killed by the kernel's OOM killer (runbook: Memory Issues).
    OutOfMemory,
    /// Out of file descriptors (runbook: File Descriptor Exhaustion).
    FileDescriptorExhaustion,
    /// Alive but stuck: no heartbeat or no progress, tasks or locks held too long (runbook: Deadlock Detection).
    Deadlock,
    /// A required binary, package or pipe is missing (runbook: Dependency Issues).
    MissingDependency,
    /// The process exited on an error of its own.
    ApplicationCrash,
    /// The container does not exist.
    ContainerMissing,
    /// Only the metrics endpoint is failing.
    MetricsEndpointDown,
}

impl std::fmt::Display for RootCause {
    /// The variant's name, as the API spells it (`OutOfMemory`, ...).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One ranked cause with the findings that support it.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RankedCause {
    pub cause: RootCause,
    /// Higher is more likely; only the order matters.
    pub score: u32,
    pub summary: String,
    /// Kinds of the findings that support this cause.
    pub supporting: Vec<FindingKind>,
}

/// The root-cause verdict: causes from most to least likely.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// The most likely cause, or none when nothing is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_cause: Option<RootCause>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<RankedCause>,
}

/// A finished diagnosis.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    pub worker: String,
    pub container: String,
    pub started_at: Time,
    pub completed_at: Time,
    pub findings: Vec<Finding>,
    pub verdict: Verdict,
}

/// Longest evidence value kept in status; longer values are cut with a marker.
pub const MAX_EVIDENCE_CHARS: usize = 2048;

impl Finding {
    /// Add one piece of evidence (cut to [`MAX_EVIDENCE_CHARS`]).
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        let mut value = value.to_string();
        if value.len() > MAX_EVIDENCE_CHARS {
            let mut cut = MAX_EVIDENCE_CHARS;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
            value.push_str(" …[cut]");
        }
        self.evidence.insert(key.to_string(), value);
        self
    }

    /// Add evidence when there is a value; nothing otherwise.
    pub fn with_opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.with(key, v),
            None => self,
        }
    }
}
