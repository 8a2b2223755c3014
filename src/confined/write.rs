//! Changes below the trusted root: renames that never replace, files created exclusively
//! (never written through a symlink) with the owner of the file they replace.

use std::{
    ffi::OsStr,
    io::{self, Write},
    path::Path,
};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{
    Metadata, MetadataExt, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt,
};
use rustix::{
    fs::{Gid, RenameFlags, Uid},
    io::Errno,
};

use super::{io_err, ConfinedDir, Result};

/// Owner and permission bits given to a file that replaces another.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owner {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mode: u32,
}

impl Owner {
    pub(crate) fn of(md: &Metadata) -> Self {
        Self {
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode() & 0o7777,
        }
    }
}

/// Rename without ever replacing what is at the target (`RENAME_NOREPLACE`; on a filesystem
/// without it, a check then a plain rename: the worker is stopped, nobody races us).
pub(crate) fn rename_noreplace(
    from: &ConfinedDir,
    from_name: &OsStr,
    to: &ConfinedDir,
    to_name: &OsStr,
) -> Result<()> {
    let err = |e: io::Error| io_err("rename", from.path.join(from_name), e);
    match rustix::fs::renameat_with(
        &from.dir,
        from_name,
        &to.dir,
        to_name,
        RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
            if to.lstat(to_name)?.is_some() {
                return Err(err(io::Error::from_raw_os_error(
                    Errno::EXIST.raw_os_error(),
                )));
            }
            from.dir.rename(from_name, &to.dir, to_name).map_err(err)
        }
        Err(e) => Err(err(e.into())),
    }
}

/// Owner of a directory, for files created in it with nothing to inherit from.
pub(crate) fn dir_owner(dir: &ConfinedDir) -> Result<Owner> {
    let md = dir
        .dir
        .dir_metadata()
        .map_err(|e| io_err("inspect", &dir.path, e))?;
    Ok(Owner {
        mode: 0o644,
        ..Owner::of(&md)
    })
}

/// Create `dir/name` afresh (a leftover is replaced; a symlink there is unlinked, never
/// written through) with `bytes`, the owner and mode of `owner` (best effort: only root
/// may give a file away), fsynced when `sync`.
pub(crate) fn write_new(
    dir: &ConfinedDir,
    name: &OsStr,
    bytes: &[u8],
    owner: Owner,
    sync: bool,
) -> Result<()> {
    let path = || dir.path.join(name);
    let mut opts = OpenOptions::new();
    opts.write(true)
        .create_new(true)
        .follow(FollowSymlinks::No)
        .mode(owner.mode & 0o777);
    // Temps left by a crash are removed when the step starts; a name still taken (a file
    // created meanwhile) is cleared and the create tried once more.
    let mut file = match dir.dir.open_with(name, &opts) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            dir.remove_file(name)?;
            dir.dir.open_with(name, &opts)
        }
        other => other,
    }
    .map_err(|e| io_err("create", path(), e))?;
    file.write_all(bytes)
        .map_err(|e| io_err("write", path(), e))?;
    // Keep the replaced file's owner so the worker can still rewrite its own files; the
    // umask may have narrowed the mode. Both are cosmetic for safety: errors are ignored.
    // Only changed when they differ: each change is one more inode update per task.
    if let Ok(md) = file.metadata() {
        if md.uid() != owner.uid || md.gid() != owner.gid {
            let _ = rustix::fs::fchown(
                &file,
                Some(Uid::from_raw(owner.uid)),
                Some(Gid::from_raw(owner.gid)),
            );
        }
        if md.mode() & 0o777 != owner.mode & 0o777 {
            let _ = file.set_permissions(Permissions::from_mode(owner.mode & 0o777));
        }
    }
    if sync {
        file.sync_all().map_err(|e| io_err("fsync", path(), e))?;
    }
    Ok(())
}

/// Make the directory `path` below `root` (and the missing ones above it), then give it
/// `mode`: a directory another user (a worker's) must write into.
pub fn make_dir(root: &Path, path: &Path, mode: u32) -> Result<()> {
    let start = super::open_root(root)?;
    let dir = super::open_path(&start, path, true)?
        .ok_or_else(|| super::FsError::Missing(path.into()))?;
    let fd = dir.readable()?;
    rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(mode))
        .map_err(|e| io_err("chmod", path, e.into()))
}

/// Put `bytes` at `path` below `root` as a new file of `mode`, atomically: written and
/// fsynced under a hidden name, then renamed in place. A file already there is kept (the
/// same content was placed by an earlier attempt).
pub fn place_file(root: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let (dir, name) = open_parent(root, path)?;
    let dir = dir.ok_or_else(|| super::FsError::Missing(path.into()))?;
    if dir.lstat(name)?.is_some() {
        return Ok(());
    }
    let temp = std::ffi::OsString::from(format!(".{}.tmp", name.to_string_lossy()));
    let owner = Owner {
        mode,
        ..dir_owner(&dir)?
    };
    write_new(&dir, &temp, bytes, owner, true)?;
    match rename_noreplace(&dir, &temp, &dir, name) {
        Ok(()) => dir.fsync(),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => {
            dir.remove_file(&temp)
        }
        Err(e) => Err(e),
    }
}

/// Remove the directory `path` below `root` and everything in it, never following a symlink;
/// how many entries went (0 when it was not there).
pub fn remove_dir_tree(root: &Path, path: &Path) -> Result<u64> {
    match open_parent(root, path)? {
        (Some(dir), name) => super::remove_tree::remove_tree(&dir, name),
        (None, _) => Ok(0),
    }
}

/// The directory holding `path` (below `root`), opened confined, and `path`'s last name;
/// `None` when that directory does not exist.
fn open_parent<'p>(root: &Path, path: &'p Path) -> Result<(Option<ConfinedDir>, &'p OsStr)> {
    let missing = || super::FsError::Missing(path.into());
    let (parent, name) = (
        path.parent().ok_or_else(missing)?,
        path.file_name().ok_or_else(missing)?,
    );
    let start = super::open_root(root)?;
    Ok((super::open_path(&start, parent, false)?, name))
}
