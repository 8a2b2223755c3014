//! End-to-end tests of the Worker controller against the real kube-apiserver, etcd, Docker
//! engine and sample worker.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The Worker controller's reconciles in the operator's /metrics.
const WORKER_RECONCILES: &str = r#"workerrecovery_reconciliations_total{controller="worker"}"#;

#[test]
fn crashed_worker_is_restarted_and_reported() {
    let stack = stack();
    let ns = stack.namespace("crash");
    let wc = WorkerContainer::start(&ns, "marie", &[], &[]);
    for i in 0..3 {
        wc.add_task(
            &format!("t{i}"),
            &format!(r#"{{"id":"t{i}","type":"demo"}}"#),
        );
    }
    stack.apply_ok(wc.worker("marie", &ns).auto_recovery());
    let op = Operator::start(stack, &ns, wc.dir.path());

    let healthy = wait_phase(stack, &ns, "marie", "Healthy");
    assert_eq!(condition(&healthy, "Ready")["status"], "True");
    assert_eq!(healthy["status"]["restartCount"], 0);
    assert!(healthy["status"]["lastHeartbeatTime"].is_string());
    let started_before = wc.inspect("{{.State.StartedAt}}");

    wc.inject_fault("crash");
    let restarted = wait_restarted(stack, &ns, "marie", 1, PHASE_TIMEOUT);

    // Docker agrees: the same container runs again, started anew by the operator.
    assert_eq!(wc.inspect("{{.State.Running}}"), "true");
    assert_ne!(wc.inspect("{{.State.StartedAt}}"), started_before);
    assert_eq!(restarted["status"]["container"]["state"], "running");
    assert!(restarted["status"]["lastRestartTime"].is_string());
    assert_eq!(condition(&restarted, "ContainerRunning")["status"], "True");

    // A human sees why in the Events.
    let events = stack.events_for(&ns, "marie");
    let restart_event = events
        .iter()
        .find(|e| e["reason"] == "Restarted")
        .unwrap_or_else(|| panic!("no Restarted event in {events:#?}"));
    let note = restart_event["message"].as_str().unwrap();
    assert!(note.contains("exit code 3"), "{note}");
    assert!(note.contains("restart 1"), "{note}");

    // The operator counted it.
    assert_eq!(
        op.metric_value(r#"workerrecovery_container_restarts_total{controller="worker"}"#),
        1.0
    );
    assert!(op.metric_value(WORKER_RECONCILES) >= 1.0);

    // kubectl shows the printer columns with live values.
    let table = stack.kubectl_ok(&["get", "workers", "-n", &ns]);
    let header = table.lines().next().unwrap();
    for column in ["NAME", "PHASE", "CONTAINER", "HEARTBEAT", "RESTARTS", "AGE"] {
        assert!(header.contains(column), "{table}");
    }
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains("Healthy") && row.contains(&wc.container),
        "{table}"
    );
}

#[test]
fn hung_worker_turns_heartbeat_stale() {
    let stack = stack();
    let ns = stack.namespace("hang");
    let wc = WorkerContainer::start(&ns, "anga", &[], &[]);
    wc.add_task("stuck", r#"{"id":"stuck","type":"demo"}"#);
    stack.apply_ok(wc.worker("anga", &ns).heartbeat_timeout(5));
    let _op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "anga", "Healthy");

    wc.inject_fault("hang");
    let degraded = wait_phase(stack, &ns, "anga", "Degraded");
    let fresh = condition(&degraded, "HeartbeatFresh");
    assert_eq!(fresh["status"], "False");
    assert_eq!(fresh["reason"], "HeartbeatStale");
    assert!(
        fresh["message"]
            .as_str()
            .unwrap()
            .contains("over the 5s timeout"),
        "{fresh}"
    );
    assert_eq!(condition(&degraded, "ContainerRunning")["status"], "True");
    assert_eq!(condition(&degraded, "Ready")["reason"], "HeartbeatStale");

    // Stale means the timeout really passed since the last heartbeat.
    let last_beat: k8s_openapi::jiff::Timestamp = degraded["status"]["lastHeartbeatTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let turned: k8s_openapi::jiff::Timestamp = fresh["lastTransitionTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        turned.duration_since(last_beat).as_secs() >= 5,
        "{last_beat} -> {turned}"
    );

    // A hung process is still running: no restart in this slice, and Docker agrees.
    assert_eq!(wc.inspect("{{.State.Running}}"), "true");
    assert_eq!(degraded["status"]["restartCount"], 0);
    assert_events(stack, &ns, "anga", &["WorkerDegraded"]);
}

#[test]
fn exited_worker_without_auto_recovery_stays_down() {
    let stack = stack();
    let ns = stack.namespace("noauto");
    let wc = WorkerContainer::start(&ns, "fabien", &[], &[]);
    stack.apply_ok(wc.worker("fabien", &ns));
    let _op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "fabien", "Healthy");

    wc.inject_fault("crash");
    let down = wait_phase(stack, &ns, "fabien", "Down");
    let running = condition(&down, "ContainerRunning");
    assert_eq!(running["status"], "False");
    assert_eq!(running["reason"], "Exited");
    assert!(
        running["message"].as_str().unwrap().contains("exit code 3"),
        "{running}"
    );
    assert_eq!(down["status"]["container"]["exitCode"], 3);

    // Several reconciles later it is still down and nobody started it.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(wc.inspect("{{.State.Status}}"), "exited");
    let later = worker_json(stack, &ns, "fabien");
    assert_eq!(later["status"]["phase"], "Down");
    assert_eq!(later["status"]["restartCount"], 0);
    assert_events(stack, &ns, "fabien", &["WorkerDown"]);
    let reasons = event_reasons(stack, &ns, "fabien");
    assert!(!reasons.iter().any(|r| r == "Restarted"), "{reasons:?}");
}

