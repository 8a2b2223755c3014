//! The Docker engine goes away and comes back: the operator keeps running, catches up and
//! restarts the worker once. Alone in its test binary, since it restarts the engine every
//! other test uses (test binaries run one after another).

mod support;

use std::{path::Path, process::Command, time::Duration};

use support::*;

fn dockerd_pid() -> u32 {
    let file = repo_root().join(".stack/dockerd.pid");
    let pid = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!(
            "{} is missing: this test restarts the Docker engine and needs the one scripts/stack.sh started",
            file.display()
        )
    });
    pid.trim().parse().unwrap()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .contains("State:\tZ")
}

#[test]
fn the_operator_rides_out_a_docker_engine_restart_and_restarts_the_worker_once() {
    let stack = stack();
    let ns = stack.namespace("outage");
    let wc = WorkerContainer::start(&ns, "outy", &[], &[]);
    let (ok, out) = stack.apply(&wc.worker_yaml("outy", &ns, 10, true));
    assert!(ok, "{out}");
    let op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "outy", "Healthy");

    // Stop the engine: its containers stop with it.
    let pid = dockerd_pid();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    wait_for("dockerd to exit", Duration::from_secs(60), || {
        (!alive(pid))
            .then_some(())
            .ok_or("still running".to_string())
    });
    wait_for("the Worker Unknown", Duration::from_secs(30), || {
        let w = stack.get_json(&ns, "worker/outy");
        (w["status"]["phase"] == "Unknown")
            .then_some(())
            .ok_or(w["status"]["phase"].to_string())
    });
    std::thread::sleep(Duration::from_secs(3));
    // Start it again, as the stack does.
    let back_at = unix_now().to_string();
    let up = Command::new("bash")
        .arg(repo_root().join("scripts/stack.sh"))
        .arg("up")
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    let w = wait_for("the worker running again", Duration::from_secs(90), || {
        let w = stack.get_json(&ns, "worker/outy");
        (w["status"]["phase"] == "Healthy" && w["status"]["restartCount"] == 1)
            .then_some(w.clone())
            .ok_or(w["status"].to_string())
    });
    assert_eq!(wc.inspect("{{.State.Running}}"), "true");
    assert!(op.logged(&["Docker event stream"]), "{}", op.log_tail());
    // One stop of the engine, one start of the worker.
    std::thread::sleep(Duration::from_secs(3));
    let starts = docker_events(&wc.container, &back_at)
        .iter()
        .filter(|e| e.as_str() == "start")
        .count();
    assert_eq!(starts, 1, "started once after the engine came back");
    assert_eq!(
        stack.get_json(&ns, "worker/outy")["status"]["restartCount"],
        1,
        "{:#}",
        w["status"]
    );
    let metrics = op.metrics();
    assert!(
        metrics.contains("workerrecovery_docker_event_stream_breaks_total"),
        "{metrics}"
    );
}
