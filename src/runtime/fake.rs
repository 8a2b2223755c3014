//! An in-memory [`WorkerRuntime`] for unit tests of checks and controllers.

use std::{collections::HashMap, sync::Mutex};

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;

use super::{
    resources::swap_for_update, CloneSpec, ContainerEvent, ContainerInfo, ContainerState,
    ExecOutput, Job, JobOutput, Limits, MemoryStats, PathStat, RuntimeError, RuntimeKind,
    StartOutcome, WorkerRuntime,
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
    /// The engine does not answer: every call fails with `Unavailable`.
    pub engine_down: std::sync::atomic::AtomicBool,
    /// Files in containers, keyed `<container>:<path>`, for `copy_file_out`.
    pub files: Mutex<HashMap<String, Vec<u8>>>,
    /// What every `run_job` gives (an empty, successful output when unset).
    pub job_output: Mutex<Option<JobOutput>>,
    /// The jobs run, in order.
    pub jobs: Mutex<Vec<Job>>,
    /// The copies asked for, in order.
    pub clones: Mutex<Vec<CloneSpec>>,
    /// What it says it can do (Docker's when unset).
    pub capabilities: Option<super::Capabilities>,
    /// The main process on the host, for a runtime with `host_processes`.
    pub host_process: Option<super::HostProcess>,
}

impl FakeRuntime {
    /// The container called `container`, by name or by ID, as the engine finds it.
    fn key_of(containers: &HashMap<String, ContainerInfo>, container: &str) -> Option<String> {
        containers
            .iter()
            .find(|(name, info)| *name == container || info.id == container)
            .map(|(name, _)| name.clone())
    }

    fn answering(&self) -> Result<(), RuntimeError> {
        if self.engine_down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(RuntimeError::unavailable(
                RuntimeKind::Docker,
                "connection refused (fake)",
            ));
        }
        Ok(())
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
impl WorkerRuntime for FakeRuntime {
    async fn inspect(&self, container: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        self.answering()?;
        let containers = self.containers.lock().unwrap();
        Ok(Self::key_of(&containers, container).and_then(|k| containers.get(&k).cloned()))
    }

    async fn start(&self, container: &str) -> Result<StartOutcome, RuntimeError> {
        self.answering()?;
        let mut containers = self.containers.lock().unwrap();
        let info = Self::key_of(&containers, container)
            .and_then(|k| containers.get_mut(&k))
            .ok_or_else(|| RuntimeError::NotFound(container.into()))?;
        if info.running {
            return Ok(StartOutcome::AlreadyRunning);
        }
        info.running = true;
        info.status = ContainerState::Running;
        *self.starts.lock().unwrap() += 1;
        Ok(StartOutcome::Started)
    }

    async fn exec(&self, _container: &str, cmd: &[&str]) -> Result<ExecOutput, RuntimeError> {
        if let Some(delay) = self.exec_delay {
            tokio::time::sleep(delay).await;
        }
        match self.exec.get(&cmd.join(" ")) {
            Some(Ok(out)) => Ok(out.clone()),
            Some(Err(e)) => Err(RuntimeError::refused(
                RuntimeKind::Docker,
                "exec",
                e.clone(),
            )),
            None => Err(RuntimeError::refused(
                RuntimeKind::Docker,
                "exec",
                format!("no canned answer for {cmd:?}"),
            )),
        }
    }

    async fn logs(
        &self,
        _container: &str,
        tail: u32,
        _since: Timestamp,
    ) -> Result<Vec<String>, RuntimeError> {
        let skip = self.logs.len().saturating_sub(tail as usize);
        Ok(self.logs[skip..].to_vec())
    }

    async fn memory_stats(&self, container: &str) -> Result<MemoryStats, RuntimeError> {
        self.memory
            .ok_or_else(|| RuntimeError::NotFound(container.into()))
    }

    async fn oom_events(
        &self,
        _container: &str,
        _since: Timestamp,
        _until: Timestamp,
    ) -> Result<Vec<Timestamp>, RuntimeError> {
        Ok(self.oom_events.clone())
    }

    async fn stat_path(
        &self,
        _container: &str,
        path: &str,
    ) -> Result<Option<PathStat>, RuntimeError> {
        Ok(self.paths.get(path).cloned())
    }

