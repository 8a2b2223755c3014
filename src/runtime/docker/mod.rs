//! [`WorkerRuntime`] over the Docker Engine API (bollard).

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use bollard::{
    container::LogOutput,
    errors::Error as BollardError,
    exec::{CreateExecOptions, StartExecOptions, StartExecResults},
    models::{
        ContainerConfig, ContainerCreateBody, ContainerInspectResponse,
        ContainerState as EngineState, ContainerStateStatusEnum, ContainerUpdateBody,
        EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig, MountPoint,
        NetworkConnectRequest, NetworkingConfig, ResourcesUlimits,
    },
    query_parameters::{
        ContainerArchiveInfoOptions, CreateContainerOptions, EventsOptions, LogsOptions,
        RemoveContainerOptions, RenameContainerOptions, RestartContainerOptions, StatsOptions,
        StopContainerOptions,
    },
    Docker,
};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;

use crate::trust::CONSENT_LABEL;

mod job;

use super::{
    resources::{swap_for_update, Declared, NEW_SUFFIX},
    BindMount, CloneSpec, ContainerEvent, ContainerInfo, ContainerState, ExecOutput, HealthCheck,
    Job, JobOutput, Limits, MemoryStats, PathStat, RuntimeError, RuntimeKind, StartOutcome,
    WorkerRuntime, WATCHED_ACTIONS,
};

/// Most output an [`exec`](WorkerRuntime::exec) collects (stdout and stderr together).
pub const MAX_EXEC_OUTPUT_BYTES: usize = 1024 * 1024;
/// Appended to stdout when the exec's output was cut at [`MAX_EXEC_OUTPUT_BYTES`].
pub const EXEC_OUTPUT_CUT_MARKER: &str = "\n…[output cut at 1 MiB]";

/// The local Docker engine (`DOCKER_HOST` or the default socket).
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
}

impl DockerEngine {
    /// Connect to the local engine and agree on an API version it speaks (Debian's docker.io
    /// 20.10 speaks 1.41, older than bollard's default).
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::unavailable(RuntimeKind::Docker, e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| RuntimeError::unavailable(RuntimeKind::Docker, e.to_string()))?;
        Ok(Self { docker })
    }

    /// The engine's version, for the start-up log.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| map_error("version", e))?;
        Ok(format!(
            "{} (API {})",
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default()
        ))
    }
}

fn container_state(s: ContainerStateStatusEnum) -> ContainerState {
    match s {
        ContainerStateStatusEnum::CREATED => ContainerState::Created,
        ContainerStateStatusEnum::RUNNING => ContainerState::Running,
        ContainerStateStatusEnum::PAUSED => ContainerState::Paused,
        ContainerStateStatusEnum::RESTARTING => ContainerState::Restarting,
        ContainerStateStatusEnum::REMOVING => ContainerState::Removing,
        ContainerStateStatusEnum::EXITED => ContainerState::Exited,
        ContainerStateStatusEnum::DEAD => ContainerState::Dead,
        _ => ContainerState::Unknown,
    }
}

/// The CPU period a declared quota is for: 100 ms.
const CPU_PERIOD_US: i64 = 100_000;

/// What a container built from an inspected one is to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A copy next to it (the debugging copy): its own network identity and anonymous volumes.
    Sibling,
    /// Its replacement: also its network aliases, static addresses and other networks, and
    /// its anonymous volumes (with their data).
    Replacement,
}

/// A create body built from an inspected container.
struct Blueprint {
    body: ContainerCreateBody,
    /// Networks to connect the new container to after its creation: API 1.41 takes only the
    /// network of the network mode at create.
    more_networks: Vec<(String, EndpointSettings)>,
}

