//! The filesystem side of the runbook's gradual resume: which tasks wait in `pending/`, moving
//! a batch of them to `staged/`, which of them reached `failed/`, and the worker's
//! `state.json` status.
//!
//! ```python
//! pending_tasks = sorted(pending_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
//! for batch in batches: for task_file in batch: task_file.rename(staged_dir / task_file.name)
//! failed = list(failed_dir.glob("*.json"))
//! ```
//!
//! Every directory is reached from the trusted root through [`crate::confined`] handles: one
//! component at a time, a symlinked directory refused (an error, nothing moved), nothing
//! created outside the root. Nothing is ever deleted or overwritten. All functions block.
//!
//! # A batch moves each task at most once and loses none, whenever the operator dies
//!
//! 1. The caller records the batch's task names (in the ResumePlan status) **before** it calls
//!    [`release`]; after a crash it calls [`release`] again with the same names.
//! 2. A task moves by a single `rename(2)` from `pending/` to `staged/` in the same
//!    filesystem, which is atomic: at any instant the task is in exactly one of the two
//!    directories, never in both, never in neither. A crash between two renames leaves some
//!    tasks moved and the rest in `pending/`.
//! 3. The rename is `RENAME_NOREPLACE`: a file already at `staged/<name>` (say a task of the
//!    same name the worker has not claimed yet) is never replaced, so no task is lost to a
//!    collision; the task stays in `pending/` and is reported as collided.
//! 4. A name no longer in `pending/` is counted as gone, never looked for elsewhere: moved by
//!    an earlier call for this batch, or claimed by the worker. A second call therefore moves
//!    only what the first did not, so no task moves twice.
//! 5. Both directories are fsynced once per call, also when it moved nothing (a name found
//!    gone may be the previous call's rename, not yet durable), and before an error is
//!    returned part way, so what a call reports as moved survives a power loss.
//!
//! The names are the tasks' identity: a task that left `pending/` and came back under the
//! same name (worker crash, requeued by a later clean recovery) before a retried call of an
//! old batch is moved again by that call, as the next batch would have moved it.
//!
//! `state.json` is rewritten atomically (temp in its directory, fsync, rename, directory
//! fsync), keeping every other field byte for byte. The worker itself may also write it;
//! like the runbook, this does not lock against that.

use std::{
    collections::HashSet,
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt,
    time::SystemTime,
};

use super::clean_state::{MAX_STATE_BYTES, SAMPLE_LIMIT};
use crate::{
    bounded::{json_len, Smallest},
    confined::{
        dir_owner, io_err,
        json_object::{json_string, last_value, parse_object, replace_fields, Pairs},
        lossy, open_child, open_path, open_root, read_capped, rename_noreplace, write_new,
        ConfinedDir, EntryKind, FsError, ReadOutcome,
    },
    crd::worker::ResolvedPaths,
};

const PENDING: &str = "pending";
const STAGED: &str = "staged";
const FAILED: &str = "failed";
/// Longest file name (`NAME_MAX`).
const MAX_NAME: usize = 255;
/// Most bytes the names of one batch take in the ResumePlan's status (as JSON), where they
/// are recorded before the batch moves: 1,000 names of 20 bytes, or 125 of 255 bytes, fit.
/// A batch's `failedBefore` is a part of it, so `currentBatch` stays under twice this.
pub const MAX_BATCH_NAME_BYTES: usize = 32 * 1024;

/// Why a batch file operation of a resume failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Not confined, a symlinked or misplaced directory, or an I/O failure; the message names
    /// the path.
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "invalid task name {0:?}: a task name must be a single file name (not empty, \".\" or \
         \"..\", at most 255 bytes, without '/' or NUL); correct or remove it in the resume \
         plan's recorded batch"
    )]
    InvalidName(String),
}

type Result<T, E = BatchError> = std::result::Result<T, E>;

/// The tasks waiting in `pending/`; see [`scan_pending`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingScan {
    /// The oldest eligible tasks, oldest first (mtime, then name bytes), at most `limit` and
    /// at most [`MAX_BATCH_NAME_BYTES`] of names (at least one).
    pub oldest: Vec<String>,
    /// How many eligible tasks there are in all (not capped by `limit`).
    pub eligible: u64,
    /// Task files left out, as `name: why` (at most [`SAMPLE_LIMIT`]): a name that is not
    /// UTF-8, a name already taken in `staged/` (it would collide), or not a regular file
    /// (symlink, FIFO, directory, ...).
    pub left_out: Vec<String>,
    /// How many were left out in all.
    pub left_out_count: u64,
}

