//! Deadlock check (runbook: "Deadlock Detection"): tasks in `active/` older than
//! `stuckTaskSeconds`, and this worker's lock files older than `staleLockSeconds`, with what the
//! task and lock files say. Inputs that are not what they should be (non-JSON tasks, huge files,
//! directories named like tasks, symlinks, FIFOs) become findings; nothing is followed, moved or
//! deleted.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use k8s_openapi::jiff::Timestamp;

use crate::{
    blocking,
    bounded::Smallest,
    confined::{self, Entry, EntryKind, FsError},
    diagnose::{error, CheckContext, CheckName, CheckResult, Finding, FindingKind, Severity},
};

const CHECK: CheckName = CheckName::Deadlock;

/// Task files larger than this are reported, not read.
pub const MAX_TASK_BYTES: u64 = 1 << 20;
/// Lock files larger than this are not read (a lock is a few hundred bytes).
pub const MAX_LOCK_BYTES: u64 = 64 * 1024;
/// At most this many findings of one kind; the rest are summarised in one more finding.
pub const MAX_FINDINGS_PER_KIND: usize = 20;

/// Task directories whose `*.json` files are read.
const READ_DIRS: [&str; 3] = ["pending", "active", "staged"];
/// The task directories of a worker (a lock is the worker's when its task is in one).
const TASK_DIRS: [&str; 4] = ["pending", "active", "staged", "failed"];
/// Most task files read per directory to find malformed ones: the rest are counted unread.
pub const MAX_TASKS_READ: usize = 1000;

/// A task's `id` and `type`, when the file has them.
type TaskIdentity = (Option<String>, Option<String>);