impl DockerEngine {
    /// The settings of `original` as a create body: its config (image, command, entrypoint,
    /// environment, labels, working dir, user, health check, ...) and its whole `HostConfig`
    /// (mounts, network mode, init, restart policy, limits, ...).
    async fn blueprint(&self, original: ContainerInspectResponse, kind: Kind) -> Blueprint {
        let old_id = original.id.unwrap_or_default();
        let config = original.config.unwrap_or_default();
        let mut host = original.host_config.unwrap_or_default();
        let network_mode = host.network_mode.clone().unwrap_or_default();
        // Docker names a container's host after its short ID unless told otherwise, and
        // takes the host's or the other container's name in those network modes.
        let short_id = &old_id[..old_id.len().min(12)];
        let hostname = config.hostname.filter(|h| {
            !h.is_empty()
                && h != short_id
                && network_mode != "host"
                && !network_mode.starts_with("container:")
        });
        if let Some(links) = host.links.as_mut() {
            links.iter_mut().for_each(|l| *l = create_link(l));
        }
        let mut networking_config = None;
        let mut more_networks = Vec::new();
        if kind == Kind::Replacement {
            keep_anonymous_volumes(&mut host, config.volumes.as_deref(), original.mounts);
            let primary = match network_mode.as_str() {
                "" | "default" => "bridge",
                other => other,
            };
            let networks = original
                .network_settings
                .and_then(|n| n.networks)
                .unwrap_or_default();
            for (network, endpoint) in networks {
                let Some(endpoint) = endpoint_settings(endpoint, &old_id) else {
                    continue;
                };
                if network == primary {
                    networking_config = Some(NetworkingConfig {
                        endpoints_config: Some(HashMap::from([(network, endpoint)])),
                    });
                } else if !matches!(network.as_str(), "host" | "none") {
                    more_networks.push((network, endpoint));
                }
            }
            more_networks.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let image = self.same_image(config.image, original.image).await;
        let body = ContainerCreateBody {
            hostname,
            domainname: config.domainname,
            user: config.user,
            attach_stdin: config.attach_stdin,
            attach_stdout: config.attach_stdout,
            attach_stderr: config.attach_stderr,
            exposed_ports: config.exposed_ports,
            tty: config.tty,
            open_stdin: config.open_stdin,
            stdin_once: config.stdin_once,
            env: config.env,
            cmd: config.cmd,
            healthcheck: config.healthcheck,
            args_escaped: config.args_escaped,
            image,
            volumes: config.volumes,
            working_dir: config.working_dir,
            entrypoint: config.entrypoint,
            network_disabled: config.network_disabled,
            on_build: config.on_build,
            labels: config.labels,
            stop_signal: config.stop_signal,
            stop_timeout: config.stop_timeout,
            shell: config.shell,
            host_config: Some(host),
            networking_config,
        };
        Blueprint {
            body,
            more_networks,
        }
    }

    /// The image to create a copy from: the name the original was created with while that
    /// name still points at the original's image, else the image's ID (a tag moved since
    /// must not change what runs).
    async fn same_image(&self, name: Option<String>, id: Option<String>) -> Option<String> {
        let (Some(name), Some(id)) = (&name, &id) else {
            return name.or(id);
        };
        match self.docker.inspect_image(name).await {
            Ok(image) if image.id.as_deref() == Some(id.as_str()) => Some(name.clone()),
            _ => Some(id.clone()),
        }
    }

    /// Force-remove a container (its anonymous volumes stay); gone already is fine.
    async fn discard(&self, container: &str) -> Result<(), RuntimeError> {
        self.remove(container).await.map(|_| ())
    }

    /// Remove a stopped container and make sure it is gone: one started with `--rm` removes
    /// itself when it stops, and Docker refuses a second removal while that one runs.
    async fn remove_gone(&self, container: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        let err = match self.docker.remove_container(container, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(()),
            Err(e) => e,
        };
        for _ in 0..50 {
            match self.docker.inspect_container(container, None).await {
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(()),
                Ok(c)
                    if c.state.as_ref().and_then(|s| s.status)
                        != Some(ContainerStateStatusEnum::REMOVING) =>
                {
                    break
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Err(map_error("remove", err))
    }
}

#[async_trait]
impl WorkerRuntime for DockerEngine {
    async fn inspect(&self, container: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        match self.docker.inspect_container(container, None).await {
            Ok(resp) => {
                let state = resp.state.unwrap_or_default();
                let config = resp.config.unwrap_or_default();
                let host_config = resp.host_config.unwrap_or_default();
                Ok(Some(ContainerInfo {
                    id: resp.id.unwrap_or_default(),
                    name: resp
                        .name
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    image: config.image,
                    status: state
                        .status
                        .map_or(ContainerState::Unknown, container_state),
                    running: state.running.unwrap_or(false),
                    exit_code: state.exit_code,
                    oom_killed: state.oom_killed.unwrap_or(false),
                    pid: state.pid.filter(|p| *p > 0),
                    started_at: parse_docker_time(state.started_at.as_deref()),
                    finished_at: parse_docker_time(state.finished_at.as_deref()),
                    restart_count: resp.restart_count.unwrap_or(0),
                    // 0 means "no limit".
                    memory_limit: host_config.memory.filter(|m| *m > 0),
                    memory_swap: host_config.memory_swap.filter(|m| *m != 0),
                    nofile_limit: ulimit(host_config.ulimits.as_deref(), "nofile"),
                    nproc_limit: ulimit(host_config.ulimits.as_deref(), "nproc"),
                    cpu_quota: cpu_quota(&host_config),
                    health_check: config.healthcheck.as_ref().and_then(health_check),
                    health: health_state(&state),
                    env: config.env.unwrap_or_default(),
                    init: host_config.init.unwrap_or(false),
                    labels: config.labels.unwrap_or_default().into_iter().collect(),
                    command: config
                        .entrypoint
                        .unwrap_or_default()
                        .into_iter()
                        .chain(config.cmd.unwrap_or_default())
                        .collect(),
                }))
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(map_error("inspect", e)),
        }
    }

    async fn start(&self, container: &str) -> Result<StartOutcome, RuntimeError> {
        match self.docker.start_container(container, None).await {
            Ok(()) => Ok(StartOutcome::Started),
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(StartOutcome::AlreadyRunning),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(RuntimeError::NotFound(container.to_string())),
            Err(e) => Err(map_error("start", e)),
        }
    }

    async fn stop(&self, container: &str, grace: Duration) -> Result<(), RuntimeError> {
        let options = StopContainerOptions {
            t: Some(seconds(grace)),
            ..Default::default()
        };
        match self.docker.stop_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(container_error("stop", container, e)),
        }
    }

    async fn restart(&self, container: &str, grace: Duration) -> Result<(), RuntimeError> {
        let options = RestartContainerOptions {
            t: Some(seconds(grace)),
            ..Default::default()
        };
        self.docker
            .restart_container(container, Some(options))
            .await
            .map_err(|e| container_error("restart", container, e))
    }

    async fn create_clone(&self, source: &str, clone: &CloneSpec) -> Result<String, RuntimeError> {
        let original = self
            .docker
            .inspect_container(source, None)
            .await
            .map_err(|e| container_error("inspect", source, e))?;
        let Blueprint { mut body, .. } = self.blueprint(original, Kind::Sibling).await;
        let mut host = body.host_config.take().unwrap_or_default();
        // Environment: the original's, with the clone's variables replacing same-named ones.
        let mut env: Vec<String> = body
            .env
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|kv| {
                let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
                !clone.env.iter().any(|(k, _)| k == key)
            })
            .collect();
        env.extend(clone.env.iter().map(|(k, v)| format!("{k}={v}")));
        body.env = Some(env);
        let mut labels = body.labels.take().unwrap_or_default();
        // One container consents for one Worker: the copy is the run's, not the Worker's.
        labels.remove(CONSENT_LABEL);
        labels.extend(clone.labels.clone());
        body.labels = Some(labels);
        if clone.core_unlimited {
            set_ulimit(&mut host, "core", -1, -1);
        }
        if let Some(mount) = &clone.core_dir {
            add_bind(&mut host, mount);
        }
        if let Some(dir) = &clone.working_dir {
            body.working_dir = Some(dir.clone());
        }
        // The copy is started and removed by the run, never by Docker's restart policy.
        host.restart_policy = None;
        host.auto_remove = Some(false);
        body.host_config = Some(host);
        let options = CreateContainerOptions {
            name: Some(clone.name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| map_error("create", e))?;
        Ok(created.id)
    }

    async fn copy_file_out(
        &self,
        container: &str,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, RuntimeError> {
        self.copy_out(container, path, limit).await
    }

    async fn run_job(&self, job: &Job, max_output: usize) -> Result<JobOutput, RuntimeError> {
        self.run_to_end(job, max_output).await
    }

    async fn remove(&self, container: &str) -> Result<bool, RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(map_error("remove", e)),
        }
    }

    async fn recreate(
        &self,
        container: &str,
        declared: &Declared,
        grace: Duration,
    ) -> Result<String, RuntimeError> {
        let original = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(|e| container_error("inspect", container, e))?;
        let name = original
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let old_id = original.id.clone().unwrap_or_default();
        let consent = consent_of(original.config.as_ref());
        let Blueprint {
            mut body,
            more_networks,
        } = self.blueprint(original, Kind::Replacement).await;
        let mut host = body.host_config.take().unwrap_or_default();
        apply_declared(&mut body, &mut host, declared);
        body.host_config = Some(host);

        // A leftover of an interrupted recreate of this same container goes first.
        let temp = format!("{name}{NEW_SUFFIX}");
        match self.docker.inspect_container(&temp, None).await {
            Ok(left) => {
                if consent.is_none() || consent_of(left.config.as_ref()) != consent {
                    return Err(RuntimeError::refused(
                        RuntimeKind::Docker,
                        "recreate",
                        format!(
                            "{temp:?} exists and is not a leftover of a recreate of {name:?} \
                             (its {CONSENT_LABEL} label differs): it is left alone"
                        ),
                    ));
                }
                self.discard(left.id.as_deref().unwrap_or(&temp)).await?;
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(map_error("inspect", e)),
        }
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(temp.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| map_error("create", e))?;
        let new_id = created.id;

        // Until the old one is gone, a failure takes the new one back: the old one stays.
        let replaced = async {
            for (network, endpoint) in more_networks {
                self.docker
                    .connect_network(
                        &network,
                        NetworkConnectRequest {
                            container: new_id.clone(),
                            endpoint_config: Some(endpoint),
                        },
                    )
                    .await
                    .map_err(|e| map_error("network connect", e))?;
            }
            self.stop(&old_id, grace).await?;
            self.remove_gone(&old_id).await
        }
        .await;
        if let Err(e) = replaced {
            if self.docker.inspect_container(&old_id, None).await.is_ok() {
                let _ = self.discard(&new_id).await;
            }
            return Err(e);
        }
        // The old one is gone: from here on `<name>-wro-new` is the container to adopt.
        self.rename(&new_id, &name).await?;
        self.start(&new_id).await?;
        Ok(new_id)
    }

    async fn rename(&self, container: &str, new_name: &str) -> Result<(), RuntimeError> {
        self.docker
            .rename_container(
                container,
                RenameContainerOptions {
                    name: new_name.to_string(),
                },
            )
            .await
            .map_err(|e| container_error("rename", container, e))
    }

    async fn update_resources(&self, container: &str, limits: Limits) -> Result<(), RuntimeError> {
        let current = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(|e| container_error("inspect", container, e))?;
        let host = current.host_config.unwrap_or_default();
        let mut body = ContainerUpdateBody {
            memory: limits.memory,
            memory_swap: swap_for_update(host.memory_swap, limits.memory, limits.memory_swap),
            ..Default::default()
        };
        if let Some(quota) = limits.cpu_quota {
            if host.nano_cpus.is_some_and(|n| n > 0) {
                // `--cpus`: Docker refuses a quota next to it; the same limit as `--cpus`.
                body.nano_cpus = Some(quota.saturating_mul(10_000));
            } else {
                body.cpu_quota = Some(quota);
                body.cpu_period = Some(CPU_PERIOD_US);
            }
        }
        if body == ContainerUpdateBody::default() {
            return Ok(());
        }
        let id = current.id.as_deref().unwrap_or(container);
        self.docker
            .update_container(id, body)
            .await
            .map_err(|e| container_error("update", container, e))
    }

    fn events(
        &self,
        label: &str,
        since: Option<Timestamp>,
    ) -> futures::stream::BoxStream<'static, Result<ContainerEvent, RuntimeError>> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                WATCHED_ACTIONS.iter().map(|a| a.to_string()).collect(),
            ),
            ("label".to_string(), vec![label.to_string()]),
        ]);
        let options = EventsOptions {
            since: since.map(|t| format!("{}.{:09}", t.as_second(), t.subsec_nanosecond())),
            until: None,
            filters: Some(filters),
        };
        self.docker
            .events(Some(options))
            .map(|event| {
                let event = event.map_err(|e| map_error("events", e))?;
                let actor = event.actor.unwrap_or_default();
                let time = match (event.time_nano, event.time) {
                    (Some(nanos), _) => Timestamp::from_nanosecond(i128::from(nanos)).ok(),
                    (None, Some(secs)) => Timestamp::from_second(secs).ok(),
                    _ => None,
                };
                Ok(ContainerEvent {
                    action: event.action.unwrap_or_default(),
                    container_id: actor.id.unwrap_or_default(),
                    labels: actor.attributes.unwrap_or_default().into_iter().collect(),
                    time,
                })
            })
            .boxed()
    }

