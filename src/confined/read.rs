//! Reading below the trusted root without ever leaving it, for diagnosis, observation and the
//! recovery steps alike.
//!
//! * Only regular files are ever opened: a FIFO, socket or device is classified by `lstat`,
//!   never opened. Files are opened relative to their `ConfinedDir` with
//!   `O_NOFOLLOW | O_NONBLOCK` (a FIFO swapped in never blocks the reader) and must be
//!   regular files by `fstat` of the opened descriptor.
//! * Reads are capped: whole files above a limit are refused without reading, tails read only
//!   the last bytes.
//! * Listings classify each entry (file, directory, symlink, FIFO, ...) without following or
//!   recursing, and a missing path is an answer ([`Listing::Missing`], `Ok(None)`), not an
//!   error.

use std::{
    ffi::{OsStr, OsString},
    io::{self, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{File, Metadata, MetadataExt, OpenOptions, OpenOptionsExt};
use k8s_openapi::jiff::Timestamp;
use rustix::{fs::OFlags, io::Errno};

use super::{
    components_below, descend, io_err, open_root_if_present, ConfinedDir, Entry, EntryKind,
    FsError, Owner, Result,
};

/// Most entries a listing returns; the rest are counted as truncated.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// A directory listing.
#[derive(Clone, Debug, PartialEq)]
pub enum Listing {
    /// The directory (or one of its parents) does not exist.
    Missing,
    /// Entries sorted by name, without `.` and `..`.
    Present {
        entries: Vec<Entry>,
        /// More entries existed than the listing was allowed to return.
        truncated: bool,
    },
}

/// Bytes read from a regular file.
#[derive(Clone, Debug, PartialEq)]
pub struct FileContent {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// Size of the whole file when it was opened.
    pub size: u64,
    pub modified: Option<Timestamp>,
    /// Only part of the file was read (a tail of a longer file).
    pub truncated: bool,
    /// The bytes start in the middle of a line (a tail that did not start at a line start).
    pub starts_mid_line: bool,
}

impl FileContent {
    /// The last `n` complete lines (lossy UTF-8, without line ends). When only a tail of the file
    /// was read, its first, partial line is dropped.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.bytes);
        let mut lines: Vec<&str> = text.lines().collect();
        if self.starts_mid_line && !lines.is_empty() {
            lines.remove(0);
        }
        let skip = lines.len().saturating_sub(n);
        lines[skip..]
            .iter()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    }
}

/// The directory `root/names...`, each a real directory (never a symlink); `None` when one of
/// them (or the root) does not exist.
fn open_below(root: &Path, names: &[OsString]) -> Result<Option<ConfinedDir>> {
    match open_root_if_present(root)? {
        Some(dir) => descend(dir, names, false),
        None => Ok(None),
    }
}

/// Split `path` (below `root`) into its parent directory names and its final name.
fn split_leaf(root: &Path, path: &Path) -> Result<(Vec<OsString>, OsString)> {
    let mut names = components_below(root, path)?;
    let leaf = names.pop().ok_or_else(|| FsError::WrongKind {
        path: path.to_path_buf(),
        kind: EntryKind::Dir,
        expected: EntryKind::File,
    })?;
    Ok((names, leaf))
}

/// `lstat` of `path` (below `root`) without following any symlink on the way: `Ok(None)` when
/// it does not exist, `Err(Symlink)` when a directory on the way is a symlink. A symlink at the
/// end is returned as an [`EntryKind::Symlink`] entry.
pub fn stat(root: &Path, path: &Path) -> Result<Option<Entry>> {
    let (parents, leaf) = split_leaf(root, path)?;
    let Some(dir) = open_below(root, &parents)? else {
        return Ok(None);
    };
    Ok(dir.lstat(&leaf)?.map(|md| Entry::new(&dir, &leaf, &md)))
}

/// The entry `name` of `dir` as `lstat` sees it; `None` when it is gone (removed between the
/// listing and the `lstat`: a worker moving a task), [`EntryKind::Unknown`] when the `lstat`
/// failed otherwise.
fn listed_entry(dir: &ConfinedDir, name: &OsStr) -> Option<Entry> {
    match dir.lstat(name) {
        Ok(md) => md.map(|md| Entry::new(dir, name, &md)),
        Err(_) => Some(Entry::unknown(dir, name)),
    }
}

/// Call `f` with each entry of `dir` (below or equal to `root`) as `lstat` sees it, streamed
/// in directory order and never kept: memory does not grow with the directory (a worker's
/// may hold millions of entries). `Ok(false)` when the directory is missing.
pub fn visit_dir(root: &Path, dir: &Path, mut f: impl FnMut(Entry)) -> Result<bool> {
    let names = components_below(root, dir)?;
    let Some(dir) = open_below(root, &names)? else {
        return Ok(false);
    };
    for name in dir.stream_names()? {
        if let Some(entry) = listed_entry(&dir, &name?) {
            f(entry);
        }
    }
    Ok(true)
}

/// Count the entries of `dir` (below or equal to `root`) whose names do not start with `.`
/// (hidden: a writer's temporary file), by name only and up to `cap`: `Some((count, capped))`,
/// `None` when the directory is missing. Cheap enough to run at every look at a Worker.
pub fn count_entries(root: &Path, dir: &Path, cap: u64) -> Result<Option<(u64, bool)>> {
    let names = components_below(root, dir)?;
    let Some(dir) = open_below(root, &names)? else {
        return Ok(None);
    };
    let mut count = 0;
    for name in dir.stream_names()? {
        if name?.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        if count == cap {
            return Ok(Some((count, true)));
        }
        count += 1;
    }
    Ok(Some((count, false)))
}

/// List `dir` (below or equal to `root`), classifying each entry without following it and
/// without recursing. At most `max_entries` entries are returned.
pub fn list_dir(root: &Path, dir: &Path, max_entries: usize) -> Result<Listing> {
    let names = components_below(root, dir)?;
    let Some(dir) = open_below(root, &names)? else {
        return Ok(Listing::Missing);
    };
    let mut names = Vec::new();
    let mut truncated = false;
    for name in dir.stream_names()? {
        let name = name?;
        if names.len() >= max_entries {
            truncated = true;
            break;
        }
        names.push(name);
    }
    names.sort();
    let entries = names
        .iter()
        .filter_map(|name| listed_entry(&dir, name))
        .collect();
    Ok(Listing::Present { entries, truncated })
}

/// Open `dir/name` for reading without following a symlink and without blocking on a FIFO.
fn open_nofollow(dir: &ConfinedDir, name: &OsStr) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true)
        .follow(FollowSymlinks::No)
        .custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32);
    dir.dir.open_with(name, &opts)
}

