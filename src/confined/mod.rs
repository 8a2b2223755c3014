//! Confined file access below a Worker's trusted root: the one place that reads and changes a
//! worker's files, for diagnosis, observation and recovery alike.
//!
//! The worker's files live under a shared root that other processes (the worker itself, an
//! attacker with write access to the share, a confused operator) can change at any time. One
//! rule holds for every access: nothing outside the root is ever reached through a symlink,
//! FIFOs and devices are never opened, and reads are capped.
//!
//! * `dir`: the `ConfinedDir` handle. Every directory is reached from the trusted root
//!   one component at a time, an `lstat` refusing a symlink and `open_dir_nofollow` refusing
//!   one swapped in since; every later access names a single component relative to the
//!   handle. Also the path arithmetic ([`confine`]).
//! * `read`: classifying (`lstat`, never followed), listing, and reading regular files
//!   (`O_NOFOLLOW | O_NONBLOCK`, checked again by `fstat`, capped), by path from the root
//!   ([`read_file`], [`read_tail`], [`stat`], [`visit_dir`], [`list_dir`]) or in a directory
//!   already open (`read_capped`).
//! * `write`: renames that never replace (`rename_noreplace`), files created exclusively,
//!   never written through a symlink (`write_new`).
//! * `remove_tree`: removing a hostile directory tree without following it anywhere.
//! * `json_object`: rewriting some fields of a JSON object while keeping every other key
//!   and value byte for byte.
//!
//! Everything fails with the one [`FsError`] (its [`FsError::reason`] is a short label for
//! status and evidence). Everything here blocks; async callers use [`crate::blocking`].
//! Built on cap-std and rustix handles only.

mod dir;
mod entry;
mod error;
pub(crate) mod json_object;
mod read;
pub(crate) mod remove_tree;
mod write;

pub use dir::confine;
use dir::{components_below, descend, open_root_if_present};
pub(crate) use dir::{lossy, open_child, open_path, open_root, ConfinedDir};
pub use entry::{Entry, EntryKind};
pub use error::FsError;
pub(crate) use error::{io_err, Result};
pub use read::{
    count_entries, list_dir, open_file, read_file, read_tail, stat, visit_dir, FileContent,
    Listing, DEFAULT_MAX_ENTRIES,
};
pub(crate) use read::{read_capped, ReadOutcome};
pub(crate) use write::{dir_owner, rename_noreplace, write_new, Owner};
pub use write::{make_dir, place_file, remove_dir_tree};

#[cfg(test)]
mod tests;