#[test]
fn oom_killed_worker_is_reported_and_restarted() {
    let stack = stack();
    let ns = stack.namespace("oom");
    let wc = WorkerContainer::start(&ns, "oomie", &["-m", "16m", "--memory-swap", "16m"], &[]);
    stack.apply_ok(wc.worker("oomie", &ns).auto_recovery());
    let _op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "oomie", "Healthy");

    wc.inject_fault("oom");
    let restarted = wait_worker(stack, &ns, "oomie", "a restart", PHASE_TIMEOUT, |w| {
        w["status"]["restartCount"] == 1
    });
    assert_eq!(restarted["status"]["container"]["state"], "running");
    let events = stack.events_for(&ns, "oomie");
    let note = events
        .iter()
        .find(|e| e["reason"] == "Restarted")
        .and_then(|e| e["message"].as_str())
        .unwrap_or_else(|| panic!("no Restarted event in {events:#?}"));
    assert!(
        note.contains("exit code 137") && note.contains("OOM killer"),
        "{note}"
    );
}

#[test]
fn invalid_workers_are_rejected_by_the_schema() {
    let stack = stack();
    let ns = stack.namespace("invalid");
    for (spec, expected) in [
        (
            json!({"sharedRoot": "/shared"}),
            "set exactly one of container (a Docker container) and runtime (a systemd unit)",
        ),
        (
            json!({"container": "c", "runtime": {"systemd": {"unit": "agent-worker-c.service"}}}),
            "set exactly one of container (a Docker container) and runtime (a systemd unit)",
        ),
        (
            json!({"runtime": {"systemd": {"unit": "../etc/passwd"}}}),
            "spec.runtime.systemd.unit",
        ),
        (
            json!({"container": "c", "sharedRoot": "relative/path"}),
            "sharedRoot must be an absolute path",
        ),
        (
            json!({"container": "c", "paths": {"tasksDir": "../../etc"}}),
            "must be a non-empty relative path without '..'",
        ),
        (
            json!({"container": "c", "paths": {"locksDir": "/var/locks"}}),
            "must be a non-empty relative path without '..'",
        ),
        (
            json!({"container": "c", "heartbeatTimeoutSeconds": 1}),
            "should be greater than or equal to 5",
        ),
        (
            json!({"container": "c", "workerName": "a/b"}),
            "spec.workerName",
        ),
        (json!({"container": ""}), "set exactly one of container"),
    ] {
        let (ok, out) = stack.apply(Manifest::new("Worker", "bad", &ns, spec.clone()));
        assert!(!ok, "accepted invalid spec {spec}: {out}");
        assert!(
            out.contains(expected),
            "spec {spec}: expected {expected:?} in: {out}"
        );
    }
    let list = stack.kubectl_ok(&["get", "workers", "-n", &ns, "-o", "name"]);
    assert!(list.trim().is_empty(), "nothing invalid was stored: {list}");
}

