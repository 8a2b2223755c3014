//! Sample-worker containers and the Docker CLI.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use super::{free_port, unique_suffix, wait_for, CONSENT_LABEL, WORKER_IMAGE};

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs")
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A sample-worker container with its own shared root on the host, removed on drop.
pub struct WorkerContainer {
    pub container: String,
    pub worker_name: String,
    /// Where the worker serves /metrics (host network).
    pub metrics_url: String,
    pub dir: tempfile::TempDir,
}

impl WorkerContainer {
    /// `docker run` the sample worker, labelled so that the Worker `<namespace>/<worker_name>`
    /// may manage it (no label when `namespace` is empty). `docker_args` go before the image
    /// (limits etc.), `env` are extra environment variables for the worker.
    pub fn start(
        namespace: &str,
        worker_name: &str,
        docker_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_with_tasks(namespace, worker_name, docker_args, env, &[])
    }

    /// Like [`start`](Self::start), with the container's directory (its shared root's parent)
    /// made inside `parent` instead of the temp dir: a root that an operator running elsewhere
    /// (a pod) is allowed and has mounted.
    pub fn start_in(parent: &Path, namespace: &str, worker_name: &str) -> Self {
        Self::start_full_in(Some(parent), namespace, worker_name, &[], &[], &[], &[])
    }

    /// Like [`start`](Self::start), with task files `(id, json)` in `pending/` before the
    /// worker starts (so a fault at start-up finds them).
    pub fn start_with_tasks(
        namespace: &str,
        worker_name: &str,
        docker_args: &[&str],
        env: &[(&str, &str)],
        tasks: &[(&str, &str)],
    ) -> Self {
        Self::start_full_in(None, namespace, worker_name, docker_args, env, tasks, &[])
    }

    /// The sample worker's image running `command` instead of the sample worker: a worker
    /// someone else wrote, with busybox.
    pub fn start_command(
        namespace: &str,
        worker_name: &str,
        docker_args: &[&str],
        command: &[&str],
    ) -> Self {
        Self::start_full_in(None, namespace, worker_name, docker_args, &[], &[], command)
    }

    /// A sample worker that crashes (exit code 3) one second after every start: a crash loop.
    pub fn crash_looping(namespace: &str, worker_name: &str) -> Self {
        Self::start(
            namespace,
            worker_name,
            &[],
            &[("FAULT_MODE", "crash"), ("FAULT_AFTER_SECS", "1")],
        )
    }

    /// Like [`start_command`](Self::start_command), with the container's directory made inside
    /// `parent` (see [`start_in`](Self::start_in)).
    pub fn start_command_in(
        parent: &Path,
        namespace: &str,
        worker_name: &str,
        docker_args: &[&str],
        command: &[&str],
    ) -> Self {
        Self::start_full_in(
            Some(parent),
            namespace,
            worker_name,
            docker_args,
            &[],
            &[],
            command,
        )
    }

    fn start_full_in(
        parent: Option<&Path>,
        namespace: &str,
        worker_name: &str,
        docker_args: &[&str],
        env: &[(&str, &str)],
        tasks: &[(&str, &str)],
        command: &[&str],
    ) -> Self {
        let mut builder = tempfile::Builder::new();
        builder.prefix("wro-e2e-");
        let dir = match parent {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .unwrap();
        let shared = dir.path().join("shared");
        for sub in ["pending", "active", "staged", "failed"] {
            fs::create_dir_all(shared.join("tasks").join(worker_name).join(sub)).unwrap();
        }
        let pending = shared.join("tasks").join(worker_name).join("pending");
        for (id, body) in tasks {
            fs::write(pending.join(format!("{id}.json")), body).unwrap();
        }
        let container = format!("wro-e2e-{worker_name}-{}", unique_suffix());
        let metrics_port = free_port();
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            container.clone(),
            "--network".into(),
            "host".into(),
            "-v".into(),
            format!("{}:/shared", shared.display()),
            "-e".into(),
            format!("WORKER_NAME={worker_name}"),
            "-e".into(),
            "SHARED_ROOT=/shared".into(),
            "-e".into(),
            format!("METRICS_ADDR=127.0.0.1:{metrics_port}"),
            "-e".into(),
            "HEARTBEAT_INTERVAL_SECS=1".into(),
        ];
        if !namespace.is_empty() {
            args.push("--label".into());
            args.push(format!("{CONSENT_LABEL}={namespace}/{worker_name}"));
        }
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(docker_args.iter().map(|s| s.to_string()));
        args.push(WORKER_IMAGE.into());
        args.extend(command.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&refs);
        Self {
            container,
            worker_name: worker_name.into(),
            metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
            dir,
        }
    }

    pub fn shared_root(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    pub fn tasks_dir(&self, sub: &str) -> PathBuf {
        self.shared_root()
            .join("tasks")
            .join(&self.worker_name)
            .join(sub)
    }

    /// Write a task file into `pending/`.
    pub fn add_task(&self, id: &str, body: &str) {
        fs::write(self.tasks_dir("pending").join(format!("{id}.json")), body).unwrap();
    }

    /// Tell the running worker to enter a fault mode (one-shot control file), written whole
    /// by a rename: a worker that reads a half-written file ignores and deletes it.
    pub fn inject_fault(&self, mode: &str) {
        let dir = self.shared_root().join("workers").join(&self.worker_name);
        fs::create_dir_all(&dir).unwrap();
        let temp = dir.join(".fault.tmp");
        fs::write(&temp, mode).unwrap();
        fs::rename(&temp, dir.join("fault")).unwrap();
    }

    pub fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "-f", format, &self.container])
    }
}

impl Drop for WorkerContainer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = docker(&["logs", "--tail", "30", &self.container]);
            eprintln!(
                "--- container {} logs (tail)\n{}{}",
                self.container,
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        let _ = docker(&["rm", "-f", &self.container]);
    }
}

/// Wait until Docker says the container has stopped; returns its exit code.
pub fn wait_exited(wc: &WorkerContainer) -> i64 {
    wait_for(
        &format!("container {} to exit", wc.container),
        Duration::from_secs(60),
        || {
            let state = wc.inspect("{{.State.Status}} {{.State.ExitCode}}");
            match state.split_once(' ') {
                Some(("exited", code)) => Ok(code.parse().unwrap()),
                _ => Err(state),
            }
        },
    )
}

/// Docker events of `container` between `since` (from [`docker_now`]) and now, as `Action`
/// words.
pub fn docker_events(container: &str, since: &str) -> Vec<String> {
    let until = unix_now() + 1;
    let out = docker_ok(&[
        "events",
        "--since",
        since,
        "--until",
        &until.to_string(),
        "--filter",
        &format!("container={container}"),
        "--format",
        "{{.Action}}",
    ]);
    out.lines().map(String::from).collect()
}

/// Now as the engine's event filter takes it, to the nanosecond (`seconds.nanoseconds`), after
/// a pause that puts what happened before clearly before it.
pub fn docker_now() -> String {
    std::thread::sleep(Duration::from_millis(1100));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Removes a container when a test ends, whatever happened.
pub struct RemoveOnDrop(pub String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}
