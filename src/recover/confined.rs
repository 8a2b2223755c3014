//! Confined, symlink-refusing file access below a Worker's trusted root, shared by the
//! recovery steps that change a worker's files ([`super::clean_state`], [`super::batches`]).
//!
//! Every directory is reached from the trusted root one component at a time with
//! `open_dir_nofollow`, after an `lstat` that refuses a symlink (`open_path`,
//! `open_child`); the returned `DirH` is a handle, and every later access names a single
//! component relative to it, so a symlink swapped in above it afterwards changes nothing.
//! Files are classified by `lstat` before being opened, opened with
//! `O_NOFOLLOW | O_NONBLOCK` and checked again by `fstat` (`read_capped`); renames never
//! replace (`rename_noreplace`); new files are created exclusively, never written through a
//! symlink (`write_new`).
//!
//! The raw-JSON-object helpers (`parse_object`, `last_value`, `replace_fields`) rewrite
//! some fields of a JSON object while keeping every other key and value byte for byte.

use std::{
    ffi::{OsStr, OsString},
    fmt,
    io::{self, Read, Write},
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::{
    ambient_authority,
    fs::{
        Dir, FileType, FileTypeExt, Metadata, MetadataExt, OpenOptions, OpenOptionsExt,
        Permissions, PermissionsExt,
    },
};
use rustix::{
    fs::{Gid, Mode, OFlags, RenameFlags, Uid},
    io::Errno,
};
use serde::{de, Deserialize};
use serde_json::value::RawValue;

/// Why a confined file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path} is not below the trusted root {root}")]
    NotConfined { path: PathBuf, root: PathBuf },
    #[error("{path} is a symlink where a directory is expected; refused, not followed")]
    SymlinkedDir { path: PathBuf },
    #[error("{path} is a {kind} where a {expected} is expected")]
    WrongKind {
        path: PathBuf,
        kind: &'static str,
        expected: &'static str,
    },
    /// A directory being removed was moved out of the tree meanwhile: the removal stopped
    /// rather than follow `..` out of the tree.
    #[error("{path} was moved while it was being removed; stopped, nothing outside it removed")]
    Moved { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FsError {
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

/// The trusted root itself, opened from its absolute path: the one ambient open, every other
/// directory is reached from it with [`open_path`].
pub(crate) fn open_root(root: &Path) -> Result<DirH> {
    Ok(DirH {
        dir: Dir::open_ambient_dir(root, ambient_authority())
            .map_err(|e| io_err("open trusted root", root, e))?,
        path: root.to_path_buf(),
    })
}

/// The printable form of a file name (invalid UTF-8 replaced).
pub(crate) fn lossy(name: &OsStr) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

/// A directory handle and its path (for messages only: every access goes through `dir`).
pub(crate) struct DirH {
    pub(crate) dir: Dir,
    pub(crate) path: PathBuf,
}

impl DirH {
    /// `lstat` of one entry; `None` when it does not exist.
    pub(crate) fn lstat(&self, name: &OsStr) -> Result<Option<Metadata>> {
        match self.dir.symlink_metadata(name) {
            Ok(md) => Ok(Some(md)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("inspect", self.path.join(name), e)),
        }
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
}

/// Words for a file type: "directory", "symlink", "FIFO", ...
pub(crate) fn kind_word(ft: FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "regular file"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// The names of the directories from `root` down to `path`; `.` components are dropped.
pub(crate) fn components_below(root: &Path, path: &Path) -> Result<Vec<OsString>> {
    crate::observe::fs_safe::names_below(root, path).ok_or_else(|| FsError::NotConfined {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
    })
}

/// Open `parent/name` as a directory without following a symlink; `None` when it does not
/// exist and `create` is false. A directory this creates is made durable in its parent.
pub(crate) fn open_child(parent: &DirH, name: &OsStr, create: bool) -> Result<Option<DirH>> {
    let path = parent.path.join(name);
    let refuse = |md: Metadata, path: PathBuf| {
        if md.file_type().is_symlink() {
            FsError::SymlinkedDir { path }
        } else {
            FsError::WrongKind {
                path,
                kind: kind_word(md.file_type()),
                expected: "directory",
            }
        }
    };
    let mut created = false;
    match parent.lstat(name)? {
        Some(md) if md.is_dir() => {}
        Some(md) => return Err(refuse(md, path)),
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
                Some(md) if !md.is_dir() => refuse(md, path),
                _ => io_err("open directory", path, e),
            })
        }
    };
    if created {
        parent.fsync()?;
    }
    Ok(Some(DirH { dir, path }))
}

/// Walk from `root` (whose path is `root.path`) down to `path`, one component at a time.
pub(crate) fn open_path(root: &DirH, path: &Path, create: bool) -> Result<Option<DirH>> {
    let mut cur = DirH {
        dir: root
            .dir
            .try_clone()
            .map_err(|e| io_err("open directory", &root.path, e))?,
        path: root.path.clone(),
    };
    for name in components_below(&root.path, path)? {
        match open_child(&cur, &name, create)? {
            Some(next) => cur = next,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

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

/// The outcome of reading one file.
pub(crate) enum ReadOutcome {
    Bytes(Vec<u8>, Owner),
    TooLarge(u64),
    /// It was swapped for something else since its lstat.
    NotRegular(&'static str),
    Missing,
}

/// Read the regular file `dir/name`, at most `limit` bytes. Never follows a symlink and never
/// blocks on a FIFO swapped in since the caller's lstat.
pub(crate) fn read_capped(dir: &DirH, name: &OsStr, limit: u64) -> Result<ReadOutcome> {
    let path = || dir.path.join(name);
    let mut opts = OpenOptions::new();
    opts.read(true)
        .follow(FollowSymlinks::No)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let mut file = match dir.dir.open_with(name, &opts) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadOutcome::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(ReadOutcome::NotRegular("symlink"))
        }
        Err(e) => return Err(io_err("open", path(), e)),
    };
    let md = file.metadata().map_err(|e| io_err("inspect", path(), e))?;
    if !md.is_file() {
        return Ok(ReadOutcome::NotRegular(kind_word(md.file_type())));
    }
    if md.len() > limit {
        return Ok(ReadOutcome::TooLarge(md.len()));
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    // One byte over the limit: a file that grew since the fstat is noticed, not read whole.
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err("read", path(), e))?;
    if bytes.len() as u64 > limit {
        return Ok(ReadOutcome::TooLarge(bytes.len() as u64));
    }
    Ok(ReadOutcome::Bytes(bytes, Owner::of(&md)))
}

/// Rename without ever replacing what is at the target (`RENAME_NOREPLACE`; on a filesystem
/// without it, a check then a plain rename: the worker is stopped, nobody races us).
pub(crate) fn rename_noreplace(
    from: &DirH,
    from_name: &OsStr,
    to: &DirH,
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
                return Err(err(io::Error::from_raw_os_error(libc::EEXIST)));
            }
            from.dir.rename(from_name, &to.dir, to_name).map_err(err)
        }
        Err(e) => Err(err(e.into())),
    }
}

/// A JSON object as its raw (key, value) texts, in order, duplicates included: keys, values,
/// number formats, escapes and nesting are kept byte for byte. (Unlike an
/// `IndexMap<String, Box<RawValue>>`, a key written `"caf\u00e9"` keeps its escape and a
/// duplicate key is not silently dropped.)
pub(crate) type Pairs = Vec<(Box<RawValue>, Box<RawValue>)>;

struct RawObject(Pairs);

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = RawObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key::<Box<RawValue>>()? {
                    pairs.push((key, map.next_value::<Box<RawValue>>()?));
                }
                Ok(RawObject(pairs))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Parse `bytes` as a JSON object; `Err` says why it is not one.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Pairs, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()))?;
    let raw: Box<RawValue> =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let kind = match raw.get().as_bytes().first() {
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        _ => Some("a number"),
    };
    if let Some(kind) = kind {
        return Err(format!("top level is {kind}, not an object"));
    }
    serde_json::from_str::<RawObject>(raw.get())
        .map(|o| o.0)
        .map_err(|e| format!("not valid JSON: {e}"))
}

