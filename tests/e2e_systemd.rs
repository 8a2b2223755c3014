//! The operator's systemd client against a real systemd (PID 1 of the stack's systemd node)
//! over its D-Bus socket: a unit-run sample worker is started, read (state, main PID, consent,
//! limits), seen to crash (`Result=exit-code`, status 3), restarted, given a new `MemoryMax`
//! at runtime and stopped; a unit systemd does not know reads as not found.

mod support;

use std::{sync::Arc, time::Duration};

use support::*;
use worker_recovery_operator::diagnose::host::DmesgProbe;
use worker_recovery_operator::runtime::{
    systemd::{
        runtime::SystemdRuntime,
        unit::{ActiveState, ServiceResult, UnitInfo},
        Systemd,
    },
    WorkerRuntime,
};

const SETTLE: Duration = Duration::from_secs(20);

/// The node's systemd over its bus, reloaded so that new unit files are seen.
fn systemd(rt: &tokio::runtime::Runtime, node: &SystemdNode) -> Systemd {
    let sd = rt.block_on(Systemd::connect(Some(&node.bus))).unwrap();
    rt.block_on(sd.reload()).unwrap();
    sd
}

/// The Worker `name` of the unit `w` (its unit, files and worker name), `extra` merged into
/// its spec.
fn unit_worker(name: &str, ns: &str, w: &WorkerUnit, extra: serde_json::Value) -> Manifest {
    Manifest::new(
        "Worker",
        name,
        ns,
        serde_json::json!({
            "runtime": {"systemd": {"unit": w.unit}},
            "workerName": w.worker_name,
            "sharedRoot": w.shared_root,
        }),
    )
    .spec(extra)
}

/// An operator of `ns` that manages the node's units and reads their journal.
fn unit_operator(stack: &Stack, ns: &str, node: &SystemdNode) -> Operator {
    Operator::builder(stack, ns, &node.shared)
        .allowed_roots(&[&node.shared])
        .env("WRO_SYSTEMD_BUS", &node.bus)
        .env("WRO_SYSTEMD_JOURNAL_DIRS", node.journal.to_str().unwrap())
        .start()
}

/// A unit of the sample worker that consents to `<ns>/<name>`, written, loaded and started.
struct Started {
    w: WorkerUnit,
    rt: tokio::runtime::Runtime,
    sd: Systemd,
    first: UnitInfo,
}

