//! Diagnose runs and what their diagnosis says.

use std::time::Duration;

use serde_json::Value;

use super::{bare_recovery, condition, wait_object, Stack};

/// Apply a WorkerRecovery for `worker` and wait for its diagnosis.
pub fn diagnose_via_recovery(stack: &Stack, ns: &str, worker: &str) -> Value {
    let name = format!("{worker}-diag");
    stack.apply_ok(bare_recovery(&name, ns, worker).mode("Diagnose"));
    let object = format!("workerrecovery/{name}");
    let rec = wait_object(
        stack,
        ns,
        &object,
        "Succeeded",
        Duration::from_secs(90),
        |r| r["status"]["phase"] == "Succeeded",
    );
    let diagnosed = condition(&rec, "Diagnosed");
    assert_eq!(diagnosed["status"], "True", "{diagnosed}");
    assert_eq!(diagnosed["reason"], "DiagnosisComplete");
    rec["status"]["diagnosis"].clone()
}

pub fn top_cause(diagnosis: &Value) -> &str {
    diagnosis["verdict"]["topCause"]
        .as_str()
        .unwrap_or("<none>")
}

/// The first finding of `kind`, or a panic that shows every finding.
pub fn finding<'a>(diagnosis: &'a Value, kind: &str) -> &'a Value {
    diagnosis["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} finding in {:#}", diagnosis["findings"]))
}

pub fn evidence_u64(f: &Value, key: &str) -> u64 {
    f["evidence"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no evidence {key} in {f}"))
        .parse()
        .unwrap_or_else(|e| panic!("evidence {key} of {f}: {e}"))
}
