//! Crash dumps (runbook "Analyze Crash Dump"): a sample worker that aborts (SIGABRT) at start
//! is down; a `Debug` run starts its debug copy, which aborts too and dumps core into the
//! Worker's `diagnostics.coreDumpDir`. The run records the core (size, time, signal,
//! executable), the analyzer image built from Debian's gdb-minimal makes its backtrace, and
//! the backtrace, with the sample worker's function names, is in the incident's post-mortem.
//! Deleting the run removes its core directory with its debug copy.

mod support;

use std::{path::Path, time::Duration};

use serde_json::{json, Value};
use support::*;

/// The image `scripts/build-analyzer-image.sh` builds.
const ANALYZER_IMAGE: &str = "wro-core-analyzer:dev";

#[test]
fn an_abort_in_a_debug_run_is_recorded_with_its_backtrace_in_the_post_mortem() {
    let stack = stack();
    let ns = stack.namespace("crashdump");
    // Under --init the worker is not PID 1 of its namespace, so SIGABRT is not ignored.
    let wc = WorkerContainer::start(
        &ns,
        "boom",
        &["--init"],
        &[("FAULT_MODE", "abort"), ("FAULT_AFTER_SECS", "0")],
    );
    assert_eq!(wait_exited(&wc), 134, "the worker died by SIGABRT");
    stack.apply_ok(
        wc.worker("boom", &ns)
            .heartbeat_timeout(5)
            .spec(json!({"diagnostics": {"coreDumpDir": "cores/{worker}"}})),
    );
    let _op = Operator::builder(stack, &ns, wc.dir.path())
        .env("WRO_CORE_ANALYZER_IMAGE", ANALYZER_IMAGE)
        .start();
    // The incident is open and its post-mortem written before the run.
    wait_worker(
        stack,
        &ns,
        "boom",
        "Down, post-mortem written",
        Duration::from_secs(60),
        |w| {
            w["status"]["phase"] == "Down" && w["status"]["incident"]["reported"].as_u64() > Some(0)
        },
    );
    let debug = format!("{}-debug", wc.container);
    let _cleanup = RemoveOnDrop(debug.clone());

    stack.apply_ok(
        recovery("boom-debug", &ns, "boom")
            .mode("Debug")
            .spec(json!({"verifyTimeoutSeconds": 5})),
    );
    let run = wait_for(
        "the run's core recorded and analyzed",
        Duration::from_secs(120),
        || {
            let run = stack.get_json(&ns, "wrec/boom-debug");
            let state = run["status"]["coreDumps"][0]["analysis"]["state"].clone();
            match state.as_str() {
                Some("Analyzed") | Some("Failed") => Ok(run),
                _ => Err(format!("phase {}", run["status"]["phase"])),
            }
        },
    );
    let dump = &run["status"]["coreDumps"][0];
    eprintln!("e2e_crashdump: {dump:#}");
    assert_eq!(dump["analysis"]["state"], "Analyzed", "{dump:#}");
    assert_eq!(dump["signal"], "SIGABRT");
    assert_eq!(dump["executable"], "/usr/local/bin/sample-worker");
    let file = Path::new(dump["file"].as_str().unwrap());
    let run_dir = wc.shared_root().join("cores/boom");
    assert!(
        file.starts_with(&run_dir),
        "{} in {}",
        file.display(),
        run_dir.display()
    );
    let size = std::fs::metadata(file).unwrap().len();
    assert_eq!(dump["sizeBytes"].as_u64(), Some(size));
    assert!(size > 0);
    let backtrace = dump["analysis"]["backtrace"].as_str().unwrap();
    for frame in [
        "sample_worker::fault::abort_now",
        "sample_worker::worker::simulate_abort",
    ] {
        assert!(backtrace.contains(frame), "{frame} in:\n{backtrace}");
    }
    let step = run_step(&run, "DebugStart");
    assert!(
        step["message"].as_str().unwrap().contains("cores go to"),
        "{step:#}"
    );
    // The analyzer's container is gone; the debug copy stays until the run is deleted.
    let label = format!("label=workerrecovery.io/recovery={ns}/boom-debug");
    let left = docker_ok(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]);
    assert_eq!(left, debug, "only the debug copy is left");
    let reasons: Vec<Value> = stack
        .events_for(&ns, "boom-debug")
        .into_iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert!(reasons.contains(&json!("CoreDumped")), "{reasons:?}");

    // The incident's post-mortem has the core and its backtrace.
    let markdown = wait_for(
        "the post-mortem with the crash dump",
        Duration::from_secs(60),
        || {
            let md = postmortem_cli(stack, &["boom", "-n", &ns]);
            if md.contains("## Crash dumps") {
                Ok(md)
            } else {
                Err("no crash dump section yet".into())
            }
        },
    );
    eprintln!("e2e_crashdump: the post-mortem:\n{markdown}");
    for needle in [
        "- Signal: SIGABRT",
        "- Executable: /usr/local/bin/sample-worker",
        "- Analysis: Analyzed",
        "sample_worker::fault::abort_now",
        "dumped core",
        "Find where /usr/local/bin/sample-worker died on SIGABRT",
    ] {
        assert!(markdown.contains(needle), "missing {needle:?}");
    }

    // Deleting the run removes what it made: the debug copy and its core directory.
    let run_dir = file.parent().unwrap().to_path_buf();
    stack.kubectl_ok(&[
        "delete",
        "wrec",
        "boom-debug",
        "-n",
        &ns,
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(
        !docker(&["inspect", &debug]).status.success(),
        "{debug} was removed"
    );
    assert!(!run_dir.exists(), "{} was removed", run_dir.display());
    assert!(
        wc.shared_root().join("cores/boom").is_dir(),
        "the Worker's directory stays"
    );
}