/// What [`release`] did with each name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Release {
    /// Moved pending/ -> staged/ by this call.
    pub moved: Vec<String>,
    /// Already not in pending/: moved by an earlier call for this batch, or claimed by the worker.
    pub gone: Vec<String>,
    /// Left in pending/ because staged/ has that name now (never overwritten).
    pub collided: Vec<String>,
    /// Left in pending/ because it is no longer a regular file there (a symlink, FIFO,
    /// directory ... swapped in since the scan): never handed to the worker.
    pub not_regular: Vec<String>,
}

/// What [`set_worker_status`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateWrite {
    /// The status was written.
    Written,
    /// It already had that status: nothing written.
    Unchanged,
    /// The state file's directory does not exist: nothing written (none created).
    NoDirectory,
    /// The file is corrupt, not an object, too large or not a regular file: left untouched.
    LeftAlone(String),
}

/// The worker's tasks directory, `None` when it does not exist.
fn open_tasks(paths: &ResolvedPaths) -> Result<Option<ConfinedDir>> {
    let root = open_root(&paths.trusted_root)?;
    Ok(open_path(&root, &paths.tasks_dir, false)?)
}

/// `<tasks>/<name>`, `None` when either does not exist.
fn open_task_dir(paths: &ResolvedPaths, name: &str) -> Result<Option<ConfinedDir>> {
    match open_tasks(paths)? {
        Some(tasks) => Ok(open_child(&tasks, OsStr::new(name), false)?),
        None => Ok(None),
    }
}

/// The names, each checked to be a single path component, duplicates dropped (first kept).
fn checked_names(names: &[String]) -> Result<Vec<String>> {
    let mut seen = HashSet::new();
    let mut checked = Vec::with_capacity(names.len());
    for n in names {
        if n.is_empty() || n == "." || n == ".." || n.len() > MAX_NAME || n.contains(['/', '\0']) {
            return Err(BatchError::InvalidName(n.clone()));
        }
        if seen.insert(n.as_str()) {
            checked.push(n.clone());
        }
    }
    Ok(checked)
}

/// The tasks of `<tasks>/pending/` that a batch may take.
///
/// Eligible = a regular file (lstat, not followed) whose name is valid UTF-8, ends in `.json`,
/// does not start with `.` (temps), whose mtime is at or before `cutoff`, and whose name is not
/// taken in `<tasks>/staged/`. Names that do not end in `.json` or start with `.` are not tasks
/// and are neither eligible nor left out; a task newer than `cutoff` is for a later plan. A
/// missing tasks or pending/ directory means no tasks (not an error).
pub fn scan_pending(
    paths: &ResolvedPaths,
    cutoff: SystemTime,
    limit: usize,
) -> Result<PendingScan> {
    let mut scan = PendingScan::default();
    let Some(tasks) = open_tasks(paths)? else {
        return Ok(scan);
    };
    let Some(pending) = open_child(&tasks, OsStr::new(PENDING), false)? else {
        return Ok(scan);
    };
    let staged = open_child(&tasks, OsStr::new(STAGED), false)?;
    let mut left_out = |why: String| {
        scan.left_out_count += 1;
        if scan.left_out.len() < SAMPLE_LIMIT {
            scan.left_out.push(why);
        }
    };
    // Streamed: only the `limit` oldest are kept, however many tasks wait.
    let mut oldest = Smallest::new(limit);
    for name in pending.stream_names()? {
        let name = name?;
        let b = name.as_bytes();
        if b.starts_with(b".") || !b.ends_with(b".json") {
            continue;
        }
        // Gone since the listing: claimed by the worker.
        let Some(md) = pending.lstat(&name)? else {
            continue;
        };
        let Some(text) = name.to_str() else {
            left_out(format!(
                "{}: name is not valid UTF-8; left in pending/",
                lossy(&name)
            ));
            continue;
        };
        if !md.is_file() {
            left_out(format!(
                "{text}: a {}, not a task file; not followed, left in pending/",
                EntryKind::of(&md)
            ));
            continue;
        }
        let mtime = md
            .modified()
            .map_err(|e| io_err("inspect", pending.path.join(&name), e))?
            .into_std();
        if mtime > cutoff {
            continue;
        }
        if let Some(staged) = &staged {
            if staged.lstat(&name)?.is_some() {
                left_out(format!(
                    "{text}: staged/ already has a file of that name; left in pending/"
                ));
                continue;
            }
        }
        scan.eligible += 1;
        // (mtime, name): `String` orders by its bytes.
        oldest.offer((mtime, text.to_owned()));
    }
    scan.oldest = within_budget(oldest.into_sorted_vec().into_iter().map(|(_, n)| n));
    Ok(scan)
}

