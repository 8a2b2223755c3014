//! The operator's logs as a file or `kubectl logs` get them (stderr not a terminal): plain
//! text without colour codes by default, one JSON object per line with `--log-format json`.
//! No stack needed: a start-up without a cluster logs and fails.

use std::process::Command;

/// What the operator wrote to stderr when started with `args` and no reachable cluster.
fn start_up_logs(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_worker-recovery-operator"))
        .args(args)
        .arg("run")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("NO_COLOR")
        .env_remove("WRO_LOG_FORMAT")
        .env_remove("WRO_ALLOWED_ROOTS")
        .output()
        .expect("the operator binary runs");
    assert!(!out.status.success(), "no cluster: the start-up fails");
    String::from_utf8(out.stderr).expect("logs are UTF-8")
}

#[test]
fn text_logs_to_a_file_have_no_colour_codes() {
    let logs = start_up_logs(&[]);
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains("no --allowed-root"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "escape codes in: {logs:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let logs = start_up_logs(&["--log-format", "json"]);
    let events: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
        .collect();
    assert!(
        events.iter().any(|e| e["level"] == "WARN"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("no --allowed-root")),
        "{logs}"
    );
    assert!(!logs.contains('\u{1b}'), "escape codes in: {logs:?}");
}
