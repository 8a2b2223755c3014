//! End-to-end tests of GitOps health: real objects driven into each state, judged by the real
//! kstatus (hack/kstatus, as Flux and `kubectl wait`-style tools judge them), by the Argo CD
//! health checks (charts/worker-recovery-operator/health/*.lua in an embedded Lua) and by
//! `kubectl wait`.

mod support;

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::{json, Value};
use support::*;

/// The kstatus binary, built on demand (and cached) by scripts/kstatus.sh.
fn kstatus_binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/kstatus.sh"))
            .arg("build")
            .output()
            .expect("scripts/kstatus.sh runs");
        assert!(
            out.status.success(),
            "building kstatus failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// What kstatus says of `object`: its status and message.
fn kstatus(object: &Value) -> (String, String) {
    let mut child = Command::new(kstatus_binary())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kstatus runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kstatus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let status = lines.next().unwrap_or_default().to_string();
    (status, lines.collect::<Vec<_>>().join("\n"))
}

/// What the Argo CD health check of `object`'s kind says of it: `hs.status` and `hs.message`.
fn argo(object: &Value) -> (String, String) {
    let file = match object["kind"].as_str() {
        Some("Worker") => "worker.lua",
        Some("WorkerRecovery") => "workerrecovery.lua",
        Some("ResumePlan") => "resumeplan.lua",
        other => panic!("no health check for {other:?}"),
    };
    let path = repo_root()
        .join("charts/worker-recovery-operator/health")
        .join(file);
    let script = std::fs::read_to_string(path).unwrap();
    let lua = Lua::new();
    lua.globals()
        .set("obj", lua.to_value(object).unwrap())
        .unwrap();
    let hs: Table = lua.load(script).eval().unwrap();
    (hs.get("status").unwrap(), hs.get("message").unwrap())
}

/// Assert what kstatus and Argo CD say of this snapshot of an object.
#[track_caller]
fn assert_health(object: &Value, want_kstatus: &str, want_argo: &str) {
    let (status, message) = kstatus(object);
    assert_eq!(
        status, want_kstatus,
        "kstatus: {message}; {:#}",
        object["status"]
    );
    let (hs, message) = argo(object);
    assert_eq!(hs, want_argo, "Argo CD: {message}; {:#}", object["status"]);
}

fn kubectl_wait(stack: &Stack, ns: &str, object: &str, condition: &str) {
    stack.kubectl_ok(&["wait", "-n", ns, object, condition, "--timeout=60s"]);
}

#[test]
fn workers_and_runs_read_as_kstatus_and_argo_cd_expect() {
    let stack = stack();
    let ns = stack.namespace("health");
    let wc = WorkerContainer::start(&ns, "hale", &[], &[]);
    apply_worker(stack, &wc, "hale", &ns);
    // Its shared root is outside the operator's allowed roots.
    stack.apply_ok(worker(
        "outcast",
        &ns,
        "no-such-container",
        &PathBuf::from("/var/tmp/wro-not-allowed"),
    ));
    let _op = Operator::start(stack, &ns, wc.dir.path());

    // A healthy Worker: Current, Healthy, and `kubectl wait --for=condition=Ready` returns.
    let healthy = wait_phase(stack, &ns, "hale", "Healthy");
    assert_health(&healthy, "Current", "Healthy");
    kubectl_wait(stack, &ns, "worker/hale", "--for=condition=Ready");

    // A refused Worker: Failed (Stalled=True with the refusal's reason), Degraded.
    let refused = wait_phase(stack, &ns, "outcast", "Refused");
    assert_eq!(
        condition(&refused, "Stalled")["reason"],
        "SharedRootNotAllowed"
    );
    assert_health(&refused, "Failed", "Degraded");

    // A succeeded Diagnose run: Current, Healthy; `kubectl wait` on its phase returns.
    stack.apply_ok(recovery("look", &ns, "hale").mode("Diagnose"));
    let run = wait_run_finished(stack, &ns, "look");
    assert_phase(&run, "Succeeded");
    assert_health(&run, "Current", "Healthy");
    kubectl_wait(
        stack,
        &ns,
        "workerrecovery/look",
        "--for=jsonpath={.status.phase}=Succeeded",
    );
    kubectl_wait(stack, &ns, "workerrecovery/look", "--for=condition=Ready");

    // A run of the refused Worker fails: Failed, Degraded.
    stack.apply_ok(recovery("doomed", &ns, "outcast").mode("Diagnose"));
    let run = wait_run_finished(stack, &ns, "doomed");
    assert_phase(&run, "Failed");
    assert_health(&run, "Failed", "Degraded");
}

#[test]
fn a_running_plan_is_in_progress_and_a_completed_one_current() {
    let stack = stack();
    let ns = stack.namespace("health-plan");
    let wc = WorkerContainer::start(&ns, "plano", &[], &[("TASK_DURATION_MS", "100")]);
    // The worker is recovering: it takes tasks from staged/ only, as the plan releases them.
    let state = wc.shared_root().join("workers").join("plano");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("state.json"),
        r#"{"status":"recovering","recovery_count":1}"#,
    )
    .unwrap();
    for i in 0..4 {
        let path = wc.tasks_dir("pending").join(format!("t{i}.json"));
        std::fs::write(path, format!(r#"{{"id":"t{i}"}}"#)).unwrap();
    }
    apply_worker(stack, &wc, "plano", &ns);
    let _op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "plano", "Healthy");

    stack
        .apply_ok(plan("slow", &ns, "plano").spec(json!({"batchSize": 2, "batchDelaySeconds": 8})));
    // One snapshot, judged as it was: the plan waits 8 s between its two batches.
    let running = wait_object(
        stack,
        &ns,
        "resumeplan/slow",
        "Running",
        Duration::from_secs(60),
        |p| {
            p["status"]["phase"] == "Running"
                && p["status"]["observedGeneration"] == p["metadata"]["generation"]
        },
    );
    assert_health(&running, "InProgress", "Progressing");
    assert_eq!(condition(&running, "Reconciling")["status"], "True");

    let done = wait_object(
        stack,
        &ns,
        "resumeplan/slow",
        "Completed",
        Duration::from_secs(90),
        |p| p["status"]["phase"] == "Completed",
    );
    assert_health(&done, "Current", "Healthy");
    kubectl_wait(stack, &ns, "resumeplan/slow", "--for=condition=Ready");
}
