//! What a directory entry is, as `lstat` sees it: symlinks are described, never followed.

use std::{ffi::OsStr, path::PathBuf};

use cap_std::fs::{Metadata, MetadataExt};
use k8s_openapi::jiff::Timestamp;
use rustix::fs::FileType;

use super::ConfinedDir;

/// What a directory entry is, by `lstat`: symlinks are not followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl EntryKind {
    /// The kind of the `st_mode` bits `mode`.
    pub fn from_mode(mode: u32) -> Self {
        match FileType::from_raw_mode(mode) {
            FileType::RegularFile => Self::File,
            FileType::Directory => Self::Dir,
            FileType::Symlink => Self::Symlink,
            FileType::Fifo => Self::Fifo,
            FileType::Socket => Self::Socket,
            FileType::CharacterDevice => Self::CharDevice,
            FileType::BlockDevice => Self::BlockDevice,
            FileType::Unknown => Self::Unknown,
        }
    }

    /// The kind of what `md` describes.
    pub fn of(md: &Metadata) -> Self {
        Self::from_mode(md.mode())
    }

    /// Words for a finding: "regular file", "directory", "symlink", "FIFO", ...
    pub fn describe(self) -> &'static str {
        match self {
            Self::File => "regular file",
            Self::Dir => "directory",
            Self::Symlink => "symlink",
            Self::Fifo => "FIFO",
            Self::Socket => "socket",
            Self::CharDevice => "character device",
            Self::BlockDevice => "block device",
            Self::Unknown => "unknown file type",
        }
    }

    /// The `ls -l` type letter.
    fn letter(self) -> char {
        match self {
            Self::File => '-',
            Self::Dir => 'd',
            Self::Symlink => 'l',
            Self::Fifo => 'p',
            Self::Socket => 's',
            Self::CharDevice => 'c',
            Self::BlockDevice => 'b',
            Self::Unknown => '?',
        }
    }
}

impl std::fmt::Display for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// One entry of a directory (or the result of [`super::stat`]), as `lstat` sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// File name (lossy UTF-8).
    pub name: String,
    /// Full path (root joined with the walked components).
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Size in bytes (of the link itself for a symlink).
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub permissions: u32,
    pub modified: Option<Timestamp>,
    /// Target of a symlink, read with `readlinkat`, never followed.
    pub link_target: Option<String>,
}

impl Entry {
    /// The entry `name` of `dir` whose `lstat` is `md`.
    pub(crate) fn new(dir: &ConfinedDir, name: &OsStr, md: &Metadata) -> Self {
        let kind = EntryKind::of(md);
        Self {
            name: name.to_string_lossy().into_owned(),
            path: dir.path.join(name),
            kind,
            size: md.len(),
            permissions: md.mode() & 0o7777,
            modified: Timestamp::new(md.mtime(), md.mtime_nsec() as i32).ok(),
            link_target: (kind == EntryKind::Symlink)
                .then(|| dir.link_target(name))
                .flatten(),
        }
    }

    /// The entry `name` of `dir` whose `lstat` failed (for another reason than its being gone).
    pub(crate) fn unknown(dir: &ConfinedDir, name: &OsStr) -> Self {
        Self {
            name: name.to_string_lossy().into_owned(),
            path: dir.path.join(name),
            kind: EntryKind::Unknown,
            size: 0,
            permissions: 0,
            modified: None,
            link_target: None,
        }
    }

    /// Permissions in `ls -l` form, e.g. `prw-r-----`.
    pub fn mode_string(&self) -> String {
        let mut s = String::with_capacity(10);
        s.push(self.kind.letter());
        for shift in [6, 3, 0] {
            let bits = (self.permissions >> shift) & 0o7;
            s.push(if bits & 4 != 0 { 'r' } else { '-' });
            s.push(if bits & 2 != 0 { 'w' } else { '-' });
            s.push(if bits & 1 != 0 { 'x' } else { '-' });
        }
        s
    }

    /// Permission bits in octal, e.g. `0640`.
    pub fn octal_mode(&self) -> String {
        format!("{:04o}", self.permissions)
    }

    /// Seconds between the last modification and `now` (0 when unknown or in the future).
    pub fn age_seconds(&self, now: Timestamp) -> i64 {
        self.modified
            .map(|m| now.duration_since(m).as_secs().max(0))
            .unwrap_or(0)
    }
}
