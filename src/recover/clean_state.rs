//! The runbook's `clean_recovery`, done once per recovery run and safe against a crash
//! (SIGKILL, power loss) at any instant.
//!
//! What it does, in the runbook's order: every entry of `<tasks>/active/` is requeued to
//! `pending/` with `retry_count + 1`, dead-lettered to `failed/` once it reached `maxRetries`,
//! or quarantined to `quarantine/` when it is not a task file at all; stale lock files of this
//! worker are removed (`<worker>_<task>.lock` where `<task>` is one of its tasks: a
//! `<task>.json` in one of its task directories, or the `"id"` of a task it had in active/,
//! so that worker `marie` never takes `marie_x`'s locks); `state.json` is marked `recovering` with `recovery_count + 1`; the
//! worker's tmp dir is emptied.
//!
//! # Confinement
//!
//! Every directory is reached from `trusted_root` one component at a time with
//! `open_dir_nofollow`, after an `lstat` that refuses a symlink. All directories are opened
//! (none created) before anything changes, so a symlinked directory refuses the whole step
//! with nothing touched. Files are named relative to a directory handle by a single component,
//! classified by `lstat` before being opened (FIFOs, sockets and devices are never opened) and
//! opened with `O_NOFOLLOW | O_NONBLOCK`, then checked again by `fstat`. Symlinks are moved or
//! unlinked as links, never followed. The primitives for all this live in
//! [`crate::confined`].
//!
//! # Exactly once under a crash at any instant
//!
//! A task moves from `active/<name>` to `pending/` or `failed/` in batches:
//!
//! 1. each new file is written to a temp `.wro-<run8>-<final>.tmp` in its target directory;
//! 2. one `syncfs` per filesystem makes every temp of the batch durable;
//! 3. the temps are renamed into place (`RENAME_NOREPLACE`), the target directories fsynced;
//! 4. the batch is appended to the run's journal `<tasks>/.wro-recovery-<run>.journal`, fsynced;
//! 5. the sources are unlinked from `active/`, which is fsynced.
//!
//! The new content is a pure function of the source bytes and the run's inputs (its time is
//! the run's recorded `failure_time`, not the clock), so it can be recomputed after a crash.
//! A crash before 3 leaves only temps, removed when the step starts again, and the untouched
//! source: the task is processed afresh. A crash between 3 and 5 leaves the source in
//! `active/` and its transform durable at the target: on resume the transform of the source
//! equals the bytes at the target, so nothing is written again, the journal gets the task
//! (again) and the source is unlinked. A crash after 5 left nothing to do for the task. The
//! source is only unlinked once its copy is durable, so no task is ever lost; a task is
//! written at most once because resume checks every candidate target for the transform
//! before choosing a free one; `retry_count` is incremented from the source, which still
//! has the old value until it is unlinked, so it goes up by exactly one per run.
//!
//! A quarantined entry is moved by `rename`, which is atomic, so it is either still in
//! `active/` (processed again on resume) or in `quarantine/`. Its reason file is placed
//! (steps 1-3) before the move; the journal records the intent (`q`) before the move and the
//! move (`Q`) after it, and on resume an intent whose entry has left `active/` for its
//! quarantine name is completed, so the count is right whichever instant the crash hit.
//!
//! `state.json` is rewritten atomically (temp, fsync, rename, directory fsync) and carries
//! `recovery_run`: a state already written by this run is left alone, so `recovery_count`
//! goes up once per run. Lock and tmp removals are idempotent.
//!
//! Each batch's lines in the journal follow a line `B`. Only the last batch can have sources
//! left in active/ by a crash (a batch's sources are unlinked, and active/ fsynced, before
//! the next batch is journaled), so a call first handles the names of the journal's last
//! batch, as one batch: those whose copy is in place are journaled again as `r` / `d`,
//! which are not counted, and unlinked; should this call crash too, that batch is the last
//! one again. Counts in the report are then the `R`, `D` and `Q` lines of the journal: a
//! task counts once whatever the crashes, and a second call after success reports the same
//! counts. The journal is read streaming, line by line, never kept in memory: memory stays
//! bounded whatever the size of active/ (a journal over `MAX_JOURNAL_BYTES`, more than any
//! run writes, fails the step unread).
//!
//! active/ is read streaming too, in batches, while its entries leave it; a reading that
//! moved something is followed by another, until one finds nothing to do.
//!
//! Assumptions: the worker is stopped during the step (the caller stops its container), and
//! one process at a time runs a given run (the journal is `flock`ed; a second caller fails).
//! A file already at a target whose bytes happen to equal this run's transform is taken as
//! this run's copy; as the transform holds this run's time, only this run writes such bytes.

use std::{
    collections::HashSet,
    ffi::{OsStr, OsString},
    io::{self, BufRead, Read, Write},
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{File, Metadata, MetadataExt, OpenOptions, OpenOptionsExt};
use indexmap::IndexMap;
use k8s_openapi::jiff::Timestamp;
use rustix::{fs::FlockOperation, io::Errno};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::confined::{
    self, dir_owner,
    json_object::{json_f64, json_string, last_value, parse_object, replace_fields, Pairs},
    lossy, open_child, open_path, open_root, read_capped,
    remove_tree::remove_tree,
    rename_noreplace, write_new, ConfinedDir, EntryKind, FsError, Owner, ReadOutcome,
};
use crate::crd::worker::ResolvedPaths;

/// Most names each list of the report holds.
pub const SAMPLE_LIMIT: usize = 50;
/// Largest task file read; a larger one is quarantined without being read.
pub const MAX_TASK_BYTES: u64 = 16 << 20;
/// Largest `state.json` read; a larger one is kept aside as corrupt.
pub const MAX_STATE_BYTES: u64 = 1 << 20;
/// Largest journal read: a run journals a line of at most a few KiB per entry of active/,
/// most of them under 100 bytes. A larger one is refused, not read.
const MAX_JOURNAL_BYTES: u64 = 256 << 20;
/// Longest journal line taken (names and reasons are at most a few KiB encoded): a longer
/// one is not ours and is skipped unread.
const MAX_JOURNAL_LINE: usize = 16 << 10;
/// Readings of active/ at most: each one after the first only finds what entries leaving the
/// directory while it was read hid, or what someone adds meanwhile (the worker is stopped).
const MAX_PASSES: usize = 16;
/// Most names of the last journaled batch kept (a batch journals at most [`BATCH_SIZE`]).
const MAX_GROUP_NAMES: usize = 4 * BATCH_SIZE;
/// Tasks made durable by one `syncfs` and journaled together.
const BATCH_SIZE: usize = 512;
/// Longest entry name handled: the longest name derived from it (the temp of a quarantine
/// reason, `.wro-<run8>-_<name>.<run8>.reason.tmp`) must fit in `NAME_MAX` (255).
const MAX_TASK_NAME: usize = 255 - 35;
/// Keys the transform replaces in a task.
const TASK_KEYS: [&str; 3] = ["retry_count", "last_failure", "failure_reason"];

/// What the step needs to know; see the field docs for each one's role.
#[derive(Clone, Debug)]
pub struct CleanStateInput {
    /// Absolute paths; every path is below `paths.trusted_root`.
    pub paths: ResolvedPaths,
    /// The recovery run's UID: identifies this run across operator restarts.
    pub run_id: String,
    /// The run's recorded time, for `last_failure` / `last_crash`; identical on every retry.
    pub failure_time: Timestamp,
    /// For example "oom", "deadlock", "worker_crash".
    pub failure_reason: String,
    /// Worker spec `maxRetries`: a task reaching it is dead-lettered.
    pub max_retries: u32,
    /// A lock older than this is stale.
    pub stale_lock_seconds: u64,
    /// The worker's container is stopped: every lock of this worker is stale.
    pub holder_gone: bool,
    /// Compute and report, change nothing (not even temp or journal files).
    pub dry_run: bool,
    /// For lock ages.
    pub now: Timestamp,
}

/// What the step did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CleanStateReport {
    pub requeued: u64,
    pub dead_lettered: u64,
    pub quarantined: u64,
    pub locks_removed: u64,
    pub tmp_entries_removed: u64,
    /// Value written (or that would be written) into state.json.
    pub recovery_count: Option<u64>,
    /// Up to [`SAMPLE_LIMIT`] names each. A task placed under another name than its own
    /// shows as `name -> placed name`.
    pub requeued_tasks: Vec<String>,
    pub dead_lettered_tasks: Vec<String>,
    /// "name: reason".
    pub quarantined_tasks: Vec<String>,
    pub removed_locks: Vec<String>,
    pub removed_tmp_entries: Vec<String>,
    /// Things left alone, with why.
    pub skipped: Vec<String>,
}

