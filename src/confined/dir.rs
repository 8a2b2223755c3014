//! The confined directory handle and the walk that opens it.
//!
//! Every directory is reached from the trusted root one component at a time: an `lstat`
//! refuses a symlink or anything else that is not a directory, then `open_dir_nofollow`
//! opens it (refusing a symlink swapped in since). The returned `ConfinedDir` is a handle,
//! and every later access names a single component relative to it, so a symlink swapped in
//! above it afterwards changes nothing.

use std::{
    ffi::{OsStr, OsString},
    io,
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::{Component, Path, PathBuf},
};

use cap_fs_ext::DirExt;
use cap_std::{
    ambient_authority,
    fs::{Dir, Metadata},
};
use rustix::fs::{Mode, OFlags};

use super::{io_err, EntryKind, FsError, Result};

/// Longest symlink target reported (targets are read with `readlinkat`, never followed).
const MAX_LINK_TARGET: usize = 4096;

/// A directory reached without following any symlink below the trusted root, and its path
/// (for messages only: every access goes through `dir`).
pub(crate) struct ConfinedDir {
    pub(crate) dir: Dir,
    pub(crate) path: PathBuf,
}

impl ConfinedDir {
    /// `lstat` of one entry; `None` when it does not exist.
    pub(crate) fn lstat(&self, name: &OsStr) -> Result<Option<Metadata>> {
        match self.dir.symlink_metadata(name) {
            Ok(md) => Ok(Some(md)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("inspect", self.path.join(name), e)),
        }
    }

    /// Where the symlink `name` points (lossy, capped), read and never followed; `None` when
    /// it cannot be read (not a symlink, gone).
    pub(crate) fn link_target(&self, name: &OsStr) -> Option<String> {
        let target = self.dir.read_link_contents(name).ok()?;
        let bytes = target.as_os_str().as_bytes();
        Some(String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LINK_TARGET)]).into_owned())
    }

    /// The directory itself opened for reading: cap-std's handles are `O_PATH` descriptors,
    /// which `fsync` and `syncfs` refuse.
    pub(crate) fn readable(&self) -> Result<OwnedFd> {
        rustix::fs::openat(
            &self.dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open directory", &self.path, e.into()))
    }

    pub(crate) fn fsync(&self) -> Result<()> {
        rustix::fs::fsync(self.readable()?)
            .map_err(|e| io_err("fsync directory", &self.path, e.into()))
    }

    /// Flush every dirty file of this directory's filesystem (one call for a whole batch).
    pub(crate) fn syncfs(&self) -> Result<()> {
        rustix::fs::syncfs(self.readable()?).map_err(|e| io_err("syncfs", &self.path, e.into()))
    }

    /// The entry names, streamed in directory order (`.` and `..` left out): memory does not
    /// grow with the directory, whose entries are untrusted and may number millions.
    pub(crate) fn stream_names(&self) -> Result<impl Iterator<Item = Result<OsString>> + '_> {
        let list = move |e| io_err("list", &self.path, e);
        let entries = self.dir.entries().map_err(list)?;
        Ok(entries.map(move |e| e.map(|e| e.file_name()).map_err(list)))
    }

    /// Unlink a file or symlink (never followed); an entry already gone is fine.
    pub(crate) fn remove_file(&self, name: &OsStr) -> Result<()> {
        match self.dir.remove_file_or_symlink(name) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", self.path.join(name), e)),
        }
    }

    /// Why the entry `name`, whose `lstat` is `md`, is refused where a `expected` should be.
    pub(crate) fn refuse(&self, name: &OsStr, md: &Metadata, expected: EntryKind) -> FsError {
        let path = self.path.join(name);
        match EntryKind::of(md) {
            EntryKind::Symlink => FsError::Symlink {
                target: self.link_target(name),
                path,
            },
            kind => FsError::WrongKind {
                path,
                kind,
                expected,
            },
        }
    }

    fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            dir: self
                .dir
                .try_clone()
                .map_err(|e| io_err("open directory", &self.path, e))?,
            path: self.path.clone(),
        })
    }
}

