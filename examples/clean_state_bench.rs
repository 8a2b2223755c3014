//! Times the clean-state step on a prepared tree, for `scripts/bench-clean-state.sh`.
//!
//! ```text
//! clean_state_bench operator <shared-root> <worker>   the operator's step: atomic, crash-safe
//! clean_state_bench bare     <shared-root> <worker>   the same file operations in a plain loop,
//!                                                     one sync at the end (the upper bound)
//! ```
//! Prints one line: `<mode> <tasks> <seconds> <tasks per second>`.

use std::{path::Path, time::Instant};

use k8s_openapi::jiff::Timestamp;
use worker_recovery_operator::{
    crd::worker::Worker,
    recover::clean_state::{clean_state, CleanStateInput},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, root, worker] = args.as_slice() else {
        eprintln!("usage: clean_state_bench operator|bare <shared-root> <worker>");
        std::process::exit(2);
    };
    let root = std::fs::canonicalize(root).expect("shared root exists");
    let started = Instant::now();
    let tasks = match mode.as_str() {
        "operator" => operator(&root, worker),
        "bare" => bare(&root, worker),
        other => panic!("unknown mode {other}"),
    };
    let secs = started.elapsed().as_secs_f64();
    println!("{mode} {tasks} {secs:.3} {:.0}", tasks as f64 / secs);
}

fn operator(root: &Path, worker: &str) -> u64 {
    let w: Worker = serde_json::from_value(serde_json::json!({
        "apiVersion": "workerrecovery.io/v1alpha1", "kind": "Worker",
        "metadata": {"name": worker},
        "spec": {"container": worker, "sharedRoot": root},
    }))
    .unwrap();
    let input = CleanStateInput {
        paths: w.resolved_paths().unwrap(),
        run_id: "bench-run-0001".into(),
        failure_time: Timestamp::now(),
        failure_reason: "worker_crash".into(),
        max_retries: 1_000_000,
        stale_lock_seconds: 300,
        holder_gone: true,
        dry_run: false,
        now: Timestamp::now(),
    };
    let report = clean_state(&input).expect("clean state");
    report.requeued + report.dead_lettered + report.quarantined
}

/// The runbook's loop with the same file operations and no crash safety: read, parse, add the
/// retry fields, write into pending/, remove from active/; one sync at the end.
fn bare(root: &Path, worker: &str) -> u64 {
    let tasks = root.join("tasks").join(worker);
    let (active, pending) = (tasks.join("active"), tasks.join("pending"));
    let now = Timestamp::now().as_millisecond() as f64 / 1000.0;
    let mut n = 0;
    // In name order, as the operator's step goes.
    let mut paths: Vec<_> = std::fs::read_dir(&active)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let mut task: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let retry = task
            .get("retry_count")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        task.insert("retry_count".into(), (retry + 1).into());
        task.insert("last_failure".into(), now.into());
        task.insert("failure_reason".into(), "worker_crash".into());
        std::fs::write(
            pending.join(path.file_name().unwrap()),
            serde_json::to_vec(&task).unwrap(),
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        n += 1;
    }
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    n
}