    async fn exec(&self, container: &str, cmd: &[&str]) -> Result<ExecOutput, RuntimeError> {
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(cmd.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| container_error("exec", container, e))?;
        let started = self
            .docker
            .start_exec(&created.id, Some(StartExecOptions::default()))
            .await
            .map_err(|e| container_error("exec", container, e))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut cut = false;
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = output.next().await {
                let room = MAX_EXEC_OUTPUT_BYTES.saturating_sub(stdout.len() + stderr.len());
                let (target, message) = match chunk.map_err(|e| map_error("exec", e))? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        (&mut stdout, message)
                    }
                    LogOutput::StdErr { message } => (&mut stderr, message),
                    LogOutput::StdIn { .. } => continue,
                };
                if message.len() > room {
                    // Stop reading: dropping the stream closes the exec's output.
                    target.extend_from_slice(&message[..room]);
                    cut = true;
                    break;
                }
                target.extend_from_slice(&message);
            }
        }
        let mut out = ExecOutput {
            exit_code: None,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        if cut {
            out.stdout.push_str(EXEC_OUTPUT_CUT_MARKER);
        }
        // The attach stream can end a moment before the engine records the exit code.
        for attempt in 0..20 {
            let inspected = self
                .docker
                .inspect_exec(&created.id)
                .await
                .map_err(|e| map_error("exec inspect", e))?;
            if inspected.running != Some(true) || cut || attempt == 19 {
                out.exit_code = inspected
                    .exit_code
                    .filter(|_| inspected.running != Some(true));
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(out)
    }

    async fn logs(
        &self,
        container: &str,
        tail: u32,
        since: Timestamp,
    ) -> Result<Vec<String>, RuntimeError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            since: i32::try_from(since.as_second().max(0)).unwrap_or(i32::MAX),
            timestamps: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(container, Some(options));
        let mut lines = std::collections::VecDeque::new();
        let mut read = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| container_error("logs", container, e))?
                .into_bytes();
            read += chunk.len();
            lines.extend(split_log_lines(&String::from_utf8_lossy(&chunk)));
            // A long line may come in several frames and split into more lines than asked for.
            let skip = lines.len().saturating_sub(tail as usize);
            lines.drain(..skip);
            // The tail is in lines: a worker writing megabytes without a newline must not
            // make the operator read (and hold) them all. Dropping the stream stops the read.
            if read >= MAX_LOG_BYTES {
                tracing::debug!(container, read, "container log cut at the byte cap");
                break;
            }
        }
        Ok(lines.into())
    }

    async fn memory_stats(&self, container: &str) -> Result<MemoryStats, RuntimeError> {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let stats = self
            .docker
            .stats(container, Some(options))
            .next()
            .await
            .ok_or_else(|| {
                RuntimeError::refused(
                    RuntimeKind::Docker,
                    "stats",
                    "the engine sent no statistics",
                )
            })?
            .map_err(|e| container_error("stats", container, e))?;
        let memory = stats.memory_stats.unwrap_or_default();
        match (memory.usage, memory.limit) {
            (Some(usage), Some(limit)) => Ok(MemoryStats {
                usage_bytes: working_set(usage, memory.stats.as_ref()),
                limit_bytes: limit,
            }),
            _ => Err(RuntimeError::refused(
                RuntimeKind::Docker,
                "stats",
                format!("no memory statistics for {container:?} (is it running?)"),
            )),
        }
    }

    async fn oom_events(
        &self,
        container: &str,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<Timestamp>, RuntimeError> {
        // `until` in the future would keep the stream open until then; never wait.
        let until = until.min(Timestamp::now());
        if since >= until {
            return Ok(Vec::new());
        }
        let filters = HashMap::from([
            ("container".to_string(), vec![container.to_string()]),
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["oom".to_string()]),
        ]);
        let options = EventsOptions {
            since: Some(since.as_second().to_string()),
            // Docker takes `seconds.nanoseconds`; a whole second rounded up would keep the
            // stream open for up to a second.
            until: Some(format!(
                "{}.{:09}",
                until.as_second(),
                until.subsec_nanosecond()
            )),
            filters: Some(filters),
        };
        let mut stream = self.docker.events(Some(options));
        let mut times = Vec::new();
        while let Some(event) = stream.next().await {
            let event = event.map_err(|e| map_error("events", e))?;
            if event.action.as_deref() != Some("oom") {
                continue;
            }
            let time = match (event.time_nano, event.time) {
                (Some(nanos), _) => Timestamp::from_nanosecond(i128::from(nanos)).ok(),
                (None, Some(secs)) => Timestamp::from_second(secs).ok(),
                _ => None,
            };
            times.extend(time);
        }
        Ok(times)
    }

    async fn stat_path(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<PathStat>, RuntimeError> {
        // `HEAD /containers/{id}/archive?path=` answers from the container's root filesystem,
        // so it works on stopped containers; the header carries Go's `os.FileMode` bits.
        let options = ContainerArchiveInfoOptions {
            path: path.to_string(),
        };
        match self
            .docker
            .get_container_archive_info(container, Some(options))
            .await
        {
            Ok(stat) => Ok(Some(path_stat(
                stat.file_mode,
                stat.size,
                &stat.link_target,
            ))),
            // A HEAD answer has no body, so a 404 does not say whether the container or the
            // path is missing: ask for the container.
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => match self.inspect(container).await? {
                Some(_) => Ok(None),
                None => Err(RuntimeError::NotFound(container.to_string())),
            },
            Err(e) => Err(map_error("stat", e)),
        }
    }
}

