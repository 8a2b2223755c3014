//! The clean recovery against hostile trees and a crash at every point.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs,
    os::unix::{ffi::OsStringExt, fs::symlink},
    path::Path,
    time::{Duration, SystemTime},
};

use rustix::fs::FlockOperation;

use super::{
    engine::{run_token, Engine},
    journal::{decode_field, encode_field},
    task_file::transform_task,
    *,
};
use crate::recover::testing::{mkfifo, snapshot, Tree};

const RUN: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
const RUN8: &str = "0a1b2c3d";
/// `failure_time` as `last_failure` renders it.
const T: &str = "1795823941.5";

/// A [`Tree`] with active/ and locks/, and the step's input for it.
struct Fixture {
    tree: Tree,
    input: CleanStateInput,
}

impl std::ops::Deref for Fixture {
    type Target = Tree;
    fn deref(&self) -> &Tree {
        &self.tree
    }
}

fn fixture() -> Fixture {
    let tree = Tree::new(&["tasks/marie/active", "locks"]);
    let input = CleanStateInput {
        paths: tree.paths.clone(),
        run_id: RUN.into(),
        failure_time: Timestamp::new(1_795_823_941, 500_000_000).unwrap(),
        failure_reason: "oom".into(),
        max_retries: 3,
        stale_lock_seconds: 300,
        holder_gone: false,
        dry_run: false,
        now: Timestamp::now(),
    };
    Fixture { tree, input }
}

impl Fixture {
    fn task(&self, name: &str, bytes: &[u8]) {
        self.put(&format!("tasks/marie/active/{name}"), bytes);
    }
    fn dry(&self) -> CleanStateInput {
        CleanStateInput {
            dry_run: true,
            ..self.input.clone()
        }
    }
}

