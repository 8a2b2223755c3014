//! The container engine as the controllers see it: a small trait, so that reconcile logic can be
//! unit-tested against a fake, and a Docker implementation over bollard.

mod engine;

pub use engine::DockerEngine;

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;

/// What the operator needs to know about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: Option<String>,
    /// Docker's state word: created, running, paused, restarting, removing, exited, dead.
    pub status: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub pid: Option<i64>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Restarts done by Docker's own restart policy.
    pub restart_count: i64,
}

impl ContainerInfo {
    /// The container ID in the short form `docker ps` prints.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// Result of asking the engine to start a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// It was already running (someone else started it first): nothing to do.
    AlreadyRunning,
}

/// Errors talking to the container engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("Docker engine unreachable: {0}")]
    Unavailable(String),
    #[error("Docker engine refused {operation}: {message}")]
    Refused {
        operation: &'static str,
        message: String,
    },
}

/// Side effects on containers, held in the controller context.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Inspect a container; `Ok(None)` when it does not exist.
    async fn inspect(&self, container: &str) -> Result<Option<ContainerInfo>, DockerError>;
    /// Start a stopped container (idempotent: a running one is left as it is).
    async fn start(&self, container: &str) -> Result<StartOutcome, DockerError>;
}
