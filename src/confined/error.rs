//! The one error of confined file access, reads and changes alike.

use std::{io, path::PathBuf};

use super::EntryKind;
use crate::blocking::BlockingError;

/// Why a confined file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The path (or one of its parents) does not exist. Only the reads of a file answer this;
    /// the other operations answer a missing path with `Ok(None)` (or `Listing::Missing`).
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    /// A declared relative path is absolute, empty or contains `..`.
    #[error("{0:?} must be a non-empty relative path without '..'")]
    NotRelative(String),
    /// The path is not below the root it must stay in.
    #[error("{path} is not below the trusted root {root}")]
    Outside { path: PathBuf, root: PathBuf },
    /// The path, or a directory on the way to it, is a symlink; it is not followed.
    #[error("{path} is a symlink; refused, not followed")]
    Symlink {
        path: PathBuf,
        /// Where it points (read with `readlinkat`, never followed), when it could be read.
        target: Option<String>,
    },
    /// The path is not what was expected (a directory where a file should be, a FIFO, ...).
    #[error("{path} is a {kind}, not a {expected}")]
    WrongKind {
        path: PathBuf,
        kind: EntryKind,
        expected: EntryKind,
    },
    /// The file is larger than the caller is willing to read; nothing was read.
    #[error("{path} is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// A directory being removed was moved out of the tree meanwhile: the removal stopped
    /// rather than follow `..` out of the tree.
    #[error("{path} was moved while it was being removed; stopped, nothing outside it removed")]
    Moved { path: PathBuf },
    /// Any other I/O error (permission denied, ...).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The blocking task doing the file work did not finish.
    #[error(transparent)]
    Blocking(#[from] BlockingError),
}

impl FsError {
    /// A short camelCase word for evidence and status: missing, notConfined, outside, symlink,
    /// wrongKind, tooLarge, moved, io.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing",
            Self::NotRelative(_) => "notConfined",
            Self::Outside { .. } => "outside",
            Self::Symlink { .. } => "symlink",
            Self::WrongKind { .. } => "wrongKind",
            Self::TooLarge { .. } => "tooLarge",
            Self::Moved { .. } => "moved",
            Self::Io { .. } | Self::Blocking(_) => "io",
        }
    }

    /// The OS error number of an I/O failure (`EEXIST`, `ENOENT`, ...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub(crate) type Result<T, E = FsError> = std::result::Result<T, E>;

pub(crate) fn io_err(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> FsError {
    FsError::Io {
        op,
        path: path.into(),
        source,
    }
}
