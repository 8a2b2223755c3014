//! An in-memory [`ContainerRuntime`] for unit tests of checks and controllers.

use std::{collections::HashMap, sync::Mutex};

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;

use super::{
    ContainerInfo, ContainerRuntime, DockerError, ExecOutput, MemoryStats, PathStat, StartOutcome,
};

/// Canned answers; anything not set answers "not found" / empty.
#[derive(Default)]
pub struct FakeRuntime {
    pub containers: Mutex<HashMap<String, ContainerInfo>>,
    /// Exec answers keyed by the command joined with spaces.
    pub exec: HashMap<String, Result<ExecOutput, String>>,
    pub logs: Vec<String>,
    pub memory: Option<MemoryStats>,
    pub oom_events: Vec<Timestamp>,
    pub paths: HashMap<String, PathStat>,
    pub starts: Mutex<u32>,
    /// Every exec hangs this long first (a stuck `docker exec`).
    pub exec_delay: Option<std::time::Duration>,
}

impl FakeRuntime {
    /// The container called `container`, by name or by ID, as the engine finds it.
    fn key_of(containers: &HashMap<String, ContainerInfo>, container: &str) -> Option<String> {
        containers
            .iter()
            .find(|(name, info)| *name == container || info.id == container)
            .map(|(name, _)| name.clone())
    }

    pub fn with_container(info: ContainerInfo) -> Self {
        let fake = Self::default();
        fake.containers
            .lock()
            .unwrap()
            .insert(info.name.clone(), info);
        fake
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn inspect(&self, container: &str) -> Result<Option<ContainerInfo>, DockerError> {
        let containers = self.containers.lock().unwrap();
        Ok(Self::key_of(&containers, container).and_then(|k| containers.get(&k).cloned()))
    }

    async fn start(&self, container: &str) -> Result<StartOutcome, DockerError> {
        let mut containers = self.containers.lock().unwrap();
        let info = Self::key_of(&containers, container)
            .and_then(|k| containers.get_mut(&k))
            .ok_or_else(|| DockerError::NotFound(container.into()))?;
        if info.running {
            return Ok(StartOutcome::AlreadyRunning);
        }
        info.running = true;
        info.status = "running".into();
        *self.starts.lock().unwrap() += 1;
        Ok(StartOutcome::Started)
    }

    async fn exec(&self, _container: &str, cmd: &[&str]) -> Result<ExecOutput, DockerError> {
        if let Some(delay) = self.exec_delay {
            tokio::time::sleep(delay).await;
        }
        match self.exec.get(&cmd.join(" ")) {
            Some(Ok(out)) => Ok(out.clone()),
            Some(Err(e)) => Err(DockerError::Refused {
                operation: "exec",
                message: e.clone(),
            }),
            None => Err(DockerError::Refused {
                operation: "exec",
                message: format!("no canned answer for {cmd:?}"),
            }),
        }
    }

    async fn logs(
        &self,
        _container: &str,
        tail: u32,
        _since: Timestamp,
    ) -> Result<Vec<String>, DockerError> {
        let skip = self.logs.len().saturating_sub(tail as usize);
        Ok(self.logs[skip..].to_vec())
    }

    async fn memory_stats(&self, container: &str) -> Result<MemoryStats, DockerError> {
        self.memory
            .ok_or_else(|| DockerError::NotFound(container.into()))
    }

    async fn oom_events(
        &self,
        _container: &str,
        _since: Timestamp,
        _until: Timestamp,
    ) -> Result<Vec<Timestamp>, DockerError> {
        Ok(self.oom_events.clone())
    }

    async fn stat_path(
        &self,
        _container: &str,
        path: &str,
    ) -> Result<Option<PathStat>, DockerError> {
        Ok(self.paths.get(path).cloned())
    }
}