/// Why the step failed. A missing tasks or active directory is not an error.
#[derive(Debug, thiserror::Error)]
pub enum CleanStateError {
    #[error("invalid recovery run id {0:?}")]
    InvalidRunId(String),
    #[error("another clean-state of this recovery run holds {path}")]
    Busy { path: PathBuf },
    /// Not confined, a symlinked directory, a wrong kind of file, or an I/O failure.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Test hook: the step stopped where a crash was simulated.
    #[cfg(test)]
    #[error("simulated crash at {0:?}")]
    SimulatedCrash(CrashPoint),
}

type Result<T, E = CleanStateError> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> CleanStateError {
    confined::io_err(op, path, source).into()
}

/// Run the runbook's clean recovery for one worker; see the module docs. Blocking.
pub fn clean_state(input: &CleanStateInput) -> Result<CleanStateReport> {
    Engine::new(input)?.run()
}

/// Where a simulated crash stops the step (tests only).
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Temps of the first batch written, nothing renamed.
    AfterTemps,
    /// Temps renamed into place, nothing journaled, sources still in active/.
    AfterRenames,
    /// Batch journaled (and quarantine intents), sources not unlinked or moved.
    AfterJournal,
    /// Sources unlinked and quarantined entries moved, `Q` lines not journaled.
    AfterMoves,
    /// The state temp written, not renamed.
    AfterStateTemp,
    /// The state renamed into place, nothing after it done.
    AfterStateRename,
}

/// Stop here when a test asked for a crash at this point.
macro_rules! crash_point {
    ($engine:expr, $point:ident) => {
        #[cfg(test)]
        $engine.crash(CrashPoint::$point)?;
    };
}

/// What is at a candidate target, compared to what we would put there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Absent,
    /// Exactly the expected bytes: put there by an earlier attempt of this run.
    Equal,
    /// Anything else: never overwritten.
    Other,
}

fn probe(dir: Option<&ConfinedDir>, name: &OsStr, expected: &[u8]) -> Result<Probe> {
    let Some(dir) = dir else {
        return Ok(Probe::Absent);
    };
    let Some(md) = dir.lstat(name)? else {
        return Ok(Probe::Absent);
    };
    if !md.is_file() || md.len() != expected.len() as u64 {
        return Ok(Probe::Other);
    }
    Ok(match read_capped(dir, name, expected.len() as u64)? {
        ReadOutcome::Missing => Probe::Absent,
        ReadOutcome::Bytes(b, _) if b == expected => Probe::Equal,
        _ => Probe::Other,
    })
}

/// Unix seconds as a float, like Python's `time.time()`: `1795823941.5`.
fn unix_float(t: Timestamp) -> f64 {
    t.as_duration().as_secs_f64()
}

/// A requeued task's content: the same object with `retry_count` + 1, `last_failure` and
/// `failure_reason` set. Pure in (bytes, failure time, failure reason). `Err` is a reason
/// to quarantine.
fn transform_task(
    bytes: &[u8],
    failure_time: Timestamp,
    failure_reason: &str,
) -> Result<(Vec<u8>, u64), String> {
    let pairs = parse_object(bytes)?;
    let old = match last_value(&pairs, "retry_count") {
        None => 0,
        Some(raw) => serde_json::from_str::<u64>(raw.get()).map_err(|_| {
            format!(
                "retry_count is {}, not a non-negative integer",
                clip(raw.get(), 64)
            )
        })?,
    };
    let retry = old
        .checked_add(1)
        .ok_or_else(|| format!("retry_count {old} cannot be incremented"))?;
    let fields = [
        (TASK_KEYS[0], retry.to_string()),
        (TASK_KEYS[1], json_f64(unix_float(failure_time))),
        (TASK_KEYS[2], json_string(failure_reason)),
    ];
    Ok((replace_fields(&pairs, &fields), retry))
}

/// A task's `"id"` as its worker names its lock: a string as it is, a number as written.
fn task_id(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let raw = serde_json::from_slice::<Id<'_>>(bytes).ok()?.id?;
    match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(_) => Some(raw.get().to_string()),
        _ => None,
    }
}