fn is_symlink_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::LOOP.raw_os_error())
}

/// Open `path` (below `root`) for reading if and only if it is a regular file reached without
/// any symlink. Returns the file and its `fstat`.
fn open_regular(root: &Path, path: &Path) -> Result<(File, Metadata)> {
    let (parents, leaf) = split_leaf(root, path)?;
    let Some(dir) = open_below(root, &parents)? else {
        return Err(FsError::Missing(path.to_path_buf()));
    };
    let full = dir.path.join(&leaf);
    // Classify first, so that FIFOs, sockets and devices are never opened at all.
    match dir.lstat(&leaf)? {
        Some(md) if md.is_file() => {}
        Some(md) => return Err(dir.refuse(&leaf, &md, EntryKind::File)),
        None => return Err(FsError::Missing(full)),
    }
    // O_NOFOLLOW: a symlink swapped in since the lstat fails with ELOOP. O_NONBLOCK: a FIFO
    // swapped in does not block the open. The fstat below catches both kinds of swap.
    let file = match open_nofollow(&dir, &leaf) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FsError::Missing(full)),
        Err(e) if is_symlink_refusal(&e) => {
            return Err(FsError::Symlink {
                path: full,
                target: None,
            })
        }
        Err(e) => return Err(io_err("open", full, e)),
    };
    let md = file.metadata().map_err(|e| io_err("inspect", &full, e))?;
    if !md.is_file() {
        return Err(FsError::WrongKind {
            path: full,
            kind: EntryKind::of(&md),
            expected: EntryKind::File,
        });
    }
    Ok((file, md))
}

