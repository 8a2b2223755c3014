//! The tasks of active/: each one requeued to pending/, dead-lettered to failed/ or
//! quarantined, in batches made durable by one `syncfs` and journaled (see the parent
//! module's docs for the protocol).

use std::{
    collections::HashSet,
    ffi::{OsStr, OsString},
    io,
    os::unix::ffi::{OsStrExt, OsStringExt},
};

use cap_std::fs::{Metadata, MetadataExt};
use serde::Serialize;

use super::Engine;
use crate::confined::{
    dir_owner, lossy, open_child, read_capped, rename_noreplace, write_new, ConfinedDir, EntryKind,
    Owner, ReadOutcome,
};
#[cfg(test)]
use crate::recover::clean_state::CrashPoint;
use crate::recover::clean_state::{
    io_err,
    journal::{decode_field, Journal, JournalLine, TaskLine},
    task_file::{clip, task_id, transform_task},
    Result, BATCH_SIZE, MAX_PASSES, MAX_TASK_BYTES, MAX_TASK_NAME,
};

/// Where a task goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Target {
    Pending,
    Failed,
    Quarantine,
}

/// A temp written in its target directory, to be renamed to `name`.
pub(super) struct Staged {
    pub(super) target: Target,
    pub(super) temp: OsString,
    pub(super) name: OsString,
}

/// A task requeued or dead-lettered in the current batch.
pub(super) struct Placed {
    pub(super) kind: u8,
    pub(super) name: OsString,
    pub(super) target: OsString,
    /// Its copy was in place already (an earlier attempt of this run).
    pub(super) in_place: bool,
}

/// An entry quarantined in the current batch.
pub(super) struct Moved {
    pub(super) name: OsString,
    pub(super) qname: OsString,
    pub(super) reason: String,
}

/// The current batch's work.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) staged: Vec<Staged>,
    pub(super) placed: Vec<Placed>,
    pub(super) moved: Vec<Moved>,
}

impl Batch {
    /// The journal lines of the batch, after its marker: its placed tasks, and its
    /// quarantine moves marked `moved_kind` (`q` for an intent, `Q` for a move done).
    pub(super) fn journal_lines(&self, moved_kind: u8) -> Vec<JournalLine> {
        if self.placed.is_empty() && self.moved.is_empty() {
            return Vec::new();
        }
        let placed = self
            .placed
            .iter()
            .map(|p| TaskLine::new(p.kind, &p.name, &p.target, ""));
        let moved = self
            .moved
            .iter()
            .map(|m| TaskLine::new(moved_kind, &m.name, &m.qname, &m.reason));
        std::iter::once(JournalLine::BatchStart)
            .chain(placed.chain(moved).map(JournalLine::Task))
            .collect()
    }
}

/// The task directories; the target ones may be missing in a dry run.
pub(super) struct TaskDirs {
    pub(super) tasks: ConfinedDir,
    pub(super) active: Option<ConfinedDir>,
    pub(super) pending: Option<ConfinedDir>,
    pub(super) failed: Option<ConfinedDir>,
    pub(super) quarantine: Option<ConfinedDir>,
}

impl TaskDirs {
    pub(super) fn open(tasks: ConfinedDir) -> Result<Self> {
        Ok(Self {
            active: open_child(&tasks, OsStr::new("active"), false)?,
            pending: open_child(&tasks, OsStr::new("pending"), false)?,
            failed: open_child(&tasks, OsStr::new("failed"), false)?,
            quarantine: open_child(&tasks, OsStr::new("quarantine"), false)?,
            tasks,
        })
    }

    pub(super) fn create_missing(&mut self) -> Result<()> {
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

    pub(super) fn target(&self, t: Target) -> Option<&ConfinedDir> {
        match t {
            Target::Pending => self.pending.as_ref(),
            Target::Failed => self.failed.as_ref(),
            Target::Quarantine => self.quarantine.as_ref(),
        }
    }

    /// A target directory that must exist (outside a dry run they all do).
    pub(super) fn target_dir(&self, t: Target) -> Result<&ConfinedDir> {
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
pub(super) enum Verdict {
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
pub(super) struct DeadLetterReason<'a> {
    pub(super) reason: &'static str,
    pub(super) task: &'a str,
    pub(super) retry_count: u64,
    pub(super) max_retries: u32,
    pub(super) failure_reason: &'a str,
    pub(super) run_id: &'a str,
    pub(super) time: f64,
}

#[derive(Serialize)]
pub(super) struct QuarantineReason<'a> {
    pub(super) reason: &'a str,
    pub(super) task: &'a str,
    pub(super) run_id: &'a str,
    pub(super) time: f64,
}

/// A set of names kept as keyed 64-bit hashes: 8 bytes a name whatever its length, and a
/// worker cannot craft collisions (the key is random per call).
#[derive(Default)]
pub(super) struct Hashes {
    pub(super) hasher: std::hash::RandomState,
    pub(super) set: HashSet<u64>,
}

impl Hashes {
    pub(super) fn key(&self, value: impl std::hash::Hash) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(value)
    }

    pub(super) fn contains(&self, value: impl std::hash::Hash) -> bool {
        self.set.contains(&self.key(value))
    }

    pub(super) fn insert(&mut self, value: impl std::hash::Hash) {
        let key = self.key(value);
        self.set.insert(key);
    }
}

/// Names given to files in this call, per target.
#[derive(Default)]
pub(super) struct Reserved(Hashes);

impl Reserved {
    pub(super) fn contains(&self, target: Target, name: &OsStr) -> bool {
        self.0.contains((target, name.as_bytes()))
    }

