//! End-to-end tests of recovery runs: each mode and a dry run, against the real kube-apiserver,
//! etcd, Docker engine and sample worker, asserting files, containers and status.

mod support;

use std::{collections::BTreeMap, time::Duration};

use serde_json::{json, Value};
use support::*;

/// A task with fields the operator must keep exactly: nesting, unicode, number formats.
fn task(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"summarize","payload":{{"text":"héllo \u00e9","n":1.50,"big":123456789012345678901234567890}},"tags":["a","b"]}}"#
    )
}

/// A worker that crashed in the middle of `task-1` (left in active/ with its lock), plus bad
/// input in active/ (corrupt, empty, not UTF-8, huge, a directory named like a task, a symlink
/// to a file outside: six) and a lock directory.
/// Returns the container and the outside file the symlink points to.
fn crashed_worker(ns: &str, name: &str) -> (WorkerContainer, tempfile::TempDir) {
    let wc = WorkerContainer::start_with_tasks(
        ns,
        name,
        &[],
        &[("TASK_DURATION_MS", "600000")],
        &[("task-1", &task("task-1"))],
    );
    let active = wc.tasks_dir("active");
    wait_file(
        "task-1 in active/",
        &active.join("task-1.json"),
        Duration::from_secs(30),
    );
    wc.inject_fault("crash");
    assert_eq!(wait_exited(&wc), 3);
    std::fs::write(active.join("corrupt.json"), b"{ not json").unwrap();
    std::fs::write(active.join("empty.json"), b"").unwrap();
    std::fs::write(active.join("latin1.json"), b"{\"id\": \"caf\xe9\"}").unwrap();
    // Over the 16 MiB a task may have (sparse: nothing is written).
    std::fs::File::create(active.join("huge.json"))
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    std::fs::create_dir(active.join("dir-named-like-a-task.json")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("target.json"), br#"{"id":"outside"}"#).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("target.json"),
        active.join("escape.json"),
    )
    .unwrap();
    let root = wc.shared_root();
    std::fs::create_dir_all(root.join(format!("locks/{name}_dir.lock"))).unwrap();
    std::fs::create_dir_all(root.join(format!("tmp/{name}/nested"))).unwrap();
    std::fs::write(root.join(format!("tmp/{name}/nested/scratch")), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join(format!("tmp/{name}/link"))).unwrap();
    (wc, outside)
}

#[test]
fn a_quick_run_restarts_a_crashed_worker_and_verifies_it() {
    let stack = stack();
    let ns = stack.namespace("quick");
    let wc = WorkerContainer::start(&ns, "quick", &[], &[]);
    apply_worker(stack, &wc, "quick", &ns);
    wc.inject_fault("crash");
    assert_eq!(wait_exited(&wc), 3);
    let started_before = wc.inspect("{{.State.StartedAt}}");
    let _op = Operator::start(stack, &ns, wc.dir.path());

    stack.apply_ok(recovery("quick-1", &ns, "quick"));
    let run = wait_run_finished(stack, &ns, "quick-1");
    assert_phase(&run, "Succeeded");
    assert_eq!(run["spec"]["mode"], "Quick", "the default mode");
    for name in ["Diagnose", "Restart", "VerifyHealth"] {
        assert_eq!(run_step(&run, name)["state"], "Succeeded", "{name}");
        assert_eq!(run_step(&run, name)["attempt"], 1, "{name}");
    }
    assert_eq!(
        run["status"]["diagnosis"]["verdict"]["topCause"],
        "ApplicationCrash"
    );
    assert_eq!(wc.inspect("{{.State.Running}}"), "true");
    assert_ne!(wc.inspect("{{.State.StartedAt}}"), started_before);
    assert!(run["status"]["containerStartedAt"].is_string());

    // `kubectl get wrec` shows the mode and the current step.
    let rows = stack.kubectl_ok(&["get", "wrec", "-n", &ns]);
    assert!(
        rows.contains("MODE") && rows.contains("STEP") && rows.contains("VerifyHealth"),
        "{rows}"
    );

    // A finished run is immutable; re-applying it unchanged does nothing.
    let (ok, out) = stack.apply(recovery("quick-1", &ns, "quick").mode("Clean"));
    assert!(!ok, "a changed spec was accepted: {out}");
    assert!(out.contains("immutable"), "{out}");
    stack.apply_ok(recovery("quick-1", &ns, "quick"));
    std::thread::sleep(Duration::from_secs(2));
    let again = stack.get_json(&ns, "workerrecovery/quick-1");
    assert_eq!(
        again["status"]["completionTime"],
        run["status"]["completionTime"]
    );
}