/// The decoded text of a raw key.
fn key_text(key: &RawValue) -> Option<String> {
    serde_json::from_str(key.get()).ok()
}

/// The last value of `key` (JSON parsers keep the last of duplicate keys).
pub(crate) fn last_value<'a>(pairs: &'a Pairs, key: &str) -> Option<&'a RawValue> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| key_text(k).as_deref() == Some(key))
        .map(|(_, v)| &**v)
}

/// `pairs` with the values of `fields` replaced (at the first occurrence of each key, later
/// duplicates of it dropped) or appended in order; everything else verbatim. Compact.
pub(crate) fn replace_fields(pairs: &Pairs, fields: &[(&str, String)]) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    out.push('{');
    let mut written = vec![false; fields.len()];
    let sep = |out: &mut String| {
        if out.len() > 1 {
            out.push(',');
        }
    };
    for (k, v) in pairs {
        let name = key_text(k);
        match fields.iter().position(|(f, _)| Some(*f) == name.as_deref()) {
            Some(i) if written[i] => {}
            Some(i) => {
                written[i] = true;
                sep(&mut out);
                out.push_str(k.get());
                out.push(':');
                out.push_str(&fields[i].1);
            }
            None => {
                sep(&mut out);
                out.push_str(k.get());
                out.push(':');
                out.push_str(v.get());
            }
        }
    }
    for (i, (f, value)) in fields.iter().enumerate() {
        if !written[i] {
            sep(&mut out);
            out.push_str(&json_string(f));
            out.push(':');
            out.push_str(value);
        }
    }
    out.push('}');
    out.into_bytes()
}

pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

pub(crate) fn json_f64(f: f64) -> String {
    serde_json::to_string(&f).expect("a finite float serializes")
}

/// Owner of a directory, for files created in it with nothing to inherit from.
pub(crate) fn dir_owner(dir: &DirH) -> Result<Owner> {
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
    dir: &DirH,
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
