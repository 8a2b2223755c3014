//! End-to-end tests of the diagnosis: for each fault mode of the real sample worker, a
//! WorkerRecovery applied with kubectl yields the right root cause with real evidence, and the
//! `diagnose` command prints the same.

mod support;

use std::{process::Command, time::Duration};

use serde_json::{json, Value};
use support::*;

/// Start a worker in fault mode `fault` (`FAULT_MODE`, none if empty), register it
/// (auto-recovery off, so the fault stays) with `extra_spec`, and start the operator. Returns
/// the pieces the test needs.
fn faulty_worker(
    stack: &Stack,
    test: &str,
    fault: &str,
    docker_args: &[&str],
    extra_spec: Value,
) -> (String, WorkerContainer, Operator) {
    let ns = stack.namespace(test);
    let task = ("task-1", r#"{"id":"task-1","type":"summarize"}"#);
    let env: &[(&str, &str)] = if fault.is_empty() {
        &[]
    } else {
        &[("FAULT_MODE", fault)]
    };
    let wc = WorkerContainer::start_with_tasks(&ns, test, docker_args, env, &[task]);
    stack.apply_ok(
        wc.worker(test, &ns)
            .heartbeat_timeout(5)
            .metrics(&wc.metrics_url)
            .spec(extra_spec),
    );
    let op = Operator::start(stack, &ns, wc.dir.path());
    (ns, wc, op)
}

#[test]
fn crash_is_diagnosed_as_an_application_crash() {
    let stack = stack();
    let (ns, wc, _op) = faulty_worker(stack, "crash", "crash", &[], json!({}));
    assert_eq!(wait_exited(&wc), 3);
    let d = diagnose_via_recovery(stack, &ns, "crash");
    assert_eq!(top_cause(&d), "ApplicationCrash", "{d:#}");
    let exited = finding(&d, "ContainerExited");
    assert_eq!(exited["evidence"]["exitCode"], "3");
    let logs = finding(&d, "LogErrors");
    assert!(logs.to_string().contains("simulated crash"), "{logs}");
    // The crash left its task in active/ with its lock: the deadlock check sees them (not stuck yet).
    assert!(wc.tasks_dir("active").join("task-1.json").exists());
}

#[test]
fn oom_is_diagnosed_as_out_of_memory_with_the_limit() {
    let stack = stack();
    let (ns, wc, _op) = faulty_worker(
        stack,
        "oom",
        "oom",
        &["-m", "16m", "--memory-swap", "16m"],
        json!({}),
    );
    assert_eq!(wait_exited(&wc), 137);
    let d = diagnose_via_recovery(stack, &ns, "oom");
    assert_eq!(top_cause(&d), "OutOfMemory", "{d:#}");
    let killed = finding(&d, "OomKilled");
    assert_eq!(killed["severity"], "Critical");
    let memory_limit = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f["evidence"]["memoryLimitBytes"].as_str())
        .unwrap_or_else(|| panic!("no memoryLimitBytes evidence in {d:#}"));
    assert_eq!(memory_limit, "16777216");

    // The CLI reports the same without the operator's help, as JSON and as a table.
    let kubeconfig = stack.kubeconfig.to_str().unwrap();
    let json = Command::new(env!("CARGO_BIN_EXE_worker-recovery-operator"))
        .args(["diagnose", "oom", "-n", &ns, "-o", "json", "--allowed-root"])
        .arg(wc.dir.path())
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let cli: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(top_cause(&cli), "OutOfMemory");
    let table = Command::new(env!("CARGO_BIN_EXE_worker-recovery-operator"))
        .args(["diagnose", "oom", "-n", &ns])
        .env("WRO_ALLOWED_ROOTS", wc.dir.path())
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("ROOT CAUSE: OutOfMemory"), "{text}");
    assert!(text.contains("OomKilled"), "{text}");

    // kubectl shows the verdict as a column.
    let rows = stack.kubectl_ok(&["get", "workerrecoveries", "-n", &ns]);
    assert!(
        rows.contains("ROOT CAUSE") && rows.contains("OutOfMemory"),
        "{rows}"
    );
}

#[test]
fn fd_leak_is_diagnosed_as_fd_exhaustion_with_the_counts() {
    let stack = stack();
    let (ns, wc, _op) = faulty_worker(
        stack,
        "fdleak",
        "fd-leak",
        &["--ulimit", "nofile=64:64"],
        json!({}),
    );
    wait_for(
        "the worker to exhaust its descriptors",
        Duration::from_secs(30),
        || {
            let logs = docker(&["logs", &wc.container]);
            let text = String::from_utf8_lossy(&logs.stdout).into_owned();
            if text.contains("Too many open files") {
                Ok(())
            } else {
                Err(text)
            }
        },
    );
    let d = diagnose_via_recovery(stack, &ns, "fdleak");
    assert_eq!(top_cause(&d), "FileDescriptorExhaustion", "{d:#}");
    let exhausted = finding(&d, "FdExhausted");
    assert_eq!(evidence_u64(exhausted, "softLimit"), 64);
    let open = evidence_u64(exhausted, "openFds");
    assert!((56..=64).contains(&open), "open fds {open}");
}

