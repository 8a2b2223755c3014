//! The run's journal: one line per task placed or quarantined, batch by batch, read back
//! streaming after a crash (see the parent module's docs for the protocol).

use std::{
    collections::{HashSet, VecDeque},
    ffi::{OsStr, OsString},
    io::{self, BufRead, Read, Write},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{File, OpenOptions, OpenOptionsExt};
use indexmap::IndexMap;
use rustix::{fs::FlockOperation, io::Errno};

use super::{
    io_err, CleanStateError, Result, MAX_GROUP_NAMES, MAX_JOURNAL_BYTES, MAX_JOURNAL_LINE,
    SAMPLE_LIMIT,
};
use crate::confined::{ConfinedDir, EntryKind, FsError};

/// A journal field: printable text kept, `%`, space, controls and invalid UTF-8 as `%XX`.
pub(super) fn encode_field(bytes: &[u8]) -> String {
    let mut encoded = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            if ch == '%' || ch == ' ' || ch.is_control() {
                let mut buf = [0; 4];
                for b in ch.encode_utf8(&mut buf).bytes() {
                    encoded.push_str(&format!("%{b:02X}"));
                }
            } else {
                encoded.push(ch);
            }
        }
        for b in chunk.invalid() {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
}

pub(super) fn decode_field(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                decoded.push(v);
                i += 3;
                continue;
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    decoded
}

fn decode_lossy(s: &str) -> String {
    String::from_utf8_lossy(&decode_field(s)).into_owned()
}

/// One journal line: `<kind> <name> <target>[ <reason>]`, fields encoded with [`encode_field`].
/// Kinds: `R` requeued, `D` dead-lettered, `q` about to be quarantined, `Q` quarantined;
/// `r`, `d`: a task of the last batch journaled again after a crash, counted once (by its
/// `R` or `D`). A line `B` starts each batch's lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TaskLine {
    pub(super) kind: u8,
    pub(super) name: String,
    pub(super) target: String,
    pub(super) reason: String,
}

impl TaskLine {
    pub(super) fn new(kind: u8, name: &OsStr, target: &OsStr, reason: &str) -> Self {
        Self {
            kind,
            name: encode_field(name.as_bytes()),
            target: encode_field(target.as_bytes()),
            reason: encode_field(reason.as_bytes()),
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
        let name = decode_lossy(&self.name);
        let moved = if self.target == self.name {
            String::new()
        } else {
            decode_lossy(&self.target)
        };
        match (self.kind, moved.is_empty()) {
            (b'Q', true) => format!("{name}: {}", decode_lossy(&self.reason)),
            (b'Q', false) => format!("{name}: {} (as {moved})", decode_lossy(&self.reason)),
            (_, true) => name,
            (_, false) => format!("{name} -> {moved}"),
        }
    }
}

/// What the journal's lines add up to, folded line by line as they are read or appended:
/// never the lines themselves, so memory stays bounded whatever the journal's length.
#[derive(Default)]
pub(super) struct Tally {
    /// `R`, `D`, `Q` lines: requeued, dead-lettered, quarantined.
    pub(super) counts: [u64; 3],
    /// The first [`SAMPLE_LIMIT`] of each, as the report shows them.
    pub(super) samples: [Vec<String>; 3],
    /// Names journaled (`R`, `D`, `r`, `d`) since the last batch marker: the only batch whose
    /// sources may still be in active/ after a crash. At most [`MAX_GROUP_NAMES`], the latest.
    pub(super) group: Group,
    /// Quarantine intents (`q`) of that batch not followed by their move (`Q`).
    pub(super) open_intents: IndexMap<String, TaskLine>,
}

/// The names of the last journaled batch, bounded: a journal this step did not write (or one
/// from before batch markers) keeps only its latest names.
#[derive(Default)]
pub(super) struct Group {
    pub(super) order: VecDeque<String>,
    pub(super) names: HashSet<String>,
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
    fn add(&mut self, entry: JournalLine) {
        let line = match entry {
            JournalLine::BatchStart => {
                self.group.clear();
                self.open_intents.clear();
                return;
            }
            JournalLine::Task(line) => line,
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
pub(super) enum JournalLine {
    /// `B`: the lines of a new batch follow.
    BatchStart,
    Task(TaskLine),
}

impl JournalLine {
    fn parse(line: &[u8]) -> Option<Self> {
        // Fields are written encoded (printable UTF-8); anything else is not our line.
        let text = std::str::from_utf8(line).ok()?;
        if text == "B" {
            return Some(Self::BatchStart);
        }
        TaskLine::parse(text).map(Self::Task)
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
pub(super) struct Journal {
    pub(super) file: Option<File>,
    pub(super) path: PathBuf,
    pub(super) tally: Tally,
    /// The last batch journaled before this call: its tasks may still be in active/ (a crash
    /// before their unlink), and are handled first, as that batch again (`r`, `d`).
    pub(super) resumed: Group,
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
    pub(super) fn journaled_before(&self, name: &OsStr) -> bool {
        self.resumed.names.contains(&encode_field(name.as_bytes()))
    }

    pub(super) fn open(tasks: &ConfinedDir, token: &str, dry_run: bool) -> Result<Self> {
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
            if let Some(entry) = JournalLine::parse(line) {
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
    pub(super) fn append(&mut self, entries: Vec<JournalLine>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if let Some(file) = &mut self.file {
            let text: String = entries
                .iter()
                .map(|e| match e {
                    JournalLine::BatchStart => "B\n".to_string(),
                    JournalLine::Task(l) => l.render(),
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
