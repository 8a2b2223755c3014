//! End-to-end harness: the real local stack (kube-apiserver + etcd + dockerd, started by
//! `scripts/stack.sh`), the real sample-worker image, and the operator binary as a process.
//!
//! Nothing here skips: if the stack cannot start, every e2e test fails with the reason.
#![allow(dead_code)]

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const WORKER_IMAGE: &str = "wro-sample-worker:dev";
/// The label by which a container lets one Worker manage it (`<namespace>/<worker>`).
pub const CONSENT_LABEL: &str = "workerrecovery.io/worker";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The running local stack.
pub struct Stack {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

static STACK: OnceLock<Stack> = OnceLock::new();

/// Bring the stack up (idempotent), build the worker image and install the CRDs, once per test binary.
pub fn stack() -> &'static Stack {
    STACK.get_or_init(|| {
        let root = repo_root();
        run_checked(
            Command::new("bash")
                .arg(root.join("scripts/stack.sh"))
                .arg("up"),
            "scripts/stack.sh up",
        );
        run_checked(
            Command::new("bash").arg(root.join("scripts/build-worker-image.sh")),
            "scripts/build-worker-image.sh",
        );
        let stack = Stack {
            kubeconfig: root.join(".stack/kubeconfig"),
            kubectl: root.join(".stack/bin/kubectl"),
        };
        stack.kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            root.join("crds").to_str().unwrap(),
        ]);
        stack.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/workers.workerrecovery.io",
            "crd/workerrecoveries.workerrecovery.io",
            "crd/resumeplans.workerrecovery.io",
        ]);
        eprintln!(
            "e2e: stack is up (kubeconfig {})",
            stack.kubeconfig.display()
        );
        stack
    })
}

fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

impl Stack {
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Run kubectl and panic with its output if it fails; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -`; returns (success, stdout + stderr).
    pub fn apply(&self, yaml: &str) -> (bool, String) {
        let out = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn get_json(&self, ns: &str, resource: &str) -> Value {
        serde_json::from_str(&self.kubectl_ok(&["get", "-n", ns, resource, "-o", "json"])).unwrap()
    }

    /// A fresh namespace for one test.
    pub fn namespace(&self, test: &str) -> String {
        let ns = format!("e2e-{test}-{}", unique_suffix());
        self.kubectl_ok(&["create", "namespace", &ns]);
        ns
    }

    /// Events (core/v1 view) about one object.
    pub fn events_for(&self, ns: &str, name: &str) -> Vec<Value> {
        let list = self.get_json(ns, "events");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["involvedObject"]["name"] == name)
            .cloned()
            .collect()
    }
}

pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos % 0xfffffff, std::process::id() % 0xfff)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` until it returns Some, or panic after `timeout` with `what` and the last value seen.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
}

/// The operator binary running against the stack, watching one namespace.
pub struct Operator {
    child: Child,
    pub listen: String,
    log: PathBuf,
    /// Where this process's part of the (shared, appended) log starts.
    log_start: usize,
}

impl Operator {
    /// Start the operator watching `namespace`, allowed to use the shared roots under
    /// `log_dir` (each test's own temporary directory), logging into `log_dir`.
    pub fn start(stack: &Stack, namespace: &str, log_dir: &Path) -> Self {
        Self::start_allowing(stack, namespace, log_dir, &[log_dir])
    }

    /// Start the operator with exactly these `--allowed-root`s and wait until it is ready.
    pub fn start_allowing(
        stack: &Stack,
        namespace: &str,
        log_dir: &Path,
        allowed_roots: &[&Path],
    ) -> Self {
        let mut op = Self::spawn(stack, namespace, log_dir, allowed_roots);
        op.wait_ready();
        op
    }

    /// Start the operator process and return at once (its log is appended to, so that a
    /// test that starts and kills it many times keeps every run's log).
    pub fn spawn(stack: &Stack, namespace: &str, log_dir: &Path, allowed_roots: &[&Path]) -> Self {
        Self::spawn_with_env(stack, namespace, log_dir, allowed_roots, &[])
    }

    /// Start the operator with extra environment variables (e.g. `OTEL_*`) and wait until it
    /// is ready.
    pub fn start_with_env(
        stack: &Stack,
        namespace: &str,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let mut op = Self::spawn_with_env(stack, namespace, log_dir, &[log_dir], env);
        op.wait_ready();
        op
    }