#[test]
fn a_crash_is_seen_through_the_docker_event_stream_and_an_idle_worker_costs_no_looks() {
    let stack = stack();
    let ns = stack.namespace("events");
    let wc = WorkerContainer::start(&ns, "evy", &[], &[]);
    // A 600 s heartbeat timeout: a healthy worker is next looked at in 300 s (the safety net),
    // and a polling controller would look every 15 s. Only an event explains a quick restart.
    stack.apply_ok(wc.worker("evy", &ns).heartbeat_timeout(600).auto_recovery());
    let op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "evy", "Healthy");

    // Idle: nothing happens, nothing is looked at.
    std::thread::sleep(Duration::from_secs(1));
    let looks = op.metric_value(WORKER_RECONCILES);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        op.metric_value(WORKER_RECONCILES),
        looks,
        "a healthy worker is not polled"
    );

    wc.inject_fault("crash");
    wait_worker(
        stack,
        &ns,
        "evy",
        "the restart",
        Duration::from_secs(10),
        |w| w["status"]["restartCount"] == 1 && wc.inspect("{{.State.Running}}") == "true",
    );
    for action in ["die", "start"] {
        let series = format!(r#"workerrecovery_docker_events_total{{action="{action}"}}"#);
        assert!(op.metric_value(&series) >= 1.0, "{}", op.metrics());
    }
}

#[test]
fn a_paused_worker_is_left_alone_until_its_pause_ends() {
    let stack = stack();
    let ns = stack.namespace("pause");
    let wc = WorkerContainer::start(&ns, "pau", &[], &[]);
    let until = std::time::SystemTime::now() + Duration::from_secs(12);
    let until = k8s_time(until);
    stack.apply_ok(wc.worker("pau", &ns).auto_recovery().spec(json!({
        "autoRecovery": {"pause": {"until": until, "reason": "disk swap on the host"}},
    })));
    let _op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "pau", "Healthy");

    wc.inject_fault("crash");
    wait_exited(&wc);
    let down = wait_phase(stack, &ns, "pau", "Down");
    assert_eq!(
        down["status"]["paused"]["until"],
        until.as_str(),
        "{:#}",
        down["status"]
    );
    assert_eq!(down["status"]["paused"]["reason"], "disk swap on the host");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        wc.inspect("{{.State.Status}}"),
        "exited",
        "left alone while paused"
    );
    assert_eq!(worker_json(stack, &ns, "pau")["status"]["restartCount"], 0);

    // The pause ends by itself: the held-back restart happens.
    let back = wait_restarted(stack, &ns, "pau", 1, PHASE_TIMEOUT);
    assert!(
        back["status"].get("paused").is_none(),
        "{:#}",
        back["status"]
    );
    assert_events(
        stack,
        &ns,
        "pau",
        &["AutoRecoveryPaused", "AutoRecoveryResumed", "Restarted"],
    );
}

/// RFC 3339 in UTC with whole seconds, as `metav1.Time` keeps it.
fn k8s_time(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
