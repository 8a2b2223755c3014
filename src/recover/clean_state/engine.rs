//! The step's engine: the directories opened before anything changes, then each part of the
//! runbook's clean recovery in its order: the tasks of active/ (`active`), then stale locks,
//! `state.json` and the tmp dir (`cleanup`).

mod active;
mod cleanup;

use std::path::Path;

#[cfg(test)]
use super::CrashPoint;
use super::{journal::Journal, task_file::unix_float};
use super::{CleanStateError, CleanStateInput, CleanStateReport, Result, BATCH_SIZE, SAMPLE_LIMIT};
use crate::confined::{open_path, open_root, FsError};
use active::{Hashes, Reserved, TaskDirs};

/// One call of the step: its inputs, what it reported so far, and what it must remember
/// between batches.
pub(super) struct Engine<'a> {
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
    pub(super) batch_size: usize,
    #[cfg(test)]
    pub(super) crash_at: Option<CrashPoint>,
}

/// The run id as a file-name token: kept when it is made of `[A-Za-z0-9._-]` (a UID is),
/// otherwise cleaned and suffixed with a hash of the original so two ids never share one.
pub(super) fn run_token(run_id: &str) -> Result<String> {
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
    pub(super) fn new(input: &'a CleanStateInput) -> Result<Self> {
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

    pub(super) fn run(mut self) -> Result<CleanStateReport> {
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
}

/// Keep `name` among the first [`SAMPLE_LIMIT`] names of a report list.
pub(super) fn sample(list: &mut Vec<String>, name: String) {
    if list.len() < SAMPLE_LIMIT {
        list.push(name);
    }
}