#[test]
fn hang_is_diagnosed_as_a_deadlock_with_stuck_task_and_lock() {
    let stack = stack();
    let (ns, wc, _op) = faulty_worker(
        stack,
        "hang",
        "hang",
        &[],
        json!({"diagnostics": {"stuckTaskSeconds": 3, "staleLockSeconds": 3}}),
    );
    // Let the heartbeat go stale (timeout 5 s) and the task and lock age past 3 s.
    let held = wc.tasks_dir("active").join("task-1.json");
    wait_file(
        "the task to be held in active/",
        &held,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(wc.inspect("{{.State.Running}}"), "true");
    let d = diagnose_via_recovery(stack, &ns, "hang");
    assert_eq!(top_cause(&d), "Deadlock", "{d:#}");
    let stale = finding(&d, "HeartbeatStale");
    assert!(evidence_u64(stale, "ageSeconds") >= 5, "{stale}");
    let stuck = finding(&d, "StuckTask");
    assert_eq!(stuck["evidence"]["taskId"], "task-1");
    assert!(evidence_u64(stuck, "ageSeconds") >= 3, "{stuck}");
    let lock = finding(&d, "StaleLock");
    assert_eq!(lock["evidence"]["holder"], "hang", "{lock}");
    finding(&d, "ProcessAlive");
}

#[test]
fn missing_dependency_is_diagnosed_with_the_binary() {
    let stack = stack();
    let (ns, wc, _op) = faulty_worker(
        stack,
        "nodep",
        "missing-dependency",
        &[],
        json!({"diagnostics": {"requiredBinaries": ["claude", "sample-worker"]}}),
    );
    assert_eq!(wait_exited(&wc), 127);
    let d = diagnose_via_recovery(stack, &ns, "nodep");
    assert_eq!(top_cause(&d), "MissingDependency", "{d:#}");
    let missing = finding(&d, "BinaryMissing");
    assert!(missing.to_string().contains("claude"), "{missing}");
    let present = finding(&d, "BinaryPresent");
    assert!(
        present.to_string().contains("/usr/local/bin/sample-worker"),
        "{present}"
    );
}

#[test]
fn hostile_inputs_become_findings_and_nothing_is_read_through_symlinks() {
    let stack = stack();
    let (ns, wc, _op) = faulty_worker(stack, "hostile", "crash", &[], json!({}));
    assert_eq!(wait_exited(&wc), 3);
    let root = wc.shared_root();
    let pending = wc.tasks_dir("pending");
    let active = wc.tasks_dir("active");
    std::fs::write(pending.join("garbage.json"), b"{ this is not json").unwrap();
    std::fs::write(pending.join("list.json"), b"[1, 2, 3]").unwrap();
    std::fs::write(pending.join("huge.json"), vec![b' '; 3 * 1024 * 1024]).unwrap();
    std::fs::create_dir(active.join("dir-named-like-a-task.json")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", active.join("escape.json")).unwrap();
    std::fs::create_dir_all(root.join("locks")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("locks/hostile_escape.lock")).unwrap();
    let heartbeat = root.join("workers/hostile/heartbeat.json");
    std::fs::remove_file(&heartbeat).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &heartbeat).unwrap();

    let d = diagnose_via_recovery(stack, &ns, "hostile");
    let text = d.to_string();
    assert!(
        !text.contains("root:x:0:0"),
        "content behind a symlink leaked into status: {d:#}"
    );
    finding(&d, "HeartbeatInvalid");
    let malformed: Vec<_> = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "MalformedTask")
        .map(|f| f.to_string())
        .collect();
    for name in ["garbage.json", "list.json", "huge.json"] {
        assert!(
            malformed.iter().any(|f| f.contains(name)),
            "{name} not reported: {malformed:#?}"
        );
    }
    let unsafe_paths: Vec<_> = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "UnsafePath")
        .map(|f| f.to_string())
        .collect();
    for name in [
        "dir-named-like-a-task.json",
        "escape.json",
        "hostile_escape.lock",
    ] {
        assert!(
            unsafe_paths.iter().any(|f| f.contains(name)),
            "{name} not reported: {unsafe_paths:#?}"
        );
    }
    // Nothing was moved or deleted by the diagnosis.
    assert!(pending.join("garbage.json").exists() && pending.join("huge.json").exists());
    assert!(active.join("escape.json").symlink_metadata().is_ok());
}

#[test]
fn under_init_the_workers_own_process_is_examined() {
    let stack = stack();
    // `docker run --init`: PID 1 is docker-init, the sample worker its child.
    let (ns, wc, _op) = faulty_worker(stack, "inity", "", &["--init"], json!({}));
    let hb = wc.shared_root().join("workers/inity/heartbeat.json");
    wait_file("the worker's first heartbeat", &hb, Duration::from_secs(30));
    assert_eq!(wc.inspect("{{.HostConfig.Init}}"), "true");
    let d = diagnose_via_recovery(stack, &ns, "inity");
    let alive = finding(&d, "ProcessAlive");
    assert_eq!(alive["evidence"]["selectedBy"], "initChild", "{alive}");
    assert_eq!(alive["evidence"]["init"], "docker-init", "{alive}");
    assert_eq!(alive["evidence"]["name"], "sample-worker", "{alive}");
    let pid = evidence_u64(alive, "pid");
    assert_ne!(pid, 1, "{alive}");
    assert_eq!(evidence_u64(alive, "ppid"), 1, "{alive}");
    // The descriptors counted are the worker's, not docker-init's.
    let fds = finding(&d, "FdUsage");
    assert_eq!(evidence_u64(fds, "pid"), pid, "{fds}");
    assert_eq!(fds["evidence"]["process"], "sample-worker");
}