/// A grace period as the engine's whole seconds.
fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

fn map_error(operation: &'static str, e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError { message, .. } => RuntimeError::Refused {
            runtime: RuntimeKind::Docker,
            operation,
            message,
        },
        other => RuntimeError::unavailable(RuntimeKind::Docker, other.to_string()),
    }
}

/// Like [`map_error`], but a 404 means the container does not exist.
fn container_error(operation: &'static str, container: &str, e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => RuntimeError::NotFound(container.to_string()),
        other => map_error(operation, other),
    }
}

/// Mount `mount`, replacing whatever the container mounted at the same target (Docker refuses
/// two mounts at one place).
fn add_bind(host: &mut HostConfig, mount: &BindMount) {
    let target = mount.target.trim_end_matches('/');
    if let Some(binds) = host.binds.as_mut() {
        binds.retain(|b| b.split(':').nth(1).map(|t| t.trim_end_matches('/')) != Some(target));
    }
    if let Some(mounts) = host.mounts.as_mut() {
        mounts.retain(|m| m.target.as_deref().map(|t| t.trim_end_matches('/')) != Some(target));
    }
    host.mounts
        .get_or_insert_with(Vec::new)
        .push(bind_mount(mount));
}

/// A bind mount as the API takes it: source and target as fields, never parsed out of a
/// `host:target` string (a file name with `:` in it cannot change what is mounted).
pub(super) fn bind_mount(mount: &BindMount) -> bollard::models::Mount {
    bollard::models::Mount {
        target: Some(mount.target.clone()),
        source: Some(mount.host.display().to_string()),
        typ: Some(bollard::models::MountType::BIND),
        read_only: Some(mount.read_only),
        ..Default::default()
    }
}

