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

/// How to start the operator: [`Operator::builder`], then [`start`](Self::start) (as often as
/// needed: each call is a new process with the same settings).
#[derive(Clone)]
pub struct OperatorBuilder<'a> {
    stack: &'a Stack,
    namespace: String,
    log_dir: PathBuf,
    allowed_roots: Vec<PathBuf>,
    env: Vec<(String, String)>,
    wait_ready: bool,
}

impl Operator {
    /// An operator watching `namespace` and logging into `log_dir`; by default it may use the
    /// shared roots under `log_dir` (each test's own temporary directory) and
    /// [`start`](OperatorBuilder::start) waits until it is ready.
    pub fn builder<'a>(stack: &'a Stack, namespace: &str, log_dir: &Path) -> OperatorBuilder<'a> {
        OperatorBuilder {
            stack,
            namespace: namespace.to_string(),
            log_dir: log_dir.to_path_buf(),
            allowed_roots: vec![log_dir.to_path_buf()],
            env: Vec::new(),
            wait_ready: true,
        }
    }

    /// `Operator::builder(stack, namespace, log_dir).start()`: the common case.
    pub fn start(stack: &Stack, namespace: &str, log_dir: &Path) -> Self {
        Self::builder(stack, namespace, log_dir).start()
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

    /// The value of one series of /metrics, named with its labels as the page prints them
    /// (`name{label="value"}`), or None when the page has no such series (a labelled series
    /// appears only once it has been counted; a zero is a value, not a missing series).
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_in(&self.metrics(), series)
    }

    /// [`metric`](Self::metric) of a series that must be there: a panic with the page if not.
    #[track_caller]
    pub fn metric_value(&self, series: &str) -> f64 {
        let page = self.metrics();
        match metric_in(&page, series) {
            Some(value) => value,
            None => panic!("no series {series} in /metrics:\n{page}"),
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl OperatorBuilder<'_> {
    /// Exactly these `--allowed-root`s (instead of the log directory).
    pub fn allowed_roots(mut self, roots: &[&Path]) -> Self {
        self.allowed_roots = roots.iter().map(|r| r.to_path_buf()).collect();
        self
    }

    /// An extra environment variable for the operator (e.g. `OTEL_*`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Whether [`start`](Self::start) waits until the operator serves `/readyz` (the default),
    /// or returns as soon as the process runs.
    pub fn wait_ready(mut self, wait: bool) -> Self {
        self.wait_ready = wait;
        self
    }

    /// Start the operator process. Its log is appended to, so that a test that starts and
    /// kills it many times keeps every run's log.
    pub fn start(&self) -> Operator {
        let log = self.log_dir.join("operator.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker-recovery-operator"));
        // Port 0: the operator binds a free port itself and logs it, so that tests running in
        // parallel can never race for one.
        cmd.args(["run", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--namespace", &self.namespace]);
        for root in &self.allowed_roots {
            cmd.arg("--allowed-root").arg(root);
        }
        let out = fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let log_start = out.metadata().unwrap().len() as usize;
        let child = cmd
            .env("KUBECONFIG", &self.stack.kubeconfig)
            .env("RUST_LOG", "info,worker_recovery_operator=debug")
            .env_remove("WRO_ALLOWED_ROOTS")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("operator starts");
        let mut op = Operator {
            child,
            listen: String::new(),
            log,
            log_start,
        };
        if self.wait_ready {
            op.wait_ready();
        }
        op
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

/// The value of `series` in a Prometheus text page.
fn metric_in(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .map(|(_, value)| {
            value
                .parse()
                .unwrap_or_else(|e| panic!("{series}: value {value:?}: {e}"))
        })
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

/// A small deterministic generator for the moments to kill the operator at (its seed is
/// printed, to replay a failure).
pub struct Lcg(u64);

impl Lcg {
    /// Seeded with the time, which is printed.
    pub fn seeded() -> Self {
        let seed = super::unix_now();
        eprintln!("kill delays seeded with {seed}");
        Self(seed)
    }

    /// A number below `bound`.
    pub fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

/// `worker-recovery-operator postmortem ARGS` against the stack; its standard output, which
/// must be a success.
pub fn postmortem_cli(stack: &Stack, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker-recovery-operator"))
        .arg("postmortem")
        .args(args)
        .env("KUBECONFIG", &stack.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "postmortem {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