/// The batch's first names whose record fits in [`MAX_BATCH_NAME_BYTES`]: a batch of long
/// names is smaller rather than recorded in part (every name is recorded before one moves).
fn within_budget(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut used = 0;
    let mut batch = Vec::new();
    for name in names {
        used += json_len(&name);
        if used > MAX_BATCH_NAME_BYTES && !batch.is_empty() {
            break;
        }
        batch.push(name);
    }
    batch
}

/// Move each named task from pending/ to staged/ with `RENAME_NOREPLACE` (staged/ is created
/// when missing, as the runbook's `mkdir`), then fsync both directories once.
///
/// Idempotent: calling it again after a crash at any instant moves each task at most once and
/// loses none (see the module docs). Names must be single path components: "", ".", "..",
/// a name with '/' or NUL, or longer than 255 bytes, is refused with
/// [`BatchError::InvalidName`] before anything moves. A missing tasks or pending/ directory
/// means every name is gone. A symlinked pending/ or staged/ is refused, nothing moved.
pub fn release(paths: &ResolvedPaths, names: &[String]) -> Result<Release> {
    let names = checked_names(names)?;
    let mut outcome = Release::default();
    if names.is_empty() {
        return Ok(outcome);
    }
    let Some(tasks) = open_tasks(paths)? else {
        outcome.gone = names;
        return Ok(outcome);
    };
    let Some(pending) = open_child(&tasks, OsStr::new(PENDING), false)? else {
        outcome.gone = names;
        return Ok(outcome);
    };
    let Some(staged) = open_child(&tasks, OsStr::new(STAGED), true)? else {
        let missing = std::io::ErrorKind::NotFound.into();
        return Err(io_err("create directory", tasks.path.join(STAGED), missing).into());
    };
    let moved = move_all(&pending, &staged, names, &mut outcome);
    // Durable before anything is reported, also when a move failed part way: a retry then
    // reports this call's moves as gone.
    let synced = staged.fsync().and_then(|()| pending.fsync());
    moved?;
    synced?;
    Ok(outcome)
}

fn move_all(
    pending: &ConfinedDir,
    staged: &ConfinedDir,
    names: Vec<String>,
    outcome: &mut Release,
) -> Result<(), FsError> {
    for name in names {
        let os = OsString::from(&name);
        match pending.lstat(&os)? {
            None => outcome.gone.push(name),
            Some(md) if !md.is_file() => outcome.not_regular.push(name),
            Some(_) => match rename_noreplace(pending, &os, staged, &os) {
                Ok(()) => outcome.moved.push(name),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => outcome.collided.push(name),
                // Claimed by the worker between the lstat and the rename.
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOENT) && pending.lstat(&os)?.is_none() =>
                {
                    outcome.gone.push(name)
                }
                Err(e) => return Err(e),
            },
        }
    }
    Ok(())
}

/// Which of `names` exist in `<tasks>/failed/` now (by lstat, of any kind), in the order
/// given; a missing directory means none. Names are checked as by [`release`].
pub fn present_in_failed(paths: &ResolvedPaths, names: &[String]) -> Result<Vec<String>> {
    let names = checked_names(names)?;
    let Some(failed) = open_task_dir(paths, FAILED)? else {
        return Ok(Vec::new());
    };
    let mut present = Vec::new();
    for name in names {
        if failed.lstat(OsStr::new(&name))?.is_some() {
            present.push(name);
        }
    }
    Ok(present)
}

