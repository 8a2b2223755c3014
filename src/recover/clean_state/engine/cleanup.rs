//! The rest of the clean recovery, after the tasks: this worker's stale locks, `state.json`
//! marked `recovering` (once per run), the tmp dir emptied.

use std::{
    ffi::{OsStr, OsString},
    io,
    os::unix::ffi::{OsStrExt, OsStringExt},
};

use cap_std::fs::MetadataExt;

use super::{active::TaskDirs, sample, Engine};
use crate::confined::{
    dir_owner,
    json_object::{json_f64, json_string, last_value, parse_object, replace_fields, Pairs},
    lossy, open_child, read_capped,
    remove_tree::remove_tree,
    rename_noreplace, write_new, ConfinedDir, EntryKind, Owner, ReadOutcome,
};
#[cfg(test)]
use crate::recover::clean_state::CrashPoint;
use crate::recover::clean_state::{io_err, task_file::clip, Result, MAX_STATE_BYTES};

/// `state.json` as read before it is marked.
#[derive(Default)]
struct StateRead {
    /// Its fields, raw: every one not marked is written back byte for byte.
    pairs: Pairs,
    /// Owner and mode of the file, given to the new one.
    owner: Option<Owner>,
    /// Why it cannot be parsed; then it is kept aside and the state restarts from `{}`.
    corrupt: Option<String>,
}

impl Engine<'_> {
    pub(super) fn locks(
        &mut self,
        locks: Option<&ConfinedDir>,
        tasks: Option<&TaskDirs>,
    ) -> Result<()> {
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
    pub(super) fn is_own_task(&self, task: &[u8], dirs: &[&ConfinedDir]) -> Result<bool> {
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

    pub(super) fn state(&mut self, parent: Option<&ConfinedDir>, leaf: &OsStr) -> Result<()> {
        let shown = self.shown(&self.input.paths.state_file.clone());
        let Some(read) = self.read_state(parent, leaf, &shown)? else {
            return Ok(());
        };
        // Once per run: a state this run already wrote is left as it is.
        if let Some(run) = last_value(&read.pairs, "recovery_run") {
            if serde_json::from_str::<String>(run.get()).ok().as_deref() == Some(&self.input.run_id)
            {
                self.report.recovery_count = last_value(&read.pairs, "recovery_count")
                    .and_then(|v| serde_json::from_str::<u64>(v.get()).ok());
                return Ok(());
            }
        }
        let old = match last_value(&read.pairs, "recovery_count") {
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

        if let Some(why) = &read.corrupt {
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
        self.write_state(dir, leaf, read, count)
    }

    /// The state file as it is: its fields, owner, and why it cannot be parsed (then it is put
    /// aside). `None` when something other than a state file stands there (left alone).
    fn read_state(
        &mut self,
        parent: Option<&ConfinedDir>,
        leaf: &OsStr,
        shown: &str,
    ) -> Result<Option<StateRead>> {
        let mut read = StateRead::default();
        let Some(dir) = parent else {
            return Ok(Some(read));
        };
        if !self.dry() {
            self.remove_leftover_temps(dir)?;
        }
        let Some(md) = dir.lstat(leaf)? else {
            return Ok(Some(read));
        };
        if !md.is_file() {
            self.skip(format!(
                "{shown}: a {}, not a state file; not followed, not replaced",
                EntryKind::of(&md)
            ));
            return Ok(None);
        }
        match read_capped(dir, leaf, MAX_STATE_BYTES)? {
            ReadOutcome::Missing => {}
            ReadOutcome::NotRegular(kind) => {
                self.skip(format!("{shown}: a {kind}, not a state file; not replaced"));
                return Ok(None);
            }
            ReadOutcome::TooLarge(n) => {
                read.owner = Some(Owner::of(&md));
                read.corrupt = Some(format!("too large ({n} bytes, limit {MAX_STATE_BYTES})"));
            }
            ReadOutcome::Bytes(b, o) => {
                read.owner = Some(o);
                match parse_object(&b) {
                    Ok(p) => read.pairs = p,
                    Err(why) => read.corrupt = Some(why.to_string()),
                }
            }
        }
        Ok(Some(read))
    }

    /// Write the state marked `recovering` by this run, every other field kept byte for byte,
    /// through a temp file renamed over the old one (a crash leaves the old or the new whole).
    fn write_state(
        &mut self,
        dir: &ConfinedDir,
        leaf: &OsStr,
        read: StateRead,
        count: u64,
    ) -> Result<()> {
        let fields = [
            ("status", json_string("recovering")),
            ("last_crash", json_f64(self.time())),
            ("recovery_count", count.to_string()),
            ("recovery_run", json_string(&self.input.run_id)),
        ];
        let bytes = replace_fields(&read.pairs, &fields);
        let owner = match read.owner {
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
    pub(super) fn corrupt_name(&self, dir: &ConfinedDir, leaf: &OsStr) -> Result<OsString> {
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
    pub(super) fn tmp_overlap(&self) -> Option<String> {
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

    pub(super) fn tmp(&mut self, tmp: Option<&ConfinedDir>) -> Result<()> {
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
