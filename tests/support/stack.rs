//! The local stack (kube-apiserver + etcd + dockerd) and kubectl against it; polling.

use std::{
    io::Write,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

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

pub fn run_checked(cmd: &mut Command, what: &str) -> Output {
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

    /// `kubectl apply -f -` of a manifest (JSON); returns (success, stdout + stderr).
    pub fn apply(&self, manifest: impl Into<Value>) -> (bool, String) {
        let json = manifest.into().to_string();
        let out = self.kubectl(&["apply", "-f", "-"], Some(&json));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `kubectl apply`, which must succeed.
    pub fn apply_ok(&self, manifest: impl Into<Value>) {
        let (ok, out) = self.apply(manifest);
        assert!(ok, "{out}");
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
#[track_caller]
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