fn started(node: &SystemdNode, ns: &str, name: &str, env: &[&str], service: &[&str]) -> Started {
    let w = WorkerUnit::write(node, name, Some(&format!("{ns}/{name}")), env, service);
    let rt = runtime();
    let sd = systemd(&rt, node);
    let first = rt.block_on(sd.start(&w.unit, SETTLE)).unwrap();
    Started { w, rt, sd, first }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_unit_run_worker_is_started_read_crashed_restarted_limited_and_stopped() {
    let node = systemd_node();
    let w = WorkerUnit::write(node, "alpha", Some("team-a/alpha"), &[], &["MemoryMax=64M"]);
    runtime().block_on(async {
        let sd = Systemd::connect(Some(&node.bus)).await.unwrap();
        sd.reload().await.unwrap();

        let started = sd.start(&w.unit, SETTLE).await.unwrap();
        assert_eq!(started.active_state, ActiveState::Active, "{started:?}");
        assert!(
            started.running() && started.started_at.is_some(),
            "{started:?}"
        );
        assert_eq!(started.consent(), Some("team-a/alpha"));
        assert_eq!(started.memory_max, Some(64 << 20));
        wait_for("the unit's heartbeat", Duration::from_secs(20), || {
            w.heartbeat()
                .exists()
                .then_some(())
                .ok_or_else(|| "none yet".to_string())
        });

        w.inject_fault("crash");
        let crashed = wait_unit(&sd, &w.unit, |u| u.active_state == ActiveState::Failed).await;
        assert_eq!(crashed.result, ServiceResult::ExitCode, "{crashed:?}");
        assert_eq!((crashed.exec_main_status, crashed.main_pid), (3, None));
        assert!(crashed.exited_at >= crashed.started_at);

        let restarted = sd.restart(&w.unit, SETTLE, SETTLE).await.unwrap();
        assert!(restarted.running(), "{restarted:?}");
        assert_ne!(restarted.main_pid, started.main_pid);
        assert!(restarted.started_at > crashed.started_at);

        sd.set_memory_max(&w.unit, 128 << 20).await.unwrap();
        assert_eq!(sd.unit(&w.unit).await.unwrap().memory_max, Some(128 << 20));

        let stopped = sd.stop(&w.unit, SETTLE).await.unwrap();
        assert_eq!(stopped.active_state, ActiveState::Inactive, "{stopped:?}");
        assert!(!stopped.running());

        let unknown = sd.unit("agent-worker-nobody-here.service").await.unwrap();
        assert!(!unknown.exists(), "{unknown:?}");
    });
}

/// A unit that ignores its stop signal (`KillSignal=SIGWINCH`, `TimeoutStopSec=90`) is stopped
/// by the runtime within the grace period it is given, as `docker stop --time` does: SIGKILL
/// follows, for a restart and for a stop.
#[test]
fn a_unit_that_ignores_its_stop_signal_is_killed_after_the_grace_period() {
    let node = systemd_node();
    let stubborn = ["KillSignal=SIGWINCH", "TimeoutStopSec=90"];
    let w = WorkerUnit::write(node, "stubborn", Some("team-a/stubborn"), &[], &stubborn);
    let grace = Duration::from_secs(2);
    runtime().block_on(async {
        let sd = Systemd::connect(Some(&node.bus)).await.unwrap();
        sd.reload().await.unwrap();
        let first = sd.start(&w.unit, SETTLE).await.unwrap();
        let unit_runtime = SystemdRuntime::new(sd.clone(), Vec::new(), Arc::new(DmesgProbe));

        let began = std::time::Instant::now();
        unit_runtime.restart(&w.unit, grace).await.unwrap();
        let restart_took = began.elapsed();
        let restarted = sd.unit(&w.unit).await.unwrap();
        assert!(restarted.running(), "{restarted:?}");
        assert_ne!(restarted.main_pid, first.main_pid);

        let began = std::time::Instant::now();
        unit_runtime.stop(&w.unit, grace).await.unwrap();
        let stop_took = began.elapsed();
        let stopped = sd.unit(&w.unit).await.unwrap();
        eprintln!(
            "e2e_systemd: grace {grace:?}: restart took {restart_took:?}, stop {stop_took:?} ({:?} {})",
            stopped.result, stopped.exec_main_status
        );
        assert!(!stopped.running(), "{stopped:?}");
        for took in [restart_took, stop_took] {
            assert!(took >= grace, "the stop signal was ignored for the grace period: {took:?}");
            assert!(took < Duration::from_secs(30), "not systemd's 90 s: {took:?}");
        }
    });
}

/// The unit once `done` holds, polled for up to 30 s.
async fn wait_unit(
    sd: &Systemd,
    unit: &str,
    done: impl Fn(&worker_recovery_operator::runtime::systemd::unit::UnitInfo) -> bool,
) -> worker_recovery_operator::runtime::systemd::unit::UnitInfo {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let u = sd.unit(unit).await.unwrap();
        if done(&u) {
            return u;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{unit} never got there: {u:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Worker run by systemd, with automatic recovery: its unit crashes (`Restart=no`) and the
/// operator starts it again over D-Bus; status, restart count and an Event say so, as for a
/// container. A unit without the consent variable is refused.
#[test]
fn a_crashed_unit_is_restarted_by_the_operator_and_a_unit_without_consent_is_refused() {
    let stack = stack();
    let node = systemd_node();
    let ns = stack.namespace("systemd");
    let Started { w, rt, sd, first } = started(node, &ns, "heal", &[], &[]);
    let stranger = WorkerUnit::write(node, "stranger", None, &[], &[]);
    rt.block_on(sd.reload()).unwrap();
    rt.block_on(sd.start(&stranger.unit, SETTLE)).unwrap();

    // Looked at every 15 s without an event: a restart sooner comes from systemd's
    // PropertiesChanged signal.
    let healing = serde_json::json!({
        "heartbeatTimeoutSeconds": 600,
        "autoRecovery": {"enabled": true, "cooldownSeconds": 0, "backoff": {"initialSeconds": 0}},
    });
    stack.apply_ok(unit_worker("heal", &ns, &w, healing.clone()));
    stack.apply_ok(unit_worker("stranger", &ns, &stranger, healing));
    let _op = unit_operator(stack, &ns, node);
    wait_worker(
        stack,
        &ns,
        "heal",
        "Healthy",
        Duration::from_secs(60),
        |w| w["status"]["phase"] == "Healthy",
    );
    let refused = wait_worker(
        stack,
        &ns,
        "stranger",
        "Refused",
        Duration::from_secs(60),
        |w| w["status"]["phase"] == "Refused",
    );
    let accepted = condition(&refused, "Accepted");
    assert_eq!(accepted["reason"], "NotManaged", "{accepted:#}");
    let message = accepted["message"].as_str().unwrap();
    assert!(message.contains(&stranger.unit), "{accepted:#}");
    assert!(
        message.contains(&format!("WORKERRECOVERY_WORKER={ns}/stranger")),
        "names the unit's consent variable: {accepted:#}"
    );

    // Let the looks that follow the start pass, so that only an event can explain a quick heal.
    std::thread::sleep(Duration::from_secs(3));
    w.inject_fault("crash");
    let crashed_at = std::time::Instant::now();
    let restarted = rt.block_on(wait_unit(&sd, &w.unit, |u| {
        u.running() && u.main_pid != first.main_pid
    }));
    let took = crashed_at.elapsed();
    eprintln!("e2e_systemd: fault to running again {took:?} ({restarted:?})");
    assert!(took < Duration::from_secs(10), "event-driven: {took:?}");
    let healed = wait_worker(
        stack,
        &ns,
        "heal",
        "restarted by the operator",
        Duration::from_secs(60),
        |w| w["status"]["restartCount"].as_i64() >= Some(1) && w["status"]["phase"] == "Healthy",
    );
    eprintln!("e2e_systemd: {:#}", healed["status"]["autoRecovery"]);
    let now = rt.block_on(sd.unit(&w.unit)).unwrap();
    assert!(now.running(), "{now:?}");
    assert_ne!(now.main_pid, first.main_pid, "a new main process");
    let attempts = healed["status"]["autoRecovery"]["attempts"]
        .as_array()
        .unwrap();
    assert!(
        attempts[0]["trigger"]
            .as_str()
            .unwrap()
            .contains("exit code 3"),
        "{attempts:#?}"
    );
    let reasons: Vec<String> = stack
        .events_for(&ns, "heal")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect();
    assert!(reasons.iter().any(|r| r == "Restarted"), "{reasons:?}");

    rt.block_on(sd.stop(&w.unit, SETTLE)).unwrap();
    rt.block_on(sd.stop(&stranger.unit, SETTLE)).unwrap();
}

/// A Clean run of a systemd Worker: the unit is stopped, its active tasks are requeued exactly
/// once, it is started, verified (heartbeat newer than the start) and resumed in batches.
#[test]
fn a_clean_run_stops_cleans_starts_verifies_and_resumes_a_unit() {
    let stack = stack();
    let node = systemd_node();
    let ns = stack.namespace("systemd-clean");
    // Slow tasks: the worker holds one in active/ when it is stopped.
    let w = WorkerUnit::write(
        node,
        "clean",
        Some(&format!("{ns}/clean")),
        &["TASK_DURATION_MS=600000"],
        &[],
    );
    for i in 0..4 {
        std::fs::write(
            w.shared_root
                .join("tasks")
                .join(&w.worker_name)
                .join("pending")
                .join(format!("t{i}.json")),
            format!(r#"{{"id": "t{i}", "retry_count": 0}}"#),
        )
        .unwrap();
    }
    let rt = runtime();
    let sd = systemd(&rt, node);
    let first = rt.block_on(sd.start(&w.unit, SETTLE)).unwrap();
    let active = w
        .shared_root
        .join("tasks")
        .join(&w.worker_name)
        .join("active");
    wait_for("a task in active/", Duration::from_secs(20), || {
        let n = std::fs::read_dir(&active).unwrap().count();
        (n > 0).then_some(()).ok_or_else(|| "none yet".to_string())
    });
    stack.apply_ok(unit_worker(
        "clean",
        &ns,
        &w,
        serde_json::json!({
            "heartbeatTimeoutSeconds": 10,
        }),
    ));
    let _op = unit_operator(stack, &ns, node);
    stack.apply_ok(
        recovery("clean-1", &ns, "clean")
            .mode("Clean")
            .spec(serde_json::json!({"verifyTimeoutSeconds": 30,
                "resume": {"batchSize": 2, "batchDelaySeconds": 1, "maxFailureRatio": 0.5}})),
    );
    let run = wait_run_finished_within(stack, &ns, "clean-1", Duration::from_secs(120));
    assert_phase(&run, "Succeeded");
    let clean = run_step(&run, "CleanState");
    assert_eq!(clean["figures"]["containerStopped"], 1, "{clean:#}");
    assert!(
        clean["figures"]["requeued"].as_i64() >= Some(1),
        "{clean:#}"
    );
    let now = rt.block_on(sd.unit(&w.unit)).unwrap();
    assert!(
        now.running() && now.started_at > first.started_at,
        "{now:?}"
    );
    // Every task is where it should be, exactly once.
    let mut ids = Vec::new();
    for state in ["pending", "active", "staged", "failed"] {
        let dir = w.shared_root.join("tasks").join(&w.worker_name).join(state);
        for e in std::fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".json") {
                ids.push(name);
            }
        }
    }
    ids.sort();
    assert_eq!(ids, ["t0.json", "t1.json", "t2.json", "t3.json"]);
    rt.block_on(sd.stop(&w.unit, SETTLE)).unwrap();
}

/// The diagnosis of a crashed unit reads its crash lines from the journal, as `docker logs` is
/// read for a container.
#[test]
fn the_diagnosis_of_a_crashed_unit_quotes_the_journal() {
    let stack = stack();
    let node = systemd_node();
    let ns = stack.namespace("systemd-diag");
    let Started { w, rt, sd, .. } = started(node, &ns, "diag", &[], &[]);
    wait_for("the unit's heartbeat", Duration::from_secs(20), || {
        w.heartbeat()
            .exists()
            .then_some(())
            .ok_or_else(|| "none yet".to_string())
    });
    w.inject_fault("crash");
    rt.block_on(wait_unit(&sd, &w.unit, |u| {
        u.active_state == ActiveState::Failed
    }));
    stack.apply_ok(unit_worker("diag", &ns, &w, serde_json::json!({})));
    let _op = unit_operator(stack, &ns, node);
    let d = diagnose_via_recovery(stack, &ns, "diag");
    let logs: Vec<&serde_json::Value> = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "crashLogs")
        .collect();
    eprintln!("e2e_systemd: crash log findings {logs:#?}");
    let text = serde_json::to_string(&logs).unwrap();
    assert!(text.contains("FATAL: simulated crash"), "{text}");
    let journal = finding(&d, "LogErrors");
    assert_eq!(journal["evidence"]["source"], "journal", "{journal:#}");
    assert_eq!(evidence_u64(finding(&d, "ContainerExited"), "exitCode"), 3);
}

/// The process and descriptor checks of a unit read its main process from the operator's own
/// `/proc` (nothing runs inside a unit): the node's `MainPID` is mapped to the host's PID
/// through `NSpid` and the unit's cgroup, and a unit that leaked its descriptors up to
/// `LimitNOFILE=64` is diagnosed with file-descriptor exhaustion.
#[test]
fn a_units_main_process_and_descriptors_are_read_from_the_hosts_proc() {
    let stack = stack();
    let node = systemd_node();
    let ns = stack.namespace("systemd-fds");
    let Started { w, first, .. } = started(
        node,
        &ns,
        "fds",
        &["FAULT_MODE=fd-leak"],
        &["LimitNOFILE=64"],
    );
    stack.apply_ok(unit_worker("fds", &ns, &w, serde_json::json!({})));
    let _op = unit_operator(stack, &ns, node);
    // The leak runs into EMFILE within a few milliseconds of the start.
    std::thread::sleep(Duration::from_secs(2));
    let d = diagnose_via_recovery(stack, &ns, "fds");
    let alive = finding(&d, "ProcessAlive");
    eprintln!("e2e_systemd: {alive:#}");
    let main_pid = first.main_pid.unwrap().to_string();
    assert_eq!(alive["evidence"]["pid"], main_pid.as_str(), "{alive:#}");
    assert_eq!(alive["evidence"]["selectedBy"], "mainPid", "{alive:#}");
    assert_eq!(alive["evidence"]["name"], "sample-worker", "{alive:#}");
    let host_pid = alive["evidence"]["hostPid"].as_str().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with(&format!("\t{main_pid}"))),
        "the host's PID {host_pid} is the node's {main_pid}: {status}"
    );
    let exhausted = finding(&d, "FdExhausted");
    eprintln!("e2e_systemd: {exhausted:#}");
    assert_eq!(evidence_u64(exhausted, "softLimit"), 64);
    let open = evidence_u64(exhausted, "openFds");
    assert!((56..=64).contains(&open), "open fds {open}");
    assert_eq!(top_cause(&d), "FileDescriptorExhaustion", "{d:#}");
}

