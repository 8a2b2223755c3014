//! [`ContainerRuntime`] over the Docker Engine API (bollard).

use async_trait::async_trait;
use bollard::{errors::Error as BollardError, Docker};
use k8s_openapi::jiff::Timestamp;

use super::{ContainerInfo, ContainerRuntime, DockerError, StartOutcome};

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

    /// The bollard client, for the parts of the operator that need more than the trait offers.
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

#[async_trait]
impl ContainerRuntime for DockerEngine {
    async fn inspect(&self, container: &str) -> Result<Option<ContainerInfo>, DockerError> {
        match self.docker.inspect_container(container, None).await {
            Ok(resp) => {
                let state = resp.state.unwrap_or_default();
                Ok(Some(ContainerInfo {
                    id: resp.id.unwrap_or_default(),
                    name: resp
                        .name
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    image: resp.config.and_then(|c| c.image),
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
}

fn map_error(operation: &'static str, e: BollardError) -> DockerError {
    match e {
        BollardError::DockerResponseServerError { message, .. } => {
            DockerError::Refused { operation, message }
        }
        other => DockerError::Unavailable(other.to_string()),
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
