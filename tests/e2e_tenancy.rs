//! A host shared by several Workers and several runs, against the real stack: a Worker can not
//! reach another worker's files, and runs on one Worker take turns.

mod support;

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde_json::json;
use support::*;

/// The victim's own files in `root`: its tasks, state, heartbeat, tmp and locks.
fn victims_files(root: &Path, victim: &str) -> BTreeMap<String, Vec<u8>> {
    tree_snapshot(root)
        .into_iter()
        .filter(|(path, _)| {
            [
                format!("tasks/{victim}"),
                format!("workers/{victim}"),
                format!("tmp/{victim}"),
                format!("locks/{victim}_"),
            ]
            .iter()
            .any(|mine| path.starts_with(mine.as_str()))
        })
        .collect()
}

/// The issue's attack, and the ways around it: a Worker without a container naming the
/// victim's worker, then Workers with consenting containers of their own that name the
/// victim's paths (the same worker name; a tmp directory on its task directory), each with a
/// Clean run. Nothing of the victim's changes, byte for byte, and nothing of it leaks.
#[test]
fn a_worker_naming_another_workers_files_changes_nothing_of_them() {
    let stack = stack();
    let ns = stack.namespace("tenancy");
    // The victim crashed in the middle of a task: active tasks, their locks, tmp files, a
    // state, a heartbeat; its container is stopped, so its files change only if someone
    // else changes them.
    let victim = WorkerContainer::start(&ns, "victim", &[], &[]);
    let hb = victim.shared_root().join("workers/victim/heartbeat.json");
    wait_file("a first heartbeat", &hb, Duration::from_secs(30));
    docker_ok(&["stop", "-t", "2", &victim.container]);
    let root = victim.shared_root();
    crashed_tasks(&root, "victim", 5);
    std::fs::create_dir_all(root.join("tmp/victim/deep")).unwrap();
    std::fs::write(root.join("tmp/victim/deep/scratch"), b"x").unwrap();
    std::fs::write(
        root.join("workers/victim/state.json"),
        br#"{"status":"running","recovery_count":2}"#,
    )
    .unwrap();
    let before = victims_files(&root, "victim");
    let op = Operator::start(stack, &ns, victim.dir.path());

    // 1. No container, and the victim's worker name; applied before the victim's Worker.
    let nowhere = format!("nope-{}", unique_suffix());
    stack.apply_ok(worker("nobody", &ns, &nowhere, &root).spec(json!({"workerName": "victim"})));
    stack.apply_ok(recovery("attack-1", &ns, "nobody").mode("Clean"));
    let run = wait_run_finished(stack, &ns, "attack-1");
    assert_eq!(run["status"]["phase"], "Failed");
    assert_eq!(condition(&run, "Completed")["reason"], "ContainerNotFound");
    let w = wait_phase(stack, &ns, "nobody", "Down");
    assert_eq!(condition(&w, "Accepted")["reason"], "ContainerNotFound");
    assert!(w["status"].get("heartbeat").is_none(), "{:#}", w["status"]);

    // 2. The victim's own Worker is admitted: the refused one above holds none of its paths.
    stack.apply_ok(victim.worker("victim", &ns));
    let v = wait_worker(
        stack,
        &ns,
        "victim",
        "admitted",
        Duration::from_secs(60),
        |v| v["status"]["claim"]["taskDirectory"].is_string(),
    );
    assert_eq!(condition(&v, "Accepted")["status"], "True");

    // 3. Consenting containers of their own, naming the victim's paths.
    let twin = WorkerContainer::start(&ns, "twin", &[], &[]);
    let tmpper = WorkerContainer::start(&ns, "tmpper", &[], &[]);
    stack.apply_ok(
        worker("twin", &ns, &twin.container, &root).spec(json!({"workerName": "victim"})),
    );
    stack.apply_ok(
        worker("tmpper", &ns, &tmpper.container, &root)
            .spec(json!({"paths": {"tmpDir": "tasks/victim"}})),
    );
    for (attacker, run) in [("twin", "attack-2"), ("tmpper", "attack-3")] {
        stack.apply_ok(recovery(run, &ns, attacker).mode("Clean"));
        let diag = format!("{run}-diagnose");
        stack.apply_ok(recovery(&diag, &ns, attacker).mode("Diagnose"));
        for name in [run.to_string(), diag] {
            let r = wait_run_finished(stack, &ns, &name);
            assert_eq!(r["status"]["phase"], "Failed", "{name}");
            assert_eq!(
                condition(&r, "Completed")["reason"],
                "PathsClaimed",
                "{name}"
            );
            assert!(r["status"].get("diagnosis").is_none(), "{name}");
        }
        let w = wait_phase(stack, &ns, attacker, "Refused");
        let accepted = condition(&w, "Accepted");
        assert_eq!(accepted["reason"], "PathsClaimed");
        assert!(
            accepted["message"]
                .as_str()
                .unwrap()
                .contains("by Worker victim"),
            "{accepted}"
        );
        assert!(w["status"].get("heartbeat").is_none() && w["status"].get("claim").is_none());
    }

    // Byte for byte as it was; the victim still admitted and stopped; its content nowhere else.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(victims_files(&root, "victim"), before);
    assert_eq!(victim.inspect("{{.State.Status}}"), "exited");
    let v = worker_json(stack, &ns, "victim");
    assert_eq!(condition(&v, "Accepted")["status"], "True");
    let leaked = format!(
        "{}{}",
        stack.get_json(&ns, "workerrecoveries"),
        serde_json::to_string(
            &["nobody", "twin", "tmpper"].map(|n| worker_json(stack, &ns, n)["status"].clone())
        )
        .unwrap()
    );
    assert!(
        !leaked.contains("t-0001"),
        "no task name of the victim leaks"
    );
    drop(op);
}

