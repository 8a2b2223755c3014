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

/// Stop here when a test asked for a crash at this point.
macro_rules! crash_point {
    ($engine:expr, $point:ident) => {
        #[cfg(test)]
        $engine.crash(CrashPoint::$point)?;
    };
}

mod engine;
mod journal;
mod task_file;
#[cfg(test)]
mod tests;

use std::{io, path::PathBuf};

use k8s_openapi::jiff::Timestamp;

use crate::confined::{self, FsError};
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
    engine::Engine::new(input)?.run()
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