/// A ulimit set on the container (`--ulimit nofile=soft:hard`).
fn ulimit(ulimits: Option<&[ResourcesUlimits]>, name: &str) -> Option<(i64, i64)> {
    let u = ulimits?.iter().find(|u| u.name.as_deref() == Some(name))?;
    let soft = u.soft?;
    Some((soft, u.hard.unwrap_or(soft)))
}

/// Set (or replace) the ulimit `name`.
fn set_ulimit(host: &mut HostConfig, name: &str, soft: i64, hard: i64) {
    let ulimits = host.ulimits.get_or_insert_with(Vec::new);
    ulimits.retain(|u| u.name.as_deref() != Some(name));
    ulimits.push(ResourcesUlimits {
        name: Some(name.into()),
        soft: Some(soft),
        hard: Some(hard),
    });
}

/// The CPU limit as a quota per 100 ms period: `--cpu-quota` with another `--cpu-period`
/// and `--cpus` converted (`--cpus 1.5` is 150000).
fn cpu_quota(host: &HostConfig) -> Option<i64> {
    if let Some(nano) = host.nano_cpus.filter(|n| *n > 0) {
        return Some(nano / 10_000);
    }
    let quota = host.cpu_quota.filter(|q| *q > 0)?;
    let period = host.cpu_period.filter(|p| *p > 0).unwrap_or(CPU_PERIOD_US);
    i64::try_from(i128::from(quota) * i128::from(CPU_PERIOD_US) / i128::from(period)).ok()
}