/// At most `max` characters of `s`, marked when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A journal field: printable text kept, `%`, space, controls and invalid UTF-8 as `%XX`.
fn enc(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            if ch == '%' || ch == ' ' || ch.is_control() {
                let mut buf = [0; 4];
                for b in ch.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            } else {
                out.push(ch);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn dec(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn dec_lossy(s: &str) -> String {
    String::from_utf8_lossy(&dec(s)).into_owned()
}

/// One journal line: `<kind> <name> <target>[ <reason>]`, fields encoded with [`enc`].
/// Kinds: `R` requeued, `D` dead-lettered, `q` about to be quarantined, `Q` quarantined;
/// `r`, `d`: a task of the last batch journaled again after a crash, counted once (by its
/// `R` or `D`). A line `B` starts each batch's lines.
#[derive(Clone, Debug, PartialEq, Eq)]
struct JLine {
    kind: u8,
    name: String,
    target: String,
    reason: String,
}

impl JLine {
    fn new(kind: u8, name: &OsStr, target: &OsStr, reason: &str) -> Self {
        Self {
            kind,
            name: enc(name.as_bytes()),
            target: enc(target.as_bytes()),
            reason: enc(reason.as_bytes()),
        }
    }

    fn render(&self) -> String {
        let mut s = format!("{} {} {}", self.kind as char, self.name, self.target);
        if !self.reason.is_empty() {
            s.push(' ');
            s.push_str(&self.reason);
        }
        s.push('\n');
        s
    }

    fn parse(line: &str) -> Option<Self> {
        let mut f = line.splitn(4, ' ');
        let kind = f.next()?.as_bytes();
        let (name, target) = (f.next()?, f.next()?);
        let reason = f.next().unwrap_or("");
        match kind {
            [k @ (b'R' | b'D' | b'r' | b'd' | b'q' | b'Q')]
                if !name.is_empty() && !target.is_empty() =>
            {
                Some(Self {
                    kind: *k,
                    name: name.into(),
                    target: target.into(),
                    reason: reason.into(),
                })
            }
            _ => None,
        }
    }

    /// How the line shows in the report's samples.
    fn sample(&self) -> String {
        let name = dec_lossy(&self.name);
        let moved = if self.target == self.name {
            String::new()
        } else {
            dec_lossy(&self.target)
        };
        match (self.kind, moved.is_empty()) {
            (b'Q', true) => format!("{name}: {}", dec_lossy(&self.reason)),
            (b'Q', false) => format!("{name}: {} (as {moved})", dec_lossy(&self.reason)),
            (_, true) => name,
            (_, false) => format!("{name} -> {moved}"),
        }
    }
}

/// What the journal's lines add up to, folded line by line as they are read or appended:
/// never the lines themselves, so memory stays bounded whatever the journal's length.
#[derive(Default)]
struct Tally {
    /// `R`, `D`, `Q` lines: requeued, dead-lettered, quarantined.
    counts: [u64; 3],
    /// The first [`SAMPLE_LIMIT`] of each, as the report shows them.
    samples: [Vec<String>; 3],
    /// Names journaled (`R`, `D`, `r`, `d`) since the last batch marker: the only batch whose
    /// sources may still be in active/ after a crash. At most [`MAX_GROUP_NAMES`], the latest.
    group: Group,
    /// Quarantine intents (`q`) of that batch not followed by their move (`Q`).
    open_intents: IndexMap<String, JLine>,
}

/// The names of the last journaled batch, bounded: a journal this step did not write (or one
/// from before batch markers) keeps only its latest names.
#[derive(Default)]
struct Group {
    order: std::collections::VecDeque<String>,
    names: HashSet<String>,
}

impl Group {
    fn clear(&mut self) {
        self.order.clear();
        self.names.clear();
    }

    fn insert(&mut self, name: &str) {
        if self.names.insert(name.to_string()) {
            self.order.push_back(name.to_string());
            if self.order.len() > MAX_GROUP_NAMES {
                let old = self.order.pop_front().expect("not empty");
                self.names.remove(&old);
            }
        }
    }
}

impl Tally {
    fn add(&mut self, entry: JEntry) {
        let line = match entry {
            JEntry::BatchStart => {
                self.group.clear();
                self.open_intents.clear();
                return;
            }
            JEntry::Line(line) => line,
        };
        match line.kind {
            b'R' | b'D' | b'Q' => {
                let i = match line.kind {
                    b'R' => 0,
                    b'D' => 1,
                    _ => 2,
                };
                self.counts[i] += 1;
                if self.samples[i].len() < SAMPLE_LIMIT {
                    self.samples[i].push(line.sample());
                }
            }
            _ => {}
        }
        match line.kind {
            b'R' | b'D' | b'r' | b'd' => self.group.insert(&line.name),
            b'q' if self.open_intents.len() < MAX_GROUP_NAMES => {
                self.open_intents.insert(line.name.clone(), line);
            }
            b'Q' => {
                self.open_intents.shift_remove(&line.name);
            }
            _ => {}
        }
    }
}

/// One journal line as read.
enum JEntry {
    /// `B`: the lines of a new batch follow.
    BatchStart,
    Line(JLine),
}

impl JEntry {
    fn parse(line: &[u8]) -> Option<Self> {
        // Fields are written encoded (printable UTF-8); anything else is not our line.
        let text = std::str::from_utf8(line).ok()?;
        if text == "B" {
            return Some(Self::BatchStart);
        }
        JLine::parse(text).map(Self::Line)
    }
}

/// Call `f` with each complete line of `reader` (without its `\n`); a line longer than
/// `max_line` is skipped, never buffered whole. Returns the bytes up to the end of the last
/// complete line, and the length of a torn last line without its `\n` (0 when none).
fn for_each_line(
    mut reader: impl BufRead,
    max_line: usize,
    mut f: impl FnMut(&[u8]),
) -> io::Result<(u64, u64)> {
    // Bytes through the last `\n`; bytes of the current line so far; that line while short.
    let (mut whole, mut pending) = (0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        let avail = reader.fill_buf()?;
        if avail.is_empty() {
            return Ok((whole, pending));
        }
        let newline = avail.iter().position(|&b| b == b'\n');
        let take = newline.unwrap_or(avail.len());
        pending += take as u64;
        if pending <= max_line as u64 {
            buf.extend_from_slice(&avail[..take]);
        }
        reader.consume(take + usize::from(newline.is_some()));
        if newline.is_some() {
            if pending <= max_line as u64 {
                f(&buf);
            }
            whole += pending + 1;
            pending = 0;
            buf.clear();
        }
    }
}

/// The run's append-only journal. In a dry run it is read (if it exists) but never written:
/// appended lines are only tallied, so the report counts what a real run would journal.
struct Journal {
    file: Option<File>,
    path: PathBuf,
    tally: Tally,
    /// The last batch journaled before this call: its tasks may still be in active/ (a crash
    /// before their unlink), and are handled first, as that batch again (`r`, `d`).
    resumed: Group,
}

impl Journal {
    fn empty(path: PathBuf) -> Self {
        Self {
            file: None,
            path,
            tally: Tally::default(),
            resumed: Group::default(),
        }
    }

    /// Whether `name` was journaled in the batch a crash interrupted: a copy of it in place
    /// is that batch's, already counted.
    fn journaled_before(&self, name: &OsStr) -> bool {
        self.resumed.names.contains(&enc(name.as_bytes()))
    }

    fn open(tasks: &ConfinedDir, token: &str, dry_run: bool) -> Result<Self> {
        let name = OsString::from(format!(".wro-recovery-{token}.journal"));
        let path = tasks.path.join(&name);
        let existing = tasks.lstat(&name)?;
        if let Some(md) = &existing {
            if !md.is_file() {
                return Err(FsError::WrongKind {
                    path,
                    kind: EntryKind::of(md),
                    expected: EntryKind::File,
                }
                .into());
            }
        }
        let mut opts = OpenOptions::new();
        opts.read(true)
            .follow(FollowSymlinks::No)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        if !dry_run {
            opts.append(true).create(true).mode(0o600);
        } else if existing.is_none() {
            return Ok(Self::empty(path));
        }
        let file = match tasks.dir.open_with(&name, &opts) {
            Ok(f) => f,
            // A dry run found it gone since the lstat: nothing journaled.
            Err(e) if dry_run && e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self::empty(path));
            }
            Err(e) => return Err(io_err("open journal", &path, e)),
        };
        let md = file
            .metadata()
            .map_err(|e| io_err("inspect journal", &path, e))?;
        if !md.is_file() {
            return Err(FsError::WrongKind {
                path,
                kind: EntryKind::of(&md),
                expected: EntryKind::File,
            }
            .into());
        }
        if !dry_run {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => return Err(CleanStateError::Busy { path }),
                Err(e) => return Err(io_err("lock journal", &path, e.into())),
            }
            if existing.is_none() {
                // The journal's own entry must survive a crash before anything relies on it.
                tasks.fsync()?;
            }
        }
        let mut journal = Self {
            file: Some(file),
            ..Self::empty(path)
        };
        journal.read(md.len(), !dry_run)?;
        journal.resumed = std::mem::take(&mut journal.tally.group);
        if dry_run {
            // Read, never written: the handle is not kept.
            journal.file = None;
        }
        Ok(journal)
    }

    /// Fold the journal's lines into the tally, streaming, refusing one larger than a run
    /// writes (its size is checked first, its growth while read is noticed).
    fn read(&mut self, size: u64, truncate_torn: bool) -> Result<()> {
        let too_large = |n: u64| {
            io_err(
                "read journal",
                &self.path,
                io::Error::other(format!(
                    "{n} bytes, more than the {MAX_JOURNAL_BYTES} bytes a run journals; \
                     refused rather than read (move it aside to redo the step afresh)"
                )),
            )
        };
        if size > MAX_JOURNAL_BYTES {
            return Err(too_large(size));
        }
        let file = self.file.as_ref().expect("opened");
        let reader = io::BufReader::with_capacity(64 << 10, file.take(MAX_JOURNAL_BYTES + 1));
        let tally = &mut self.tally;
        let (whole, torn) = for_each_line(reader, MAX_JOURNAL_LINE, |line| {
            if let Some(entry) = JEntry::parse(line) {
                tally.add(entry);
            }
        })
        .map_err(|e| io_err("read journal", &self.path, e))?;
        if whole + torn > MAX_JOURNAL_BYTES {
            return Err(too_large(whole + torn));
        }
        // A line torn by a crash in the middle of an append is dropped (never completed: the
        // batch it belonged to was not journaled, and is redone). Only a real run truncates.
        if torn > 0 && truncate_torn {
            file.set_len(whole)
                .map_err(|e| io_err("truncate journal", &self.path, e))?;
        }
        Ok(())
    }

    /// Append `entries` and make them durable before returning.
    fn append(&mut self, entries: Vec<JEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if let Some(file) = &mut self.file {
            let text: String = entries
                .iter()
                .map(|e| match e {
                    JEntry::BatchStart => "B\n".to_string(),
                    JEntry::Line(l) => l.render(),
                })
                .collect();
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(|e| io_err("append to journal", &self.path, e))?;
        }
        for e in entries {
            self.tally.add(e);
        }
        Ok(())
    }
}