#[test]
fn a_clean_run_requeues_quarantines_and_cleans_exactly_once() {
    let stack = stack();
    let ns = stack.namespace("clean");
    let (wc, outside) = crashed_worker(&ns, "cleany");
    apply_worker(stack, &wc, "cleany", &ns);
    let root = wc.shared_root();
    assert!(
        root.join("locks/cleany_task-1.lock").exists(),
        "the crash left its lock"
    );
    let _op = Operator::start(stack, &ns, wc.dir.path());

    stack.apply_ok(
        recovery("clean-1", &ns, "cleany")
            .mode("Clean")
            .spec(json!({"resume": {"batchDelaySeconds": 1}})),
    );
    let run = wait_run_finished(stack, &ns, "clean-1");
    assert_phase(&run, "Succeeded");
    let clean = run_step(&run, "CleanState");
    assert_eq!(clean["figures"]["requeued"], 1, "{clean}");
    assert_eq!(clean["figures"]["quarantined"], 6, "{clean}");
    assert_eq!(clean["figures"]["deadLettered"], 0, "{clean}");
    assert!(
        clean["figures"]["locksRemoved"].as_i64().unwrap() >= 1,
        "{clean}"
    );
    assert_eq!(run_step(&run, "Resume")["state"], "Succeeded");
    assert_eq!(run["status"]["failureReason"], "worker_crash");

    // task-1 went back to pending/ exactly once, then through the resume plan to the restarted
    // worker: retry_count 1, the failure recorded, every other field as it was.
    let places: Vec<_> = ["pending", "staged", "active", "done", "failed"]
        .iter()
        .map(|d| wc.tasks_dir(d).join("task-1.json"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(
        places.len(),
        1,
        "task-1 in exactly one directory: {places:?}"
    );
    let text = std::fs::read_to_string(&places[0]).unwrap();
    let moved: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(moved["retry_count"], 1, "{text}");
    assert_eq!(moved["failure_reason"], "worker_crash");
    assert!(moved["last_failure"].as_f64().unwrap() > 1.7e9);
    assert!(
        text.contains(
            r#""payload":{"text":"héllo \u00e9","n":1.50,"big":123456789012345678901234567890}"#
        ),
        "other fields kept verbatim: {text}"
    );
    // Bad input was quarantined with reasons; the symlink's target is untouched.
    let quarantine = wc.tasks_dir("quarantine");
    for name in [
        "corrupt.json",
        "empty.json",
        "latin1.json",
        "huge.json",
        "dir-named-like-a-task.json",
        "escape.json",
    ] {
        assert!(
            quarantine.join(name).symlink_metadata().is_ok(),
            "{name} quarantined"
        );
        assert!(
            quarantine.join(format!("{name}.reason")).exists(),
            "{name} has a reason"
        );
    }
    assert_eq!(
        std::fs::read(outside.path().join("target.json")).unwrap(),
        br#"{"id":"outside"}"#
    );
    // Only this worker's stale lock files went (the restarted worker may have taken task-1's
    // lock again since); a lock directory stays.
    assert!(
        clean["details"]["removedLocks"]
            .to_string()
            .contains("cleany_task-1.lock"),
        "{clean}"
    );
    assert!(root.join("locks/cleany_dir.lock").is_dir());
    // State reset once; tmp emptied without following its symlink.
    let state: Value =
        serde_json::from_slice(&std::fs::read(root.join("workers/cleany/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["recovery_count"], 1, "{state}");
    assert_eq!(
        state["status"], "running",
        "the resume plan gave the worker its queue back"
    );
    // (The crashed worker left its own work file there too; the restarted one may write again.)
    let removed = clean["details"]["removedTmpEntries"].to_string();
    assert!(
        removed.contains("\"link\"") && removed.contains("\"nested\""),
        "{clean}"
    );
    assert!(!root.join("tmp/cleany/nested").exists());
    assert!(root.join("tmp/cleany/link").symlink_metadata().is_err());
    assert!(outside.path().join("target.json").exists());
    assert_eq!(wc.inspect("{{.State.Running}}"), "true");
}

#[test]
fn a_dry_run_records_what_it_would_do_and_changes_nothing() {
    let stack = stack();
    let ns = stack.namespace("dry");
    let (wc, _outside) = crashed_worker(&ns, "dry");
    apply_worker(stack, &wc, "dry", &ns);
    let before = tree_snapshot(&wc.shared_root());
    let started_before = wc.inspect("{{.State.StartedAt}}");
    let _op = Operator::start(stack, &ns, wc.dir.path());

    stack.apply_ok(
        recovery("dry-1", &ns, "dry")
            .mode("Clean")
            .spec(json!({"dryRun": true})),
    );
    let run = wait_run_finished(stack, &ns, "dry-1");
    assert_phase(&run, "Succeeded");
    let clean = run_step(&run, "CleanState");
    assert_eq!(clean["figures"]["requeued"], 1, "{clean}");
    assert_eq!(clean["figures"]["quarantined"], 6, "{clean}");
    assert_eq!(
        clean["details"]["requeuedTasks"][0], "task-1.json",
        "{clean}"
    );
    assert!(run_step(&run, "Restart")["message"]
        .as_str()
        .unwrap()
        .starts_with("dry run: would start"));
    assert_eq!(run_step(&run, "VerifyHealth")["state"], "Skipped");
    assert_eq!(
        tree_snapshot(&wc.shared_root()),
        before,
        "the files are untouched"
    );
    assert_eq!(wc.inspect("{{.State.Status}}"), "exited");
    assert_eq!(wc.inspect("{{.State.StartedAt}}"), started_before);
}

#[test]
fn a_debug_run_starts_a_debug_copy_and_removes_it_with_the_run() {
    let stack = stack();
    let ns = stack.namespace("debug");
    let wc = WorkerContainer::start(&ns, "dbg", &[], &[]);
    apply_worker(stack, &wc, "dbg", &ns);
    let _op = Operator::start(stack, &ns, wc.dir.path());
    let debug = format!("{}-debug", wc.container);
    let _cleanup = RemoveOnDrop(debug.clone());

    stack.apply_ok(
        recovery("debug-1", &ns, "dbg")
            .mode("Debug")
            .spec(json!({"debug": {"otlpEndpoint": "http://127.0.0.1:4317"}})),
    );
    let run = wait_run_finished(stack, &ns, "debug-1");
    assert_phase(&run, "Succeeded");
    assert_eq!(run_step(&run, "DebugStart")["state"], "Succeeded");
    assert_eq!(
        wc.inspect("{{.State.Status}}"),
        "exited",
        "the original stays stopped"
    );
    let env = docker_ok(&["inspect", "-f", "{{json .Config.Env}}", &debug]);
    for want in [
        "LOG_LEVEL=DEBUG",
        "OTEL_TRACES_EXPORTER=otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317",
        "WORKER_NAME=dbg",
    ] {
        assert!(env.contains(want), "{want} in {env}");
    }
    let ulimits = docker_ok(&["inspect", "-f", "{{json .HostConfig.Ulimits}}", &debug]);
    assert!(
        ulimits.contains(r#""Name":"core","Hard":-1,"Soft":-1"#),
        "{ulimits}"
    );
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.Running}}", &debug]),
        "true"
    );
    let mounts = docker_ok(&["inspect", "-f", "{{json .HostConfig.Binds}}", &debug]);
    assert!(mounts.contains(":/shared"), "{mounts}");
    // One container consents for one Worker: the copy carries the run's label, not the consent.
    let labels = docker_ok(&["inspect", "-f", "{{json .Config.Labels}}", &debug]);
    assert!(!labels.contains(CONSENT_LABEL), "{labels}");
    assert!(labels.contains("workerrecovery.io/recovery"), "{labels}");

    // Deleting the run removes what it created.
    stack.kubectl_ok(&[
        "delete",
        "wrec",
        "debug-1",
        "-n",
        &ns,
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(
        !docker(&["inspect", &debug]).status.success(),
        "{debug} was removed"
    );
}

/// The operator is killed with SIGKILL at random moments while its clean-state step works
/// through thousands of active tasks, 30 times, then left to finish: no task is lost, none is
/// duplicated, each `retry_count` went up exactly once and every other field is unchanged.
#[test]
fn clean_state_is_exactly_once_under_sigkill() {
    const TASKS: usize = 25_000;
    const KILLS: usize = 30;
    let stack = stack();
    let ns = stack.namespace("sigkill");
    // A worker that is not running and does not process tasks: only the operator moves them.
    let wc = WorkerContainer::start_command(
        &ns,
        "killy",
        &["--entrypoint", "/bin/sh"],
        &["-c", "exit 0"],
    );
    wait_exited(&wc);
    let active = wc.tasks_dir("active");
    let mut originals = BTreeMap::new();
    for i in 0..TASKS {
        let id = format!("t{i:05}");
        // Some tasks are at their last retry: they go to failed/ (dead letter).
        let retry = i % 4;
        let body = format!(
            r#"{{"id":"{id}","retry_count":{retry},"payload":{{"n":{i}.0,"s":"ü{i}"}},"extra":[1,{{"deep":null}}]}}"#
        );
        std::fs::write(active.join(format!("{id}.json")), &body).unwrap();
        originals.insert(id, (i, retry, body));
    }
    apply_worker(stack, &wc, "killy", &ns);
    stack.apply_ok(
        recovery("kill-1", &ns, "killy")
            .mode("Clean")
            .spec(json!({"verifyTimeoutSeconds": 1})),
    );

    let mut rng = Lcg::seeded();
    let operator = Operator::builder(stack, &ns, wc.dir.path());
    for kill in 0..KILLS {
        let op = operator.clone().wait_ready(false).start();
        // Kill it at a random moment once the clean-state step is under way (polled every
        // 10 ms: the step must not be over before the kill).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !op.logged(&["step started", "CleanState"]) {
            assert!(
                std::time::Instant::now() < deadline,
                "kill {kill}: the CleanState step did not start: {}",
                op.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(10 + rng.next(140)));
        op.kill();
    }
    let _op = operator.start();
    let run = wait_run_finished(stack, &ns, "kill-1");
    let clean = run_step(&run, "CleanState");
    assert_eq!(clean["state"], "Succeeded", "{:#}", run["status"]);
    assert!(
        clean["attempt"].as_u64().unwrap() > KILLS as u64,
        "every kill landed while the step ran: {clean}"
    );
    eprintln!(
        "CleanState after {KILLS} kills: attempt {}, {}",
        clean["attempt"], clean["message"]
    );

    // Every task exactly once, in pending/ or failed/, retry_count + 1, the rest unchanged.
    let mut seen = BTreeMap::new();
    for dir in ["active", "pending", "failed", "quarantine"] {
        for entry in std::fs::read_dir(wc.tasks_dir(dir)).into_iter().flatten() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if let Some(id) = name.strip_suffix(".json") {
                assert!(
                    seen.insert(id.to_string(), dir).is_none(),
                    "{id} is in two directories"
                );
            }
        }
    }
    assert_eq!(seen.len(), TASKS, "no task lost");
    let (mut requeued, mut dead) = (0, 0);
    for (id, (i, retry, body)) in &originals {
        let dir = seen[id.as_str()];
        let text = std::fs::read_to_string(wc.tasks_dir(dir).join(format!("{id}.json"))).unwrap();
        let now: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(now["retry_count"], retry + 1, "{id}: {text}");
        let expected = if retry + 1 >= 3 { "failed" } else { "pending" };
        assert_eq!(dir, expected, "{id}");
        if dir == "failed" {
            dead += 1
        } else {
            requeued += 1
        }
        let mut was: Value = serde_json::from_str(body).unwrap();
        let mut now = now;
        for field in ["retry_count", "last_failure", "failure_reason"] {
            was.as_object_mut().unwrap().remove(field);
            now.as_object_mut().unwrap().remove(field);
        }
        assert_eq!(now, was, "{id}: other fields unchanged");
        let payload = format!(r#""payload":{{"n":{i}.0,"s":"ü{i}"}}"#);
        assert!(text.contains(&payload), "{id}: number format kept: {text}");
    }
    assert_eq!(clean["figures"]["requeued"], requeued, "counted once each");
    assert_eq!(clean["figures"]["deadLettered"], dead, "counted once each");
}