/// Set the `"status"` field of the worker's `state.json` to `status` (`"recovering"`,
/// `"running"`), keeping every other field byte for byte, atomically (temp in the same
/// directory, fsync, rename, directory fsync) and keeping its owner and mode.
///
/// A missing file is created as `{"status": ...}` (mode 0644, the directory's owner) when its
/// directory exists; a missing directory is [`StateWrite::NoDirectory`] (none created). A
/// corrupt, non-object, too large or non-regular file is left untouched
/// ([`StateWrite::LeftAlone`] with why). A file that already has that status is
/// [`StateWrite::Unchanged`], nothing written.
pub fn set_worker_status(paths: &ResolvedPaths, status: &str) -> Result<StateWrite> {
    let file = &paths.state_file;
    let not_confined = || FsError::Outside {
        path: file.clone(),
        root: paths.trusted_root.clone(),
    };
    let leaf = file
        .file_name()
        .filter(|_| file.starts_with(&paths.trusted_root))
        .ok_or_else(not_confined)?;
    let parent = file.parent().ok_or_else(not_confined)?;
    let root = open_root(&paths.trusted_root)?;
    let Some(dir) = open_path(&root, parent, false)? else {
        return Ok(StateWrite::NoDirectory);
    };
    let shown = file.display();
    let left_alone = |why: String| Ok(StateWrite::LeftAlone(format!("{shown}: {why}")));
    let mut temp = OsString::from(".wro-status-");
    temp.push(leaf);
    temp.push(".tmp");
    // A file created by someone else while we write a missing one is not replaced: read again.
    for _ in 0..3 {
        let (pairs, owner) = match dir.lstat(leaf)? {
            None => (Pairs::new(), None),
            Some(md) if !md.is_file() => {
                return left_alone(format!(
                    "a {}, not a state file; not followed, left as it is",
                    EntryKind::of(&md)
                ))
            }
            Some(_) => match read_capped(&dir, leaf, MAX_STATE_BYTES)? {
                ReadOutcome::Missing => (Pairs::new(), None),
                ReadOutcome::NotRegular(kind) => {
                    return left_alone(format!("a {kind}, not a state file; left as it is"))
                }
                ReadOutcome::TooLarge(n) => {
                    return left_alone(format!(
                        "too large ({n} bytes, limit {MAX_STATE_BYTES}); left as it is"
                    ))
                }
                ReadOutcome::Bytes(bytes, owner) => match parse_object(&bytes) {
                    Ok(pairs) => (pairs, Some(owner)),
                    Err(why) => return left_alone(format!("{why}; left as it is")),
                },
            },
        };
        let current =
            last_value(&pairs, "status").and_then(|v| serde_json::from_str::<String>(v.get()).ok());
        if current.as_deref() == Some(status) {
            return Ok(StateWrite::Unchanged);
        }
        let bytes = replace_fields(&pairs, &[("status", json_string(status))]);
        let create = owner.is_none();
        let owner = match owner {
            Some(o) => o,
            None => dir_owner(&dir)?,
        };
        write_new(&dir, &temp, &bytes, owner, true)?;
        let renamed = if create {
            rename_noreplace(&dir, &temp, &dir, leaf)
        } else {
            dir.dir
                .rename(&temp, &dir.dir, leaf)
                .map_err(|e| io_err("rename", dir.path.join(&temp), e))
        };
        match renamed {
            Ok(()) => {
                dir.fsync()?;
                return Ok(StateWrite::Written);
            }
            Err(e) => {
                let _ = dir.remove_file(&temp);
                if !(create && e.raw_os_error() == Some(libc::EEXIST)) {
                    return Err(e.into());
                }
            }
        }
    }
    left_alone("created by someone else while being written, repeatedly; left as it is".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recover::testing::{mkfifo, snapshot, Tree};
    use std::{
        fs,
        os::unix::{
            ffi::OsStringExt,
            fs::{symlink, MetadataExt, PermissionsExt},
        },
        path::Path,
        time::{Duration, UNIX_EPOCH},
    };

    /// A time all fixture mtimes are relative to.
    fn t(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_823_000 + seconds)
    }

    /// A [`Tree`] with marie's pending/.
    struct Fixture(Tree);

    impl std::ops::Deref for Fixture {
        type Target = Tree;
        fn deref(&self) -> &Tree {
            &self.0
        }
    }

    impl std::ops::DerefMut for Fixture {
        fn deref_mut(&mut self) -> &mut Tree {
            &mut self.0
        }
    }

    fn fixture() -> Fixture {
        Fixture(Tree::new(&["tasks/marie/pending"]))
    }

    impl Fixture {
        /// A task in `pending/` modified at `mtime`.
        fn pending(&self, name: &str, mtime: SystemTime) {
            let rel = format!("tasks/marie/pending/{name}");
            self.put(&rel, format!(r#"{{"id":"{name}"}}"#).as_bytes());
            set_mtime(&self.p(&rel), mtime);
        }
        fn scan(&self, cutoff: SystemTime, limit: usize) -> PendingScan {
            scan_pending(&self.paths, cutoff, limit).unwrap()
        }
    }

    fn set_mtime(path: &Path, mtime: SystemTime) {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    // ---------------------------------------------------------------- scan_pending

    #[test]
    fn oldest_first_by_mtime_then_name_up_to_the_cutoff() {
        let f = fixture();
        f.pending("c.json", t(10));
        f.pending("a.json", t(20));
        f.pending("b.json", t(10));
        f.pending("d.json", t(5));
        // A nanosecond later than b and c.
        f.pending("0.json", t(10) + Duration::from_nanos(1));
        // Exactly at the cutoff: in; after it: out (for a later plan), not left out.
        f.pending("at.json", t(25));
        f.pending("new.json", t(25) + Duration::from_nanos(1));
        f.pending("newer.json", t(99));

        let all = f.scan(t(25), 100);
        assert_eq!(
            all.oldest,
            strings(&["d.json", "b.json", "c.json", "0.json", "a.json", "at.json"])
        );
        assert_eq!(all.eligible, 6);
        assert_eq!((all.left_out_count, all.left_out.len()), (0, 0));

        // The limit caps the batch, not the count.
        let two = f.scan(t(25), 2);
        assert_eq!(two.oldest, strings(&["d.json", "b.json"]));
        assert_eq!(two.eligible, 6);
        let none = f.scan(t(25), 0);
        assert!(none.oldest.is_empty());
        assert_eq!(none.eligible, 6);
        // An earlier cutoff.
        let early = f.scan(t(9), 10);
        assert_eq!((early.oldest, early.eligible), (strings(&["d.json"]), 1));
        // Scanning changes nothing.
        assert_eq!(f.names("tasks/marie/pending").len(), 8);
        assert!(!f.exists("tasks/marie/staged"));
    }

    #[test]
    fn what_is_not_an_eligible_task_is_left_out_or_ignored() {
        let f = fixture();
        let pending = f.p("tasks/marie/pending");
        f.pending("ok.json", t(1));
        // Left out, with why.
        fs::write(f.base.join("outside/secret.json"), b"{}").unwrap();
        set_mtime(&f.base.join("outside/secret.json"), t(1));
        symlink(
            f.base.join("outside/secret.json"),
            pending.join("link.json"),
        )
        .unwrap();
        mkfifo(&pending.join("pipe.json"));
        fs::create_dir(pending.join("dir.json")).unwrap();
        f.pending("taken.json", t(1));
        f.put("tasks/marie/staged/taken.json", b"{\"id\":\"other\"}");
        let bad = pending.join(OsString::from_vec(b"bad\xff.json".to_vec()));
        fs::write(&bad, b"{}").unwrap();
        set_mtime(&bad, t(1));
        // Not tasks at all: ignored.
        f.pending("notes.txt", t(1));
        f.pending(".ok.json.tmp", t(1));
        f.pending(".hidden.json", t(1));

        let before = snapshot(&f.base);
        let mut scan = f.scan(t(10), 10);
        assert_eq!(snapshot(&f.base), before, "a scan changes nothing");
        // Sampled in directory order.
        scan.left_out.sort();
        assert_eq!(scan.oldest, strings(&["ok.json"]));
        assert_eq!(scan.eligible, 1);
        assert_eq!(scan.left_out_count, 5);
        assert_eq!(
            scan.left_out,
            strings(&[
                "bad\u{fffd}.json: name is not valid UTF-8; left in pending/",
                "dir.json: a directory, not a task file; not followed, left in pending/",
                "link.json: a symlink, not a task file; not followed, left in pending/",
                "pipe.json: a FIFO, not a task file; not followed, left in pending/",
                "taken.json: staged/ already has a file of that name; left in pending/",
            ])
        );
    }

    #[test]
    fn left_out_names_are_capped_but_counted() {
        let f = fixture();
        for i in 0..SAMPLE_LIMIT + 5 {
            fs::create_dir(f.p(&format!("tasks/marie/pending/d{i:03}.json"))).unwrap();
        }
        let scan = f.scan(t(10), 10);
        assert_eq!(scan.left_out.len(), SAMPLE_LIMIT);
        assert_eq!(scan.left_out_count, SAMPLE_LIMIT as u64 + 5);
        assert_eq!(scan.eligible, 0);
    }

    #[test]
    fn missing_directories_mean_no_tasks_and_symlinked_ones_are_refused() {
        let f = fixture();
        fs::remove_dir(f.p("tasks/marie/pending")).unwrap();
        assert_eq!(f.scan(t(10), 10), PendingScan::default());
        fs::remove_dir_all(f.p("tasks")).unwrap();
        assert_eq!(f.scan(t(10), 10), PendingScan::default());
        assert!(!f.exists("tasks"));

        for link in ["tasks/marie", "tasks/marie/pending", "tasks/marie/staged"] {
            let f = fixture();
            let outside = f.base.join("outside/dir");
            fs::create_dir_all(outside.join("pending")).unwrap();
            fs::write(outside.join("x.json"), b"{}").unwrap();
            let p = f.p(link);
            if p.is_dir() {
                fs::remove_dir_all(&p).unwrap();
            }
            symlink(&outside, &p).unwrap();
            let err = scan_pending(&f.paths, t(10), 10).unwrap_err();
            assert!(
                matches!(&err, BatchError::Fs(FsError::Symlink { path, .. }) if path == &p),
                "{link}: {err}"
            );
        }
    }

    /// Peak and current resident memory of the process, in KiB (for the measurements).
    pub(crate) fn vm_kib() -> (u64, u64) {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    #[test]
    fn a_directory_of_200000_tasks_is_streamed_keeping_only_what_is_asked() {
        let f = fixture();
        let n = 200_000;
        let pending = f.p("tasks/marie/pending");
        let start = std::time::Instant::now();
        for i in 0..n {
            fs::File::create(pending.join(format!("task-{i:06}.json"))).unwrap();
        }
        // One old task, and names long enough that a batch of 1000 would not fit the budget.
        f.pending("old.json", t(1));
        let long = format!("{}.json", "l".repeat(250));
        f.pending(&long, t(2));
        let created = start.elapsed();
        let (peak0, rss0) = vm_kib();
        let start = std::time::Instant::now();
        let scan = scan_pending(&f.paths, SystemTime::now(), 1000).unwrap();
        let took = start.elapsed();
        let (peak1, rss1) = vm_kib();
        eprintln!(
            "pending/ of {} entries: created in {created:?}, scanned in {took:?}; \
             VmRSS {rss0} -> {rss1} KiB, VmHWM {peak0} -> {peak1} KiB",
            n + 2
        );
        assert_eq!(scan.eligible, n + 2);
        assert_eq!(scan.oldest[..2], [String::from("old.json"), long.clone()]);
        assert!(scan.oldest.len() <= 1000);
        let bytes: usize = scan.oldest.iter().map(|n| json_len(n)).sum();
        assert!(bytes <= MAX_BATCH_NAME_BYTES, "{bytes}");
        let failover = crate::recover::failover::scan(&f.paths, 100).unwrap();
        assert_eq!((failover.eligible, failover.oldest.len()), (n + 1, 100));
        assert_eq!(failover.oldest[0], "old.json");
        // The same directory as active/: the crash counts keep the first names only.
        fs::rename(&pending, f.p("tasks/marie/active")).unwrap();
        let active = crate::recover::poison::active_tasks(&f.paths).unwrap();
        assert_eq!(active.len(), crate::recover::poison::MAX_COUNTED);
        assert_eq!(active[0], long);
    }

    // ---------------------------------------------------------------- release

    #[test]
    fn release_moves_each_task_once_and_a_retry_finds_them_gone() {
        let f = fixture();
        for n in ["a.json", "b.json", "c.json", "d.json"] {
            f.pending(n, t(1));
        }
        let batch = strings(&["a.json", "b.json", "c.json"]);
        // A crash after the first rename of the batch: a.json already moved.
        let first = release(&f.paths, &batch[..1]).unwrap();
        assert_eq!(first.moved, strings(&["a.json"]));
        assert!(f.p("tasks/marie/staged").is_dir(), "staged/ is created");

        let second = release(&f.paths, &batch).unwrap();
        assert_eq!(second.moved, strings(&["b.json", "c.json"]));
        assert_eq!(second.gone, strings(&["a.json"]));
        assert!(second.collided.is_empty() && second.not_regular.is_empty());

        let third = release(&f.paths, &batch).unwrap();
        assert_eq!(
            third,
            Release {
                gone: batch.clone(),
                ..Release::default()
            }
        );
        assert_eq!(f.names("tasks/marie/pending"), strings(&["d.json"]));
        assert_eq!(f.names("tasks/marie/staged"), batch);
        assert_eq!(f.text("tasks/marie/staged/b.json"), r#"{"id":"b.json"}"#);

        // Duplicates are handled once; an empty batch touches nothing.
        let dup = release(&f.paths, &strings(&["d.json", "d.json"])).unwrap();
        assert_eq!((dup.moved, dup.gone), (strings(&["d.json"]), vec![]));
        assert_eq!(release(&f.paths, &[]).unwrap(), Release::default());
    }

    #[test]
    fn release_never_overwrites_a_staged_file() {
        let f = fixture();
        f.pending("x.json", t(1));
        f.pending("y.json", t(1));
        f.put("tasks/marie/staged/x.json", b"older, unclaimed");
        let r = release(&f.paths, &strings(&["x.json", "y.json"])).unwrap();
        assert_eq!(r.collided, strings(&["x.json"]));
        assert_eq!(r.moved, strings(&["y.json"]));
        assert_eq!(f.text("tasks/marie/pending/x.json"), r#"{"id":"x.json"}"#);
        assert_eq!(f.text("tasks/marie/staged/x.json"), "older, unclaimed");
        // The staged copy is claimed by the worker: a retry moves it now, once.
        fs::remove_file(f.p("tasks/marie/staged/x.json")).unwrap();
        let r = release(&f.paths, &strings(&["x.json", "y.json"])).unwrap();
        assert_eq!(
            (r.moved, r.gone),
            (strings(&["x.json"]), strings(&["y.json"]))
        );
    }

    #[test]
    fn release_leaves_what_is_not_a_regular_file() {
        let f = fixture();
        fs::write(f.base.join("outside/secret.json"), b"secret").unwrap();
        symlink(
            f.base.join("outside/secret.json"),
            f.p("tasks/marie/pending/l.json"),
        )
        .unwrap();
        mkfifo(&f.p("tasks/marie/pending/p.json"));
        let r = release(&f.paths, &strings(&["l.json", "p.json"])).unwrap();
        assert_eq!(r.not_regular, strings(&["l.json", "p.json"]));
        assert!(r.moved.is_empty());
        assert_eq!(
            f.names("tasks/marie/pending"),
            strings(&["l.json", "p.json"])
        );
        assert!(f.names("tasks/marie/staged").is_empty());
    }

    #[test]
    fn release_refuses_invalid_names_before_moving_anything() {
        let f = fixture();
        f.pending("ok.json", t(1));
        f.put("tasks/marie/x.json", b"{}");
        let long = "a".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "../x.json",
            "a/b.json",
            "/abs.json",
            "nul\0.json",
            &long,
        ] {
            let names = strings(&["ok.json", bad]);
            let err = release(&f.paths, &names).unwrap_err();
            assert!(
                matches!(&err, BatchError::InvalidName(n) if n == bad),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains("single file name"), "{err}");
            assert!(matches!(
                present_in_failed(&f.paths, &names),
                Err(BatchError::InvalidName(_))
            ));
        }
        assert_eq!(f.names("tasks/marie/pending"), strings(&["ok.json"]));
        assert!(f.exists("tasks/marie/x.json"));
        assert!(!f.exists("tasks/marie/staged"));
    }

    #[test]
    fn release_refuses_symlinked_directories_with_nothing_moved() {
        for link in ["tasks/marie", "tasks/marie/pending", "tasks/marie/staged"] {
            let f = fixture();
            f.pending("a.json", t(1));
            let outside = f.base.join("outside/dir");
            fs::create_dir_all(outside.join("pending")).unwrap();
            fs::write(outside.join("pending/a.json"), b"outside").unwrap();
            fs::write(outside.join("a.json"), b"outside").unwrap();
            let p = f.p(link);
            if p.is_dir() {
                fs::remove_dir_all(&p).unwrap();
            }
            symlink(&outside, &p).unwrap();
            let before = snapshot(&f.base);
            let err = release(&f.paths, &strings(&["a.json"])).unwrap_err();
            assert!(
                matches!(&err, BatchError::Fs(FsError::Symlink { path, .. }) if path == &p),
                "{link}: {err}"
            );
            assert!(err.to_string().contains("refused, not followed"), "{err}");
            assert_eq!(snapshot(&f.base), before, "{link}");
        }
        // A tasks dir outside the trusted root is refused too.
        let mut f = fixture();
        f.paths.tasks_dir = f.base.join("outside");
        assert!(matches!(
            release(&f.paths, &strings(&["a.json"])),
            Err(BatchError::Fs(FsError::Outside { .. }))
        ));
    }

    #[test]
    fn release_without_pending_reports_all_gone_and_creates_nothing() {
        let f = fixture();
        fs::remove_dir(f.p("tasks/marie/pending")).unwrap();
        let r = release(&f.paths, &strings(&["a.json"])).unwrap();
        assert_eq!(r.gone, strings(&["a.json"]));
        assert!(!f.exists("tasks/marie/staged"));
        fs::remove_dir_all(f.p("tasks")).unwrap();
        let r = release(&f.paths, &strings(&["a.json"])).unwrap();
        assert_eq!(r.gone, strings(&["a.json"]));
        assert!(!f.exists("tasks"));
    }

    // ---------------------------------------------------------------- present_in_failed

    #[test]
    fn present_in_failed_by_lstat() {
        let f = fixture();
        let names = strings(&["a.json", "b.json", "c.json", "a.json"]);
        assert!(present_in_failed(&f.paths, &names).unwrap().is_empty());
        f.put("tasks/marie/failed/a.json", b"{}");
        f.put("tasks/marie/failed/a.json.reason", b"{}");
        // A dangling symlink is present (not followed).
        symlink("/nonexistent", f.p("tasks/marie/failed/c.json")).unwrap();
        assert_eq!(
            present_in_failed(&f.paths, &names).unwrap(),
            strings(&["a.json", "c.json"])
        );
        // A symlinked failed/ is refused.
        fs::remove_dir_all(f.p("tasks/marie/failed")).unwrap();
        symlink(f.base.join("outside"), f.p("tasks/marie/failed")).unwrap();
        assert!(matches!(
            present_in_failed(&f.paths, &names),
            Err(BatchError::Fs(FsError::Symlink { .. }))
        ));
    }

    // ---------------------------------------------------------------- set_worker_status

    const STATE: &str = "workers/marie/state.json";

    #[test]
    fn status_is_set_keeping_every_other_field_byte_for_byte() {
        let f = fixture();
        f.put(
            STATE,
            br#"{"status":"running","recovery_count":4,"custom":{"k":[1, 2]},"x":1.50,"caf\u00e9":"\ud83d\ude00","big":1e400,"last_crash":1795823941.5}"#,
        );
        fs::set_permissions(f.p(STATE), fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            set_worker_status(&f.paths, "recovering").unwrap(),
            StateWrite::Written
        );
        assert_eq!(
            f.text(STATE),
            r#"{"status":"recovering","recovery_count":4,"custom":{"k":[1, 2]},"x":1.50,"caf\u00e9":"\ud83d\ude00","big":1e400,"last_crash":1795823941.5}"#
        );
        let md = fs::metadata(f.p(STATE)).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(
            f.names("workers/marie"),
            strings(&["state.json"]),
            "no temp left"
        );

        // The same status again writes nothing.
        let before = snapshot(&f.root);
        assert_eq!(
            set_worker_status(&f.paths, "recovering").unwrap(),
            StateWrite::Unchanged
        );
        assert_eq!(snapshot(&f.root), before);

        // A state without a status gets one appended; duplicates of it collapse to one.
        f.put(STATE, br#"{"a":1,"status":"x","b":2,"status":"y"}"#);
        set_worker_status(&f.paths, "running").unwrap();
        assert_eq!(f.text(STATE), r#"{"a":1,"status":"running","b":2}"#);
        f.put(STATE, br#"{"a" : [1,2] }"#);
        set_worker_status(&f.paths, "running").unwrap();
        assert_eq!(f.text(STATE), r#"{"a":[1,2],"status":"running"}"#);
    }

    #[test]
    fn a_missing_state_is_created_and_a_missing_directory_is_not() {
        let f = fixture();
        assert_eq!(
            set_worker_status(&f.paths, "recovering").unwrap(),
            StateWrite::Written
        );
        assert_eq!(f.text(STATE), r#"{"status":"recovering"}"#);
        assert_eq!(fs::metadata(f.p(STATE)).unwrap().mode() & 0o777, 0o644);
        fs::remove_dir_all(f.p("workers")).unwrap();
        assert_eq!(
            set_worker_status(&f.paths, "running").unwrap(),
            StateWrite::NoDirectory
        );
        assert!(!f.exists("workers"));
    }

    #[test]
    fn a_corrupt_or_odd_state_is_left_alone() {
        let big = vec![b' '; MAX_STATE_BYTES as usize + 1];
        let cases: [(&[u8], &str); 5] = [
            (b"{broken", "not valid JSON"),
            (b"[1]", "top level is an array, not an object"),
            (b"", "empty file"),
            (b"\xff{}", "not UTF-8"),
            (&big, "too large"),
        ];
        for (bytes, why) in cases {
            let f = fixture();
            f.put(STATE, bytes);
            let before = snapshot(&f.root);
            match set_worker_status(&f.paths, "running").unwrap() {
                StateWrite::LeftAlone(reason) => {
                    assert!(reason.contains(why), "{reason}");
                    assert!(reason.contains("state.json"), "{reason}");
                }
                other => panic!("{why}: {other:?}"),
            }
            assert_eq!(snapshot(&f.root), before, "{why}");
        }
        // A symlinked state file is not followed; a symlinked directory is refused.
        let f = fixture();
        let target = f.base.join("outside/state.json");
        fs::write(&target, br#"{"status":"x"}"#).unwrap();
        symlink(&target, f.p(STATE)).unwrap();
        assert!(matches!(
            set_worker_status(&f.paths, "running").unwrap(),
            StateWrite::LeftAlone(r) if r.contains("a symlink")
        ));
        assert_eq!(fs::read(&target).unwrap(), br#"{"status":"x"}"#);
        let g = fixture();
        fs::remove_dir_all(g.p("workers/marie")).unwrap();
        symlink(g.base.join("outside"), g.p("workers/marie")).unwrap();
        assert!(matches!(
            set_worker_status(&g.paths, "running"),
            Err(BatchError::Fs(FsError::Symlink { .. }))
        ));
        assert!(!g.base.join("outside/state.json").exists());
    }
}
