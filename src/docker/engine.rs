//! [`ContainerRuntime`] over the Docker Engine API (bollard).

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use bollard::{
    container::LogOutput,
    errors::Error as BollardError,
    exec::{CreateExecOptions, StartExecOptions, StartExecResults},
    models::{
        ContainerCreateBody, ContainerUpdateBody, HealthConfig, HostConfig, ResourcesUlimits,
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

use super::{
    resources::{Declared, HealthCheck, NEW_SUFFIX},
    CloneSpec, ContainerEvent, ContainerInfo, ContainerRuntime, DockerError, ExecOutput,
    MemoryStats, PathStat, StartOutcome, WATCHED_ACTIONS,
};

/// Most output an [`exec`](ContainerRuntime::exec) collects (stdout and stderr together).
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
    pub async fn connect() -> Result<Self, DockerError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| DockerError::Unavailable(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| DockerError::Unavailable(e.to_string()))?;
        Ok(Self { docker })
    }

    /// The engine's version, for the start-up log.
    pub async fn version(&self) -> Result<String, DockerError> {
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

#[async_trait]
impl ContainerRuntime for DockerEngine {
    async fn inspect(&self, container: &str) -> Result<Option<ContainerInfo>, DockerError> {
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
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown".into()),
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
                    cpu_quota: host_config.cpu_quota.filter(|q| *q > 0),
                    health_check: config.healthcheck.as_ref().and_then(health_check),
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

    async fn start(&self, container: &str) -> Result<StartOutcome, DockerError> {
        match self.docker.start_container(container, None).await {
            Ok(()) => Ok(StartOutcome::Started),
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(StartOutcome::AlreadyRunning),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(DockerError::NotFound(container.to_string())),
            Err(e) => Err(map_error("start", e)),
        }
    }

    async fn stop(&self, container: &str, grace: Duration) -> Result<(), DockerError> {
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

    async fn restart(&self, container: &str, grace: Duration) -> Result<(), DockerError> {
        let options = RestartContainerOptions {
            t: Some(seconds(grace)),
            ..Default::default()
        };
        self.docker
            .restart_container(container, Some(options))
            .await
            .map_err(|e| container_error("restart", container, e))
    }

    async fn create_clone(&self, source: &str, clone: &CloneSpec) -> Result<String, DockerError> {
        let original = self
            .docker
            .inspect_container(source, None)
            .await
            .map_err(|e| container_error("inspect", source, e))?;
        let config = original.config.unwrap_or_default();
        let mut host_config = original.host_config.unwrap_or_default();
        // Environment: the original's, with the clone's variables replacing same-named ones.
        let mut env: Vec<String> = config
            .env
            .unwrap_or_default()
            .into_iter()
            .filter(|kv| {
                let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
                !clone.env.iter().any(|(k, _)| k == key)
            })
            .collect();
        env.extend(clone.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut labels = config.labels.unwrap_or_default();
        labels.extend(clone.labels.clone());
        if clone.core_unlimited {
            let mut ulimits: Vec<ResourcesUlimits> = host_config
                .ulimits
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|u| u.name.as_deref() != Some("core"))
                .collect();
            ulimits.push(ResourcesUlimits {
                name: Some("core".into()),
                soft: Some(-1),
                hard: Some(-1),
            });
            host_config.ulimits = Some(ulimits);
        }
        // The copy is started and removed by the run, never by Docker's restart policy.
        host_config.restart_policy = None;
        host_config.auto_remove = Some(false);
        let body = ContainerCreateBody {
            user: config.user,
            env: Some(env),
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            image: config.image,
            working_dir: config.working_dir,
            labels: Some(labels),
            stop_signal: config.stop_signal,
            stop_timeout: config.stop_timeout,
            host_config: Some(host_config),
            ..Default::default()
        };
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

    async fn remove(&self, container: &str) -> Result<bool, DockerError> {
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
    ) -> Result<String, DockerError> {
        let original = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(|e| container_error("inspect", container, e))?;
        let name = original
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let old_id = original.id.clone().unwrap_or_default();
        let config = original.config.unwrap_or_default();
        let mut host = original.host_config.unwrap_or_default();
        let mut body = ContainerCreateBody {
            hostname: config.hostname,
            domainname: config.domainname,
            user: config.user,
            env: config.env,
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            image: config.image,
            working_dir: config.working_dir,
            labels: config.labels.clone(),
            stop_signal: config.stop_signal,
            stop_timeout: config.stop_timeout,
            exposed_ports: config.exposed_ports,
            tty: config.tty,
            open_stdin: config.open_stdin,
            healthcheck: config.healthcheck,
            volumes: config.volumes,
            ..Default::default()
        };
        apply_declared(&mut body, &mut host, declared);
        body.host_config = Some(host);
        // A leftover of an interrupted recreate of this same container is replaced.
        let temp = format!("{name}{NEW_SUFFIX}");
        if let Ok(left) = self.docker.inspect_container(&temp, None).await {
            if left.config.and_then(|c| c.labels) == config.labels {
                let _ = self
                    .docker
                    .remove_container(
                        &temp,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
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
        // The old one goes, the new one takes its name and starts. A crash in between leaves
        // `<name>-wro-new`, which the Worker controller adopts.
        self.stop(&old_id, grace).await?;
        self.docker
            .remove_container(
                &old_id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| container_error("remove", &old_id, e))?;
        self.rename(&created.id, &name).await?;
        self.start(&created.id).await?;
        Ok(created.id)
    }

    async fn rename(&self, container: &str, new_name: &str) -> Result<(), DockerError> {
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

    async fn update_resources(
        &self,
        container: &str,
        memory: Option<i64>,
        memory_swap: Option<i64>,
        cpu_quota: Option<i64>,
    ) -> Result<(), DockerError> {
        let body = ContainerUpdateBody {
            memory,
            memory_swap,
            cpu_quota,
            ..Default::default()
        };
        self.docker
            .update_container(container, body)
            .await
            .map_err(|e| map_error("update", e))
    }

    fn events(
        &self,
        label: &str,
        since: Option<Timestamp>,
    ) -> futures::stream::BoxStream<'static, Result<ContainerEvent, DockerError>> {
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

    async fn exec(&self, container: &str, cmd: &[&str]) -> Result<ExecOutput, DockerError> {
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
    ) -> Result<Vec<String>, DockerError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            since: i32::try_from(since.as_second().max(0)).unwrap_or(i32::MAX),
            timestamps: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(container, Some(options));
        let mut lines = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| container_error("logs", container, e))?;
            let text = String::from_utf8_lossy(&chunk.into_bytes()).into_owned();
            lines.extend(split_log_lines(&text));
        }
        // A long line may come in several frames and split into more lines than asked for.
        let skip = lines.len().saturating_sub(tail as usize);
        lines.drain(..skip);
        Ok(lines)
    }

    async fn memory_stats(&self, container: &str) -> Result<MemoryStats, DockerError> {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let stats = self
            .docker
            .stats(container, Some(options))
            .next()
            .await
            .ok_or_else(|| DockerError::Refused {
                operation: "stats",
                message: "the engine sent no statistics".into(),
            })?
            .map_err(|e| container_error("stats", container, e))?;
        let memory = stats.memory_stats.unwrap_or_default();
        match (memory.usage, memory.limit) {
            (Some(usage), Some(limit)) => Ok(MemoryStats {
                usage_bytes: working_set(usage, memory.stats.as_ref()),
                limit_bytes: limit,
            }),
            _ => Err(DockerError::Refused {
                operation: "stats",
                message: format!("no memory statistics for {container:?} (is it running?)"),
            }),
        }
    }

    async fn oom_events(
        &self,
        container: &str,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<Timestamp>, DockerError> {
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
    ) -> Result<Option<PathStat>, DockerError> {
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
                None => Err(DockerError::NotFound(container.to_string())),
            },
            Err(e) => Err(map_error("stat", e)),
        }
    }
}

/// A grace period as the engine's whole seconds.
fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

fn map_error(operation: &'static str, e: BollardError) -> DockerError {
    match e {
        BollardError::DockerResponseServerError { message, .. } => {
            DockerError::Refused { operation, message }
        }
        other => DockerError::Unavailable(other.to_string()),
    }
}

/// Like [`map_error`], but a 404 means the container does not exist.
fn container_error(operation: &'static str, container: &str, e: BollardError) -> DockerError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => DockerError::NotFound(container.to_string()),
        other => map_error(operation, other),
    }
}

/// The `nofile` ulimit set on the container (`--ulimit nofile=soft:hard`).
fn ulimit(ulimits: Option<&[ResourcesUlimits]>, name: &str) -> Option<(i64, i64)> {
    let u = ulimits?.iter().find(|u| u.name.as_deref() == Some(name))?;
    let soft = u.soft?;
    Some((soft, u.hard.unwrap_or(soft)))
}

/// A `CMD` health check as the operator declares them (a `CMD-SHELL` one keeps its shell
/// command as one word; `NONE` is none).
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

/// Apply `declared` to a container's settings.
fn apply_declared(config: &mut ContainerCreateBody, host: &mut HostConfig, declared: &Declared) {
    if let Some(m) = declared.memory {
        host.memory = Some(m);
        // Docker refuses a memory limit above the memory+swap limit.
        if host.memory_swap.is_some_and(|s| s > 0 && s < m) && declared.memory_swap.is_none() {
            host.memory_swap = Some(m);
        }
    }
    if let Some(s) = declared.memory_swap {
        host.memory_swap = Some(s);
    }
    if let Some(q) = declared.cpu_quota {
        host.cpu_quota = Some(q);
        host.cpu_period = Some(100_000);
    }
    let mut ulimits = host.ulimits.take().unwrap_or_default();
    for (name, limit) in [("nofile", declared.nofile), ("nproc", declared.nproc)] {
        if let Some((soft, hard)) = limit {
            ulimits.retain(|u| u.name.as_deref() != Some(name));
            ulimits.push(ResourcesUlimits {
                name: Some(name.into()),
                soft: Some(soft),
                hard: Some(hard),
            });
        }
    }
    host.ulimits = (!ulimits.is_empty()).then_some(ulimits);
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
    use super::parse_docker_time;

    #[test]
    fn docker_zero_time_means_never() {
        assert_eq!(parse_docker_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(parse_docker_time(None), None);
        assert_eq!(parse_docker_time(Some("garbage")), None);
        let t = parse_docker_time(Some("2026-11-27T23:59:01.123456789Z")).unwrap();
        assert_eq!(t.as_second(), 1_795_823_941);
    }
}