fn mtime(md: &Metadata) -> Option<Timestamp> {
    Timestamp::new(md.mtime(), md.mtime_nsec() as i32).ok()
}

/// At most `limit` bytes of `file`, plus one: a file that grew since its `fstat` is noticed
/// (longer than `limit`), not read whole.
fn read_up_to(file: &mut File, limit: u64, size_hint: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(size_hint.min(limit) as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Read a whole regular file of at most `limit` bytes. A larger file is refused with
/// [`FsError::TooLarge`] without being read.
pub fn read_file(root: &Path, path: &Path, limit: u64) -> Result<FileContent> {
    let (mut file, md) = open_regular(root, path)?;
    let too_large = |size| FsError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
    };
    if md.len() > limit {
        return Err(too_large(md.len()));
    }
    let bytes = read_up_to(&mut file, limit, md.len()).map_err(|e| io_err("read", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(FileContent {
        path: path.to_path_buf(),
        bytes,
        size: md.len(),
        modified: mtime(&md),
        truncated: false,
        starts_mid_line: false,
    })
}

/// Read at most the last `max_bytes` bytes of a regular file.
pub fn read_tail(root: &Path, path: &Path, max_bytes: u64) -> Result<FileContent> {
    let (mut file, md) = open_regular(root, path)?;
    let size = md.len();
    let start = size.saturating_sub(max_bytes);
    // One byte before the tail tells whether the tail starts at a line start.
    let peek = u64::from(start > 0);
    let read = |e| io_err("read", path, e);
    file.seek(SeekFrom::Start(start - peek)).map_err(read)?;
    let mut bytes = Vec::with_capacity((size - start + peek) as usize);
    file.take(max_bytes + peek)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    let mut starts_mid_line = false;
    if peek == 1 && !bytes.is_empty() {
        starts_mid_line = bytes[0] != b'\n';
        bytes.remove(0);
    }
    Ok(FileContent {
        path: path.to_path_buf(),
        bytes,
        size,
        modified: mtime(&md),
        truncated: start > 0,
        starts_mid_line,
    })
}

/// The outcome of reading one file of a directory already open.
pub(crate) enum ReadOutcome {
    Bytes(Vec<u8>, Owner),
    TooLarge(u64),
    /// It was swapped for something else since its lstat.
    NotRegular(EntryKind),
    Missing,
}

/// Read the regular file `dir/name`, at most `limit` bytes. Never follows a symlink and never
/// blocks on a FIFO swapped in since the caller's lstat.
pub(crate) fn read_capped(dir: &ConfinedDir, name: &OsStr, limit: u64) -> Result<ReadOutcome> {
    let path = || dir.path.join(name);
    let mut file = match open_nofollow(dir, name) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadOutcome::Missing),
        Err(e) if is_symlink_refusal(&e) => return Ok(ReadOutcome::NotRegular(EntryKind::Symlink)),
        Err(e) => return Err(io_err("open", path(), e)),
    };
    let md = file.metadata().map_err(|e| io_err("inspect", path(), e))?;
    if !md.is_file() {
        return Ok(ReadOutcome::NotRegular(EntryKind::of(&md)));
    }
    if md.len() > limit {
        return Ok(ReadOutcome::TooLarge(md.len()));
    }
    let bytes = read_up_to(&mut file, limit, md.len()).map_err(|e| io_err("read", path(), e))?;
    if bytes.len() as u64 > limit {
        return Ok(ReadOutcome::TooLarge(bytes.len() as u64));
    }
    Ok(ReadOutcome::Bytes(bytes, Owner::of(&md)))
}

/// Open a regular file for reading (never a symlink, FIFO or device), for a reader that seeks
/// and reads only what it needs (a core file of gigabytes); with its size and modification
/// time.
pub fn open_file(root: &Path, path: &Path) -> Result<(std::fs::File, u64, Option<Timestamp>)> {
    let (file, md) = open_regular(root, path)?;
    Ok((file.into_std(), md.len(), mtime(&md)))
}