/// The trusted root itself, opened from its absolute path: the one ambient open (symlinks in
/// it are followed: the administrator declared it), every other directory is reached from
/// it with [`open_path`].
pub(crate) fn open_root(root: &Path) -> Result<ConfinedDir> {
    Ok(ConfinedDir {
        dir: Dir::open_ambient_dir(root, ambient_authority())
            .map_err(|e| io_err("open trusted root", root, e))?,
        path: root.to_path_buf(),
    })
}

/// [`open_root`] for a reader: `None` when the root does not exist, a
/// [`FsError::WrongKind`] when it is not a directory.
pub(crate) fn open_root_if_present(root: &Path) -> Result<Option<ConfinedDir>> {
    match open_root(root) {
        Ok(dir) => Ok(Some(dir)),
        Err(FsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
            Err(FsError::WrongKind {
                path: root.to_path_buf(),
                kind: std::fs::metadata(root)
                    .map(|md| EntryKind::from_mode(std::os::unix::fs::MetadataExt::mode(&md)))
                    .unwrap_or(EntryKind::Unknown),
                expected: EntryKind::Dir,
            })
        }
        Err(e) => Err(e),
    }
}

/// The printable form of a file name (invalid UTF-8 replaced).
pub(crate) fn lossy(name: &OsStr) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

/// Join `relative` (from a spec) under `root`, refusing absolute paths, `..` and empty paths.
pub fn confine(root: &Path, relative: &str) -> Result<PathBuf> {
    let refused = || FsError::NotRelative(relative.to_string());
    if relative.trim().is_empty() || relative.contains('\0') {
        return Err(refused());
    }
    let mut joined = root.to_path_buf();
    let mut any = false;
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(c) => {
                joined.push(c);
                any = true;
            }
            Component::CurDir => {}
            _ => return Err(refused()),
        }
    }
    if !any {
        return Err(refused());
    }
    Ok(joined)
}

/// The names of the directories from `root` down to `path`, each a plain name (`.`
/// components dropped); [`FsError::Outside`] when `path` is not below `root` or has a `..`
/// or root component.
pub(crate) fn components_below(root: &Path, path: &Path) -> Result<Vec<OsString>> {
    let outside = || FsError::Outside {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
    };
    let rest = path.strip_prefix(root).map_err(|_| outside())?;
    let mut names = Vec::new();
    for component in rest.components() {
        match component {
            Component::Normal(c) => names.push(c.to_os_string()),
            Component::CurDir => {}
            _ => return Err(outside()),
        }
    }
    Ok(names)
}

/// Open `parent/name` as a directory without following a symlink; `None` when it does not
/// exist and `create` is false. A directory this creates is made durable in its parent.
pub(crate) fn open_child(
    parent: &ConfinedDir,
    name: &OsStr,
    create: bool,
) -> Result<Option<ConfinedDir>> {
    let path = parent.path.join(name);
    let mut created = false;
    match parent.lstat(name)? {
        Some(md) if md.is_dir() => {}
        Some(md) => return Err(parent.refuse(name, &md, EntryKind::Dir)),
        None if !create => return Ok(None),
        None => match parent.dir.create_dir(name) {
            Ok(()) => created = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create directory", path, e)),
        },
    }
    // The lstat above and this open race with a swap: open_dir_nofollow refuses a symlink.
    let dir = match parent.dir.open_dir_nofollow(name) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) => {
            return Err(match parent.lstat(name)? {
                Some(md) if !md.is_dir() => parent.refuse(name, &md, EntryKind::Dir),
                _ => io_err("open directory", path, e),
            })
        }
    };
    if created {
        parent.fsync()?;
    }
    Ok(Some(ConfinedDir { dir, path }))
}

/// Walk from `start` down through `names`, one directory at a time; `None` when one of them
/// does not exist and `create` is false.
pub(crate) fn descend(
    start: ConfinedDir,
    names: &[OsString],
    create: bool,
) -> Result<Option<ConfinedDir>> {
    let mut cur = start;
    for name in names {
        match open_child(&cur, name, create)? {
            Some(next) => cur = next,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

/// Walk from `root` (whose path is `root.path`) down to `path`, one component at a time.
pub(crate) fn open_path(
    root: &ConfinedDir,
    path: &Path,
    create: bool,
) -> Result<Option<ConfinedDir>> {
    let names = components_below(&root.path, path)?;
    descend(root.try_clone()?, &names, create)
}
