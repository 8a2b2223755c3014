//! Outages of the components the operator depends on: the Docker engine goes away and comes
//! back, and so does the Kubernetes API server. Alone in their test binary, since they stop
//! what every other test uses (test binaries run one after another), and one at a time.

mod support;

use std::{
    path::Path,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::*;

/// One outage at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn stack_pid(component: &str) -> u32 {
    let file = repo_root().join(format!(".stack/{component}.pid"));
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

/// Stop a component of the stack with `signal` (`TERM`, `KILL`) and wait until it is gone.
fn stop_component(component: &str, signal: &str) {
    let pid = stack_pid(component);
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    wait_for(
        &format!("{component} to exit"),
        Duration::from_secs(60),
        || {
            (!alive(pid))
                .then_some(())
                .ok_or("still running".to_string())
        },
    );
}

/// Start what is missing of the stack again, as `scripts/stack.sh up` does.
fn restart_stack() {
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
}

#[test]
fn the_operator_rides_out_a_docker_engine_restart_and_restarts_the_worker_once() {
    let _one = serial();
    let stack = stack();
    let ns = stack.namespace("outage");
    let wc = WorkerContainer::start(&ns, "outy", &[], &[]);
    stack.apply_ok(wc.worker("outy", &ns).auto_recovery());
    let op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "outy", "Healthy");

    // Stop the engine: its containers stop with it.
    stop_component("dockerd", "TERM");
    wait_worker(
        stack,
        &ns,
        "outy",
        "Unknown",
        Duration::from_secs(30),
        |w| w["status"]["phase"] == "Unknown",
    );
    std::thread::sleep(Duration::from_secs(3));
    // Start it again, as the stack does.
    let back_at = unix_now().to_string();
    restart_stack();

    let w = wait_restarted(stack, &ns, "outy", 1, Duration::from_secs(90));
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
        worker_json(stack, &ns, "outy")["status"]["restartCount"],
        1,
        "{:#}",
        w["status"]
    );
    // The stream's break was counted (the counter is on the page from the start, at 0).
    assert!(
        op.metric_value("workerrecovery_docker_event_stream_breaks_total") >= 1.0,
        "{}",
        op.metrics()
    );
}

/// A stopped worker `name` in a namespace of its own with `n` tasks left in `active/`, its
/// Worker Down and an operator: what a Clean run starts from.
fn crashed(
    stack: &Stack,
    name: &str,
    n: usize,
) -> (String, WorkerContainer, Vec<String>, Operator) {
    let ns = stack.namespace(name);
    let (wc, ids) = WorkerContainer::crashed_with_tasks(&ns, name, "1", n);
    stack.apply_ok(wc.worker(name, &ns));
    let op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, name, "Down");
    (ns, wc, ids, op)
}

fn waiting_reason(run: &Value) -> Option<String> {
    run["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Waiting" && c["status"] == "True")
        .and_then(|c| c["reason"].as_str().map(String::from))
}

/// No writes while blind: a Clean run applied while the engine is down moves nothing and
/// waits (ContainerStateUnknown); when the engine is back, it runs, each task once.
#[test]
fn a_clean_run_waits_while_the_docker_engine_is_down() {
    let _one = serial();
    let stack = stack();
    let (ns, wc, ids, _op) = crashed(stack, "blind", 20);
    let before = tree_snapshot(&wc.shared_root());

    stop_component("dockerd", "TERM");
    stack.apply_ok(
        recovery("clean-blind", &ns, "blind")
            .mode("Clean")
            .spec(json!({"resume": {"batchDelaySeconds": 1}})),
    );
    let object = "workerrecovery/clean-blind";
    let run = wait_object(
        stack,
        &ns,
        object,
        "waiting",
        Duration::from_secs(30),
        |r| waiting_reason(r).as_deref() == Some("ContainerStateUnknown"),
    );
    assert_eq!(run["status"]["phase"], "Pending");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        tree_snapshot(&wc.shared_root()),
        before,
        "nothing moved while blind"
    );
    let w = worker_json(stack, &ns, "blind");
    assert_phase(&w, "Unknown");

    restart_stack();
    let run = wait_run_finished(stack, &ns, "clean-blind");
    assert_phase(&run, "Succeeded");
    assert_eq!(run_step(&run, "CleanState")["figures"]["requeued"], 20);
    assert_requeued_once(&wc, &ids);
}

/// The Kubernetes API server goes away in the middle of a Clean run of a few thousand tasks
/// and comes back: the run completes, and each task was requeued exactly once.
#[test]
fn a_clean_run_completes_across_an_api_server_outage() {
    let _one = serial();
    let stack = stack();
    let (ns, wc, ids, _op) = crashed(stack, "apiout", 3000);
    stack.apply_ok(
        recovery("clean-apiout", &ns, "apiout")
            .mode("Clean")
            .spec(json!({"resume": {"batchSize": 1000, "batchDelaySeconds": 1}})),
    );
    wait_step(
        stack,
        &ns,
        "clean-apiout",
        Duration::from_secs(60),
        |step| !step.is_empty(),
    );
    // Killed, as a crash or a lost node would (a graceful stop waits for open watches).
    stop_component("kube-apiserver", "KILL");
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    restart_stack();
    eprintln!("API server down for {:?}", down.elapsed());
    let run = wait_run_finished(stack, &ns, "clean-apiout");
    assert_phase(&run, "Succeeded");
    assert_eq!(run_step(&run, "CleanState")["figures"]["requeued"], 3000);
    assert_requeued_once(&wc, &ids);
}
