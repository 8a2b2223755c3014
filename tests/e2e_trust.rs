//! End-to-end tests of the trust boundary and of heartbeats the sample worker does not write:
//! against the real kube-apiserver, etcd and Docker engine.
//!
//! * a container without the consent label is neither started nor read;
//! * a shared root outside the operator's allowed roots (directly, or through a symlink) is
//!   refused, and nothing of the files outside reaches status or Events;
//! * a heartbeat without a time field is judged by its file's modification time.

mod support;

use std::{path::Path, process::Command, time::Duration};

use serde_json::json;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A Worker of `container` with its files under `shared_root`: heartbeat timeout 5 s,
/// auto-recovery on.
fn trusting_worker(name: &str, ns: &str, container: &str, shared_root: &Path) -> Manifest {
    worker(name, ns, container, shared_root)
        .heartbeat_timeout(5)
        .auto_recovery()
}

/// Wait until the Worker controller has reconciled at least `rounds` more times.
fn wait_reconciles(op: &Operator, rounds: u64) {
    let count = |op: &Operator| {
        op.metric_value(r#"workerrecovery_reconciliations_total{controller="worker"}"#) as u64
    };
    let start = count(op);
    wait_for("more reconciles", TIMEOUT, || {
        let now = count(op);
        (now >= start + rounds)
            .then_some(())
            .ok_or_else(|| format!("{now} reconciles, want {}", start + rounds))
    });
}

/// No start, restart or exec of the container since `since` (from [`docker_now`]).
fn assert_untouched(wc: &WorkerContainer, since: &str) {
    let events = docker_events(&wc.container, since);
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("start") || e.starts_with("exec") || e.starts_with("restart")),
        "the operator touched the container: {events:?}"
    );
}

/// A Warning Event with `reason` about the Worker `name`.
fn assert_warning_event(stack: &Stack, ns: &str, name: &str, reason: &str) {
    let event = stack
        .events_for(ns, name)
        .into_iter()
        .find(|e| e["reason"] == reason)
        .unwrap_or_else(|| panic!("no {reason} event about {name}"));
    assert_eq!(event["type"], "Warning", "{event}");
}

/// The `diagnose` command with the given allowed roots: (success, stdout + stderr).
fn diagnose_cli(
    stack: &Stack,
    ns: &str,
    worker: &str,
    allowed: &std::path::Path,
) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_worker-recovery-operator"))
        .args(["diagnose", worker, "-n", ns, "-o", "json", "--allowed-root"])
        .arg(allowed)
        .env("KUBECONFIG", &stack.kubeconfig)
        .env_remove("WRO_ALLOWED_ROOTS")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn an_unlabelled_container_stays_stopped_and_unread() {
    let stack = stack();
    let ns = stack.namespace("consent");
    // Started by someone else, without the label: it crashes at once.
    let wc = WorkerContainer::start("", "stranger", &[], &[("FAULT_MODE", "crash")]);
    assert_eq!(wait_exited(&wc), 3);
    let started_at = wc.inspect("{{.State.StartedAt}}");
    let since = docker_now();
    stack.apply_ok(trusting_worker(
        "stranger",
        &ns,
        &wc.container,
        &wc.shared_root(),
    ));
    let op = Operator::start(stack, &ns, wc.dir.path());

    let w = wait_phase(stack, &ns, "stranger", "Refused");
    let accepted = condition(&w, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "NotManaged");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains(&format!("workerrecovery.io/worker={ns}/stranger")),
        "the message says how to consent: {accepted}"
    );
    assert_eq!(
        w["status"]["container"]["state"], "notManaged",
        "{}",
        w["status"]
    );
    for absent in ["id", "image", "exitCode", "startedAt", "finishedAt"] {
        assert!(
            w["status"]["container"].get(absent).is_none(),
            "{absent} of a foreign container is not reported: {}",
            w["status"]
        );
    }
    assert!(w["status"].get("heartbeat").is_none());

    // A WorkerRecovery is refused the same way, with no diagnosis.
    stack.apply_ok(bare_recovery("stranger-diag", &ns, "stranger"));
    let rec = wait_run_finished(stack, &ns, "stranger-diag");
    assert_eq!(rec["status"]["phase"], "Failed");
    assert_eq!(condition(&rec, "Diagnosed")["reason"], "NotManaged");
    assert!(rec["status"].get("diagnosis").is_none());
    let (ok, out) = diagnose_cli(stack, &ns, "stranger", wc.dir.path());
    assert!(!ok, "the CLI refuses too: {out}");
    assert!(out.contains("does not carry the label"), "{out}");

    // Several reconciles later: never started, never exec'd into, its logs never read.
    wait_reconciles(&op, 3);
    assert_eq!(wc.inspect("{{.State.Status}}"), "exited");
    assert_eq!(wc.inspect("{{.State.StartedAt}}"), started_at);
    assert_untouched(&wc, &since);
    assert_warning_event(stack, &ns, "stranger", "NotManaged");
}