/// The health check as the operator declares them: `CMD` keeps its words, `CMD-SHELL` reads
/// as `/bin/sh -c <command>`, `NONE` is none. Durations Docker leaves at 0 are its defaults
/// (30 s interval and timeout, 3 retries, no start period).
fn health_check(h: &HealthConfig) -> Option<HealthCheck> {
    let test = h.test.as_ref()?;
    let (kind, rest) = test.split_first()?;
    let command = match kind.as_str() {
        "CMD" => rest.to_vec(),
        "CMD-SHELL" => vec!["/bin/sh".into(), "-c".into(), rest.join(" ")],
        _ => return None,
    };
    let dur = |ns: Option<i64>, default: u64| {
        Duration::from_nanos(
            ns.filter(|n| *n > 0)
                .map_or(default * 1_000_000_000, |n| n as u64),
        )
    };
    Some(HealthCheck {
        command,
        interval: dur(h.interval, 30),
        timeout: dur(h.timeout, 30),
        retries: h.retries.filter(|r| *r > 0).map_or(3, |r| r as u32),
        start_period: dur(h.start_period, 0),
    })
}

/// `State.Health.Status` when the container has a health check.
fn health_state(state: &EngineState) -> Option<String> {
    let status = state.health.as_ref()?.status?;
    match status {
        HealthStatusEnum::EMPTY | HealthStatusEnum::NONE => None,
        other => Some(other.to_string()),
    }
}

/// Inspect writes a legacy link `/db:/web/db`; create takes `db:db`.
fn create_link(link: &str) -> String {
    match link.split_once(':') {
        Some((target, alias)) if target.starts_with('/') => format!(
            "{}:{}",
            target.trim_start_matches('/'),
            alias.rsplit('/').next().unwrap_or(alias)
        ),
        _ => link.to_string(),
    }
}

/// The value of the consent label.
fn consent_of(config: Option<&ContainerConfig>) -> Option<String> {
    config?.labels.as_ref()?.get(CONSENT_LABEL).cloned()
}

/// What a replacement keeps of an endpoint: what was asked for it (aliases, static
/// addresses, links, driver options), not what the engine gave the old container (its IP,
/// MAC, endpoint ID); the old short ID, an alias Docker adds itself, goes. `None` when
/// nothing is left to ask for.
fn endpoint_settings(endpoint: EndpointSettings, old_id: &str) -> Option<EndpointSettings> {
    let short_id = &old_id[..old_id.len().min(12)];
    let aliases: Vec<String> = endpoint
        .aliases
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a != short_id && a != old_id)
        .collect();
    let ipam = endpoint.ipam_config.filter(|i| {
        i.ipv4_address.as_deref().is_some_and(|a| !a.is_empty())
            || i.ipv6_address.as_deref().is_some_and(|a| !a.is_empty())
            || i.link_local_ips.as_ref().is_some_and(|l| !l.is_empty())
    });
    let out = EndpointSettings {
        ipam_config: ipam,
        links: endpoint.links.filter(|l| !l.is_empty()),
        aliases: (!aliases.is_empty()).then_some(aliases),
        driver_opts: endpoint.driver_opts.filter(|d| !d.is_empty()),
        ..Default::default()
    };
    (out != EndpointSettings::default()).then_some(out)
}

/// Anonymous volumes (`-v /data`, an image's `VOLUME`) of the old container, mounted by name
/// in the new one, so that their data stays with the worker (as `docker compose` does).
fn keep_anonymous_volumes(
    host: &mut HostConfig,
    volumes: Option<&[String]>,
    mounts: Option<Vec<MountPoint>>,
) {
    let Some(volumes) = volumes else { return };
    let taken = |host: &HostConfig, dest: &str| {
        host.binds.iter().flatten().any(|b| {
            let mut parts = b.split(':');
            parts.next();
            parts.next() == Some(dest)
        }) || host
            .mounts
            .iter()
            .flatten()
            .any(|m| m.target.as_deref() == Some(dest))
    };
    for m in mounts.unwrap_or_default() {
        let (Some("volume"), Some(name), Some(dest)) = (
            m.typ.as_deref(),
            m.name.as_deref(),
            m.destination.as_deref(),
        ) else {
            continue;
        };
        if !volumes.iter().any(|v| v == dest) || taken(host, dest) {
            continue;
        }
        let ro = if m.rw == Some(false) { ":ro" } else { "" };
        host.binds
            .get_or_insert_with(Vec::new)
            .push(format!("{name}:{dest}{ro}"));
    }
}

/// Apply `declared` to a new container's settings.
fn apply_declared(config: &mut ContainerCreateBody, host: &mut HostConfig, declared: &Declared) {
    if let Some(swap) = swap_for_update(host.memory_swap, declared.memory, declared.memory_swap) {
        host.memory_swap = Some(swap);
    }
    if let Some(m) = declared.memory {
        host.memory = Some(m);
    }
    if let Some(q) = declared.cpu_quota {
        host.cpu_quota = Some(q);
        host.cpu_period = Some(CPU_PERIOD_US);
        // Docker refuses `--cpus` next to a quota.
        host.nano_cpus = None;
    }
    for (name, limit) in [("nofile", declared.nofile), ("nproc", declared.nproc)] {
        if let Some((soft, hard)) = limit {
            set_ulimit(host, name, soft, hard);
        }
    }
    if let Some(h) = &declared.health_check {
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        config.healthcheck = Some(HealthConfig {
            test: Some(
                std::iter::once("CMD".to_string())
                    .chain(h.command.iter().cloned())
                    .collect(),
            ),
            interval: Some(ns(h.interval)),
            timeout: Some(ns(h.timeout)),
            retries: Some(i64::from(h.retries)),
            start_period: Some(ns(h.start_period)),
            start_interval: None,
        });
    }
}