/// Why a file named like a task is not one.
#[derive(Debug, thiserror::Error)]
enum NotATask {
    #[error("empty file")]
    Empty,
    #[error("not valid JSON")]
    InvalidJson(#[from] serde_json::Error),
    #[error("not a JSON object but {0}")]
    NotAnObject(&'static str),
    #[error("{size} bytes, larger than the {limit} bytes a task may have; not read")]
    TooLarge { size: u64, limit: u64 },
    #[error("unreadable")]
    Unreadable(#[source] FsError),
}

/// What a task file gave.
#[derive(Clone, Debug, PartialEq)]
struct TaskFile {
    entry: Entry,
    id: String,
    task_type: Option<String>,
}

/// Everything read from the disk, before any judgement (built on a blocking thread).
/// Directories are streamed, never listed whole: counts are exact, what is kept is bounded
/// (a sample of [`MAX_FINDINGS_PER_KIND`] per kind, the oldest first where age matters).
#[derive(Debug, Default)]
struct Scan {
    /// Regular `*.json` files per task directory.
    counts: Vec<(&'static str, usize)>,
    /// Directories that are missing.
    missing_dirs: Vec<PathBuf>,
    /// Task files not read (more than [`MAX_TASKS_READ`] in a directory).
    not_read: usize,
    /// The oldest tasks of active/.
    active: Vec<TaskFile>,
    /// Tasks of active/ older than `stuckTaskSeconds`, all of them.
    stuck_total: usize,
    oldest_active_seconds: Option<i64>,
    /// (path, reason, size when relevant), and how many in all.
    malformed: Vec<(PathBuf, NotATask, Option<u64>)>,
    malformed_total: usize,
    /// (path, what it is, link target), and how many in all.
    unsafe_paths: Vec<(PathBuf, String, Option<String>)>,
    unsafe_total: usize,
    /// The oldest of this worker's lock files, and how many it has / are stale in all.
    locks: Vec<Entry>,
    lock_count: usize,
    stale_total: usize,
    locks_missing: bool,
}

impl Scan {
    fn malformed(&mut self, item: (PathBuf, NotATask, Option<u64>)) {
        self.malformed_total += 1;
        if self.malformed.len() < MAX_FINDINGS_PER_KIND {
            self.malformed.push(item);
        }
    }

    fn hazard(&mut self, item: (PathBuf, String, Option<String>)) {
        self.unsafe_total += 1;
        if self.unsafe_paths.len() < MAX_FINDINGS_PER_KIND {
            self.unsafe_paths.push(item);
        }
    }
}

/// An entry ordered by modification time (oldest first), then name.
#[derive(Debug)]
struct ByAge(Entry);

impl ByAge {
    fn key(&self) -> (Option<Timestamp>, &str) {
        (self.0.modified, &self.0.name)
    }
}

impl PartialEq for ByAge {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for ByAge {}
impl PartialOrd for ByAge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByAge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// A lock's content, from `{"holder","pid","task","acquired_at"}`.
#[derive(Debug, Default, PartialEq)]
struct LockInfo {
    holder: Option<String>,
    pid: Option<String>,
    task: Option<String>,
    acquired_at: Option<String>,
    problem: Option<String>,
}

pub async fn run(ctx: &CheckContext) -> CheckResult {
    let root = ctx.paths.trusted_root.clone();
    let tasks_dir = ctx.paths.tasks_dir.clone();
    let locks_dir = ctx.paths.locks_dir.clone();
    let worker = ctx.worker_name.clone();
    let limits = Limits {
        now: ctx.now,
        stuck_after: i64::from(ctx.spec.diagnostics.stuck_task_seconds),
        stale_after: i64::from(ctx.spec.diagnostics.stale_lock_seconds),
    };
    let (scan, lock_infos) = blocking::run(move || {
        let scan = scan(&root, &tasks_dir, &locks_dir, &worker, &limits);
        let infos: Vec<LockInfo> = scan
            .locks
            .iter()
            .map(|l| read_lock(&root, &l.path))
            .collect();
        (scan, infos)
    })
    .await?;
    Ok(judge(ctx, scan, lock_infos))
}

fn entry_is_json(e: &Entry) -> bool {
    e.name.ends_with(".json")
}

/// Whether an entry in a task directory is a hazard: symlinks, FIFOs, sockets and devices
/// always; directories when named like a task.
fn hazard(e: &Entry) -> Option<String> {
    match e.kind {
        EntryKind::File => None,
        EntryKind::Dir if entry_is_json(e) => Some("a directory named like a task".into()),
        EntryKind::Dir => None,
        EntryKind::Symlink => Some("a symlink (not followed)".into()),
        kind => Some(format!("a {kind}")),
    }
}

/// What the scan judges by, so that it keeps only what the findings need.
struct Limits {
    now: Timestamp,
    stuck_after: i64,
    stale_after: i64,
}

fn scan(root: &Path, tasks_dir: &Path, locks_dir: &Path, worker: &str, lim: &Limits) -> Scan {
    let mut out = Scan::default();
    let mut oldest_active = Smallest::new(MAX_FINDINGS_PER_KIND + 1);
    for dir_name in TASK_DIRS {
        let dir = tasks_dir.join(dir_name);
        let (mut count, mut read) = (0, 0);
        let judged = READ_DIRS.contains(&dir_name);
        let visited = confined::visit_dir(root, &dir, |entry| {
            if entry.kind == EntryKind::File && entry_is_json(&entry) {
                count += 1;
            }
            // failed/ holds malformed tasks by design: counted, not judged.
            if !judged {
                return;
            }
            if let Some(what) = hazard(&entry) {
                out.hazard((entry.path.clone(), what, entry.link_target.clone()));
                return;
            }
            if entry.kind != EntryKind::File || !entry_is_json(&entry) {
                return;
            }
            if dir_name == "active" {
                let age = entry.age_seconds(lim.now);
                out.stuck_total += usize::from(age > lim.stuck_after);
                out.oldest_active_seconds = out.oldest_active_seconds.max(Some(age));
                oldest_active.offer(ByAge(entry));
            } else if read < MAX_TASKS_READ {
                read += 1;
                if let Err((reason, size)) = read_task(root, &entry) {
                    out.malformed((entry.path.clone(), reason, size));
                }
            } else {
                out.not_read += 1;
            }
        });
        match visited {
            Ok(true) => {}
            Ok(false) => out.missing_dirs.push(dir),
            Err(e) => out.hazard(unsafe_from_error(&dir, &e)),
        }
        out.counts.push((dir_name, count));
    }
    // Only the oldest tasks of active/ are read: those the findings show.
    for ByAge(entry) in oldest_active.into_sorted_vec() {
        let stem = entry.name.trim_end_matches(".json").to_string();
        let (id, task_type) = match read_task(root, &entry) {
            Ok((id, task_type)) => (id.unwrap_or(stem), task_type),
            Err((reason, size)) => {
                out.malformed((entry.path.clone(), reason, size));
                (stem, None)
            }
        };
        out.active.push(TaskFile {
            entry,
            id,
            task_type,
        });
    }
    scan_locks(&mut out, root, tasks_dir, locks_dir, worker, lim);
    out
}

/// This worker's lock files, streamed from the locks directory every worker shares. A lock
/// is this worker's when it is `<worker>_<task>.lock` and `<task>` is one of its tasks (a
/// `<task>.json` in its task directories, or the id of one of the active tasks read): the
/// locks of a worker `marie_x` are never reported as `marie`'s.
fn scan_locks(
    out: &mut Scan,
    root: &Path,
    tasks_dir: &Path,
    locks_dir: &Path,
    worker: &str,
    lim: &Limits,
) {
    let prefix = format!("{worker}_");
    let ids: BTreeSet<String> = out.active.iter().map(|t| t.id.clone()).collect();
    let own = |task: &str| {
        ids.contains(task)
            || (task.len() + 5 <= 255
                && TASK_DIRS.iter().any(|d| {
                    let p = tasks_dir.join(d).join(format!("{task}.json"));
                    matches!(confined::stat(root, &p), Ok(Some(_)))
                }))
    };
    let mut oldest = Smallest::new(MAX_FINDINGS_PER_KIND + 1);
    let mut hazards = Vec::new();
    let visited = confined::visit_dir(root, locks_dir, |entry| {
        let task = entry
            .name
            .strip_prefix(&prefix)
            .and_then(|t| t.strip_suffix(".lock"))
            .filter(|t| !t.is_empty());
        if !task.is_some_and(own) {
            return;
        }
        match entry.kind {
            EntryKind::File => {
                out.lock_count += 1;
                out.stale_total += usize::from(entry.age_seconds(lim.now) > lim.stale_after);
                oldest.offer(ByAge(entry));
            }
            kind => {
                let what = match kind {
                    EntryKind::Symlink => "a symlink (not followed)".to_string(),
                    kind => format!("a {kind} named like a lock"),
                };
                hazards.push((entry.path.clone(), what, entry.link_target.clone()));
            }
        }
    });
    for h in hazards {
        out.hazard(h);
    }
    match visited {
        Ok(true) => {}
        Ok(false) => out.locks_missing = true,
        Err(e) => out.hazard(unsafe_from_error(locks_dir, &e)),
    }
    out.locks = oldest.into_sorted_vec().into_iter().map(|b| b.0).collect();
}

fn unsafe_from_error(dir: &Path, e: &FsError) -> (PathBuf, String, Option<String>) {
    match e {
        FsError::Symlink { path, target } => (
            path.clone(),
            "a symlink where a directory should be (not followed)".into(),
            target.clone(),
        ),
        FsError::WrongKind { path, kind, .. } => (
            path.clone(),
            format!("a {kind} where a directory should be"),
            None,
        ),
        other => (dir.to_path_buf(), format!("unreadable: {other}"), None),
    }
}

/// Read a task's id and type. `Err((reason, size))` when it is not a task.
fn read_task(root: &Path, entry: &Entry) -> Result<TaskIdentity, (NotATask, Option<u64>)> {
    let content = match confined::read_file(root, &entry.path, MAX_TASK_BYTES) {
        Ok(c) => c,
        Err(FsError::TooLarge { size, limit, .. }) => {
            return Err((NotATask::TooLarge { size, limit }, Some(size)))
        }
        Err(e) => return Err((NotATask::Unreadable(e), None)),
    };
    parse_task(&content.bytes).map_err(|r| (r, Some(content.size)))
}

/// Parse a task file: a JSON object whose `id` (string or number) and `type` are read.
fn parse_task(bytes: &[u8]) -> Result<TaskIdentity, NotATask> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(NotATask::Empty);
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    let serde_json::Value::Object(map) = value else {
        return Err(NotATask::NotAnObject(json_kind(&value)));
    };
    let id = match map.get("id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let task_type = match map.get("type") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    Ok((id, task_type))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn read_lock(root: &Path, path: &Path) -> LockInfo {
    let content = match confined::read_file(root, path, MAX_LOCK_BYTES) {
        Ok(c) => c,
        Err(e) => {
            return LockInfo {
                problem: Some(format!("unreadable: {e}")),
                ..Default::default()
            }
        }
    };
    parse_lock(&content.bytes)
}

fn parse_lock(bytes: &[u8]) -> LockInfo {
    let text = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(map)) => LockInfo {
            holder: text(map.get("holder")),
            pid: text(map.get("pid")),
            task: text(map.get("task")),
            acquired_at: text(map.get("acquired_at")).or_else(|| text(map.get("acquiredAt"))),
            problem: None,
        },
        Ok(other) => LockInfo {
            problem: Some(format!("not a JSON object but {}", json_kind(&other))),
            ..Default::default()
        },
        Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => LockInfo {
            problem: Some("empty lock file".into()),
            ..Default::default()
        },
        Err(e) => LockInfo {
            problem: Some(format!("not valid JSON: {e}")),
            ..Default::default()
        },
    }
}

fn modified(e: &Entry) -> String {
    e.modified
        .map(|m| m.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Cap a list of findings of one kind, `total` of them in all, summarising the rest.
fn capped(
    ctx: &CheckContext,
    mut findings: Vec<Finding>,
    total: usize,
    what: &str,
) -> Vec<Finding> {
    findings.truncate(MAX_FINDINGS_PER_KIND);
    let rest = total.saturating_sub(findings.len());
    let Some(last) = findings.last() else {
        return findings;
    };
    if rest == 0 {
        return findings;
    }
    let summary = ctx
        .finding(
            CHECK,
            last.kind,
            last.severity,
            format!("{rest} more {what} not listed"),
        )
        .with("notListed", rest);
    findings.push(summary);
    findings
}

fn judge(ctx: &CheckContext, scan: Scan, lock_infos: Vec<LockInfo>) -> Vec<Finding> {
    let now: Timestamp = ctx.now;
    let stuck_after = i64::from(ctx.spec.diagnostics.stuck_task_seconds);
    let stale_after = i64::from(ctx.spec.diagnostics.stale_lock_seconds);
    let stuck = oldest_first(&scan.active, |t| t.entry.age_seconds(now), stuck_after);
    let locks = scan.locks.iter().zip(lock_infos.iter());
    let stale = oldest_first(locks, |(l, _)| l.age_seconds(now), stale_after);
    let stuck_ids: BTreeSet<&str> = stuck.iter().map(|t| t.id.as_str()).collect();

    let mut findings = Vec::new();
    let stuck_findings = stuck.iter().map(|t| stuck_task(ctx, t)).collect();
    findings.extend(capped(ctx, stuck_findings, scan.stuck_total, "stuck tasks"));
    let active_ids: BTreeSet<&str> = scan.active.iter().map(|t| t.id.as_str()).collect();
    let stale_findings = stale
        .iter()
        .map(|(lock, info)| stale_lock(ctx, lock, info, &stuck_ids, &active_ids))
        .collect();
    findings.extend(capped(ctx, stale_findings, scan.stale_total, "stale locks"));
    let malformed = scan
        .malformed
        .iter()
        .map(|(path, reason, size)| malformed_task(ctx, path, reason, *size))
        .collect();
    findings.extend(capped(
        ctx,
        malformed,
        scan.malformed_total,
        "malformed task files",
    ));
    let unsafe_paths = scan
        .unsafe_paths
        .iter()
        .map(|(path, what, target)| unsafe_path(ctx, path, what, target.as_ref()))
        .collect();
    findings.extend(capped(ctx, unsafe_paths, scan.unsafe_total, "unsafe paths"));
    if stuck.is_empty() && stale.is_empty() {
        findings.push(tasks_ok(ctx, &scan));
    }
    findings
}

/// The items older than `threshold` seconds by `age`, the oldest first.
fn oldest_first<T>(
    items: impl IntoIterator<Item = T>,
    age: impl Fn(&T) -> i64,
    threshold: i64,
) -> Vec<T> {
    let mut old: Vec<T> = items.into_iter().filter(|i| age(i) > threshold).collect();
    old.sort_by_key(|i| std::cmp::Reverse(age(i)));
    old
}

fn stuck_task(ctx: &CheckContext, t: &TaskFile) -> Finding {
    let stuck_after = i64::from(ctx.spec.diagnostics.stuck_task_seconds);
    let age = t.entry.age_seconds(ctx.now);
    ctx.finding(
        CHECK,
        FindingKind::StuckTask,
        Severity::Critical,
        format!(
            "task {} has been in active/ for {age}s ({:.1} minutes), more than {stuck_after}s",
            t.id,
            age as f64 / 60.0
        ),
    )
    .with("taskId", &t.id)
    .with("ageSeconds", age)
    .with("thresholdSeconds", stuck_after)
    .with("path", t.entry.path.display())
    .with("modifiedAt", modified(&t.entry))
    .with_opt("taskType", t.task_type.as_ref())
}

fn stale_lock(
    ctx: &CheckContext,
    lock: &Entry,
    info: &LockInfo,
    stuck_ids: &BTreeSet<&str>,
    active_ids: &BTreeSet<&str>,
) -> Finding {
    let stale_after = i64::from(ctx.spec.diagnostics.stale_lock_seconds);
    let age = lock.age_seconds(ctx.now);
    let prefix = format!("{}_", ctx.worker_name);
    let task = info.task.clone().unwrap_or_else(|| {
        lock.name
            .trim_start_matches(&prefix)
            .trim_end_matches(".lock")
            .to_string()
    });
    // A stale lock on a task that is also stuck in active/ corroborates a deadlock.
    let severity = if stuck_ids.contains(task.as_str()) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    ctx.finding(
        CHECK,
        FindingKind::StaleLock,
        severity,
        format!(
            "stale lock {}{}: {age}s ({:.1} minutes) old, more than {stale_after}s",
            lock.name,
            held_by(info),
            age as f64 / 60.0
        ),
    )
    .with("lockFile", lock.path.display())
    .with("ageSeconds", age)
    .with("thresholdSeconds", stale_after)
    .with("modifiedAt", modified(lock))
    .with("task", &task)
    .with("taskActive", active_ids.contains(task.as_str()))
    .with_opt("holder", info.holder.as_ref())
    .with_opt("holderPid", info.pid.as_ref())
    .with_opt("acquiredAt", info.acquired_at.as_ref())
    .with_opt("lockContent", info.problem.as_ref())
}

/// Who holds a lock, as the summary says it (` held by marie (pid 7)`), or nothing.
fn held_by(info: &LockInfo) -> String {
    match (&info.holder, &info.pid) {
        (Some(h), Some(p)) => format!(" held by {h} (pid {p})"),
        (Some(h), None) => format!(" held by {h}"),
        (None, Some(p)) => format!(" held by pid {p}"),
        (None, None) => String::new(),
    }
}

fn malformed_task(
    ctx: &CheckContext,
    path: &Path,
    reason: &NotATask,
    size: Option<u64>,
) -> Finding {
    let reason = error::message(reason);
    ctx.finding(
        CHECK,
        FindingKind::MalformedTask,
        Severity::Warning,
        format!("task file {} is not a task: {reason}", path.display()),
    )
    .with("path", path.display())
    .with("reason", &reason)
    .with_opt("sizeBytes", size.as_ref())
}

fn unsafe_path(ctx: &CheckContext, path: &Path, what: &str, target: Option<&String>) -> Finding {
    ctx.finding(
        CHECK,
        FindingKind::UnsafePath,
        Severity::Warning,
        format!("{} is {what}; it was not read", path.display()),
    )
    .with("path", path.display())
    .with("what", what)
    .with_opt("linkTarget", target)
}

/// Nothing stuck and nothing stale: the counts of what was seen.
fn tasks_ok(ctx: &CheckContext, scan: &Scan) -> Finding {
    let count = |name: &str| {
        scan.counts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .unwrap_or(0)
    };
    let mut f = ctx
        .finding(
            CHECK,
            FindingKind::TasksOk,
            Severity::Info,
            format!(
                "no stuck task or stale lock: {} pending, {} active, {} staged, {} failed, {} locks",
                count("pending"),
                count("active"),
                count("staged"),
                count("failed"),
                scan.lock_count
            ),
        )
        .with("pending", count("pending"))
        .with("active", count("active"))
        .with("staged", count("staged"))
        .with("failed", count("failed"))
        .with("locks", scan.lock_count)
        .with("tasksDir", ctx.paths.tasks_dir.display())
        .with("locksDir", ctx.paths.locks_dir.display());
    f = f.with_opt("oldestActiveSeconds", scan.oldest_active_seconds);
    if scan.not_read > 0 {
        f = f.with("tasksNotRead", scan.not_read);
    }
    if !scan.missing_dirs.is_empty() {
        f = f.with("missingDirs", join_paths(&scan.missing_dirs));
    }
    if scan.locks_missing {
        f = f.with("locksDirMissing", true);
    }
    f
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use k8s_openapi::jiff::SignedDuration;

    use super::*;
    use crate::diagnose::testing::{self, context_at as ctx_at};

    /// Write `content` at `rel` with an mtime `age` seconds before NOW.
    fn put(root: &Path, rel: &str, content: &[u8], age: i64) -> PathBuf {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        set_age(&p, age);
        p
    }

    fn set_age(p: &Path, age: i64) {
        let now: Timestamp = testing::NOW.parse().unwrap();
        testing::set_modified(p, now - SignedDuration::from_secs(age));
    }

    fn of(findings: &[Finding], kind: FindingKind) -> Vec<&Finding> {
        findings.iter().filter(|f| f.kind == kind).collect()
    }

    #[tokio::test]
    async fn stuck_tasks_and_stale_locks_with_their_evidence() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(
            root,
            "tasks/marie/active/p1.json",
            br#"{"id":"p1","type":"summarize","payload":{}}"#,
            900,
        );
        put(
            root,
            "tasks/marie/active/fresh.json",
            br#"{"id":"fresh","type":"x"}"#,
            30,
        );
        put(root, "tasks/marie/pending/p2.json", br#"{"id":"p2"}"#, 5000);
        put(
            root,
            "locks/marie_p1.lock",
            br#"{"holder":"marie","pid":7,"task":"p1","acquired_at":"2026-11-27T09:55:00.000Z"}"#,
            900,
        );
        put(root, "locks/marie_old.lock", b"garbage", 400);
        // A lock is marie's only for a task of marie's; marie_x's locks are not even named.
        put(root, "tasks/marie/failed/old.json", b"{}", 10);
        put(root, "tasks/marie_x/pending/t1.json", b"{}", 10);
        put(root, "locks/marie_x_t1.lock", b"{}", 9000);
        put(root, "locks/marie_ghost.lock", b"{}", 9000);
        put(
            root,
            "locks/marie_fresh.lock",
            br#"{"holder":"marie","pid":7,"task":"fresh"}"#,
            30,
        );
        put(root, "locks/anga_p9.lock", br#"{"holder":"anga"}"#, 9000);
        let ctx = ctx_at(root);
        let findings = run(&ctx).await.unwrap();

        let stuck = of(&findings, FindingKind::StuckTask);
        assert_eq!(stuck.len(), 1, "{findings:#?}");
        let s = stuck[0];
        assert_eq!(s.severity, Severity::Critical);
        assert_eq!(s.evidence["taskId"], "p1");
        assert_eq!(s.evidence["taskType"], "summarize");
        assert_eq!(s.evidence["ageSeconds"], "900");
        assert_eq!(s.evidence["thresholdSeconds"], "600");
        assert!(s.evidence["path"].ends_with("tasks/marie/active/p1.json"));
        assert_eq!(s.evidence["modifiedAt"], "2026-11-27T09:55:00Z");
        assert!(s.summary.contains("15.0 minutes"), "{}", s.summary);

        let locks = of(&findings, FindingKind::StaleLock);
        assert_eq!(locks.len(), 2, "{findings:#?}");
        let l = locks[0];
        assert_eq!(l.severity, Severity::Critical, "lock of a stuck task");
        assert!(l.evidence["lockFile"].ends_with("locks/marie_p1.lock"));
        assert_eq!(l.evidence["ageSeconds"], "900");
        assert_eq!(l.evidence["thresholdSeconds"], "300");
        assert_eq!(l.evidence["holder"], "marie");
        assert_eq!(l.evidence["holderPid"], "7");
        assert_eq!(l.evidence["task"], "p1");
        assert_eq!(l.evidence["taskActive"], "true");
        assert_eq!(l.evidence["acquiredAt"], "2026-11-27T09:55:00.000Z");
        let l = locks[1];
        assert_eq!(l.severity, Severity::Warning);
        assert_eq!(l.evidence["task"], "old");
        assert_eq!(l.evidence["taskActive"], "false");
        assert!(l.evidence["lockContent"].contains("not valid JSON"));
        assert!(!l.evidence.contains_key("holder"));

        assert!(of(&findings, FindingKind::TasksOk).is_empty());
        assert!(of(&findings, FindingKind::MalformedTask).is_empty());
        let text = format!("{findings:?}");
        assert!(
            !text.contains("marie_x") && !text.contains("ghost"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn nothing_stuck_gives_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(root, "tasks/marie/pending/a.json", br#"{"id":"a"}"#, 10);
        put(root, "tasks/marie/pending/b.json", br#"{"id":"b"}"#, 10);
        put(root, "tasks/marie/pending/notes.txt", b"x", 10);
        put(root, "tasks/marie/active/c.json", br#"{"id":"c"}"#, 10);
        put(root, "tasks/marie/failed/d.json", b"not json", 10);
        put(root, "tasks/marie/failed/d.json.reason", b"not json", 10);
        put(root, "tasks/marie/done/e.json", br#"{"id":"e"}"#, 10);
        put(root, "locks/marie_c.lock", br#"{"holder":"marie"}"#, 10);
        let ctx = ctx_at(root);
        let findings = run(&ctx).await.unwrap();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(f.kind, FindingKind::TasksOk);
        assert_eq!(f.severity, Severity::Info);
        assert_eq!(f.evidence["pending"], "2");
        assert_eq!(f.evidence["active"], "1");
        assert_eq!(f.evidence["staged"], "0");
        assert_eq!(f.evidence["failed"], "1");
        assert_eq!(f.evidence["locks"], "1");
        assert_eq!(f.evidence["oldestActiveSeconds"], "10");
        assert!(f.evidence["missingDirs"].ends_with("tasks/marie/staged"));
    }

    #[tokio::test]
    async fn an_empty_shared_root_is_normal() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx_at(tmp.path());
        let findings = run(&ctx).await.unwrap();
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].kind, FindingKind::TasksOk);
        assert_eq!(findings[0].evidence["locksDirMissing"], "true");
        assert_eq!(findings[0].evidence["pending"], "0");
    }

    #[tokio::test]
    async fn hostile_inputs_are_reported_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(root, "tasks/marie/pending/bad.json", b"{not json", 10);
        put(root, "tasks/marie/pending/array.json", b"[1,2]", 10);
        put(root, "tasks/marie/pending/empty.json", b"", 10);
        std::fs::create_dir_all(root.join("tasks/marie/staged/x.json")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("tasks/marie/pending/passwd.json"))
            .unwrap();
        let fifo = std::ffi::CString::new(
            root.join("tasks/marie/pending/fifo.json")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // A huge, sparse task in active/ that is also old: malformed and stuck (id = stem).
        let huge = put(root, "tasks/marie/active/huge.json", b"", 0);
        File::options()
            .write(true)
            .open(&huge)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        set_age(&huge, 7200);
        // The locks directory is a symlink to somewhere else.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("marie_x.lock"), b"{}").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.join("locks")).unwrap();

        let ctx = ctx_at(root);
        let findings = run(&ctx).await.unwrap();

        let malformed = of(&findings, FindingKind::MalformedTask);
        let reasons: Vec<(String, String)> = malformed
            .iter()
            .map(|f| {
                (
                    Path::new(&f.evidence["path"])
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    f.evidence["reason"].clone(),
                )
            })
            .collect();
        assert_eq!(malformed.len(), 4, "{reasons:#?}");
        assert!(reasons
            .iter()
            .any(|(n, r)| n == "bad.json" && r.contains("not valid JSON")));
        assert!(reasons
            .iter()
            .any(|(n, r)| n == "array.json" && r.contains("not a JSON object but an array")));
        assert!(reasons
            .iter()
            .any(|(n, r)| n == "empty.json" && r == "empty file"));
        assert!(reasons
            .iter()
            .any(|(n, r)| n == "huge.json" && r.contains("not read")));
        let huge_f = malformed
            .iter()
            .find(|f| f.evidence["path"].ends_with("huge.json"))
            .unwrap();
        assert_eq!(huge_f.evidence["sizeBytes"], (8u64 << 20).to_string());

        let stuck = of(&findings, FindingKind::StuckTask);
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].evidence["taskId"], "huge");
        assert!(!stuck[0].evidence.contains_key("taskType"));

        let unsafe_paths = of(&findings, FindingKind::UnsafePath);
        let whats: Vec<(String, String)> = unsafe_paths
            .iter()
            .map(|f| (f.evidence["path"].clone(), f.evidence["what"].clone()))
            .collect();
        assert_eq!(unsafe_paths.len(), 4, "{whats:#?}");
        assert!(whats.iter().any(
            |(p, w)| p.ends_with("staged/x.json") && w.contains("directory named like a task")
        ));
        assert!(whats
            .iter()
            .any(|(p, w)| p.ends_with("pending/passwd.json") && w.contains("symlink")));
        assert!(whats
            .iter()
            .any(|(p, w)| p.ends_with("pending/fifo.json") && w.contains("FIFO")));
        assert!(whats
            .iter()
            .any(|(p, w)| p.ends_with("/locks") && w.contains("symlink")));
        let link = unsafe_paths
            .iter()
            .find(|f| f.evidence["path"].ends_with("passwd.json"))
            .unwrap();
        assert_eq!(link.evidence["linkTarget"], "/etc/passwd");
        // Nothing in the symlinked locks directory was looked at.
        assert!(of(&findings, FindingKind::StaleLock).is_empty());
        // Nothing was moved or deleted.
        assert!(root.join("tasks/marie/pending/bad.json").exists());
        assert!(huge.exists());
    }

    #[tokio::test]
    async fn many_stuck_tasks_are_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for i in 0..25 {
            put(
                root,
                &format!("tasks/marie/active/t{i:02}.json"),
                b"{}",
                1000 + i,
            );
        }
        let findings = run(&ctx_at(root)).await.unwrap();
        let stuck = of(&findings, FindingKind::StuckTask);
        assert_eq!(stuck.len(), MAX_FINDINGS_PER_KIND + 1);
        assert_eq!(stuck[0].evidence["taskId"], "t24", "oldest first");
        assert_eq!(stuck[MAX_FINDINGS_PER_KIND].evidence["notListed"], "5");
    }

    #[test]
    fn who_holds_a_lock_and_what_is_oldest() {
        let info = |holder: Option<&str>, pid: Option<&str>| LockInfo {
            holder: holder.map(String::from),
            pid: pid.map(String::from),
            ..Default::default()
        };
        assert_eq!(
            held_by(&info(Some("marie"), Some("7"))),
            " held by marie (pid 7)"
        );
        assert_eq!(held_by(&info(Some("marie"), None)), " held by marie");
        assert_eq!(held_by(&info(None, Some("7"))), " held by pid 7");
        assert_eq!(held_by(&info(None, None)), "");
        // Older than the threshold only, the oldest first; equal ages keep their order.
        let ages = [(1, 5), (2, 900), (3, 301), (4, 300), (5, 900)];
        assert_eq!(
            oldest_first(ages, |(_, age)| *age, 300),
            [(2, 900), (5, 900), (3, 301)]
        );
    }

    #[test]
    fn task_and_lock_parsing() {
        assert_eq!(
            parse_task(br#"{"id": 17, "type": "review"}"#).unwrap(),
            (Some("17".into()), Some("review".into()))
        );
        assert_eq!(parse_task(br#"{"type": null}"#).unwrap(), (None, None));
        assert!(parse_task(b"\"x\"")
            .unwrap_err()
            .to_string()
            .contains("a string"));
        assert!(parse_task(b"  ").unwrap_err().to_string().contains("empty"));
        let l = parse_lock(
            br#"{"holder":"marie","pid":12,"task":"t1","acquired_at":"2026-11-27T09:00:00Z"}"#,
        );
        assert_eq!(l.holder.as_deref(), Some("marie"));
        assert_eq!(l.pid.as_deref(), Some("12"));
        assert_eq!(l.task.as_deref(), Some("t1"));
        assert_eq!(l.problem, None);
        assert!(parse_lock(b"").problem.unwrap().contains("empty"));
        assert!(parse_lock(b"[]").problem.unwrap().contains("array"));
    }
}