#[test]
fn a_shared_root_outside_the_allowed_roots_is_refused_and_nothing_leaks() {
    let stack = stack();
    let ns = stack.namespace("roots");
    // A consenting worker, so that only the shared root decides.
    let wc = WorkerContainer::start(&ns, "rooty", &[], &[]);
    let allowed = tempfile::Builder::new()
        .prefix("wro-e2e-allowed-")
        .tempdir()
        .unwrap();
    let outside = tempfile::Builder::new()
        .prefix("wro-e2e-outside-")
        .tempdir()
        .unwrap();
    // A secret of distinctive content, size (1234567 bytes) and time (2001-02-03).
    let secret = outside.path().join("secret.json");
    let mut body = br#"{"timestamp": "2026-01-01T00:00:00Z", "status": "TOPSECRET"}"#.to_vec();
    body.resize(1_234_567, b' ');
    std::fs::write(&secret, &body).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&secret)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(981_158_400))
        .unwrap();
    std::os::unix::fs::symlink(outside.path(), allowed.path().join("link")).unwrap();

    let linked = allowed.path().join("link");
    for (name, root) in [
        ("direct", outside.path()),
        ("linked", &linked),
        ("slash", Path::new("/")),
    ] {
        stack.apply_ok(
            trusting_worker(name, &ns, &wc.container, root)
                .spec(json!({"paths": {"heartbeatFile": "secret.json"}})),
        );
    }
    // The operator may only use `allowed`; the worker's own root is not allowed either.
    wc.inject_fault("crash");
    assert_eq!(wait_exited(&wc), 3);
    let since = docker_now();
    let op = Operator::builder(stack, &ns, wc.dir.path())
        .allowed_roots(&[allowed.path()])
        .start();

    for name in ["direct", "linked", "slash"] {
        let w = wait_phase(stack, &ns, name, "Refused");
        let accepted = condition(&w, "Accepted");
        assert_eq!(accepted["reason"], "SharedRootNotAllowed", "{name}");
        assert!(w["status"].get("heartbeat").is_none());
        assert!(w["status"].get("container").is_none());
    }
    stack.apply_ok(bare_recovery("linked-diag", &ns, "linked"));
    let rec = wait_run_finished(stack, &ns, "linked-diag");
    assert_eq!(rec["status"]["phase"], "Failed");
    assert!(rec["status"].get("diagnosis").is_none());
    let (ok, cli) = diagnose_cli(stack, &ns, "direct", allowed.path());
    assert!(!ok && cli.contains("not inside an allowed root"), "{cli}");

    wait_reconciles(&op, 3);
    // No container touched: the crashed worker stays down although auto-recovery is on.
    assert_eq!(wc.inspect("{{.State.Status}}"), "exited");
    let events = docker_events(&wc.container, &since);
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("start") || e.starts_with("exec")),
        "{events:?}"
    );
    // Nothing of the file outside anywhere: content, size, time.
    let everything = format!(
        "{}{}{}",
        stack.get_json(&ns, "workers"),
        stack.get_json(&ns, "workerrecoveries"),
        stack.get_json(&ns, "events"),
    );
    for leak in ["TOPSECRET", "1234567", "2001-02-03"] {
        assert!(
            !everything.contains(leak),
            "{leak:?} leaked into status or Events: {everything}"
        );
    }
    // Nor where the symlink leads (only the "direct" Worker names that path, in its own spec).
    let about_the_link = format!(
        "{}{}{:?}",
        stack.get_json(&ns, "worker/linked")["status"],
        rec["status"],
        stack.events_for(&ns, "linked"),
    );
    assert!(
        !about_the_link.contains("wro-e2e-outside-"),
        "the link's target was disclosed: {about_the_link}"
    );
    assert_warning_event(stack, &ns, "linked", "SharedRootNotAllowed");
}

#[test]
fn a_heartbeat_without_a_time_field_is_judged_by_its_file_time() {
    let stack = stack();
    let ns = stack.namespace("plainhb");
    // A worker someone else wrote: it rewrites `{"status": "ok", "beats": N}` every second
    // until told to stop, then hangs.
    let script = "mkdir -p /shared/workers/plain; i=0; \
        while [ ! -f /shared/stop ]; do i=$((i+1)); \
        echo \"{\\\"status\\\": \\\"ok\\\", \\\"beats\\\": $i}\" > /shared/workers/plain/heartbeat.json; \
        sleep 1; done; exec sleep 3600";
    let wc = WorkerContainer::start_command(
        &ns,
        "plain",
        &["--init", "--entrypoint", "/bin/sh"],
        &["-c", script],
    );
    stack.apply_ok(trusting_worker(
        "plain",
        &ns,
        &wc.container,
        &wc.shared_root(),
    ));
    let _op = Operator::start(stack, &ns, wc.dir.path());

    let w = wait_phase(stack, &ns, "plain", "Healthy");
    assert_eq!(
        w["status"]["heartbeat"]["timeSource"], "FileModified",
        "{}",
        w["status"]
    );
    assert_eq!(w["status"]["heartbeat"]["status"], "ok");
    let fresh = condition(&w, "HeartbeatFresh");
    assert_eq!(fresh["status"], "True");
    assert!(
        fresh["message"]
            .as_str()
            .unwrap()
            .contains("modification time"),
        "{fresh}"
    );

    // The worker stops writing: the file's time ages past the 5 s timeout.
    std::fs::write(wc.shared_root().join("stop"), b"").unwrap();
    let w = wait_phase(stack, &ns, "plain", "Degraded");
    let stale = condition(&w, "HeartbeatFresh");
    assert_eq!(stale["reason"], "HeartbeatStale", "{stale}");
    assert_eq!(wc.inspect("{{.State.Running}}"), "true");
}
