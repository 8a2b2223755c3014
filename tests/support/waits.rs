//! Waiting for and reading the status of the custom resources, and their Events. A failed
//! wait or assertion points at the line of the test that called it (`#[track_caller]`).

use std::{path::Path, time::Duration};

use serde_json::Value;

use super::{wait_for, Stack};

/// The Worker `name` as the API server has it.
pub fn worker_json(stack: &Stack, ns: &str, name: &str) -> Value {
    stack.get_json(ns, &format!("worker/{name}"))
}

/// Poll `object` (`kind/name`) until `done` holds for it; returns it. On timeout the panic
/// shows `what` and the object's last status.
#[track_caller]
pub fn wait_object(
    stack: &Stack,
    ns: &str,
    object: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(&format!("{object}: {what}"), timeout, || {
        let o = stack.get_json(ns, object);
        if done(&o) {
            Ok(o)
        } else {
            Err(o["status"].to_string())
        }
    })
}

/// [`wait_object`] for the Worker `name`.
#[track_caller]
pub fn wait_worker(
    stack: &Stack,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_object(stack, ns, &format!("worker/{name}"), what, timeout, done)
}

/// Wait until the Worker `name` reports `phase`; returns the Worker.
#[track_caller]
pub fn wait_phase(stack: &Stack, ns: &str, name: &str, phase: &str) -> Value {
    let what = format!("phase {phase}");
    wait_worker(stack, ns, name, &what, Duration::from_secs(60), |w| {
        w["status"]["phase"] == phase
    })
}

/// Wait until the Worker `name` is Healthy again after `restarts` restarts; returns it.
#[track_caller]
pub fn wait_restarted(
    stack: &Stack,
    ns: &str,
    name: &str,
    restarts: u64,
    timeout: Duration,
) -> Value {
    let what = format!("restartCount {restarts} and Healthy");
    wait_worker(stack, ns, name, &what, timeout, |w| {
        w["status"]["restartCount"] == restarts && w["status"]["phase"] == "Healthy"
    })
}

/// Wait until `done` holds for the current step of the WorkerRecovery `name` (`""` before its
/// first step); returns the run.
#[track_caller]
pub fn wait_step(
    stack: &Stack,
    ns: &str,
    name: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> Value {
    let object = format!("workerrecovery/{name}");
    wait_object(stack, ns, &object, "its current step", timeout, |r| {
        done(r["status"]["currentStep"].as_str().unwrap_or_default())
    })
}

/// Wait until the WorkerRecovery `name` has finished (Succeeded or Failed); returns it.
#[track_caller]
pub fn wait_run_finished(stack: &Stack, ns: &str, name: &str) -> Value {
    wait_run_finished_within(stack, ns, name, Duration::from_secs(120))
}

/// [`wait_run_finished`] with another timeout.
#[track_caller]
pub fn wait_run_finished_within(stack: &Stack, ns: &str, name: &str, timeout: Duration) -> Value {
    wait_object(
        stack,
        ns,
        &format!("workerrecovery/{name}"),
        "finished",
        timeout,
        |r| matches!(r["status"]["phase"].as_str(), Some("Succeeded" | "Failed")),
    )
}

/// Wait until `path` exists.
#[track_caller]
pub fn wait_file(what: &str, path: &Path, timeout: Duration) {
    wait_for(what, timeout, || {
        path.exists()
            .then_some(())
            .ok_or_else(|| format!("no {}", path.display()))
    })
}

/// An object's status condition by type, or a panic that shows the status.
#[track_caller]
pub fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    status_entry(obj, "conditions", "type", type_)
}

/// A step of a run's status by name, or a panic that shows the status.
#[track_caller]
pub fn run_step<'a>(run: &'a Value, name: &str) -> &'a Value {
    status_entry(run, "steps", "name", name)
}

/// The entry of the list `status.<list>` whose `key` is `value`.
#[track_caller]
fn status_entry<'a>(obj: &'a Value, list: &str, key: &str, value: &str) -> &'a Value {
    let found = obj["status"][list]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e[key] == value));
    match found {
        Some(entry) => entry,
        None => panic!("no {list} entry with {key} {value}: {:#}", obj["status"]),
    }
}

/// The reasons of the Events about one object.
pub fn event_reasons(stack: &Stack, ns: &str, name: &str) -> Vec<String> {
    stack
        .events_for(ns, name)
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Events with each of `reasons` were reported about the object `name`.
#[track_caller]
pub fn assert_events(stack: &Stack, ns: &str, name: &str, reasons: &[&str]) {
    let seen = event_reasons(stack, ns, name);
    for want in reasons {
        assert!(
            seen.iter().any(|r| r == want),
            "no {want} Event about {name} in {seen:?}"
        );
    }
}

/// A time of a status (RFC 3339) as Unix seconds.
pub fn seconds(time: &Value) -> i64 {
    let text = time
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {time}"));
    let at: k8s_openapi::jiff::Timestamp = text.parse().unwrap();
    at.as_second()
}

/// The object's `status.phase` is `phase` (else the panic shows its status).
#[track_caller]
pub fn assert_phase(obj: &Value, phase: &str) {
    assert_eq!(obj["status"]["phase"], phase, "{:#}", obj["status"]);
}

/// When a Worker's automatic attempts were made (seconds since the epoch), oldest first.
pub fn attempt_times(w: &Value) -> Vec<f64> {
    w["status"]["autoRecovery"]["attempts"]
        .as_array()
        .map(|a| a.iter().map(|x| seconds(&x["time"]) as f64).collect())
        .unwrap_or_default()
}
