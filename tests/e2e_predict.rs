//! Failure prediction against a real leak: the sample worker's `leak` fault grows its memory by
//! 4 MiB/s in a container limited to 128 MiB. The operator samples the memory every second and
//! fits a trend over 10 s; with a 20 s horizon the Worker is `AtRisk` well before the OOM kill.
//! With `remediation.proactive` the limit is raised in place first, and no OOM kill comes.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const LIMIT: &str = "128m";

fn prediction() -> Value {
    json!({"prediction": {"sampleIntervalSeconds": 1, "windowSeconds": 10, "horizonSeconds": 20}})
}

fn at_risk(w: &Value) -> Option<&Value> {
    w["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "AtRisk" && c["status"] == "True")
}

#[test]
fn a_leak_is_at_risk_at_least_ten_seconds_before_its_oom_kill() {
    let stack = stack();
    let ns = stack.namespace("leak");
    let wc = WorkerContainer::start(&ns, "lena", &["-m", LIMIT, "--memory-swap", LIMIT], &[]);
    stack.apply_ok(wc.worker("lena", &ns).spec(prediction()));
    let op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "lena", "Healthy");
    wc.inject_fault("leak");
    let risky = wait_worker(
        stack,
        &ns,
        "lena",
        "AtRisk=True",
        Duration::from_secs(60),
        |w| at_risk(w).is_some(),
    );
    let condition = at_risk(&risky).unwrap().clone();
    eprintln!("e2e_predict: {}", condition["message"]);
    assert_eq!(condition["reason"], "MemoryTrend");
    assert_eq!(risky["status"]["atRisk"]["resource"], "Memory");
    assert_eq!(
        risky["status"]["atRisk"]["limitBytes"],
        json!(128u64 << 20),
        "{:#}",
        risky["status"]
    );
    assert_events(stack, &ns, "lena", &["AtRisk"]);
    let series = format!(
        r#"workerrecovery_worker_at_risk{{namespace="{ns}",worker="lena",resource="Memory"}}"#
    );
    assert_eq!(op.metric(&series), Some(1.0), "{}", op.metrics());

    // Nothing raises the limit (no proactive remediation): the kernel kills it.
    assert_eq!(wait_exited(&wc), 137);
    assert_eq!(wc.inspect("{{.State.OOMKilled}}"), "true");
    let killed = seconds(&Value::String(wc.inspect("{{.State.FinishedAt}}")));
    let warned = seconds(&condition["lastTransitionTime"]);
    eprintln!(
        "e2e_predict: AtRisk {} s before the OOM kill",
        killed - warned
    );
    assert!(
        killed - warned >= 10,
        "AtRisk at {warned}, OOM kill at {killed}"
    );
}

#[test]
fn a_proactive_worker_gets_more_memory_before_the_oom_kill() {
    let stack = stack();
    let ns = stack.namespace("leak-proactive");
    // The leak stops at 160 MiB: more than the limit, less than the raised limit.
    let wc = WorkerContainer::start(
        &ns,
        "pia",
        &["-m", LIMIT, "--memory-swap", LIMIT],
        &[("LEAK_MAX_MIB", "160")],
    );
    let remediation = json!({"autoRecovery": {"remediation": {
        "memoryFactor": 2, "memoryCeiling": "512m", "proactive": true,
    }}});
    stack.apply_ok(
        wc.worker("pia", &ns)
            .auto_recovery()
            .spec(prediction())
            .spec(remediation),
    );
    let _op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "pia", "Healthy");
    wc.inject_fault("leak");
    wait_for("the limit raised", Duration::from_secs(60), || {
        let memory = wc.inspect("{{.HostConfig.Memory}}");
        (memory != (128u64 << 20).to_string())
            .then_some(memory.clone())
            .ok_or(memory)
    });
    assert_eq!(
        wc.inspect("{{.HostConfig.Memory}}"),
        (256u64 << 20).to_string()
    );
    assert_events(stack, &ns, "pia", &["AtRisk", "MemoryRaised"]);
    // The leak reaches its end, and memory stays flat: the worker is still the same process.
    wait_for("the leak at its end", Duration::from_secs(60), || {
        let logs = docker_ok(&["logs", &wc.container]);
        logs.contains("reached LEAK_MAX_MIB")
            .then_some(())
            .ok_or_else(|| "leaking".to_string())
    });
    let calm = wait_worker(
        stack,
        &ns,
        "pia",
        "AtRisk=False",
        Duration::from_secs(30),
        |w| at_risk(w).is_none() && w["status"]["atRisk"].is_null(),
    );
    assert_eq!(wc.inspect("{{.State.Running}}"), "true");
    assert_eq!(wc.inspect("{{.State.OOMKilled}}"), "false");
    assert_eq!(wc.inspect("{{.RestartCount}}"), "0");
    assert_eq!(calm["status"]["restartCount"], 0);
    assert_eq!(calm["status"]["phase"], "Healthy");
}
