//! Bounded work from bad input, against the real stack: a tmp directory 10,000 levels deep and
//! a directory of 200,000 entries neither bring the operator down nor make its memory grow
//! with them.

mod support;

use std::{os::fd::OwnedFd, path::Path, time::Duration};

use rustix::fs::{mkdirat, openat, Mode, OFlags};
use serde_json::json;
use support::*;

/// `levels` nested directories `d/d/d/...` below `top`, with a file at every 1,000th level.
/// Built with `openat` one level at a time: such a path is far longer than PATH_MAX.
fn deep_tree(top: &Path, levels: usize) {
    std::fs::create_dir_all(top).unwrap();
    let mut dir: OwnedFd = openat(
        rustix::fs::CWD,
        top,
        OFlags::DIRECTORY | OFlags::RDONLY,
        Mode::empty(),
    )
    .unwrap();
    for level in 0..levels {
        mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
        if level % 1000 == 0 {
            let f = openat(
                &dir,
                "file",
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from_raw_mode(0o644),
            );
            drop(f.unwrap());
        }
        dir = openat(&dir, "d", OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    }
}

/// `n` empty lock files of other workers in `dir`.
fn many_entries(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::File::create(dir.join(format!("other{i}_t.lock"))).unwrap();
    }
}

#[test]
fn a_deep_tmp_tree_and_a_huge_directory_are_handled_with_bounded_memory() {
    let stack = stack();
    let ns = stack.namespace("hostile");
    let (wc, ids) = WorkerContainer::crashed_with_tasks(&ns, "hosty", "1", 10);
    let root = wc.shared_root();
    deep_tree(&root.join("tmp/hosty"), 10_000);
    many_entries(&root.join("locks"), 200_000);
    stack.apply_ok(wc.worker("hosty", &ns));
    let mut op = Operator::start(stack, &ns, wc.dir.path());
    let baseline = op.peak_rss_kib();

    // The diagnosis reads the locks directory; the clean-up removes the tree and reads it too.
    stack.apply_ok(recovery("look", &ns, "hosty").mode("Diagnose"));
    let look = wait_run_finished(stack, &ns, "look");
    assert_phase(&look, "Succeeded");
    stack.apply_ok(
        recovery("clean", &ns, "hosty")
            .mode("Clean")
            .spec(json!({"resume": {"batchDelaySeconds": 1}})),
    );
    let run = wait_run_finished_within(stack, &ns, "clean", Duration::from_secs(240));
    assert_phase(&run, "Succeeded");
    let clean = run_step(&run, "CleanState");
    assert_eq!(clean["figures"]["requeued"], ids.len());
    assert_eq!(
        clean["figures"]["tmpEntriesRemoved"], 2,
        "the tree and a file: {clean}"
    );
    assert_eq!(clean["figures"]["locksRemoved"], ids.len(), "only its own");
    // (The restarted worker may have a scratch file there again.)
    assert!(!root.join("tmp/hosty/d").exists(), "the tree is gone");
    let locks = std::fs::read_dir(root.join("locks")).unwrap().count();
    assert!(locks >= 200_000, "the other workers' locks stay: {locks}");

    assert!(op.running(), "the operator stayed up");
    let peak = op.peak_rss_kib();
    eprintln!(
        "operator peak RSS: {} MiB at start, {} MiB after a 10,000-level tree and 200,000 entries",
        baseline / 1024,
        peak / 1024
    );
    assert!(
        peak < baseline + 64 * 1024,
        "memory bounded: {baseline} KiB -> {peak} KiB"
    );
}
