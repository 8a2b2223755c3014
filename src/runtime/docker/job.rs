//! One-off containers of the operator's (the core analyzer) and files copied out of a
//! container (the executable of a core).

use std::{io::Read, time::Duration};

use bollard::{
    errors::Error as BollardError,
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        CreateContainerOptions, DownloadFromContainerOptions, KillContainerOptions, LogsOptions,
        WaitContainerOptions,
    },
};
use futures::StreamExt;

use super::{bind_mount, container_error, map_error, DockerEngine};
use crate::runtime::{Job, JobOutput, RuntimeError, RuntimeKind};

impl DockerEngine {
    pub(super) async fn copy_out(
        &self,
        container: &str,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, RuntimeError> {
        let options = DownloadFromContainerOptions { path: path.into() };
        let mut stream = self
            .docker
            .download_from_container(container, Some(options));
        let mut archive = Vec::new();
        // The archive holds one file and its tar header: a little over the file itself.
        let archive_limit = limit.saturating_add(64 * 1024);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| container_error("copy", container, e))?;
            archive.extend_from_slice(&chunk);
            if archive.len() as u64 > archive_limit {
                return Err(RuntimeError::refused(
                    RuntimeKind::Docker,
                    "copy",
                    format!("{path} is larger than {limit} bytes"),
                ));
            }
        }
        single_file(&archive, limit).map_err(|why| {
            RuntimeError::refused(RuntimeKind::Docker, "copy", format!("{path}: {why}"))
        })
    }

    pub(super) async fn run_to_end(
        &self,
        job: &Job,
        max_output: usize,
    ) -> Result<JobOutput, RuntimeError> {
        self.clear_leftover(job).await?;
        let host = HostConfig {
            mounts: Some(job.mounts.iter().map(bind_mount).collect()),
            network_mode: Some("none".into()),
            readonly_rootfs: Some(true),
            tmpfs: Some([("/tmp".to_string(), "size=64m".to_string())].into()),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            // Cores are written with the dumping process' owner and mode 0600.
            cap_add: Some(vec!["DAC_READ_SEARCH".into()]),
            memory: Some(job.memory_bytes),
            pids_limit: Some(256),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(job.image.clone()),
            entrypoint: Some(job.command[..1].to_vec()),
            cmd: Some(job.command[1..].to_vec()),
            labels: Some(job.labels.clone().into_iter().collect()),
            host_config: Some(host),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(job.name.clone()),
            ..Default::default()
        };
        let id = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| map_error("create", e))?
            .id;
        let result = self.start_and_wait(&id, job.timeout, max_output).await;
        let _ = self.remove_job(&id).await;
        result
    }

    async fn start_and_wait(
        &self,
        id: &str,
        timeout: Duration,
        max_output: usize,
    ) -> Result<JobOutput, RuntimeError> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| container_error("start", id, e))?;
        let waited = tokio::time::timeout(timeout, self.exit_code(id)).await;
        let exit_code = match waited {
            Ok(code) => Some(code?),
            Err(_) => {
                let kill = KillContainerOptions {
                    signal: "SIGKILL".into(),
                };
                let _ = self.docker.kill_container(id, Some(kill)).await;
                None
            }
        };
        let (output, truncated) = self.output(id, max_output).await?;
        Ok(JobOutput {
            exit_code,
            output,
            truncated,
        })
    }

    async fn exit_code(&self, id: &str) -> Result<i64, RuntimeError> {
        let options = WaitContainerOptions {
            condition: "not-running".into(),
        };
        match self.docker.wait_container(id, Some(options)).next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(container_error("wait", id, e)),
            None => Err(RuntimeError::unavailable(
                RuntimeKind::Docker,
                format!("no answer waiting for {id}"),
            )),
        }
    }

    /// stdout and stderr as written, at most `max` bytes.
    async fn output(&self, id: &str, max: usize) -> Result<(String, bool), RuntimeError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut stream = self.docker.logs(id, Some(options));
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(
                &chunk
                    .map_err(|e| container_error("logs", id, e))?
                    .into_bytes(),
            );
            if bytes.len() > max {
                bytes.truncate(max);
                return Ok((String::from_utf8_lossy(&bytes).into_owned(), true));
            }
        }
        Ok((String::from_utf8_lossy(&bytes).into_owned(), false))
    }

    /// A container left by an earlier attempt (the operator restarted mid-job) is removed when
    /// it carries the job's labels; any other container of that name is someone else's.
    async fn clear_leftover(&self, job: &Job) -> Result<(), RuntimeError> {
        let Some(found) = self.docker.inspect_container(&job.name, None).await.ok() else {
            return Ok(());
        };
        let labels = found.config.and_then(|c| c.labels).unwrap_or_default();
        if job.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            self.remove_job(&job.name).await
        } else {
            Err(RuntimeError::refused(
                RuntimeKind::Docker,
                "create",
                format!(
                    "a container named {} exists and is not the operator's",
                    job.name
                ),
            ))
        }
    }

    async fn remove_job(&self, id: &str) -> Result<(), RuntimeError> {
        let options = bollard::query_parameters::RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        self.docker
            .remove_container(id, Some(options))
            .await
            .map_err(|e| container_error("remove", id, e))
    }
}

/// The one regular file of a tar archive, at most `limit` bytes.
fn single_file(archive: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let mut tar = tar::Archive::new(archive);
    let mut entries = tar.entries().map_err(|e| e.to_string())?;
    let mut entry = entries
        .next()
        .ok_or("the archive is empty")?
        .map_err(|e| e.to_string())?;
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err(format!(
            "not a regular file ({:?})",
            entry.header().entry_type()
        ));
    }
    let size = entry.size();
    if size > limit {
        return Err(format!("{size} bytes, over the {limit}-byte limit"));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(kind: tar::EntryType, content: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, "sample-worker", content)
            .unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn the_file_of_an_archive_is_taken_within_its_limit() {
        let a = archive(tar::EntryType::Regular, b"\x7fELF...");
        assert_eq!(single_file(&a, 100).unwrap(), b"\x7fELF...");
        assert!(single_file(&a, 3)
            .unwrap_err()
            .contains("over the 3-byte limit"));
        let link = archive(tar::EntryType::Symlink, b"");
        assert!(single_file(&link, 100)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(single_file(&[], 100).is_err());
    }
}