    fn wait_ready(&mut self) {
        let op = &*self;
        let listen = wait_for("the operator to listen", Duration::from_secs(30), || {
            op.bound_address().ok_or_else(|| op.log_tail())
        });
        wait_for("operator /readyz", Duration::from_secs(30), || {
            http_get(&listen, "/readyz")
                .filter(|(code, _)| *code == 200)
                .ok_or_else(|| op.log_tail())
        });
        self.listen = listen;
    }

    /// [`spawn`](Self::spawn) with extra environment variables.
    pub fn spawn_with_env(
        stack: &Stack,
        namespace: &str,
        log_dir: &Path,
        allowed_roots: &[&Path],
        env: &[(&str, &str)],
    ) -> Self {
        let log = log_dir.join("operator.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker-recovery-operator"));
        // Port 0: the operator binds a free port itself and logs it, so that tests running in
        // parallel can never race for one.
        cmd.args(["run", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--namespace", namespace]);
        for root in allowed_roots {
            cmd.arg("--allowed-root").arg(root);
        }
        let out = fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let log_start = out.metadata().unwrap().len() as usize;
        let child = cmd
            .env("KUBECONFIG", &stack.kubeconfig)
            .env("RUST_LOG", "info,worker_recovery_operator=debug")
            .env_remove("WRO_ALLOWED_ROOTS")
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("operator starts");
        Self {
            child,
            listen: String::new(),
            log,
            log_start,
        }
    }

    /// Kill the operator with SIGKILL, as a crash would, and reap it (what dropping it does).
    pub fn kill(self) {
        drop(self)
    }

    /// Whether this process has logged a line containing all of `needles`.
    pub fn logged(&self, needles: &[&str]) -> bool {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.get(self.log_start..)
            .unwrap_or_default()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// The address the operator logged that it serves on.
    fn bound_address(&self) -> Option<String> {
        let text = fs::read_to_string(&self.log).ok()?;
        text.get(self.log_start..)?.lines().find_map(|line| {
            // JSON logs are flat: the message and the fields side by side.
            let v: Value = serde_json::from_str(line).ok()?;
            v["message"]
                .as_str()?
                .starts_with("serving /metrics")
                .then(|| v["addr"].as_str().map(String::from))?
        })
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process's peak resident memory (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub fn metrics(&self) -> String {
        http_get(&self.listen, "/metrics")
            .expect("operator serves /metrics")
            .1
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- operator log (tail)\n{}", self.log_tail());
        }
    }
}

/// Minimal HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

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

    /// Like [`start`](Self::start), with task files `(id, json)` in `pending/` before the
    /// worker starts (so a fault at start-up finds them).
    pub fn start_with_tasks(
        namespace: &str,
        worker_name: &str,
        docker_args: &[&str],
        env: &[(&str, &str)],
        tasks: &[(&str, &str)],
    ) -> Self {
        Self::start_full(namespace, worker_name, docker_args, env, tasks, &[])
    }

    /// The sample worker's image running `command` instead of the sample worker: a worker
    /// someone else wrote, with busybox.
    pub fn start_command(
        namespace: &str,
        worker_name: &str,
        docker_args: &[&str],
        command: &[&str],
    ) -> Self {
        Self::start_full(namespace, worker_name, docker_args, &[], &[], command)
    }