fn run_with(
    input: &CleanStateInput,
    crash: Option<CrashPoint>,
    batch_size: usize,
) -> Result<CleanStateReport> {
    let mut e = Engine::new(input)?;
    e.crash_at = crash;
    e.batch_size = batch_size;
    e.run()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn temps_left(f: &Fixture) -> Vec<String> {
    let mut v = Vec::new();
    for d in [
        "tasks/marie/pending",
        "tasks/marie/failed",
        "tasks/marie/quarantine",
        "workers/marie",
    ] {
        v.extend(
            f.names(d)
                .into_iter()
                .filter(|n| n.starts_with(".wro-") && n.ends_with(".tmp"))
                .map(|n| format!("{d}/{n}")),
        );
    }
    v
}

#[test]
fn requeue_keeps_every_other_field_verbatim() {
    let f = fixture();
    let a = r#"{"id":"a","n":1.0,"big":1e400,"huge":123456789012345678901234567890,"s":"caf\u00e9 café \"q\" \ud83d\ude00","nested":{"z":[1, 2, {"y":null}],"a":true},"retry_count":1,"z":-0.0}"#;
    f.task("a.json", a.as_bytes());
    f.task("b.json", b"  {\"b\": 2,\n  \"retry_count\": 0}\n");
    f.task(
        "c.json",
        br#"{"c\u00e9":1e3,"failure_reason":"old","last_failure":1}"#,
    );
    let report = clean_state(&f.input).unwrap();
    assert_eq!(report.requeued, 3);
    assert_eq!(report.requeued_tasks, ["a.json", "b.json", "c.json"]);
    assert_eq!((report.dead_lettered, report.quarantined), (0, 0));
    assert!(f.names("tasks/marie/active").is_empty());
    assert_eq!(
        f.names("tasks/marie/pending"),
        ["a.json", "b.json", "c.json"]
    );
    assert_eq!(
        f.text("tasks/marie/pending/a.json"),
        format!(
            r#"{{"id":"a","n":1.0,"big":1e400,"huge":123456789012345678901234567890,"s":"caf\u00e9 café \"q\" \ud83d\ude00","nested":{{"z":[1, 2, {{"y":null}}],"a":true}},"retry_count":2,"z":-0.0,"last_failure":{T},"failure_reason":"oom"}}"#
        )
    );
    assert_eq!(
        f.text("tasks/marie/pending/b.json"),
        format!(r#"{{"b":2,"retry_count":1,"last_failure":{T},"failure_reason":"oom"}}"#)
    );
    // Replaced keys keep their place; the raw key text (with its escape) is kept.
    assert_eq!(
        f.text("tasks/marie/pending/c.json"),
        format!(r#"{{"c\u00e9":1e3,"failure_reason":"oom","last_failure":{T},"retry_count":1}}"#)
    );
    assert!(temps_left(&f).is_empty());
    // Created target directories exist, the journal lists the tasks.
    assert!(f.exists("tasks/marie/failed") && f.exists("tasks/marie/quarantine"));
    let journal = f.text(&format!("tasks/marie/.wro-recovery-{RUN}.journal"));
    assert_eq!(
        journal,
        "B\nR a.json a.json\nR b.json b.json\nR c.json c.json\n"
    );
}

#[test]
fn transform_is_pure_and_strict_about_retry_count() {
    let t = Timestamp::new(10, 0).unwrap();
    let (out, retry) =
        transform_task(br#"{"retry_count":1,"a":1,"retry_count":4}"#, t, "x").unwrap();
    // JSON parsers keep the last duplicate: 4 + 1, at the first key's place.
    assert_eq!(retry, 5);
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        r#"{"retry_count":5,"a":1,"last_failure":10.0,"failure_reason":"x"}"#
    );
    let again = transform_task(br#"{"retry_count":1,"a":1,"retry_count":4}"#, t, "x");
    assert_eq!(again.unwrap().0, out);
    for (bad, why) in [
        (&br#"{"retry_count":1.0}"#[..], "retry_count is 1.0"),
        (br#"{"retry_count":-1}"#, "not a non-negative integer"),
        (br#"{"retry_count":"2"}"#, "not a non-negative integer"),
        (
            br#"{"retry_count":18446744073709551615}"#,
            "cannot be incremented",
        ),
        (b"", "empty"),
        (b"  ", "not valid JSON"),
        (b"[1]", "an array"),
        (b"\"s\"", "a string"),
        (b"12", "a number"),
        (b"null", "null"),
        (b"{\"a\":\"\xe9\"}", "not UTF-8"),
        (b"{\"a\":1} x", "not valid JSON"),
    ] {
        let err = transform_task(bad, t, "x").unwrap_err().to_string();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

#[test]
fn dead_letter_at_max_retries_with_reason_file() {
    let f = fixture();
    f.task("d.json", br#"{"id":"d","retry_count":2}"#);
    f.task("r.json", br#"{"id":"r","retry_count":1}"#);
    let report = clean_state(&f.input).unwrap();
    assert_eq!((report.requeued, report.dead_lettered), (1, 1));
    assert_eq!(report.dead_lettered_tasks, ["d.json"]);
    assert_eq!(f.names("tasks/marie/failed"), ["d.json", "d.json.reason"]);
    assert_eq!(f.names("tasks/marie/pending"), ["r.json"]);
    let d = json(&f.read("tasks/marie/failed/d.json"));
    assert_eq!(d["retry_count"], 3);
    assert_eq!(d["failure_reason"], "oom");
    let reason = json(&f.read("tasks/marie/failed/d.json.reason"));
    assert_eq!(reason["reason"], "max_retries");
    assert_eq!(reason["retry_count"], 3);
    assert_eq!(reason["max_retries"], 3);
    assert_eq!(reason["failure_reason"], "oom");
    assert_eq!(reason["run_id"], RUN);
    assert_eq!(
        json(&f.read("tasks/marie/pending/r.json"))["retry_count"],
        2
    );
    assert!(f.names("tasks/marie/active").is_empty());
}

#[test]
fn quarantines_whatever_is_not_a_task_without_following_or_blocking() {
    let f = fixture();
    let outside = f.base.join("outside/secret.json");
    fs::write(&outside, b"{\"secret\":1}").unwrap();
    f.task("corrupt.json", b"{not json");
    f.task("empty.json", b"");
    f.task("latin1.json", b"{\"a\":\"\xe9\"}");
    f.task("array.json", b"[1,2]");
    f.task("badretry.json", br#"{"retry_count":"x"}"#);
    f.task("notes.txt", b"{}");
    f.task("dir.json/inner.json", b"{}");
    let huge = fs::File::create(f.p("tasks/marie/active/huge.json")).unwrap();
    huge.set_len(MAX_TASK_BYTES + 1).unwrap();
    drop(huge);
    symlink(&outside, f.p("tasks/marie/active/link.json")).unwrap();
    mkfifo(&f.p("tasks/marie/active/pipe.json"));

    let report = clean_state(&f.input).unwrap();
    assert_eq!(report.quarantined, 10, "{report:#?}");
    assert_eq!((report.requeued, report.dead_lettered), (0, 0));
    assert!(f.names("tasks/marie/active").is_empty());
    for (name, why) in [
        ("array.json", "top level is an array"),
        ("badretry.json", "retry_count is \"x\""),
        ("corrupt.json", "not valid JSON"),
        ("dir.json", "a directory"),
        ("empty.json", "empty file"),
        ("huge.json", "too large"),
        ("latin1.json", "not UTF-8"),
        ("link.json", "a symlink to"),
        ("notes.txt", "does not end in .json"),
        ("pipe.json", "a FIFO"),
    ] {
        assert!(
            f.exists(&format!("tasks/marie/quarantine/{name}")),
            "{name}"
        );
        let r = json(&f.read(&format!("tasks/marie/quarantine/{name}.reason")));
        assert!(r["reason"].as_str().unwrap().contains(why), "{name}: {r}");
        assert_eq!(r["run_id"], RUN);
        assert_eq!(r["time"], 1_795_823_941.5);
        assert!(
            report
                .quarantined_tasks
                .iter()
                .any(|s| s.starts_with(&format!("{name}: ")) && s.contains(why)),
            "{name}: {:?}",
            report.quarantined_tasks
        );
    }
    // Moved as they are: the link itself, the directory with its content, the FIFO.
    let q = f.p("tasks/marie/quarantine");
    assert_eq!(fs::read_link(q.join("link.json")).unwrap(), outside);
    assert_eq!(fs::read(&outside).unwrap(), b"{\"secret\":1}");
    assert_eq!(f.read("tasks/marie/quarantine/dir.json/inner.json"), b"{}");
    use std::os::unix::fs::FileTypeExt as _;
    assert!(fs::symlink_metadata(q.join("pipe.json"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::metadata(q.join("huge.json")).unwrap().len(),
        MAX_TASK_BYTES + 1
    );
    assert_eq!(f.read("tasks/marie/quarantine/corrupt.json"), b"{not json");
}

#[test]
fn name_conflicts_keep_both_files() {
    let f = fixture();
    f.put("tasks/marie/pending/a.json", br#"{"other":1}"#);
    f.put("tasks/marie/quarantine/bad.json", b"earlier");
    f.put("tasks/marie/failed/d.json", b"earlier dead letter");
    f.task("a.json", br#"{"id":"a"}"#);
    f.task("bad.json", b"nope");
    f.task("d.json", br#"{"id":"d","retry_count":5}"#);
    let report = clean_state(&f.input).unwrap();
    assert_eq!(report.requeued_tasks, [format!("a.json -> a.{RUN8}.json")]);
    assert_eq!(
        report.dead_lettered_tasks,
        [format!("d.json -> d.{RUN8}.json")]
    );
    assert_eq!(report.quarantined, 1);
    assert!(report.quarantined_tasks[0].ends_with(&format!("(as bad.json.{RUN8})")));
    assert_eq!(f.read("tasks/marie/pending/a.json"), br#"{"other":1}"#);
    assert_eq!(
        json(&f.read(&format!("tasks/marie/pending/a.{RUN8}.json")))["id"],
        "a"
    );
    assert_eq!(f.read("tasks/marie/quarantine/bad.json"), b"earlier");
    assert_eq!(
        f.read(&format!("tasks/marie/quarantine/bad.json.{RUN8}")),
        b"nope"
    );
    assert!(f.exists(&format!("tasks/marie/quarantine/bad.json.{RUN8}.reason")));
    assert_eq!(f.read("tasks/marie/failed/d.json"), b"earlier dead letter");
    assert_eq!(
        json(&f.read(&format!("tasks/marie/failed/d.{RUN8}.json")))["retry_count"],
        6
    );
    assert!(f.exists(&format!("tasks/marie/failed/d.{RUN8}.json.reason")));
    assert!(f.names("tasks/marie/active").is_empty());
}

/// Tasks of every outcome; returns (id, old retry_count) of the JSON ones.
fn populate(f: &Fixture) -> Vec<(String, u64)> {
    let mut tasks = Vec::new();
    for i in 0..5 {
        let id = format!("t{i}");
        f.task(
            &format!("{id}.json"),
            format!(r#"{{"id":"{id}","retry_count":{i}}}"#).as_bytes(),
        );
        tasks.push((id, i));
    }
    // t0 conflicts with a different pending file.
    f.put("tasks/marie/pending/t0.json", br#"{"someone":"else"}"#);
    f.task("bad1.json", b"{");
    f.task("bad2.json", b"");
    tasks
}

/// Each task exactly once across the task directories, incremented exactly once.
fn assert_exactly_once(f: &Fixture, tasks: &[(String, u64)]) {
    let mut seen: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for d in ["active", "pending", "failed", "quarantine"] {
        for n in f.names(&format!("tasks/marie/{d}")) {
            if n.ends_with(".reason") || n.starts_with(".wro-") {
                continue;
            }
            let bytes = f.read(&format!("tasks/marie/{d}/{n}"));
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(id) = v["id"].as_str() {
                    let retry = v["retry_count"].as_u64().unwrap();
                    seen.entry(id.into())
                        .or_default()
                        .push((format!("{d}/{n}"), retry));
                }
            }
        }
    }
    for (id, old) in tasks {
        let copies = &seen[id];
        assert_eq!(copies.len(), 1, "{id}: {copies:?}");
        assert_eq!(copies[0].1, old + 1, "{id}: {copies:?}");
        let dir = if old + 1 >= 3 { "failed" } else { "pending" };
        assert!(copies[0].0.starts_with(dir), "{id}: {copies:?}");
    }
    assert!(f.names("tasks/marie/active").is_empty());
    assert_eq!(
        f.names("tasks/marie/quarantine").len(),
        4,
        "two entries, two reasons"
    );
    assert_eq!(
        f.read("tasks/marie/pending/t0.json"),
        br#"{"someone":"else"}"#
    );
    assert!(temps_left(f).is_empty(), "{:?}", temps_left(f));
}

#[test]
fn a_crash_at_any_point_then_resume_is_exactly_once() {
    for point in [
        CrashPoint::AfterTemps,
        CrashPoint::AfterRenames,
        CrashPoint::AfterJournal,
        CrashPoint::AfterMoves,
    ] {
        for batch in [BATCH_SIZE, 2] {
            let f = fixture();
            let tasks = populate(&f);
            let err = run_with(&f.input, Some(point), batch).unwrap_err();
            assert!(matches!(err, CleanStateError::SimulatedCrash(p) if p == point));
            if batch == BATCH_SIZE {
                let active = f.names("tasks/marie/active");
                let pending = f.names("tasks/marie/pending");
                match point {
                    CrashPoint::AfterTemps => {
                        assert_eq!(active.len(), 7);
                        assert!(pending.contains(&format!(".wro-{RUN8}-t1.json.tmp")));
                        assert!(!pending.contains(&"t1.json".to_string()));
                    }
                    CrashPoint::AfterRenames | CrashPoint::AfterJournal => {
                        assert_eq!(active.len(), 7);
                        assert_eq!(
                            json(&f.read("tasks/marie/pending/t1.json"))["retry_count"],
                            2
                        );
                        assert_eq!(
                            json(&f.read("tasks/marie/active/t1.json"))["retry_count"],
                            1
                        );
                    }
                    _ => assert!(active.is_empty()),
                }
            }
            // A dry run now tells what the resume does.
            let dry = clean_state(&f.dry()).unwrap();
            let report = clean_state(&f.input).unwrap();
            assert_eq!(dry, report, "{point:?} batch {batch}");
            assert_eq!(
                (report.requeued, report.dead_lettered, report.quarantined),
                (2, 3, 2),
                "{point:?} batch {batch}: {report:#?}"
            );
            assert_eq!(report.recovery_count, Some(1));
            assert_exactly_once(&f, &tasks);
            // And a call after success changes nothing and reports the same.
            let before = snapshot(&f.base);
            assert_eq!(clean_state(&f.input).unwrap(), report);
            assert_eq!(snapshot(&f.base), before, "{point:?}");
        }
    }
}

#[test]
fn resume_after_a_crash_in_a_later_batch() {
    let f = fixture();
    let tasks = populate(&f);
    // With batches of 2, AfterJournal in the first batch: later batches untouched.
    let err = run_with(&f.input, Some(CrashPoint::AfterJournal), 2).unwrap_err();
    assert!(matches!(err, CleanStateError::SimulatedCrash(_)));
    let report = run_with(&f.input, None, 3).unwrap();
    assert_eq!(
        (report.requeued, report.dead_lettered, report.quarantined),
        (2, 3, 2)
    );
    assert_exactly_once(&f, &tasks);
}

#[test]
fn crashes_in_a_row_still_move_and_count_each_task_once() {
    for (first, second) in [
        (CrashPoint::AfterJournal, CrashPoint::AfterJournal),
        (CrashPoint::AfterJournal, CrashPoint::AfterRenames),
        (CrashPoint::AfterMoves, CrashPoint::AfterJournal),
    ] {
        let f = fixture();
        let tasks = populate(&f);
        assert!(run_with(&f.input, Some(first), 3).is_err());
        assert!(run_with(&f.input, Some(second), 2).is_err());
        let dry = clean_state(&f.dry()).unwrap();
        let report = run_with(&f.input, None, 2).unwrap();
        assert_eq!(dry, report, "{first:?} {second:?}");
        assert_eq!(
            (report.requeued, report.dead_lettered, report.quarantined),
            (2, 3, 2),
            "{first:?} {second:?}: {report:#?}"
        );
        assert_exactly_once(&f, &tasks);
    }
}

#[test]
fn a_journal_larger_than_a_run_writes_is_refused_unread() {
    let f = fixture();
    f.task("a.json", br#"{"id":"a"}"#);
    let path = f.p(&format!("tasks/marie/.wro-recovery-{RUN}.journal"));
    let file = fs::File::create(&path).unwrap();
    file.set_len(MAX_JOURNAL_BYTES + 1).unwrap();
    drop(file);
    for input in [f.dry(), f.input.clone()] {
        let err = clean_state(&input).unwrap_err().to_string();
        assert!(err.contains("refused rather than read"), "{err}");
    }
    assert!(f.exists("tasks/marie/active/a.json"));
    // Lines too long to be ours are skipped, never buffered; the others count.
    let mut text = "R x.json x.json\n".to_string();
    text.push_str(&"R ".repeat(MAX_JOURNAL_LINE));
    text.push_str("\nR y.json y.json\n");
    fs::write(&path, text).unwrap();
    let report = clean_state(&f.input).unwrap();
    assert_eq!(report.requeued_tasks, ["x.json", "y.json", "a.json"]);
}

#[test]
fn twice_in_a_row_counts_from_the_journal_and_recovers_once() {
    let f = fixture();
    f.task("a.json", br#"{"id":"a"}"#);
    f.task("x.json", b"x");
    let first = clean_state(&f.input).unwrap();
    assert_eq!((first.requeued, first.quarantined), (1, 1));
    assert_eq!(first.recovery_count, Some(1));
    let second = clean_state(&f.input).unwrap();
    assert_eq!(second, first);
    assert_eq!(
        json(&f.read("workers/marie/state.json"))["recovery_count"],
        1
    );
    assert_eq!(
        json(&f.read("tasks/marie/pending/a.json"))["retry_count"],
        1
    );
    // Another run counts on.
    let next = CleanStateInput {
        run_id: "ffffeeee-1".into(),
        ..f.input.clone()
    };
    let third = clean_state(&next).unwrap();
    assert_eq!((third.requeued, third.quarantined), (0, 0));
    assert_eq!(third.recovery_count, Some(2));
}

#[test]
fn names_with_spaces_newlines_and_bad_utf8_are_journaled_safely() {
    let f = fixture();
    let odd = OsString::from_vec(b"a b\n%\xff.json".to_vec());
    fs::write(f.p("tasks/marie/active").join(&odd), br#"{"id":"odd"}"#).unwrap();
    let report = clean_state(&f.input).unwrap();
    assert_eq!(report.requeued, 1);
    assert_eq!(report.requeued_tasks, ["a b\n%\u{fffd}.json"]);
    assert!(f.p("tasks/marie/pending").join(&odd).exists());
    let journal = f.text(&format!("tasks/marie/.wro-recovery-{RUN}.journal"));
    assert_eq!(journal.lines().collect::<Vec<_>>()[0], "B");
    assert_eq!(journal.lines().count(), 2);
    assert_eq!(clean_state(&f.input).unwrap(), report);
}

#[test]
fn a_torn_journal_line_is_dropped() {
    let f = fixture();
    f.task("a.json", br#"{"id":"a"}"#);
    f.put(
        &format!("tasks/marie/.wro-recovery-{RUN}.journal"),
        b"R zzz.json zzz.json\nR half",
    );
    let report = clean_state(&f.input).unwrap();
    assert_eq!(report.requeued_tasks, ["zzz.json", "a.json"]);
    assert_eq!(
        f.text(&format!("tasks/marie/.wro-recovery-{RUN}.journal")),
        "R zzz.json zzz.json\nB\nR a.json a.json\n"
    );
}

#[test]
fn one_caller_per_run() {
    let f = fixture();
    f.task("a.json", br#"{"id":"a"}"#);
    let path = f.p(&format!("tasks/marie/.wro-recovery-{RUN}.journal"));
    let held = fs::File::create(&path).unwrap();
    rustix::fs::flock(&held, FlockOperation::LockExclusive).unwrap();
    let err = clean_state(&f.input).unwrap_err();
    assert!(matches!(err, CleanStateError::Busy { .. }), "{err}");
    assert!(f.exists("tasks/marie/active/a.json"));
    drop(held);
    assert_eq!(clean_state(&f.input).unwrap().requeued, 1);
}

fn age(path: &Path, seconds: u64) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(seconds))
        .unwrap();
}

#[test]
fn only_this_workers_stale_locks_are_removed() {
    let f = fixture();
    let target = f.base.join("outside/lock-target");
    fs::write(&target, b"keep").unwrap();
    // Tasks of marie: by file (in any of its task dirs) or by the id of an active task.
    f.task("a.json", br#"{"id":"a"}"#);
    f.task("t9.json", br#"{"id":"job-9"}"#);
    f.put("tasks/marie/pending/old.json", b"{}");
    f.put("tasks/marie/failed/dir.json", b"{}");
    f.put("tasks/marie/staged/link.json", b"{}");
    for n in [
        "marie_a.lock",
        "marie_old.lock",
        "marie_job-9.lock",
        "marie_ghost.lock",
        "mariette_x.lock",
        "other.lock",
        "marie_b.txt",
    ] {
        f.put(&format!("locks/{n}"), b"");
    }
    for n in ["marie_old.lock", "marie_ghost.lock", "mariette_x.lock"] {
        age(&f.p(&format!("locks/{n}")), 1000);
    }
    fs::create_dir(f.p("locks/marie_dir.lock")).unwrap();
    symlink(&target, f.p("locks/marie_link.lock")).unwrap();

    let report = clean_state(&f.input).unwrap();
    assert_eq!(report.requeued, 2);
    assert_eq!(report.locks_removed, 1);
    assert_eq!(report.removed_locks, ["marie_old.lock"]);
    assert!(report
        .skipped
        .contains(&"locks/marie_dir.lock: a directory, not a lock file".to_string()));
    assert!(report
        .skipped
        .iter()
        .any(|s| s.starts_with("locks/marie_a.lock: held")));
    // Not a task of marie's: neither removed nor reported.
    assert!(!report.skipped.iter().any(|s| s.contains("ghost")));
    assert_eq!(
        f.names("locks"),
        [
            "marie_a.lock",
            "marie_b.txt",
            "marie_dir.lock",
            "marie_ghost.lock",
            "marie_job-9.lock",
            "marie_link.lock",
            "mariette_x.lock",
            "other.lock"
        ]
    );

    // The container is gone: every lock of marie's tasks is stale. The requeued tasks are
    // in pending/ now; `job-9` is known by the id read when it was requeued.
    let gone = CleanStateInput {
        holder_gone: true,
        run_id: "second-run".into(),
        ..f.input.clone()
    };
    f.task("t9.json", br#"{"id":"job-9"}"#);
    let mut report = clean_state(&gone).unwrap();
    report.removed_locks.sort();
    assert_eq!(
        report.removed_locks,
        ["marie_a.lock", "marie_job-9.lock", "marie_link.lock"]
    );
    assert_eq!(
        f.names("locks"),
        [
            "marie_b.txt",
            "marie_dir.lock",
            "marie_ghost.lock",
            "mariette_x.lock",
            "other.lock"
        ]
    );
    assert_eq!(fs::read(&target).unwrap(), b"keep");
}

#[test]
fn a_worker_never_removes_the_locks_of_a_worker_whose_name_it_prefixes() {
    let f = fixture();
    // marie_x shares the locks directory; its task t1 is not marie's.
    f.put("tasks/marie_x/pending/t1.json", b"{}");
    f.put("locks/marie_x_t1.lock", b"");
    f.put("tasks/marie/pending/t2.json", b"{}");
    f.put("locks/marie_t2.lock", b"");
    // A task of marie named like marie_x's lock remainder would make it marie's too.
    let input = CleanStateInput {
        holder_gone: true,
        ..f.input.clone()
    };
    let dry = clean_state(&CleanStateInput {
        dry_run: true,
        ..input.clone()
    })
    .unwrap();
    let report = clean_state(&input).unwrap();
    assert_eq!(dry, report);
    assert_eq!(report.removed_locks, ["marie_t2.lock"]);
    assert_eq!(f.names("locks"), ["marie_x_t1.lock"]);
    assert!(!report.skipped.iter().any(|s| s.contains("marie_x")));
}

#[test]
fn state_is_updated_once_per_run_keeping_other_fields() {
    let f = fixture();
    f.put(
        "workers/marie/state.json",
        br#"{"status":"running","recovery_count":4,"custom":{"k":[1, 2]},"x":1.50}"#,
    );
    let report = clean_state(&f.input).unwrap();
    assert_eq!(report.recovery_count, Some(5));
    let written = f.text("workers/marie/state.json");
    assert_eq!(
        written,
        format!(
            r#"{{"status":"recovering","recovery_count":5,"custom":{{"k":[1, 2]}},"x":1.50,"last_crash":{T},"recovery_run":"{RUN}"}}"#
        )
    );
    let again = clean_state(&f.input).unwrap();
    assert_eq!(again.recovery_count, Some(5));
    assert_eq!(f.text("workers/marie/state.json"), written);
    assert!(temps_left(&f).is_empty());
}

#[test]
fn a_corrupt_state_is_kept_aside() {
    let f = fixture();
    f.put("workers/marie/state.json", b"{broken");
    let report = clean_state(&f.input).unwrap();
    assert_eq!(report.recovery_count, Some(1));
    assert_eq!(
        f.read(&format!("workers/marie/state.json.corrupt-{RUN8}")),
        b"{broken"
    );
    let state = json(&f.read("workers/marie/state.json"));
    assert_eq!(state["status"], "recovering");
    assert_eq!(state["recovery_count"], 1);
    assert!(report.skipped.iter().any(|s| s
        .starts_with("workers/marie/state.json: not valid JSON")
        && s.contains(&format!("kept as state.json.corrupt-{RUN8}"))));
    // A missing state directory is created.
    let g = fixture();
    fs::remove_dir_all(g.p("workers")).unwrap();
    assert_eq!(clean_state(&g.input).unwrap().recovery_count, Some(1));
    assert_eq!(
        json(&g.read("workers/marie/state.json"))["recovery_run"],
        RUN
    );
}

#[test]
fn a_crash_around_the_state_write_still_counts_once() {
    for point in [CrashPoint::AfterStateTemp, CrashPoint::AfterStateRename] {
        let f = fixture();
        f.put("workers/marie/state.json", br#"{"recovery_count":1}"#);
        assert!(run_with(&f.input, Some(point), BATCH_SIZE).is_err());
        if point == CrashPoint::AfterStateTemp {
            assert!(!temps_left(&f).is_empty());
        }
        let report = clean_state(&f.input).unwrap();
        assert_eq!(report.recovery_count, Some(2), "{point:?}");
        assert_eq!(
            json(&f.read("workers/marie/state.json"))["recovery_count"],
            2
        );
        assert!(temps_left(&f).is_empty());
    }
}

#[test]
fn tmp_is_emptied_without_following_symlinks() {
    let f = fixture();
    let outside = f.base.join("outside");
    fs::write(outside.join("keep.txt"), b"keep").unwrap();
    fs::create_dir(outside.join("dir")).unwrap();
    fs::write(outside.join("dir/inner"), b"inner").unwrap();
    f.put("tmp/marie/file", b"x");
    f.put("tmp/marie/nested/deep/file", b"x");
    symlink(outside.join("keep.txt"), f.p("tmp/marie/link-file")).unwrap();
    symlink(outside.join("dir"), f.p("tmp/marie/link-dir")).unwrap();
    symlink(outside.join("dir"), f.p("tmp/marie/nested/link-dir")).unwrap();
    let before = snapshot(&outside);
    let mut report = clean_state(&f.input).unwrap();
    assert_eq!(report.tmp_entries_removed, 4);
    // A sample in directory order.
    report.removed_tmp_entries.sort();
    assert_eq!(
        report.removed_tmp_entries,
        ["file", "link-dir", "link-file", "nested"]
    );
    assert!(f.p("tmp/marie").is_dir());
    assert!(f.names("tmp/marie").is_empty());
    assert_eq!(snapshot(&outside), before);

    // A missing tmp dir is created; one that holds the worker's files is not emptied.
    let g = fixture();
    clean_state(&g.input).unwrap();
    assert!(g.p("tmp/marie").is_dir());
    let mut h = fixture();
    h.task("a.json", br#"{"id":"a"}"#);
    h.input.paths.tmp_dir = h.p("tasks");
    let report = clean_state(&h.input).unwrap();
    assert_eq!(report.tmp_entries_removed, 0);
    assert!(report.skipped.iter().any(|s| s.contains("not emptied")));
    assert!(h.exists("tasks/marie/pending/a.json"));
}

#[test]
fn dry_run_changes_nothing_and_reports_what_a_real_run_does() {
    let f = fixture();
    populate(&f);
    f.task("d.json", br#"{"id":"d","retry_count":2}"#);
    f.task("dir.json/x", b"");
    mkfifo(&f.p("tasks/marie/active/pipe.json"));
    symlink(f.base.join("outside"), f.p("tasks/marie/active/l.json")).unwrap();
    f.put("tasks/marie/quarantine/bad1.json", b"earlier");
    f.put("locks/marie_1.lock", b"");
    age(&f.p("locks/marie_1.lock"), 1000);
    f.put("tasks/marie/staged/1.json", b"{}");
    f.put("locks/marie_2.lock", b"");
    fs::create_dir(f.p("locks/marie_3.lock")).unwrap();
    f.put("workers/marie/state.json", b"[1]");
    f.put("tmp/marie/a/b", b"");
    f.put("tmp/marie/c", b"");
    // pending/ exists (populate), failed/ does not yet.
    assert!(!f.exists("tasks/marie/failed"));

    let before = snapshot(&f.base);
    let dry = clean_state(&f.dry()).unwrap();
    assert_eq!(snapshot(&f.base), before, "a dry run changes nothing");
    let real = clean_state(&f.input).unwrap();
    assert_eq!(dry, real);
    assert_eq!(
        (real.requeued, real.dead_lettered, real.quarantined),
        (2, 4, 5),
        "{real:#?}"
    );
    assert_eq!((real.locks_removed, real.tmp_entries_removed), (1, 2));
    assert_eq!(real.recovery_count, Some(1));
    assert_ne!(snapshot(&f.base), before);
}

#[test]
fn symlinked_directories_are_refused_with_nothing_touched() {
    for link in [
        "tasks/marie",
        "tasks/marie/active",
        "tasks/marie/pending",
        "locks",
        "tmp/marie",
    ] {
        let f = fixture();
        let outside = f.base.join("outside/target");
        fs::create_dir_all(outside.join("active")).unwrap();
        fs::write(outside.join("active/x.json"), br#"{"id":"x"}"#).unwrap();
        fs::write(outside.join("x.json"), br#"{"id":"x"}"#).unwrap();
        fs::write(outside.join("marie_a.lock"), b"").unwrap();
        f.task("a.json", br#"{"id":"a"}"#);
        f.put("locks/marie_old.lock", b"");
        f.put("tmp/marie/t", b"");
        let p = f.p(link);
        if p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
        }
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(&outside, &p).unwrap();
        let before = snapshot(&f.base);
        for input in [f.dry(), f.input.clone()] {
            let err = clean_state(&input).unwrap_err();
            assert!(
                matches!(&err, CleanStateError::Fs(FsError::Symlink { path, .. }) if path == &p),
                "{link}: {err}"
            );
        }
        assert_eq!(snapshot(&f.base), before, "{link}");
    }
    // A path outside the trusted root is refused too.
    let mut f = fixture();
    f.input.paths.locks_dir = f.base.join("outside");
    assert!(matches!(
        clean_state(&f.input),
        Err(CleanStateError::Fs(FsError::Outside { .. }))
    ));
}

#[test]
fn missing_tasks_dir_is_nothing_to_do() {
    let f = fixture();
    fs::remove_dir_all(f.p("tasks")).unwrap();
    let report = clean_state(&f.input).unwrap();
    assert_eq!((report.requeued, report.quarantined), (0, 0));
    assert!(!f.exists("tasks"));
    let g = fixture();
    fs::remove_dir(g.p("tasks/marie/active")).unwrap();
    assert_eq!(clean_state(&g.input).unwrap().requeued, 0);
}

#[test]
fn run_tokens_are_file_safe() {
    assert_eq!(run_token(RUN).unwrap(), RUN);
    let t = run_token("ns/name").unwrap();
    assert!(t.starts_with("ns_name-") && !t.contains('/'), "{t}");
    assert_ne!(run_token("ns/name").unwrap(), run_token("ns_name").unwrap());
    assert!(run_token("").is_err());
    assert_eq!(encode_field(b"a b%\n\xff"), "a%20b%25%0A%FF");
    assert_eq!(decode_field(&encode_field(b"a b%\n\xff")), b"a b%\n\xff");
}