/// A unit killed by the kernel at its `MemoryMax`: the diagnosis finds the OOM kill and names
/// OutOfMemory. systemd reports `Result=oom-kill` only on cgroup v2; on this host (v1) it says
/// `signal`, and the kernel log (which names the unit's cgroup) is the evidence.
#[test]
fn an_oom_killed_unit_is_diagnosed_out_of_memory() {
    let stack = stack();
    let node = systemd_node();
    let ns = stack.namespace("systemd-oom");
    let Started { w, rt, sd, .. } = started(
        node,
        &ns,
        "oom",
        &["FAULT_MODE=oom", "FAULT_AFTER_SECS=1"],
        &["MemoryMax=64M"],
    );
    let killed = rt.block_on(wait_unit(&sd, &w.unit, |u| {
        u.active_state == ActiveState::Failed
    }));
    eprintln!(
        "e2e_systemd: OOM as systemd reports it: {:?} {}",
        killed.result, killed.exec_main_status
    );
    assert!(
        matches!(
            killed.result,
            ServiceResult::OomKill | ServiceResult::Signal
        ),
        "{killed:?}"
    );
    stack.apply_ok(unit_worker("oom", &ns, &w, serde_json::json!({})));
    let _op = unit_operator(stack, &ns, node);
    let d = diagnose_via_recovery(stack, &ns, "oom");
    // The kill itself, with the limit as evidence (from the kernel log on cgroup v1).
    let killed = finding(&d, "OomKilled");
    eprintln!("e2e_systemd: {killed:#}");
    assert_eq!(evidence_u64(killed, "memoryLimitBytes"), 64 << 20);
    let summary = killed["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("unit {:?} was killed by the OOM killer", w.unit)),
        "{summary}"
    );
    finding(&d, "KernelOomKill");
    assert_eq!(top_cause(&d), "OutOfMemory", "{d:#}");
}