/// Where a task goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Target {
    Pending,
    Failed,
    Quarantine,
}

/// A temp written in its target directory, to be renamed to `name`.
struct Staged {
    target: Target,
    temp: OsString,
    name: OsString,
}

/// A task requeued or dead-lettered in the current batch.
struct Placed {
    kind: u8,
    name: OsString,
    target: OsString,
    /// Its copy was in place already (an earlier attempt of this run).
    in_place: bool,
}

/// An entry quarantined in the current batch.
struct Moved {
    name: OsString,
    qname: OsString,
    reason: String,
}

/// The current batch's work.
#[derive(Default)]
struct Batch {
    staged: Vec<Staged>,
    placed: Vec<Placed>,
    moved: Vec<Moved>,
}

impl Batch {
    /// The journal lines of the batch, after its marker: its placed tasks, and its
    /// quarantine moves marked `moved_kind` (`q` for an intent, `Q` for a move done).
    fn journal_lines(&self, moved_kind: u8) -> Vec<JEntry> {
        if self.placed.is_empty() && self.moved.is_empty() {
            return Vec::new();
        }
        let placed = self
            .placed
            .iter()
            .map(|p| JLine::new(p.kind, &p.name, &p.target, ""));
        let moved = self
            .moved
            .iter()
            .map(|m| JLine::new(moved_kind, &m.name, &m.qname, &m.reason));
        std::iter::once(JEntry::BatchStart)
            .chain(placed.chain(moved).map(JEntry::Line))
            .collect()
    }
}

/// The task directories; the target ones may be missing in a dry run.
struct TaskDirs {
    tasks: ConfinedDir,
    active: Option<ConfinedDir>,
    pending: Option<ConfinedDir>,
    failed: Option<ConfinedDir>,
    quarantine: Option<ConfinedDir>,
}

impl TaskDirs {
    fn open(tasks: ConfinedDir) -> Result<Self> {
        Ok(Self {
            active: open_child(&tasks, OsStr::new("active"), false)?,
            pending: open_child(&tasks, OsStr::new("pending"), false)?,
            failed: open_child(&tasks, OsStr::new("failed"), false)?,
            quarantine: open_child(&tasks, OsStr::new("quarantine"), false)?,
            tasks,
        })
    }

    fn create_missing(&mut self) -> Result<()> {
        for (slot, name) in [
            (&mut self.pending, "pending"),
            (&mut self.failed, "failed"),
            (&mut self.quarantine, "quarantine"),
        ] {
            if slot.is_none() {
                *slot = open_child(&self.tasks, OsStr::new(name), true)?;
            }
        }
        Ok(())
    }

    fn target(&self, t: Target) -> Option<&ConfinedDir> {
        match t {
            Target::Pending => self.pending.as_ref(),
            Target::Failed => self.failed.as_ref(),
            Target::Quarantine => self.quarantine.as_ref(),
        }
    }

    /// A target directory that must exist (outside a dry run they all do).
    fn target_dir(&self, t: Target) -> Result<&ConfinedDir> {
        self.target(t).ok_or_else(|| {
            io_err(
                "open directory",
                self.tasks.path.join(format!("{t:?}").to_lowercase()),
                io::ErrorKind::NotFound.into(),
            )
        })
    }
}

/// How an entry of active/ is to be handled.
enum Verdict {
    Task {
        /// Its `"id"`: the worker names its lock by it.
        id: Option<String>,
        bytes: Vec<u8>,
        retry: u64,
        owner: Owner,
    },
    Quarantine(String),
    Vanished,
}

#[derive(Serialize)]
struct DeadLetterReason<'a> {
    reason: &'static str,
    task: &'a str,
    retry_count: u64,
    max_retries: u32,
    failure_reason: &'a str,
    run_id: &'a str,
    time: f64,
}

#[derive(Serialize)]
struct QuarantineReason<'a> {
    reason: &'a str,
    task: &'a str,
    run_id: &'a str,
    time: f64,
}

/// A set of names kept as keyed 64-bit hashes: 8 bytes a name whatever its length, and a
/// worker cannot craft collisions (the key is random per call).
#[derive(Default)]
struct Hashes {
    hasher: std::hash::RandomState,
    set: HashSet<u64>,
}

impl Hashes {
    fn key(&self, value: impl std::hash::Hash) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(value)
    }

    fn contains(&self, value: impl std::hash::Hash) -> bool {
        self.set.contains(&self.key(value))
    }

    fn insert(&mut self, value: impl std::hash::Hash) {
        let key = self.key(value);
        self.set.insert(key);
    }
}

/// Names given to files in this call, per target.
#[derive(Default)]
struct Reserved(Hashes);

impl Reserved {
    fn contains(&self, target: Target, name: &OsStr) -> bool {
        self.0.contains((target, name.as_bytes()))
    }

    fn insert(&mut self, target: Target, name: &OsStr) {
        self.0.insert((target, name.as_bytes()));
    }

    fn clear(&mut self) {
        self.0.set.clear();
    }
}

struct Engine<'a> {
    input: &'a CleanStateInput,
    /// The run id made safe for file names.
    token: String,
    /// Its first 8 characters, in temp and conflict names.
    run8: String,
    report: CleanStateReport,
    skipped_dropped: usize,
    /// While active/ is read: what the current pass left there. Only the last pass's are
    /// reported (each pass meets again what the previous one left).
    pass_skips: Option<(Vec<String>, usize)>,
    /// Names given to files in this call, per target: not yet on disk in a dry run (or before
    /// the batch's renames), and never to be given twice. A real run clears it after each
    /// batch's renames: the disk tells then.
    reserved: Reserved,
    /// The `"id"`s of the tasks found in active/: their locks are this worker's.
    active_ids: Hashes,
    batch_size: usize,
    #[cfg(test)]
    crash_at: Option<CrashPoint>,
}

/// The run id as a file-name token: kept when it is made of `[A-Za-z0-9._-]` (a UID is),
/// otherwise cleaned and suffixed with a hash of the original so two ids never share one.
fn run_token(run_id: &str) -> Result<String> {
    if run_id.is_empty() || run_id.len() > 1024 || run_id.contains(['\0', '\n']) {
        return Err(CleanStateError::InvalidRunId(run_id.to_string()));
    }
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if run_id.len() <= 100 && run_id.chars().all(safe) && !run_id.starts_with('.') {
        return Ok(run_id.to_string());
    }
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = run_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let cleaned: String = run_id
        .chars()
        .take(64)
        .map(|c| if safe(c) && c != '.' { c } else { '_' })
        .collect();
    Ok(format!("{cleaned}-{hash:016x}"))
}

impl<'a> Engine<'a> {
    fn new(input: &'a CleanStateInput) -> Result<Self> {
        let token = run_token(&input.run_id)?;
        let run8 = token.chars().take(8).collect();
        Ok(Self {
            input,
            token,
            run8,
            report: CleanStateReport::default(),
            skipped_dropped: 0,
            pass_skips: None,
            reserved: Reserved::default(),
            active_ids: Hashes::default(),
            batch_size: BATCH_SIZE,
            #[cfg(test)]
            crash_at: None,
        })
    }

    #[cfg(test)]
    fn crash(&self, at: CrashPoint) -> Result<()> {
        if self.crash_at == Some(at) {
            return Err(CleanStateError::SimulatedCrash(at));
        }
        Ok(())
    }

    fn dry(&self) -> bool {
        self.input.dry_run
    }

    fn time(&self) -> f64 {
        unix_float(self.input.failure_time)
    }

