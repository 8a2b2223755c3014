//! The operator binary as a process against the stack.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use serde_json::Value;

use super::{wait_for, Stack};

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