    pub(super) fn insert(&mut self, target: Target, name: &OsStr) {
        self.0.insert((target, name.as_bytes()));
    }

    pub(super) fn clear(&mut self) {
        self.0.set.clear();
    }
}

/// What is at a candidate target, compared to what we would put there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    Absent,
    /// Exactly the expected bytes: put there by an earlier attempt of this run.
    Equal,
    /// Anything else: never overwritten.
    Other,
}

pub(super) fn probe(dir: Option<&ConfinedDir>, name: &OsStr, expected: &[u8]) -> Result<Probe> {
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

impl Engine<'_> {
    pub(super) fn tasks(&mut self, dirs: &TaskDirs, journal: &mut Journal) -> Result<()> {
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
            .map(|n| OsString::from_vec(decode_field(n)))
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
    pub(super) fn pass(
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
    pub(super) fn remove_leftover_temps(&mut self, dir: &ConfinedDir) -> Result<()> {
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
    pub(super) fn finish_quarantine_intents(
        &mut self,
        dirs: &TaskDirs,
        journal: &mut Journal,
    ) -> Result<()> {
        let mut finished = Vec::new();
        for l in journal.tally.open_intents.values() {
            let name = OsString::from_vec(decode_field(&l.name));
            let qname = OsString::from_vec(decode_field(&l.target));
            let in_active = match &dirs.active {
                Some(a) => a.lstat(&name)?.is_some(),
                None => false,
            };
            let in_quarantine = match dirs.target(Target::Quarantine) {
                Some(q) => q.lstat(&qname)?.is_some(),
                None => false,
            };
            if !in_active && in_quarantine {
                finished.push(JournalLine::Task(TaskLine {
                    kind: b'Q',
                    ..l.clone()
                }));
            }
        }
        journal.append(finished)
    }

    /// One batch: plan (and write temps), make durable, rename, journal, unlink. See the
    /// module docs for why each crash point between these is safe.
    pub(super) fn batch(
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
                .map(|m| JournalLine::Task(TaskLine::new(b'Q', &m.name, &m.qname, &m.reason)))
                .collect(),
        )?;
        // The batch's names are on disk now: the disk tells what is taken.
        self.reserved.clear();
        Ok(moved)
    }

    pub(super) fn plan_entry(
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
    pub(super) fn classify(
        &self,
        active: &ConfinedDir,
        name: &OsStr,
        md: &Metadata,
    ) -> Result<Verdict> {
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
                    Err(why) => Verdict::Quarantine(why.to_string()),
                }
            }
        })
    }

    /// `<stem>.<run8>.json`, the name used when `<stem>.json` is taken by another file.
    pub(super) fn conflict_name(&self, name: &OsStr) -> OsString {
        let b = name.as_bytes();
        let stem = &b[..b.len() - ".json".len()];
        let mut conflict = stem.to_vec();
        conflict.extend_from_slice(format!(".{}.json", self.run8).as_bytes());
        OsString::from_vec(conflict)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan_task(
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

    pub(super) fn plan_quarantine(
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
    pub(super) fn stage(
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

    pub(super) fn temp_name(&self, name: &OsStr) -> OsString {
        let mut t = OsString::from(format!(".wro-{}-", self.run8));
        t.push(name);
        t.push(".tmp");
        t
    }

    pub(super) fn count_from_journal(&mut self, journal: &Journal) {
        let t = &journal.tally;
        let r = &mut self.report;
        [r.requeued, r.dead_lettered, r.quarantined] = t.counts;
        r.requeued_tasks = t.samples[0].clone();
        r.dead_lettered_tasks = t.samples[1].clone();
        r.quarantined_tasks = t.samples[2].clone();
    }
}

pub(super) fn target_dir_name(t: Target) -> &'static str {
    match t {
        Target::Pending => "pending",
        Target::Failed => "failed",
        Target::Quarantine => "quarantine",
    }
}