    /// A path as the report shows it: relative to the shared root when below it.
    fn shown(&self, path: &Path) -> String {
        let p = &self.input.paths;
        path.strip_prefix(&p.shared_root)
            .or_else(|_| path.strip_prefix(&p.trusted_root))
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn skip(&mut self, what: String) {
        let (list, dropped) = match &mut self.pass_skips {
            Some((list, dropped)) => (list, dropped),
            None => (&mut self.report.skipped, &mut self.skipped_dropped),
        };
        if list.len() < SAMPLE_LIMIT {
            list.push(what);
        } else {
            *dropped += 1;
        }
    }

    fn run(mut self) -> Result<CleanStateReport> {
        let input = self.input;
        let p = &input.paths;
        let root = open_root(&p.trusted_root)?;
        // Open every directory before changing anything: a symlink or a file where one of
        // them should be refuses the whole step with nothing touched.
        let mut tasks = match open_path(&root, &p.tasks_dir, false)? {
            Some(t) => Some(TaskDirs::open(t)?),
            None => None,
        };
        let locks = open_path(&root, &p.locks_dir, false)?;
        let state_parent_path = p.state_file.parent().unwrap_or(&p.trusted_root);
        let state_leaf = p
            .state_file
            .file_name()
            .filter(|_| p.state_file.starts_with(&p.trusted_root))
            .ok_or_else(|| FsError::Outside {
                path: p.state_file.clone(),
                root: p.trusted_root.clone(),
            })?
            .to_os_string();
        let mut state_parent = open_path(&root, state_parent_path, false)?;
        let tmp_overlap = self.tmp_overlap();
        let mut tmp = match tmp_overlap {
            None => open_path(&root, &p.tmp_dir, false)?,
            Some(_) => None,
        };
        if !self.dry() {
            if let Some(t) = &mut tasks {
                t.create_missing()?;
            }
            state_parent = open_path(&root, state_parent_path, true)?;
            if tmp_overlap.is_none() {
                tmp = open_path(&root, &p.tmp_dir, true)?;
            }
        }
        // Held (and flock'ed) until the end: one caller per run at a time.
        let mut journal = match &tasks {
            Some(t) => Some(Journal::open(&t.tasks, &self.token, self.dry())?),
            None => None,
        };
        if let (Some(t), Some(j)) = (&tasks, &mut journal) {
            self.tasks(t, j)?;
            self.count_from_journal(j);
        }
        self.locks(locks.as_ref(), tasks.as_ref())?;
        self.state(state_parent.as_ref(), &state_leaf)?;
        match tmp_overlap {
            Some(why) => self.skip(why),
            None => self.tmp(tmp.as_ref())?,
        }
        if self.skipped_dropped > 0 {
            self.report.skipped.pop();
            self.report
                .skipped
                .push(format!("... and {} more", self.skipped_dropped + 1));
        }
        Ok(self.report)
    }

    // ---------------------------------------------------------------- tasks

    fn tasks(&mut self, dirs: &TaskDirs, journal: &mut Journal) -> Result<()> {
        if !self.dry() {
            for t in [Target::Pending, Target::Failed, Target::Quarantine] {
                self.remove_leftover_temps(dirs.target_dir(t)?)?;
            }
        }
        self.finish_quarantine_intents(dirs, journal)?;
        let Some(active) = &dirs.active else {
            return Ok(());
        };
        // The batch a crash interrupted comes first (see `Journal::resumed`).
        let carried: Vec<OsString> = journal
            .resumed
            .order
            .iter()
            .map(|n| OsString::from_vec(dec(n)))
            .collect();
        self.pass_skips = Some(Default::default());
        for chunk in carried.chunks(self.batch_size) {
            self.batch(dirs, active, journal, chunk)?;
        }
        let carried: HashSet<OsString> = carried.into_iter().collect();
        // Entries leave the directory while it is read; a pass that moved something is
        // followed by another, until one finds nothing to do (a dry run moves nothing).
        for _ in 0..MAX_PASSES {
            self.pass_skips = Some(Default::default());
            if self.pass(dirs, active, journal, &carried)? == 0 || self.dry() {
                break;
            }
        }
        let (skips, dropped) = self.pass_skips.take().unwrap_or_default();
        for what in skips {
            self.skip(what);
        }
        self.skipped_dropped += dropped;
        Ok(())
    }

    /// One reading of active/, streamed in batches: memory does not grow with its size.
    /// Returns how many entries were moved (or, in a dry run, would be).
    fn pass(
        &mut self,
        dirs: &TaskDirs,
        active: &ConfinedDir,
        journal: &mut Journal,
        carried: &HashSet<OsString>,
    ) -> Result<usize> {
        let mut moved = 0;
        let mut names = active.stream_names()?;
        loop {
            let mut chunk = Vec::with_capacity(self.batch_size.min(BATCH_SIZE));
            for name in names.by_ref() {
                let name = name?;
                if !carried.contains(&name) {
                    chunk.push(name);
                    if chunk.len() >= self.batch_size {
                        break;
                    }
                }
            }
            if chunk.is_empty() {
                return Ok(moved);
            }
            moved += self.batch(dirs, active, journal, &chunk)?;
        }
    }

    /// Remove this run's temps left by a crash (`.wro-<run8>-*.tmp`): never the only copy of
    /// anything, as a source leaves active/ only after its renamed copy is durable.
    fn remove_leftover_temps(&mut self, dir: &ConfinedDir) -> Result<()> {
        let prefix = format!(".wro-{}-", self.run8);
        for name in dir.stream_names()? {
            let name = name?;
            let b = name.as_bytes();
            if !(b.starts_with(prefix.as_bytes()) && b.ends_with(b".tmp")) {
                continue;
            }
            match dir.lstat(&name)? {
                Some(md) if md.is_file() => dir.remove_file(&name)?,
                Some(md) => {
                    let what = format!(
                        "{}: a {} named like a temp of this run; left alone",
                        self.shown(&dir.path.join(&name)),
                        EntryKind::of(&md)
                    );
                    self.skip(what);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Complete the quarantine moves a crash interrupted after the move itself: the entry
    /// left active/ for its quarantine name, but the `Q` line was not journaled.
    fn finish_quarantine_intents(&mut self, dirs: &TaskDirs, journal: &mut Journal) -> Result<()> {
        let mut finished = Vec::new();
        for l in journal.tally.open_intents.values() {
            let name = OsString::from_vec(dec(&l.name));
            let qname = OsString::from_vec(dec(&l.target));
            let in_active = match &dirs.active {
                Some(a) => a.lstat(&name)?.is_some(),
                None => false,
            };
            let in_quarantine = match dirs.target(Target::Quarantine) {
                Some(q) => q.lstat(&qname)?.is_some(),
                None => false,
            };
            if !in_active && in_quarantine {
                finished.push(JEntry::Line(JLine {
                    kind: b'Q',
                    ..l.clone()
                }));
            }
        }
        journal.append(finished)
    }

    /// One batch: plan (and write temps), make durable, rename, journal, unlink. See the
    /// module docs for why each crash point between these is safe.
    fn batch(
        &mut self,
        dirs: &TaskDirs,
        active: &ConfinedDir,
        journal: &mut Journal,
        names: &[OsString],
    ) -> Result<usize> {
        let mut batch = Batch::default();
        for name in names {
            self.plan_entry(dirs, active, name, &mut batch)?;
        }
        // Journaled before a crash: journaled again so that this batch, if it is interrupted
        // too, is the one handled first next time; counted once.
        for p in &mut batch.placed {
            if p.in_place && journal.journaled_before(&p.name) {
                p.kind = p.kind.to_ascii_lowercase();
            }
        }
        let moved = batch.placed.len() + batch.moved.len();
        if self.dry() {
            // A dry run's journal lives in memory only: the moves are recorded as done.
            journal.append(batch.journal_lines(b'Q'))?;
            return Ok(moved);
        }
        crash_point!(self, AfterTemps);

        // Every temp durable with one syncfs per filesystem instead of an fsync per file.
        let mut synced: Vec<u64> = Vec::new();
        for t in [Target::Pending, Target::Failed, Target::Quarantine] {
            if batch.staged.iter().any(|s| s.target == t) {
                let dir = dirs.target_dir(t)?;
                let dev = dir
                    .dir
                    .dir_metadata()
                    .map_err(|e| io_err("inspect", &dir.path, e))?
                    .dev();
                if !synced.contains(&dev) {
                    dir.syncfs()?;
                    synced.push(dev);
                }
            }
        }
        // Reason files come before their task in `staged`: a placed task has its reason.
        for s in &batch.staged {
            let dir = dirs.target_dir(s.target)?;
            rename_noreplace(dir, &s.temp, dir, &s.name)?;
        }
        crash_point!(self, AfterRenames);
        for t in [Target::Pending, Target::Failed, Target::Quarantine] {
            if batch.staged.iter().any(|s| s.target == t) {
                dirs.target_dir(t)?.fsync()?;
            }
        }

        journal.append(batch.journal_lines(b'q'))?;
        crash_point!(self, AfterJournal);

        let quarantine = dirs.target_dir(Target::Quarantine)?;
        for p in &batch.placed {
            active.remove_file(&p.name)?;
        }
        for m in &batch.moved {
            rename_noreplace(active, &m.name, quarantine, &m.qname)?;
        }
        crash_point!(self, AfterMoves);
        if !batch.placed.is_empty() || !batch.moved.is_empty() {
            active.fsync()?;
        }
        if !batch.moved.is_empty() {
            quarantine.fsync()?;
        }
        journal.append(
            batch
                .moved
                .iter()
                .map(|m| JEntry::Line(JLine::new(b'Q', &m.name, &m.qname, &m.reason)))
                .collect(),
        )?;
        // The batch's names are on disk now: the disk tells what is taken.
        self.reserved.clear();
        Ok(moved)
    }

    fn plan_entry(
        &mut self,
        dirs: &TaskDirs,
        active: &ConfinedDir,
        name: &OsStr,
        batch: &mut Batch,
    ) -> Result<()> {
        if name.len() > MAX_TASK_NAME {
            let what = format!(
                "{}: name longer than {MAX_TASK_NAME} bytes; left in active/",
                self.shown(&active.path.join(name))
            );
            self.skip(what);
            return Ok(());
        }
        let Some(md) = active.lstat(name)? else {
            return Ok(());
        };
        match self.classify(active, name, &md)? {
            Verdict::Vanished => Ok(()),
            Verdict::Task {
                id,
                bytes,
                retry,
                owner,
            } => {
                if let Some(id) = id {
                    self.active_ids.insert(id.as_bytes());
                }
                self.plan_task(dirs, active, name, &bytes, retry, owner, batch)
            }
            Verdict::Quarantine(reason) => self.plan_quarantine(dirs, active, name, reason, batch),
        }
    }

    /// Classify by `lstat` first: only a regular `.json` file is ever opened.
    fn classify(&self, active: &ConfinedDir, name: &OsStr, md: &Metadata) -> Result<Verdict> {
        let ft = md.file_type();
        if ft.is_symlink() {
            let target = active
                .dir
                .read_link_contents(name)
                .map(|t| clip(&t.to_string_lossy(), 200))
                .unwrap_or_else(|_| "?".into());
            return Ok(Verdict::Quarantine(format!(
                "a symlink to {target}, not followed"
            )));
        }
        if !ft.is_file() {
            return Ok(Verdict::Quarantine(format!(
                "a {}, not a task file",
                EntryKind::of(md)
            )));
        }
        if !name.as_bytes().ends_with(b".json") {
            return Ok(Verdict::Quarantine(
                "a file whose name does not end in .json".into(),
            ));
        }
        Ok(match read_capped(active, name, MAX_TASK_BYTES)? {
            ReadOutcome::Missing => Verdict::Vanished,
            ReadOutcome::NotRegular(kind) => {
                Verdict::Quarantine(format!("a {kind}, not a task file"))
            }
            ReadOutcome::TooLarge(size) => {
                Verdict::Quarantine(format!("too large: {size} bytes (limit {MAX_TASK_BYTES})"))
            }
            ReadOutcome::Bytes(b, owner) => {
                match transform_task(&b, self.input.failure_time, &self.input.failure_reason) {
                    Ok((bytes, retry)) => Verdict::Task {
                        id: task_id(&b),
                        bytes,
                        retry,
                        owner,
                    },
                    Err(why) => Verdict::Quarantine(why),
                }
            }
        })
    }

    /// `<stem>.<run8>.json`, the name used when `<stem>.json` is taken by another file.
    fn conflict_name(&self, name: &OsStr) -> OsString {
        let b = name.as_bytes();
        let stem = &b[..b.len() - ".json".len()];
        let mut out = stem.to_vec();
        out.extend_from_slice(format!(".{}.json", self.run8).as_bytes());
        OsString::from_vec(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_task(
        &mut self,
        dirs: &TaskDirs,
        active: &ConfinedDir,
        name: &OsStr,
        bytes: &[u8],
        retry: u64,
        owner: Owner,
        batch: &mut Batch,
    ) -> Result<()> {
        let dead = retry >= u64::from(self.input.max_retries);
        let (kind, target) = if dead {
            (b'D', Target::Failed)
        } else {
            (b'R', Target::Pending)
        };
        let dir = dirs.target(target);
        let candidates = [name.to_os_string(), self.conflict_name(name)];
        let (input, time) = (self.input, self.time());
        let reason_for = |c: &OsStr| -> Option<(OsString, Vec<u8>)> {
            dead.then(|| {
                let mut rn = c.to_os_string();
                rn.push(".reason");
                let r = DeadLetterReason {
                    reason: "max_retries",
                    task: &lossy(name),
                    retry_count: retry,
                    max_retries: input.max_retries,
                    failure_reason: &input.failure_reason,
                    run_id: &input.run_id,
                    time,
                };
                let mut b = serde_json::to_vec_pretty(&r).expect("reason serializes");
                b.push(b'\n');
                (rn, b)
            })
        };
        // An earlier attempt of this run may have placed it already, under either name:
        // look at every candidate before choosing a free one.
        let mut chosen = None;
        for c in &candidates {
            if !self.reserved.contains(target, c) && probe(dir, c, bytes)? == Probe::Equal {
                chosen = Some((c.clone(), true));
                break;
            }
        }
        if chosen.is_none() {
            for c in &candidates {
                if self.reserved.contains(target, c) || probe(dir, c, bytes)? != Probe::Absent {
                    continue;
                }
                if let Some((rn, rb)) = reason_for(c) {
                    if self.reserved.contains(target, &rn) || probe(dir, &rn, &rb)? == Probe::Other
                    {
                        continue;
                    }
                }
                chosen = Some((c.clone(), false));
                break;
            }
        }
        let Some((placed_name, done)) = chosen else {
            let what = format!(
                "{}: {} and {} are taken by other files; left in active/",
                self.shown(&active.path.join(name)),
                self.shown(
                    &dirs
                        .tasks
                        .path
                        .join(target_dir_name(target))
                        .join(&candidates[0])
                ),
                lossy(&candidates[1]),
            );
            self.skip(what);
            return Ok(());
        };
        self.reserved.insert(target, &placed_name);
        if let Some((rn, rb)) = reason_for(&placed_name) {
            self.reserved.insert(target, &rn);
            if probe(dir, &rn, &rb)? == Probe::Absent {
                self.stage(dirs, target, &rn, &rb, owner, batch)?;
            }
        }
        if !done {
            self.stage(dirs, target, &placed_name, bytes, owner, batch)?;
        }
        batch.placed.push(Placed {
            kind,
            name: name.to_os_string(),
            target: placed_name,
            in_place: done,
        });
        Ok(())
    }

    fn plan_quarantine(
        &mut self,
        dirs: &TaskDirs,
        active: &ConfinedDir,
        name: &OsStr,
        reason: String,
        batch: &mut Batch,
    ) -> Result<()> {
        let dir = dirs.target(Target::Quarantine);
        // A name like our temps would be taken for a leftover temp later: prefix it.
        let mut base = OsString::new();
        if name.as_bytes().starts_with(b".wro-") {
            base.push("_");
        }
        base.push(name);
        let mut alt = base.clone();
        alt.push(format!(".{}", self.run8));
        let r = QuarantineReason {
            reason: &reason,
            task: &lossy(name),
            run_id: &self.input.run_id,
            time: self.time(),
        };
        let mut reason_bytes = serde_json::to_vec_pretty(&r).expect("reason serializes");
        reason_bytes.push(b'\n');
        let mut chosen = None;
        for c in [base, alt] {
            let mut rn = c.clone();
            rn.push(".reason");
            let free = |n: &OsString| !self.reserved.contains(Target::Quarantine, n);
            if !free(&c) || !free(&rn) {
                continue;
            }
            if let Some(d) = dir {
                if d.lstat(&c)?.is_some() {
                    continue;
                }
            }
            let rp = probe(dir, &rn, &reason_bytes)?;
            if rp != Probe::Other {
                chosen = Some((c, rn, rp));
                break;
            }
        }
        let Some((qname, rn, rp)) = chosen else {
            let what = format!(
                "{}: {reason}; its quarantine names are taken; left in active/",
                self.shown(&active.path.join(name))
            );
            self.skip(what);
            return Ok(());
        };
        self.reserved.insert(Target::Quarantine, &qname);
        self.reserved.insert(Target::Quarantine, &rn);
        if rp == Probe::Absent {
            let owner = match dir {
                Some(d) => dir_owner(d)?,
                None => Owner {
                    uid: 0,
                    gid: 0,
                    mode: 0o644,
                },
            };
            self.stage(dirs, Target::Quarantine, &rn, &reason_bytes, owner, batch)?;
        }
        batch.moved.push(Moved {
            name: name.to_os_string(),
            qname,
            reason,
        });
        Ok(())
    }

    /// Write `bytes` to this run's temp for `name` in the target directory (not in a dry
    /// run). Not synced here: the batch's syncfs does it.
    fn stage(
        &self,
        dirs: &TaskDirs,
        target: Target,
        name: &OsStr,
        bytes: &[u8],
        owner: Owner,
        batch: &mut Batch,
    ) -> Result<()> {
        if self.dry() {
            return Ok(());
        }
        let dir = dirs.target_dir(target)?;
        let temp = self.temp_name(name);
        write_new(dir, &temp, bytes, owner, false)?;
        batch.staged.push(Staged {
            target,
            temp,
            name: name.to_os_string(),
        });
        Ok(())
    }

    fn temp_name(&self, name: &OsStr) -> OsString {
        let mut t = OsString::from(format!(".wro-{}-", self.run8));
        t.push(name);
        t.push(".tmp");
        t
    }

    fn count_from_journal(&mut self, journal: &Journal) {
        let t = &journal.tally;
        let r = &mut self.report;
        [r.requeued, r.dead_lettered, r.quarantined] = t.counts;
        r.requeued_tasks = t.samples[0].clone();
        r.dead_lettered_tasks = t.samples[1].clone();
        r.quarantined_tasks = t.samples[2].clone();
    }

    // ---------------------------------------------------------------- locks

    fn locks(&mut self, locks: Option<&ConfinedDir>, tasks: Option<&TaskDirs>) -> Result<()> {
        let Some(dir) = locks else {
            return Ok(());
        };
        let prefix = format!("{}_", self.input.paths.worker_name);
        let stale_after = i64::try_from(self.input.stale_lock_seconds).unwrap_or(i64::MAX);
        // staged/ is only looked in: one that is not a plain directory holds no task of ours.
        let staged = tasks
            .and_then(|t| open_child(&t.tasks, OsStr::new("staged"), false).ok())
            .flatten();
        let task_dirs: Vec<&ConfinedDir> = tasks
            .map(|t| [t.active.as_ref(), t.pending.as_ref(), t.failed.as_ref()])
            .into_iter()
            .flatten()
            .chain([staged.as_ref()])
            .flatten()
            .collect();
        let mut removed = false;
        // Streamed: the locks directory is shared by every worker, of any size.
        for name in dir.stream_names()? {
            let name = name?;
            let task = name
                .as_bytes()
                .strip_prefix(prefix.as_bytes())
                .and_then(|t| t.strip_suffix(b".lock"))
                .filter(|t| !t.is_empty());
            let Some(task) = task else { continue };
            // `marie_x_1.lock` is worker marie_x's lock of task 1, not marie's of task x_1.
            if !self.is_own_task(task, &task_dirs)? {
                continue;
            }
            let Some(md) = dir.lstat(&name)? else {
                continue;
            };
            let shown = self.shown(&dir.path.join(&name));
            let ft = md.file_type();
            if !(ft.is_file() || ft.is_symlink()) {
                self.skip(format!(
                    "{shown}: a {}, not a lock file",
                    EntryKind::of(&md)
                ));
                continue;
            }
            // The entry's own mtime (a symlink's, not its target's).
            let age = self.input.now.as_second().saturating_sub(md.mtime());
            if !self.input.holder_gone && age <= stale_after {
                self.skip(format!(
                    "{shown}: held (modified {age}s ago, stale after {stale_after}s)"
                ));
                continue;
            }
            if !self.dry() {
                dir.remove_file(&name)?;
                removed = true;
            }
            self.report.locks_removed += 1;
            sample(&mut self.report.removed_locks, lossy(&name));
        }
        if removed {
            dir.fsync()?;
        }
        Ok(())
    }

    /// Whether `task` is one of this worker's tasks: `<task>.json` in one of its task
    /// directories (a few `lstat`s, never a listing), or the `"id"` of a task it had in
    /// active/ at this clean state (requeued by now).
    fn is_own_task(&self, task: &[u8], dirs: &[&ConfinedDir]) -> Result<bool> {
        if self.active_ids.contains(task) {
            return Ok(true);
        }
        let mut file = task.to_vec();
        file.extend_from_slice(b".json");
        if file.len() > 255 {
            return Ok(false);
        }
        let file = OsString::from_vec(file);
        for dir in dirs {
            if dir.lstat(&file)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    // ---------------------------------------------------------------- state.json

    fn state(&mut self, parent: Option<&ConfinedDir>, leaf: &OsStr) -> Result<()> {
        let path = self.input.paths.state_file.clone();
        let shown = self.shown(&path);
        let mut pairs = Pairs::new();
        let mut owner = None;
        let mut corrupt = None;
        if let Some(dir) = parent {
            if !self.dry() {
                self.remove_leftover_temps(dir)?;
            }
            if let Some(md) = dir.lstat(leaf)? {
                if !md.is_file() {
                    self.skip(format!(
                        "{shown}: a {}, not a state file; not followed, not replaced",
                        EntryKind::of(&md)
                    ));
                    return Ok(());
                }
                match read_capped(dir, leaf, MAX_STATE_BYTES)? {
                    ReadOutcome::Missing => {}
                    ReadOutcome::NotRegular(kind) => {
                        self.skip(format!("{shown}: a {kind}, not a state file; not replaced"));
                        return Ok(());
                    }
                    ReadOutcome::TooLarge(n) => {
                        owner = Some(Owner::of(&md));
                        corrupt = Some(format!("too large ({n} bytes, limit {MAX_STATE_BYTES})"));
                    }
                    ReadOutcome::Bytes(b, o) => {
                        owner = Some(o);
                        match parse_object(&b) {
                            Ok(p) => pairs = p,
                            Err(why) => corrupt = Some(why),
                        }
                    }
                }
            }
        }
        // Once per run: a state this run already wrote is left as it is.
        if let Some(run) = last_value(&pairs, "recovery_run") {
            if serde_json::from_str::<String>(run.get()).ok().as_deref() == Some(&self.input.run_id)
            {
                self.report.recovery_count = last_value(&pairs, "recovery_count")
                    .and_then(|v| serde_json::from_str::<u64>(v.get()).ok());
                return Ok(());
            }
        }
        let old = match last_value(&pairs, "recovery_count") {
            None => 0,
            Some(v) => serde_json::from_str::<u64>(v.get()).unwrap_or_else(|_| {
                self.skip(format!(
                    "{shown}: recovery_count {} is not a count; counted from 0",
                    clip(v.get(), 64)
                ));
                0
            }),
        };
        let count = old.saturating_add(1);
        self.report.recovery_count = Some(count);

        if let Some(why) = corrupt {
            let dir = parent.expect("a corrupt state was read from its directory");
            let aside = self.corrupt_name(dir, leaf)?;
            self.skip(format!(
                "{shown}: {why}; kept as {}, state restarted from {{}}",
                lossy(&aside)
            ));
            if !self.dry() {
                rename_noreplace(dir, leaf, dir, &aside)?;
                dir.fsync()?;
            }
        }
        if self.dry() {
            return Ok(());
        }
        let dir = parent.expect("created outside a dry run");
        let fields = [
            ("status", json_string("recovering")),
            ("last_crash", json_f64(self.time())),
            ("recovery_count", count.to_string()),
            ("recovery_run", json_string(&self.input.run_id)),
        ];
        let bytes = replace_fields(&pairs, &fields);
        let owner = match owner {
            Some(o) => o,
            None => Owner {
                mode: 0o644,
                ..dir_owner(dir)?
            },
        };
        let temp = self.temp_name(leaf);
        write_new(dir, &temp, &bytes, owner, true)?;
        crash_point!(self, AfterStateTemp);
        dir.dir
            .rename(&temp, &dir.dir, leaf)
            .map_err(|e| io_err("rename", dir.path.join(&temp), e))?;
        dir.fsync()?;
        crash_point!(self, AfterStateRename);
        Ok(())
    }

    /// `<state>.corrupt-<run8>`, or `-2`, `-3`, ... when taken: never overwritten.
    fn corrupt_name(&self, dir: &ConfinedDir, leaf: &OsStr) -> Result<OsString> {
        for i in 1..=100 {
            let mut n = leaf.to_os_string();
            n.push(format!(".corrupt-{}", self.run8));
            if i > 1 {
                n.push(format!("-{i}"));
            }
            if dir.lstat(&n)?.is_none() {
                return Ok(n);
            }
        }
        Err(io_err(
            "keep corrupt state",
            dir.path.join(leaf),
            io::Error::other("100 corrupt copies exist already"),
        ))
    }

    // ---------------------------------------------------------------- tmp

    /// Why the tmp dir must not be emptied: it holds the worker's other files (a tmpDir of
    /// `.` or `tasks` would otherwise wipe them).
    fn tmp_overlap(&self) -> Option<String> {
        let p = &self.input.paths;
        let others = [
            &p.trusted_root,
            &p.shared_root,
            &p.tasks_dir,
            &p.locks_dir,
            &p.state_file,
            &p.heartbeat_file,
        ];
        others.iter().find(|o| o.starts_with(&p.tmp_dir)).map(|o| {
            format!(
                "{}: holds {}; not emptied",
                self.shown(&p.tmp_dir),
                o.display()
            )
        })
    }

    fn tmp(&mut self, tmp: Option<&ConfinedDir>) -> Result<()> {
        let Some(dir) = tmp else {
            return Ok(());
        };
        let mut removed = false;
        for name in dir.stream_names()? {
            let name = name?;
            if dir.lstat(&name)?.is_none() {
                continue;
            }
            if !self.dry() {
                // Iterative, a bounded number of directories open, symlinks unlinked as links:
                // a tmp tree of any depth or width is removed (see `remove_tree`).
                if remove_tree(dir, &name)? == 0 {
                    continue;
                }
                removed = true;
            }
            self.report.tmp_entries_removed += 1;
            sample(&mut self.report.removed_tmp_entries, lossy(&name));
        }
        if removed {
            dir.fsync()?;
        }
        Ok(())
    }
}

/// Keep `name` among the first [`SAMPLE_LIMIT`] names of a report list.
fn sample(list: &mut Vec<String>, name: String) {
    if list.len() < SAMPLE_LIMIT {
        list.push(name);
    }
}

fn target_dir_name(t: Target) -> &'static str {
    match t {
        Target::Pending => "pending",
        Target::Failed => "failed",
        Target::Quarantine => "quarantine",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        collections::BTreeMap,
        ffi::CString,
        fs,
        os::unix::fs::{symlink, MetadataExt as _},
        time::{Duration, SystemTime},
    };

    const RUN: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
    const RUN8: &str = "0a1b2c3d";
    /// `failure_time` as `last_failure` renders it.
    const T: &str = "1795823941.5";

    struct Fixture {
        _tmp: tempfile::TempDir,
        /// Holds `shared/` (the trusted root) and `outside/`.
        base: PathBuf,
        root: PathBuf,
        input: CleanStateInput,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let root = base.join("shared");
        fs::create_dir_all(root.join("tasks/marie/active")).unwrap();
        fs::create_dir_all(root.join("locks")).unwrap();
        fs::create_dir_all(root.join("workers/marie")).unwrap();
        fs::create_dir_all(base.join("outside")).unwrap();
        let paths = ResolvedPaths {
            worker_name: "marie".into(),
            shared_root: root.clone(),
            trusted_root: root.clone(),
            heartbeat_file: root.join("workers/marie/heartbeat.json"),
            tasks_dir: root.join("tasks/marie"),
            locks_dir: root.join("locks"),
            state_file: root.join("workers/marie/state.json"),
            tmp_dir: root.join("tmp/marie"),
        };
        let input = CleanStateInput {
            paths,
            run_id: RUN.into(),
            failure_time: Timestamp::new(1_795_823_941, 500_000_000).unwrap(),
            failure_reason: "oom".into(),
            max_retries: 3,
            stale_lock_seconds: 300,
            holder_gone: false,
            dry_run: false,
            now: Timestamp::now(),
        };
        Fixture {
            _tmp: tmp,
            base,
            root,
            input,
        }
    }

    impl Fixture {
        fn p(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }
        fn put(&self, rel: &str, bytes: &[u8]) {
            let p = self.p(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
        fn task(&self, name: &str, bytes: &[u8]) {
            self.put(&format!("tasks/marie/active/{name}"), bytes);
        }
        fn read(&self, rel: &str) -> Vec<u8> {
            fs::read(self.p(rel)).unwrap()
        }
        fn text(&self, rel: &str) -> String {
            String::from_utf8(self.read(rel)).unwrap()
        }
        fn exists(&self, rel: &str) -> bool {
            fs::symlink_metadata(self.p(rel)).is_ok()
        }
        /// Sorted names in a directory under the root (empty when missing).
        fn names(&self, rel: &str) -> Vec<String> {
            let Ok(rd) = fs::read_dir(self.p(rel)) else {
                return Vec::new();
            };
            let mut v: Vec<String> = rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
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

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    }

    /// Every entry below `dir`, by lstat, with contents, link targets, modes and mtimes.
    fn snapshot(dir: &Path) -> BTreeMap<String, String> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            let mut names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                let p = dir.join(&n);
                let md = fs::symlink_metadata(&p).unwrap();
                let ft = md.file_type();
                let what = if ft.is_symlink() {
                    format!("link {}", fs::read_link(&p).unwrap().display())
                } else if ft.is_dir() {
                    walk(base, &p, out);
                    "dir".into()
                } else if ft.is_file() && md.len() <= 1 << 20 {
                    format!("file {:?}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
                } else {
                    format!("size {}", md.len())
                };
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.insert(
                    rel,
                    format!(
                        "{what} mode {:o} mtime {}.{}",
                        md.mode(),
                        md.mtime(),
                        md.mtime_nsec()
                    ),
                );
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, dir, &mut out);
        out
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
            format!(
                r#"{{"c\u00e9":1e3,"failure_reason":"oom","last_failure":{T},"retry_count":1}}"#
            )
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
            let err = transform_task(bad, t, "x").unwrap_err();
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
        assert_eq!(enc(b"a b%\n\xff"), "a%20b%25%0A%FF");
        assert_eq!(dec(&enc(b"a b%\n\xff")), b"a b%\n\xff");
    }
}
