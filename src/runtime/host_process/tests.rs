use std::fs;

use super::*;

const UNIT: &str = "/system.slice/agent-worker-marie.service";

/// A fake `/proc` entry: `host_pid` is `ns_pid` in the node, in `cgroup`.
fn process(root: &Path, host_pid: u32, ns_pid: u32, cgroup: &str) {
    let dir = root.join(host_pid.to_string());
    fs::create_dir_all(dir.join("fd")).unwrap();
    fs::write(
        dir.join("status"),
        format!("Name:\tsample-worker\nState:\tS (sleeping)\nPid:\t{host_pid}\nNSpid:\t{host_pid}\t{ns_pid}\n"),
    )
    .unwrap();
    fs::write(
        dir.join("cgroup"),
        format!("12:memory:/docker/abc{cgroup}\n1:name=systemd:/docker/abc{cgroup}\n"),
    )
    .unwrap();
    for fd in 0..3 {
        fs::write(dir.join("fd").join(fd.to_string()), "").unwrap();
    }
}

#[test]
fn the_units_process_is_found_by_its_namespace_pid_and_cgroup() {
    let root = tempfile::tempdir().unwrap();
    // The same node PID in another unit, and a process whose host PID is the node PID.
    process(
        root.path(),
        5001,
        42,
        "/system.slice/agent-worker-anga.service",
    );
    process(root.path(), 42, 42, "/user.slice");
    process(root.path(), 5002, 42, UNIT);
    let found = find(root.path(), 42, UNIT).unwrap();
    assert_eq!((found.pid, found.host_pid), (42, 5002));
    assert_eq!(found.open_descriptors().unwrap(), 3);
    assert!(found.read("status").unwrap().contains("sample-worker"));
}

#[test]
fn in_the_same_namespace_the_pid_is_the_hosts() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("42");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("status"), "Name:\tw\nPid:\t42\nNSpid:\t42\n").unwrap();
    fs::write(dir.join("cgroup"), format!("0::{UNIT}\n")).unwrap();
    assert_eq!(find(root.path(), 42, UNIT).unwrap().host_pid, 42);
}

#[test]
fn two_nodes_with_the_same_unit_and_pid_are_not_told_apart() {
    let root = tempfile::tempdir().unwrap();
    process(root.path(), 5002, 42, UNIT);
    process(root.path(), 6002, 42, UNIT);
    assert_eq!(
        find(root.path(), 42, UNIT),
        None,
        "ambiguous: neither is taken"
    );
}

#[test]
fn nothing_is_found_without_both_the_pid_and_the_cgroup() {
    let root = tempfile::tempdir().unwrap();
    process(root.path(), 5001, 43, UNIT);
    process(
        root.path(),
        5002,
        42,
        "/system.slice/x-agent-worker-marie.service",
    );
    assert_eq!(find(root.path(), 42, UNIT), None);
    assert_eq!(find(root.path(), 42, ""), None);
    assert_eq!(find(root.path(), 0, UNIT), None);
}

#[test]
fn innermost_pids_and_cgroups_are_read() {
    assert_eq!(innermost_pid("Pid:\t7\nNSpid:\t7\t3\t1\n"), Some(1));
    assert_eq!(innermost_pid("Pid:\t7\n"), Some(7));
    assert_eq!(innermost_pid("Name:\tx\n"), None);
    let placement = cgroup_placement;
    assert_eq!(
        placement(&format!("0::{UNIT}\n"), UNIT),
        Some(Placement::Exact)
    );
    assert_eq!(
        placement(&format!("3:cpu:/docker/abc{UNIT}\n"), UNIT),
        Some(Placement::Nested)
    );
    assert_eq!(placement(&format!("0::{UNIT}/child\n"), UNIT), None);
    assert_eq!(
        placement("0::/system.slice/y-agent-worker-marie.service\n", UNIT),
        None
    );
    assert_eq!(placement("0::/\n", "/"), None);
}