/// An OOM-killed unit is started again with a raised `MemoryMax` (by `memoryFactor`, within
/// `memoryCeiling`), set at runtime over D-Bus, as a container's limit is raised. On this
/// cgroup-v1 host systemd reads the kill as `Result=signal`; the kernel log tells it apart.
#[test]
fn an_oom_killed_unit_is_restarted_with_a_raised_memory_max() {
    let stack = stack();
    let node = systemd_node();
    let ns = stack.namespace("systemd-oomfix");
    let Started { w, rt, sd, first } = started(node, &ns, "oomfix", &[], &["MemoryMax=64M"]);
    stack.apply_ok(unit_worker(
        "oomfix",
        &ns,
        &w,
        serde_json::json!({
            "autoRecovery": {"enabled": true, "cooldownSeconds": 0, "backoff": {"initialSeconds": 0},
                             "remediation": {"memoryFactor": 2, "memoryCeiling": "256m"}},
        }),
    ));
    let _op = unit_operator(stack, &ns, node);
    wait_worker(
        stack,
        &ns,
        "oomfix",
        "Healthy",
        Duration::from_secs(60),
        |w| w["status"]["phase"] == "Healthy",
    );
    w.inject_fault("oom");
    let back = wait_worker(
        stack,
        &ns,
        "oomfix",
        "restarted with more memory",
        Duration::from_secs(60),
        |w| w["status"]["restartCount"].as_i64() >= Some(1) && w["status"]["phase"] == "Healthy",
    );
    let unit = rt.block_on(sd.unit(&w.unit)).unwrap();
    assert!(
        unit.running() && unit.main_pid != first.main_pid,
        "{unit:?}"
    );
    assert_eq!(unit.memory_max, Some(128 << 20), "{unit:?}");
    let attempt = &back["status"]["autoRecovery"]["attempts"][0];
    eprintln!("e2e_systemd: {attempt:#}");
    let text = |k: &str| attempt[k].as_str().unwrap_or_default().to_string();
    assert!(text("trigger").starts_with("OOM-killed"), "{attempt:#}");
    assert!(text("remediation").contains("64Mi -> 128Mi"), "{attempt:#}");
    assert_events(stack, &ns, "oomfix", &["MemoryRaised"]);
    rt.block_on(sd.stop(&w.unit, SETTLE)).unwrap();
}

