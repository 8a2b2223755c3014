//! The stack's systemd node (`scripts/stack.sh systemd`): systemd as PID 1 in a container,
//! its system bus socket, unit directory and shared directory on the host.

use std::{fs, path::PathBuf, process::Command, sync::OnceLock};

use super::{repo_root, run_checked, stack, unique_suffix};

/// The container of the systemd node (`scripts/stack.sh`).
pub const SYSTEMD_NODE: &str = "wro-systemd";

/// The running systemd node.
pub struct SystemdNode {
    /// `unix:path=...` of its system bus.
    pub bus: String,
    /// Unit files dropped here are seen after a `Reload`.
    pub units: PathBuf,
    /// Mounted at the same path in the node: workers' shared roots go below it.
    pub shared: PathBuf,
    /// Its persistent journal.
    pub journal: PathBuf,
}

static NODE: OnceLock<SystemdNode> = OnceLock::new();

/// Start the stack and its systemd node (idempotent), once per test binary.
pub fn systemd_node() -> &'static SystemdNode {
    NODE.get_or_init(|| {
        stack();
        let root = repo_root();
        run_checked(
            Command::new("bash")
                .arg(root.join("scripts/stack.sh"))
                .arg("systemd"),
            "scripts/stack.sh systemd",
        );
        let dir = root.join(".stack/systemd");
        SystemdNode {
            bus: format!("unix:path={}", dir.join("dbus/system_bus_socket").display()),
            units: dir.join("units"),
            shared: dir.join("shared"),
            journal: dir.join("journal"),
        }
    })
}

/// A sample worker run by the node as `agent-worker-<name>.service` (`Restart=no`), its shared
/// root a fresh directory below the node's shared directory. The unit file is removed when it
/// is dropped (the unit itself is stopped by the test).
pub struct WorkerUnit {
    pub unit: String,
    pub worker_name: String,
    pub shared_root: PathBuf,
    file: PathBuf,
}

impl WorkerUnit {
    /// Write the unit file; `consent` is the `WORKERRECOVERY_WORKER` value (none: no
    /// consent), `env` more `Environment=` entries, `service` more `[Service]` lines.
    pub fn write(
        node: &SystemdNode,
        name: &str,
        consent: Option<&str>,
        env: &[&str],
        service: &[&str],
    ) -> Self {
        let worker_name = format!("{name}-{}", unique_suffix());
        let unit = format!("agent-worker-{worker_name}.service");
        let shared_root = node.shared.join(&worker_name);
        for sub in ["pending", "active", "staged", "failed"] {
            fs::create_dir_all(shared_root.join("tasks").join(&worker_name).join(sub)).unwrap();
        }
        let mut environment = vec![
            format!("WORKER_NAME={worker_name}"),
            format!("SHARED_ROOT={}", shared_root.display()),
            "METRICS_ADDR=127.0.0.1:0".into(),
            "HEARTBEAT_INTERVAL_SECS=1".into(),
        ];
        environment.extend(consent.map(|c| format!("WORKERRECOVERY_WORKER={c}")));
        environment.extend(env.iter().map(|e| e.to_string()));
        let mut text = format!(
            "[Unit]\nDescription=agent worker {worker_name} (e2e)\n\n[Service]\nType=simple\nExecStart=/usr/local/bin/sample-worker\nRestart=no\n"
        );
        for e in &environment {
            text += &format!("Environment={e}\n");
        }
        for line in service {
            text += &format!("{line}\n");
        }
        let file = node.units.join(&unit);
        fs::write(&file, text).unwrap();
        Self {
            unit,
            worker_name,
            shared_root,
            file,
        }
    }

    pub fn heartbeat(&self) -> PathBuf {
        self.shared_root
            .join("workers")
            .join(&self.worker_name)
            .join("heartbeat.json")
    }

    /// Tell the worker to enter a fault mode (its one-shot control file, renamed in whole).
    pub fn inject_fault(&self, mode: &str) {
        let dir = self.shared_root.join("workers").join(&self.worker_name);
        fs::create_dir_all(&dir).unwrap();
        let temp = dir.join(".fault.tmp");
        fs::write(&temp, mode).unwrap();
        fs::rename(&temp, dir.join("fault")).unwrap();
    }
}

impl Drop for WorkerUnit {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
        let _ = fs::remove_dir_all(&self.shared_root);
    }
}
