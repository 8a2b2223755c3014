//! A worker's process as the operator's own `/proc` shows it: for a runtime whose workers are
//! processes of the operator's host (systemd), where nothing is run inside the worker. The
//! process checks read its `status`, `cmdline`, `limits` and `fd/` here instead of with
//! `docker exec`.
//!
//! The runtime names the process by a PID of its own PID namespace (a unit's `MainPID`). When
//! the operator sees another namespace (systemd in a container, the operator in a pod with
//! `hostPID`), the PID is mapped: the process of the operator's `/proc` whose innermost
//! `NSpid` is that PID *and* whose cgroup is the unit's, so that a process of another
//! namespace with the same number is never taken for it.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Most bytes read from one `/proc` file (`status`, `limits` and `cmdline` are a few KiB).
pub const MAX_PROC_FILE: u64 = 64 * 1024;
/// Most processes looked at when mapping a PID.
const MAX_SCANNED: usize = 65_536;

/// The worker's main process, by the runtime's PID and the operator's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostProcess {
    /// As the runtime names it (the unit's `MainPID`).
    pub pid: u32,
    /// As the operator's `/proc` names it.
    pub host_pid: u32,
    /// The operator's `/proc` (`/proc`; a directory of fixtures in tests).
    pub proc_root: PathBuf,
}

impl HostProcess {
    /// `/proc/<host pid>/<file>`, at most [`MAX_PROC_FILE`] bytes, lossily as text.
    pub fn read(&self, file: &str) -> io::Result<String> {
        read_capped(&self.proc_root.join(self.host_pid.to_string()).join(file))
    }

    /// How many descriptors the process holds (`/proc/<host pid>/fd`).
    pub fn open_descriptors(&self) -> io::Result<u64> {
        let dir = self.proc_root.join(self.host_pid.to_string()).join("fd");
        Ok(fs::read_dir(dir)?.count() as u64)
    }

    /// A file of the host's `/proc` that belongs to no process (`sys/fs/file-nr`).
    pub fn read_host(&self, file: &str) -> io::Result<String> {
        read_capped(&self.proc_root.join(file))
    }
}

fn read_capped(path: &Path) -> io::Result<String> {
    use io::Read;
    let mut text = Vec::new();
    fs::File::open(path)?
        .take(MAX_PROC_FILE)
        .read_to_end(&mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// The operator's PID of the process the runtime calls `pid`, in the cgroup `control_group`
/// (a unit's `ControlGroup`, `/system.slice/<unit>`); `None` when no visible process is both,
/// or when more than one is (several nodes on one host may run units of the same name). The
/// same PID in exactly that cgroup is tried first (the operator in the runtime's PID and
/// cgroup namespaces: systemd is the host's), then every process. Blocking.
pub fn find(proc_root: &Path, pid: u32, control_group: &str) -> Option<HostProcess> {
    if control_group.is_empty() || pid == 0 {
        return None;
    }
    let found = |host_pid| HostProcess {
        pid,
        host_pid,
        proc_root: proc_root.to_path_buf(),
    };
    if placed(proc_root, pid, pid, control_group) == Some(Placement::Exact) {
        return Some(found(pid));
    }
    let mut candidates = fs::read_dir(proc_root)
        .ok()?
        .filter_map(Result::ok)
        .take(MAX_SCANNED)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|host_pid| placed(proc_root, *host_pid, pid, control_group).is_some());
    match (candidates.next(), candidates.next()) {
        (Some(only), None) => Some(found(only)),
        _ => None,
    }
}

/// Where the process `host_pid` is the runtime's `pid` in `control_group`: how its cgroup
/// matched, or `None` when it is not that process.
fn placed(proc_root: &Path, host_pid: u32, pid: u32, control_group: &str) -> Option<Placement> {
    let dir = proc_root.join(host_pid.to_string());
    let status = read_capped(&dir.join("status")).ok()?;
    if innermost_pid(&status) != Some(pid) {
        return None;
    }
    cgroup_placement(&read_capped(&dir.join("cgroup")).ok()?, control_group)
}

/// How a process's cgroup matched a unit's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The path is the unit's cgroup: the same cgroup namespace.
    Exact,
    /// The path ends with it: the unit's node seen from outside its cgroup namespace.
    Nested,
}

/// The process's PID in its own (innermost) PID namespace: the last `NSpid:` value, or `Pid:`
/// on kernels without `NSpid` (before 4.1).
pub fn innermost_pid(status: &str) -> Option<u32> {
    let value = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
    };
    let nspid = value("NSpid").and_then(|v| v.split_whitespace().last());
    nspid.or_else(|| value("Pid").map(str::trim))?.parse().ok()
}

/// Whether `/proc/<pid>/cgroup` puts the process in `control_group`: a line's path is that
/// group, or ends with it as whole components (seen from outside a cgroup namespace, the
/// node's prefix comes first: `/docker/<id>/system.slice/<unit>`). A process of a child group
/// (`<unit>/x`) is not the unit's main process.
pub fn cgroup_placement(cgroup: &str, control_group: &str) -> Option<Placement> {
    let group = control_group.trim_end_matches('/');
    if group.is_empty() {
        return None;
    }
    let paths = || {
        cgroup
            .lines()
            .map(|l| l.splitn(3, ':').nth(2).unwrap_or_default())
    };
    if paths().any(|path| path == group) {
        return Some(Placement::Exact);
    }
    paths()
        .any(|path| {
            path.strip_suffix(group)
                .is_some_and(|prefix| prefix.ends_with('/') || group.starts_with('/'))
        })
        .then_some(Placement::Nested)
}

#[cfg(test)]
mod tests;