/// Memory in use as `docker stats` shows it: the cgroup's usage minus inactive page cache
/// (`total_inactive_file` on cgroup v1, `inactive_file` on v2), which the kernel reclaims
/// before it would OOM-kill anything.
fn working_set(usage: u64, stats: Option<&HashMap<String, u64>>) -> u64 {
    let inactive = stats
        .and_then(|s| {
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
        })
        .copied()
        .unwrap_or(0);
    if inactive < usage {
        usage - inactive
    } else {
        usage
    }
}

/// Split a chunk of `docker logs` output into lines (without their newline).
/// Most bytes of a container's log read for one tail (the rest is not read).
pub const MAX_LOG_BYTES: usize = 1 << 20;

fn split_log_lines(text: &str) -> impl Iterator<Item = String> + '_ {
    text.strip_suffix('\n')
        .unwrap_or(text)
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
}

/// Go `os.FileMode` type bits, as the archive stat header reports them.
const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;

fn path_stat(mode: u32, size: i64, link_target: &str) -> PathStat {
    PathStat {
        mode,
        size,
        is_dir: mode & GO_MODE_DIR != 0,
        link_target: (mode & GO_MODE_SYMLINK != 0 && !link_target.is_empty())
            .then(|| link_target.to_string()),
    }
}

/// Docker writes `0001-01-01T00:00:00Z` for "never"; that is no time at all.
fn parse_docker_time(raw: Option<&str>) -> Option<Timestamp> {
    let ts: Timestamp = raw?.parse().ok()?;
    (ts.as_second() > 0).then_some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_directory_replaces_what_the_container_mounted_at_its_target() {
        let mut host = HostConfig {
            binds: Some(vec!["/data:/shared".into(), "/old:/var/crash:ro".into()]),
            mounts: Some(vec![bollard::models::Mount {
                target: Some("/var/crash/".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let dir = BindMount {
            host: "/shared/cores/marie/run: x".into(),
            target: "/var/crash".into(),
            read_only: false,
        };
        add_bind(&mut host, &dir);
        assert_eq!(host.binds.unwrap(), ["/data:/shared"]);
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(
            mounts[0].source.as_deref(),
            Some("/shared/cores/marie/run: x")
        );
        assert_eq!(mounts[0].target.as_deref(), Some("/var/crash"));
        assert_eq!(mounts[0].typ, Some(bollard::models::MountType::BIND));
        assert_eq!(mounts[0].read_only, Some(false));
    }

    #[test]
    fn docker_zero_time_means_never() {
        assert_eq!(parse_docker_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(parse_docker_time(None), None);
        assert_eq!(parse_docker_time(Some("garbage")), None);
        let t = parse_docker_time(Some("2026-11-27T23:59:01.123456789Z")).unwrap();
        assert_eq!(t.as_second(), 1_795_823_941);
    }

    #[test]
    fn cpu_limits_read_as_a_quota_per_100ms() {
        let host = |quota, period, nano| HostConfig {
            cpu_quota: quota,
            cpu_period: period,
            nano_cpus: nano,
            ..Default::default()
        };
        assert_eq!(
            cpu_quota(&host(Some(50_000), Some(0), Some(0))),
            Some(50_000)
        );
        assert_eq!(cpu_quota(&host(Some(50_000), None, None)), Some(50_000));
        assert_eq!(
            cpu_quota(&host(Some(50_000), Some(50_000), None)),
            Some(100_000)
        );
        assert_eq!(
            cpu_quota(&host(Some(0), Some(0), Some(1_500_000_000))),
            Some(150_000)
        );
        assert_eq!(cpu_quota(&host(Some(0), Some(0), Some(0))), None);
        assert_eq!(cpu_quota(&host(Some(-1), None, None)), None);
    }

    #[test]
    fn health_checks_read_in_cmd_form_with_docker_defaults() {
        let cmd = HealthConfig {
            test: Some(vec!["CMD".into(), "/bin/worker".into(), "--check".into()]),
            interval: Some(5_000_000_000),
            timeout: Some(0),
            retries: Some(0),
            start_period: Some(1_500_000_000),
            start_interval: None,
        };
        assert_eq!(
            health_check(&cmd),
            Some(HealthCheck {
                command: vec!["/bin/worker".into(), "--check".into()],
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(30),
                retries: 3,
                start_period: Duration::from_millis(1500),
            })
        );
        let shell = HealthConfig {
            test: Some(vec![
                "CMD-SHELL".into(),
                "curl -f localhost || exit 1".into(),
            ]),
            ..Default::default()
        };
        assert_eq!(
            health_check(&shell).unwrap().command,
            ["/bin/sh", "-c", "curl -f localhost || exit 1"]
        );
        let none = HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        assert_eq!(health_check(&none), None);
        assert_eq!(health_check(&HealthConfig::default()), None);
        let state = |status| EngineState {
            health: Some(bollard::models::Health {
                status: Some(status),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            health_state(&state(HealthStatusEnum::UNHEALTHY)).as_deref(),
            Some("unhealthy")
        );
        assert_eq!(
            health_state(&state(HealthStatusEnum::STARTING)).as_deref(),
            Some("starting")
        );
        assert_eq!(health_state(&state(HealthStatusEnum::NONE)), None);
        assert_eq!(health_state(&EngineState::default()), None);
    }

    #[test]
    fn declared_settings_go_on_top_of_the_old_ones() {
        let mut body = ContainerCreateBody::default();
        let mut host = HostConfig {
            memory: Some(256 << 20),
            memory_swap: Some(512 << 20),
            nano_cpus: Some(2_000_000_000),
            ulimits: Some(vec![
                ResourcesUlimits {
                    name: Some("core".into()),
                    soft: Some(-1),
                    hard: Some(-1),
                },
                ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(64),
                    hard: Some(64),
                },
            ]),
            init: Some(true),
            ..Default::default()
        };
        let declared = Declared {
            memory: Some(1 << 30),
            cpu_quota: Some(50_000),
            nofile: Some((1024, 2048)),
            nproc: Some((100, 100)),
            health_check: Some(HealthCheck {
                command: vec!["true".into()],
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                retries: 2,
                start_period: Duration::ZERO,
            }),
            ..Default::default()
        };
        apply_declared(&mut body, &mut host, &declared);
        assert_eq!(host.memory, Some(1 << 30));
        assert_eq!(host.memory_swap, Some(1 << 30), "swap follows memory");
        assert_eq!(
            (host.cpu_quota, host.cpu_period, host.nano_cpus),
            (Some(50_000), Some(100_000), None)
        );
        let ulimits = host.ulimits.as_deref();
        assert_eq!(ulimit(ulimits, "core"), Some((-1, -1)), "kept");
        assert_eq!(ulimit(ulimits, "nofile"), Some((1024, 2048)));
        assert_eq!(ulimit(ulimits, "nproc"), Some((100, 100)));
        assert_eq!(host.ulimits.as_ref().unwrap().len(), 3);
        assert_eq!(host.init, Some(true));
        let h = body.healthcheck.clone().unwrap();
        assert_eq!(h.test.unwrap(), ["CMD", "true"]);
        assert_eq!((h.interval, h.retries), (Some(5_000_000_000), Some(2)));
        assert_eq!(
            health_check(&HealthConfig {
                test: Some(vec!["CMD".into(), "true".into()]),
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
                start_period: h.start_period,
                start_interval: None,
            }),
            declared.health_check
        );
        // Nothing declared changes nothing.
        let before = host.clone();
        apply_declared(&mut body, &mut host, &Declared::default());
        assert_eq!(host, before);
    }

    #[test]
    fn replacements_keep_what_was_asked_of_the_network_not_what_was_given() {
        let old_id = "0123456789abcdef0123";
        let endpoint = EndpointSettings {
            aliases: Some(vec!["worker".into(), "0123456789ab".into()]),
            ipam_config: Some(bollard::models::EndpointIpamConfig {
                ipv4_address: Some("172.30.0.10".into()),
                ..Default::default()
            }),
            ip_address: Some("172.30.0.10".into()),
            mac_address: Some("02:42:ac:1e:00:0a".into()),
            endpoint_id: Some("e".into()),
            network_id: Some("n".into()),
            gateway: Some("172.30.0.1".into()),
            ..Default::default()
        };
        let kept = endpoint_settings(endpoint, old_id).unwrap();
        assert_eq!(kept.aliases.as_deref(), Some(&["worker".to_string()][..]));
        assert_eq!(
            kept.ipam_config.unwrap().ipv4_address.as_deref(),
            Some("172.30.0.10")
        );
        assert_eq!(
            (kept.ip_address, kept.endpoint_id, kept.mac_address),
            (None, None, None)
        );
        // The default bridge: nothing asked.
        let bridge = EndpointSettings {
            ip_address: Some("172.17.0.2".into()),
            aliases: Some(vec!["0123456789ab".into()]),
            ipam_config: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(endpoint_settings(bridge, old_id), None);
        assert_eq!(create_link("/db:/web/db"), "db:db");
        assert_eq!(create_link("/db:/web/database"), "db:database");
        assert_eq!(create_link("db:alias"), "db:alias");
    }

    #[test]
    fn anonymous_volumes_are_mounted_by_name_in_the_replacement() {
        let mount = |typ: &str, name: &str, dest: &str, rw| MountPoint {
            typ: Some(typ.into()),
            name: Some(name.into()),
            destination: Some(dest.into()),
            rw: Some(rw),
            ..Default::default()
        };
        let mut host = HostConfig {
            binds: Some(vec!["/srv/shared:/shared".into(), "named:/named:ro".into()]),
            ..Default::default()
        };
        let volumes = ["/data".to_string(), "/cache".into(), "/named".into()];
        keep_anonymous_volumes(
            &mut host,
            Some(&volumes),
            Some(vec![
                mount("bind", "", "/shared", true),
                mount("volume", "named", "/named", false),
                mount("volume", "f00d", "/data", true),
                mount("volume", "beef", "/cache", false),
            ]),
        );
        assert_eq!(
            host.binds.unwrap(),
            [
                "/srv/shared:/shared",
                "named:/named:ro",
                "f00d:/data",
                "beef:/cache:ro"
            ]
        );
    }
}