/// A unit that crashes a second after every start is restarted with the policy's backoff until
/// its restarts are used up, then escalated, as a container is.
#[test]
fn a_crash_looping_unit_is_restarted_with_backoff_then_escalated() {
    let stack = stack();
    let node = systemd_node();
    let ns = stack.namespace("systemd-loop");
    let Started { w, rt, sd, .. } = started(
        node,
        &ns,
        "loop",
        &["FAULT_MODE=crash", "FAULT_AFTER_SECS=1"],
        &[],
    );
    stack.apply_ok(unit_worker(
        "loop",
        &ns,
        &w,
        serde_json::json!({
            "autoRecovery": {"enabled": true, "maxRestarts": 3, "cooldownSeconds": 0,
                             "backoff": {"initialSeconds": 2, "factor": 2, "maxSeconds": 8}},
        }),
    ));
    let _op = unit_operator(stack, &ns, node);
    let done = wait_worker(
        stack,
        &ns,
        "loop",
        "Escalated",
        Duration::from_secs(120),
        |w| w["status"]["phase"] == "Escalated",
    );
    let auto = &done["status"]["autoRecovery"];
    eprintln!("e2e_systemd: {auto:#}");
    let attempts = auto["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{auto:#}");
    assert_eq!(done["status"]["restartCount"], 3);
    // The first attempt is immediate; then the wait grows: 2 s, then 4 s (at least: the worker
    // also runs a second before each crash).
    let times = attempt_times(&done);
    assert!(times[1] - times[0] >= 2.0, "{times:?}");
    assert!(times[2] - times[1] >= 4.0, "{times:?}");
    assert_events(stack, &ns, "loop", &["Restarted", "BackOff", "Escalated"]);
    let unit = rt.block_on(sd.unit(&w.unit)).unwrap();
    assert!(!unit.running(), "left stopped once escalated: {unit:?}");
}
