//! Waiting for and reading the status of the custom resources.

use std::time::Duration;

use serde_json::Value;

use super::{wait_for, Stack};

/// Wait until the Worker `name` reports `phase`; returns the Worker.
pub fn wait_phase(stack: &Stack, ns: &str, name: &str, phase: &str) -> Value {
    wait_for(
        &format!("Worker {name} phase {phase}"),
        Duration::from_secs(60),
        || {
            let w = stack.get_json(ns, &format!("worker/{name}"));
            if w["status"]["phase"] == phase {
                Ok(w)
            } else {
                Err(w["status"].to_string())
            }
        },
    )
}

/// Wait until the WorkerRecovery `name` has finished (Succeeded or Failed); returns it.
pub fn wait_run_finished(stack: &Stack, ns: &str, name: &str) -> Value {
    wait_for(
        &format!("WorkerRecovery {name} to finish"),
        Duration::from_secs(120),
        || {
            let r = stack.get_json(ns, &format!("workerrecovery/{name}"));
            match r["status"]["phase"].as_str() {
                Some("Succeeded" | "Failed") => Ok(r),
                _ => Err(r["status"].to_string()),
            }
        },
    )
}

/// A Worker's status condition by type.
pub fn condition<'a>(worker: &'a Value, type_: &str) -> Option<&'a Value> {
    worker["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// A step of a run's status by name.
pub fn run_step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["status"]["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name}: {:#}", run["status"]))
}

/// The reasons of the Events about one object.
pub fn reasons_of(stack: &Stack, ns: &str, name: &str) -> Vec<String> {
    stack
        .events_for(ns, name)
        .iter()
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect()
}

/// A time of a status (RFC 3339) as Unix seconds.
pub fn seconds(time: &Value) -> i64 {
    let text = time
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {time}"));
    let at: k8s_openapi::jiff::Timestamp = text.parse().unwrap();
    at.as_second()
}