/// Two Clean runs applied at the same moment take turns: the second waits with
/// AnotherRunActive until the first has finished, and every task is requeued once.
#[test]
fn two_clean_runs_applied_together_take_turns() {
    let stack = stack();
    let ns = stack.namespace("turns");
    let (wc, ids) = WorkerContainer::crashed_with_tasks(&ns, "turns", "20", 50);
    stack.apply_ok(wc.worker("turns", &ns));
    let _op = Operator::start(stack, &ns, wc.dir.path());
    // The first run releases all 50 tasks at once and judges them 5 s later: time for the
    // restarted worker to finish them (20 ms each) before the second run looks at active/.
    let clean = |name: &str| {
        recovery(name, &ns, "turns")
            .mode("Clean")
            .spec(json!({"resume": {"batchSize": 100, "batchDelaySeconds": 5}}))
    };
    stack.apply_ok(list([clean("clean-a"), clean("clean-b")]));
    let a = wait_run_finished(stack, &ns, "clean-a");
    let b = wait_run_finished(stack, &ns, "clean-b");
    for r in [&a, &b] {
        assert_phase(r, "Succeeded");
    }
    let waited: Vec<_> = [("clean-a", &a, &b), ("clean-b", &b, &a)]
        .into_iter()
        .filter(|(name, _, _)| {
            event_reasons(stack, &ns, name)
                .iter()
                .any(|r| r == "AnotherRunActive")
        })
        .collect();
    assert_eq!(waited.len(), 1, "exactly one run waited");
    let (_, second, first) = waited[0];
    assert!(
        seconds(&run_step(second, "Diagnose")["startTime"])
            >= seconds(&first["status"]["completionTime"]),
        "the second began when the first had finished"
    );
    assert_eq!(run_step(first, "CleanState")["figures"]["requeued"], 50);
    assert_eq!(run_step(second, "CleanState")["figures"]["requeued"], 0);
    let places = wait_for("every task done", Duration::from_secs(60), || {
        let places = task_places(&wc, &ids);
        let done = places.values().filter(|p| p[0].0 == "done").count();
        (done == ids.len())
            .then_some(places.clone())
            .ok_or(format!("{done} done"))
    });
    for (id, at) in places {
        assert_eq!(
            at,
            vec![("done".to_string(), 1)],
            "{id}: once, retry_count 1"
        );
    }
}

/// A Quick run applied while a Clean run is cleaning waits until the Clean run has finished:
/// the worker is not started in the middle of the clean-up, and no task is requeued twice.
#[test]
fn a_quick_run_waits_for_a_clean_run_in_clean_state() {
    let stack = stack();
    let ns = stack.namespace("cleaning");
    let (wc, ids) = WorkerContainer::crashed_with_tasks(&ns, "cleaning", "1", 3000);
    stack.apply_ok(wc.worker("cleaning", &ns));
    let _op = Operator::start(stack, &ns, wc.dir.path());
    let since = docker_now();
    stack.apply_ok(
        recovery("clean", &ns, "cleaning")
            .mode("Clean")
            .spec(json!({"resume": {"batchSize": 1000, "batchDelaySeconds": 1}})),
    );
    wait_step(stack, &ns, "clean", Duration::from_secs(60), |step| {
        !step.is_empty() && step != "Diagnose"
    });
    stack.apply_ok(recovery("quick", &ns, "cleaning").mode("Quick"));
    let clean = wait_run_finished(stack, &ns, "clean");
    let quick = wait_run_finished(stack, &ns, "quick");
    assert_phase(&clean, "Succeeded");
    assert_phase(&quick, "Succeeded");
    assert_events(stack, &ns, "quick", &["AnotherRunActive"]);
    assert!(
        seconds(&run_step(&quick, "Restart")["startTime"])
            >= seconds(&clean["status"]["completionTime"]),
        "the Quick run restarted the worker only after the Clean run"
    );
    assert_eq!(run_step(&clean, "CleanState")["figures"]["requeued"], 3000);
    // Started once by the Clean run's Restart step, once by the Quick run (a restart).
    let starts = docker_events(&wc.container, &since)
        .iter()
        .filter(|e| e.as_str() == "start")
        .count();
    assert_eq!(starts, 2, "no start during the clean-up");
    assert_requeued_once(&wc, &ids);
}
