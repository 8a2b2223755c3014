//! An in-memory [`ContainerRuntime`] for unit tests of checks and controllers.

use std::{collections::HashMap, sync::Mutex};

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;

use super::{
    CloneSpec, ContainerEvent, ContainerInfo, ContainerRuntime, DockerError, ExecOutput,
    MemoryStats, PathStat, StartOutcome,
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
    /// Containers stopped, restarted, cloned and removed, in order: `stop marie`, ...
    pub actions: Mutex<Vec<String>>,
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

    async fn stop(&self, container: &str, _grace: std::time::Duration) -> Result<(), DockerError> {
        let mut containers = self.containers.lock().unwrap();
        let info = Self::key_of(&containers, container)
            .and_then(|k| containers.get_mut(&k))
            .ok_or_else(|| DockerError::NotFound(container.into()))?;
        info.running = false;
        info.status = "exited".into();
        self.actions
            .lock()
            .unwrap()
            .push(format!("stop {}", info.name));
        Ok(())
    }

    async fn restart(
        &self,
        container: &str,
        grace: std::time::Duration,
    ) -> Result<(), DockerError> {
        self.stop(container, grace).await?;
        self.start(container).await?;
        let name = self
            .inspect(container)
            .await?
            .map(|c| c.name)
            .unwrap_or_default();
        self.actions.lock().unwrap().push(format!("restart {name}"));
        Ok(())
    }

    async fn create_clone(&self, source: &str, clone: &CloneSpec) -> Result<String, DockerError> {
        let mut containers = self.containers.lock().unwrap();
        let original = Self::key_of(&containers, source)
            .and_then(|k| containers.get(&k).cloned())
            .ok_or_else(|| DockerError::NotFound(source.into()))?;
        if containers.contains_key(&clone.name) {
            return Err(DockerError::Refused {
                operation: "create",
                message: format!("name {} in use", clone.name),
            });
        }
        let mut copy = original.clone();
        copy.id = format!("{}-clone", original.id);
        copy.name = clone.name.clone();
        copy.running = false;
        copy.status = "created".into();
        copy.env
            .extend(clone.env.iter().map(|(k, v)| format!("{k}={v}")));
        copy.labels.extend(clone.labels.clone());
        let id = copy.id.clone();
        containers.insert(clone.name.clone(), copy);
        self.actions
            .lock()
            .unwrap()
            .push(format!("clone {} {}", original.name, clone.name));
        Ok(id)
    }

    async fn remove(&self, container: &str) -> Result<bool, DockerError> {
        let mut containers = self.containers.lock().unwrap();
        let Some(key) = Self::key_of(&containers, container) else {
            return Ok(false);
        };
        containers.remove(&key);
        self.actions.lock().unwrap().push(format!("remove {key}"));
        Ok(true)
    }

    async fn recreate(
        &self,
        container: &str,
        declared: &super::resources::Declared,
        _grace: std::time::Duration,
    ) -> Result<String, DockerError> {
        let mut containers = self.containers.lock().unwrap();
        let key = Self::key_of(&containers, container)
            .ok_or_else(|| DockerError::NotFound(container.into()))?;
        let mut c = containers.remove(&key).expect("found by key");
        c.id = format!("{}-recreated", c.id);
        c.memory_limit = declared.memory.or(c.memory_limit);
        c.memory_swap = declared.memory_swap.or(c.memory_swap);
        c.cpu_quota = declared.cpu_quota.or(c.cpu_quota);
        c.nofile_limit = declared.nofile.or(c.nofile_limit);
        c.nproc_limit = declared.nproc.or(c.nproc_limit);
        c.health_check = declared.health_check.clone().or(c.health_check);
        c.running = true;
        c.status = "running".into();
        let id = c.id.clone();
        containers.insert(key.clone(), c);
        self.actions.lock().unwrap().push(format!("recreate {key}"));
        Ok(id)
    }

    async fn rename(&self, container: &str, new_name: &str) -> Result<(), DockerError> {
        let mut containers = self.containers.lock().unwrap();
        let key = Self::key_of(&containers, container)
            .ok_or_else(|| DockerError::NotFound(container.into()))?;
        let mut c = containers.remove(&key).expect("found by key");
        c.name = new_name.to_string();
        containers.insert(new_name.to_string(), c);
        self.actions
            .lock()
            .unwrap()
            .push(format!("rename {key} {new_name}"));
        Ok(())
    }

    async fn update_resources(
        &self,
        container: &str,
        memory: Option<i64>,
        memory_swap: Option<i64>,
        cpu_quota: Option<i64>,
    ) -> Result<(), DockerError> {
        let mut containers = self.containers.lock().unwrap();
        let key = Self::key_of(&containers, container)
            .ok_or_else(|| DockerError::NotFound(container.into()))?;
        let c = containers.get_mut(&key).expect("found by key");
        if memory.is_some() {
            c.memory_limit = memory;
        }
        if memory_swap.is_some() {
            c.memory_swap = memory_swap;
        }
        self.actions.lock().unwrap().push(format!(
            "update {key} memory={memory:?} swap={memory_swap:?} cpu={cpu_quota:?}"
        ));
        Ok(())
    }

    fn events(
        &self,
        _label: &str,
        _since: Option<Timestamp>,
    ) -> futures::stream::BoxStream<'static, Result<ContainerEvent, DockerError>> {
        // No engine behind the fake: nothing ever happens.
        Box::pin(futures::stream::pending())
    }
}