    fn start_full(
        namespace: &str,
        worker_name: &str,
        docker_args: &[&str],
        env: &[(&str, &str)],
        tasks: &[(&str, &str)],
        command: &[&str],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wro-e2e-")
            .tempdir()
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

    /// The Worker manifest for this container.
    pub fn worker_yaml(
        &self,
        name: &str,
        ns: &str,
        heartbeat_timeout: u32,
        auto_recovery: bool,
    ) -> String {
        self.worker_yaml_with(name, ns, heartbeat_timeout, auto_recovery, "")
    }

    /// The Worker manifest with `extra_spec` (YAML lines indented by two spaces) added to the spec.
    pub fn worker_yaml_with(
        &self,
        name: &str,
        ns: &str,
        heartbeat_timeout: u32,
        auto_recovery: bool,
        extra_spec: &str,
    ) -> String {
        format!(
            r#"apiVersion: workerrecovery.io/v1alpha1
kind: Worker
metadata:
  name: {name}
  namespace: {ns}
spec:
  container: {container}
  workerName: {worker}
  sharedRoot: {root}
  heartbeatTimeoutSeconds: {heartbeat_timeout}
  autoRecovery:
    enabled: {auto_recovery}
{extra_spec}"#,
            container = self.container,
            worker = self.worker_name,
            root = self.shared_root().display(),
        )
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

/// Wait until the Worker `name` reports `phase`; returns the Worker.
pub fn wait_phase(stack: &Stack, ns: &str, name: &str, phase: &str) -> Value {
    wait_for(
        &format!("Worker {name} phase {phase}"),
        Duration::from_secs(60),
        || {
            let w = stack.get_json(ns, &format!("worker/{name}"));
            if w["status"]["phase"] == phase {
                Ok(w)
            } else {
                Err(w["status"].to_string())
            }
        },
    )
}

/// Wait until the WorkerRecovery `name` has finished (Succeeded or Failed); returns it.
pub fn wait_run_finished(stack: &Stack, ns: &str, name: &str) -> Value {
    wait_for(
        &format!("WorkerRecovery {name} to finish"),
        Duration::from_secs(120),
        || {
            let r = stack.get_json(ns, &format!("workerrecovery/{name}"));
            match r["status"]["phase"].as_str() {
                Some("Succeeded" | "Failed") => Ok(r),
                _ => Err(r["status"].to_string()),
            }
        },
    )
}

/// A Worker's status condition by type.
pub fn condition<'a>(worker: &'a Value, type_: &str) -> Option<&'a Value> {
    worker["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Every file below `dir` with its content (a symlink as its target, a directory as `name/`),
/// to compare trees byte for byte.
pub fn tree_snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                pending.push(path);
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, target.display().to_string().into_bytes());
            } else {
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// A WorkerRecovery manifest; `extra` holds more spec lines, indented by two spaces.
pub fn run_yaml(name: &str, ns: &str, worker: &str, extra: &str) -> String {
    format!(
        "apiVersion: workerrecovery.io/v1alpha1\nkind: WorkerRecovery\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  workerRef:\n    name: {worker}\n  stopGracePeriodSeconds: 2\n  verifyTimeoutSeconds: 60\n{extra}"
    )
}

/// A step of a run's status by name.
pub fn run_step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["status"]["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name}: {:#}", run["status"]))
}

/// The reasons of the Events about one object.
pub fn reasons_of(stack: &Stack, ns: &str, name: &str) -> Vec<String> {
    stack
        .events_for(ns, name)
        .iter()
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect()
}

/// A time of a status (RFC 3339) as Unix seconds.
pub fn seconds(time: &Value) -> i64 {
    let text = time
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {time}"));
    let at: k8s_openapi::jiff::Timestamp = text.parse().unwrap();
    at.as_second()
}

/// Write `n` task files `t-0000.json`, ... into `dir` (as a crashed worker left them in
/// `active/`), each with its lock `locks/<worker>_<id>.lock` under `root`.
pub fn crashed_tasks(root: &Path, worker: &str, n: usize) -> Vec<String> {
    let active = root.join("tasks").join(worker).join("active");
    let locks = root.join("locks");
    fs::create_dir_all(&active).unwrap();
    fs::create_dir_all(&locks).unwrap();
    (0..n)
        .map(|i| {
            let id = format!("t-{i:04}");
            fs::write(
                active.join(format!("{id}.json")),
                format!(r#"{{"id":"{id}"}}"#),
            )
            .unwrap();
            fs::write(locks.join(format!("{worker}_{id}.lock")), b"{}").unwrap();
            id
        })
        .collect()
}

/// Where each task id is among `dirs` of the worker's task directory, and its `retry_count`.
pub fn task_places(
    wc: &WorkerContainer,
    ids: &[String],
) -> std::collections::BTreeMap<String, Vec<(String, i64)>> {
    let mut out = std::collections::BTreeMap::new();
    for dir in ["pending", "staged", "active", "done", "failed"] {
        let Ok(entries) = fs::read_dir(wc.tasks_dir(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Ok(task) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let Some(id) = task["id"].as_str().filter(|id| ids.iter().any(|i| i == id)) else {
                continue;
            };
            let retries = task["retry_count"].as_i64().unwrap_or(0);
            out.entry(id.to_string())
                .or_insert_with(Vec::new)
                .push((dir.to_string(), retries));
        }
    }
    out
}