    async fn stop(&self, container: &str, _grace: std::time::Duration) -> Result<(), RuntimeError> {
        let mut containers = self.containers.lock().unwrap();
        let info = Self::key_of(&containers, container)
            .and_then(|k| containers.get_mut(&k))
            .ok_or_else(|| RuntimeError::NotFound(container.into()))?;
        info.running = false;
        info.status = ContainerState::Exited;
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
    ) -> Result<(), RuntimeError> {
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

    async fn create_clone(&self, source: &str, clone: &CloneSpec) -> Result<String, RuntimeError> {
        let mut containers = self.containers.lock().unwrap();
        let original = Self::key_of(&containers, source)
            .and_then(|k| containers.get(&k).cloned())
            .ok_or_else(|| RuntimeError::NotFound(source.into()))?;
        if containers.contains_key(&clone.name) {
            return Err(RuntimeError::refused(
                RuntimeKind::Docker,
                "create",
                format!("name {} in use", clone.name),
            ));
        }
        self.clones.lock().unwrap().push(clone.clone());
        let mut copy = original.clone();
        copy.id = format!("{}-clone", original.id);
        copy.name = clone.name.clone();
        copy.running = false;
        copy.status = ContainerState::Created;
        copy.env
            .extend(clone.env.iter().map(|(k, v)| format!("{k}={v}")));
        copy.labels.remove(crate::trust::CONSENT_LABEL);
        copy.labels.extend(clone.labels.clone());
        let id = copy.id.clone();
        containers.insert(clone.name.clone(), copy);
        self.actions
            .lock()
            .unwrap()
            .push(format!("clone {} {}", original.name, clone.name));
        Ok(id)
    }

    async fn host_process(&self, _: &str) -> Result<Option<super::HostProcess>, RuntimeError> {
        self.answering()?;
        Ok(self.host_process.clone())
    }

    fn capabilities(&self) -> super::Capabilities {
        self.capabilities.unwrap_or(super::Capabilities::DOCKER)
    }

    async fn copy_file_out(
        &self,
        container: &str,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, RuntimeError> {
        self.answering()?;
        let files = self.files.lock().unwrap();
        let file = files.get(&format!("{container}:{path}")).ok_or_else(|| {
            RuntimeError::refused(RuntimeKind::Docker, "copy", format!("{path}: no such file"))
        })?;
        if file.len() as u64 > limit {
            return Err(RuntimeError::refused(
                RuntimeKind::Docker,
                "copy",
                format!("{path} is too large"),
            ));
        }
        Ok(file.clone())
    }

    async fn run_job(&self, job: &Job, max_output: usize) -> Result<JobOutput, RuntimeError> {
        self.answering()?;
        self.jobs.lock().unwrap().push(job.clone());
        let mut out = self
            .job_output
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(JobOutput {
                exit_code: Some(0),
                ..Default::default()
            });
        if out.output.len() > max_output {
            out.output.truncate(max_output);
            out.truncated = true;
        }
        Ok(out)
    }

    async fn remove(&self, container: &str) -> Result<bool, RuntimeError> {
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
    ) -> Result<String, RuntimeError> {
        let mut containers = self.containers.lock().unwrap();
        let key = Self::key_of(&containers, container)
            .ok_or_else(|| RuntimeError::NotFound(container.into()))?;
        let mut c = containers.remove(&key).expect("found by key");
        // A new container: new ID, same name and settings, the declared ones on top, started.
        c.id = format!("{}-recreated", c.id);
        c.memory_swap =
            swap_for_update(c.memory_swap, declared.memory, declared.memory_swap).or(c.memory_swap);
        c.memory_limit = declared.memory.or(c.memory_limit);
        c.cpu_quota = declared.cpu_quota.or(c.cpu_quota);
        c.nofile_limit = declared.nofile.or(c.nofile_limit);
        c.nproc_limit = declared.nproc.or(c.nproc_limit);
        c.health_check = declared.health_check.clone().or(c.health_check);
        c.health = c.health_check.as_ref().map(|_| "starting".into());
        c.running = true;
        c.status = ContainerState::Running;
        c.exit_code = None;
        c.oom_killed = false;
        c.restart_count = 0;
        let id = c.id.clone();
        containers.insert(key.clone(), c);
        self.actions.lock().unwrap().push(format!("recreate {key}"));
        Ok(id)
    }

    async fn rename(&self, container: &str, new_name: &str) -> Result<(), RuntimeError> {
        let mut containers = self.containers.lock().unwrap();
        let key = Self::key_of(&containers, container)
            .ok_or_else(|| RuntimeError::NotFound(container.into()))?;
        let mut c = containers.remove(&key).expect("found by key");
        c.name = new_name.to_string();
        containers.insert(new_name.to_string(), c);
        self.actions
            .lock()
            .unwrap()
            .push(format!("rename {key} {new_name}"));
        Ok(())
    }

    async fn update_resources(&self, container: &str, limits: Limits) -> Result<(), RuntimeError> {
        let Limits {
            memory,
            memory_swap,
            cpu_quota,
        } = limits;
        let mut containers = self.containers.lock().unwrap();
        let key = Self::key_of(&containers, container)
            .ok_or_else(|| RuntimeError::NotFound(container.into()))?;
        let c = containers.get_mut(&key).expect("found by key");
        // As the engine does it: the swap limit follows a memory limit raised above it.
        let swap = swap_for_update(c.memory_swap, memory, memory_swap);
        if let (Some(m), Some(s)) = (memory.or(c.memory_limit), swap.or(c.memory_swap)) {
            if s > 0 && m > s {
                return Err(RuntimeError::refused(
                    RuntimeKind::Docker,
                    "update",
                    "Memory limit should be smaller than already set memoryswap limit",
                ));
            }
        }
        c.memory_limit = memory.or(c.memory_limit);
        c.memory_swap = swap.or(c.memory_swap);
        c.cpu_quota = cpu_quota.or(c.cpu_quota);
        self.actions.lock().unwrap().push(format!(
            "update {key} memory={memory:?} swap={swap:?} cpu={cpu_quota:?}"
        ));
        Ok(())
    }

    fn events(
        &self,
        _label: &str,
        _since: Option<Timestamp>,
    ) -> futures::stream::BoxStream<'static, Result<ContainerEvent, RuntimeError>> {
        // No engine behind the fake: nothing ever happens.
        Box::pin(futures::stream::pending())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::{resources::Declared, HealthCheck};

    const MI: i64 = 1 << 20;

    fn fake() -> FakeRuntime {
        FakeRuntime::with_container(ContainerInfo {
            id: "abc".into(),
            name: "w".into(),
            image: Some("wro-sample-worker:dev".into()),
            status: ContainerState::Exited,
            exit_code: Some(137),
            oom_killed: true,
            memory_limit: Some(256 * MI),
            memory_swap: Some(512 * MI),
            cpu_quota: Some(50_000),
            nofile_limit: Some((64, 64)),
            env: vec!["A=1".into()],
            ..Default::default()
        })
    }

    fn get(f: &FakeRuntime, name: &str) -> ContainerInfo {
        f.containers.lock().unwrap()[name].clone()
    }

    #[tokio::test]
    async fn update_changes_the_limits_in_place() {
        let f = fake();
        f.update_resources(
            "abc",
            Limits {
                memory: Some(384 * MI),
                cpu_quota: Some(100_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let c = get(&f, "w");
        assert_eq!(
            (c.id.as_str(), c.memory_limit, c.memory_swap, c.cpu_quota),
            ("abc", Some(384 * MI), Some(512 * MI), Some(100_000))
        );
        // Raised above the swap limit: the swap limit comes along.
        f.update_resources(
            "w",
            Limits {
                memory: Some(1024 * MI),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let c = get(&f, "w");
        assert_eq!(
            (c.memory_limit, c.memory_swap),
            (Some(1024 * MI), Some(1024 * MI))
        );
        assert_eq!(c.cpu_quota, Some(100_000), "None leaves a limit as it is");
        // A swap limit below the memory limit is refused, as Docker does.
        assert!(f
            .update_resources(
                "w",
                Limits {
                    memory_swap: Some(512 * MI),
                    ..Default::default()
                }
            )
            .await
            .is_err());
        assert_eq!(
            *f.actions.lock().unwrap(),
            [
                format!(
                    "update w memory=Some({}) swap=None cpu=Some(100000)",
                    384 * MI
                ),
                format!(
                    "update w memory=Some({}) swap=Some({}) cpu=None",
                    1024 * MI,
                    1024 * MI
                ),
            ]
        );
        assert!(matches!(
            f.update_resources(
                "gone",
                Limits {
                    memory: Some(MI),
                    ..Default::default()
                }
            )
            .await,
            Err(RuntimeError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn recreate_gives_a_new_started_container_with_the_declared_settings() {
        let f = fake();
        let check = HealthCheck {
            command: vec!["true".into()],
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::ZERO,
        };
        let declared = Declared {
            memory: Some(1024 * MI),
            nofile: Some((4096, 4096)),
            nproc: Some((512, 512)),
            health_check: Some(check.clone()),
            ..Default::default()
        };
        let id = f
            .recreate("w", &declared, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(id, "abc-recreated");
        let c = get(&f, "w");
        assert_eq!(c.id, id);
        assert!(c.running && !c.oom_killed && c.exit_code.is_none());
        assert_eq!(c.memory_limit, Some(1024 * MI));
        assert_eq!(c.memory_swap, Some(1024 * MI), "swap follows memory");
        assert_eq!(c.cpu_quota, Some(50_000), "not declared: kept");
        assert_eq!(c.nofile_limit, Some((4096, 4096)));
        assert_eq!(c.nproc_limit, Some((512, 512)));
        assert_eq!(c.health_check, Some(check));
        assert_eq!(c.health.as_deref(), Some("starting"));
        assert_eq!(
            (c.image, c.env),
            (Some("wro-sample-worker:dev".into()), vec!["A=1".into()])
        );
        assert!(crate::runtime::resources::drift(&declared, &get(&f, "w")).is_empty());
        assert_eq!(*f.actions.lock().unwrap(), ["recreate w"]);
        assert!(matches!(
            f.recreate("gone", &declared, Duration::ZERO).await,
            Err(RuntimeError::NotFound(_))
        ));
    }
}
