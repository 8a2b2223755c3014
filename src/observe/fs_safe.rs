//! Reading inside a worker's declared directories without ever leaving them.
//!
//! The worker's files live under a shared root that other processes (the worker itself, an
//! attacker with write access to the share, a confused operator) can change at any time. This
//! module reads them so that nothing outside the root is ever read through a symlink:
//!
//! * every path is walked one component at a time from the root with `openat(2)` and
//!   `O_NOFOLLOW | O_DIRECTORY`, so a symlinked directory anywhere below the root is refused
//!   (the root itself, an absolute path the administrator declared, is trusted);
//! * files are opened relative to that directory with `O_NOFOLLOW | O_NONBLOCK` (a FIFO never
//!   blocks the reader) and must be regular files by `fstat` of the opened descriptor;
//! * only regular files are ever opened: a FIFO, socket or device is classified, never opened;
//! * reads are capped: whole files above a limit are refused without reading, tails read only
//!   the last bytes;
//! * listings classify each entry (file, directory, symlink, FIFO, ...) without following or
//!   recursing, and a missing path is an answer ([`Listing::Missing`], `Ok(None)`), not an error.
//!
//! Everything here is blocking; async callers use [`crate::blocking`].

use std::{
    ffi::{CStr, CString, OsStr, OsString},
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    ops::ControlFlow,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Component, Path, PathBuf},
};

use k8s_openapi::jiff::Timestamp;

/// Most entries a listing returns; the rest are counted as truncated.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// Longest symlink target reported (targets are read with `readlinkat`, never followed).
const MAX_LINK_TARGET: usize = 4096;

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
    fn from_mode(mode: libc::mode_t) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Self::File,
            libc::S_IFDIR => Self::Dir,
            libc::S_IFLNK => Self::Symlink,
            libc::S_IFIFO => Self::Fifo,
            libc::S_IFSOCK => Self::Socket,
            libc::S_IFCHR => Self::CharDevice,
            libc::S_IFBLK => Self::BlockDevice,
            _ => Self::Unknown,
        }
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

/// One entry of a directory (or the result of [`stat`]), as `lstat` sees it.
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

/// Why a path could not be read safely.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SafeError {
    /// The path (or one of its parents) does not exist.
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    /// A declared relative path is absolute, empty or contains `..`.
    #[error("{0:?} must be a non-empty relative path without '..'")]
    NotConfined(String),
    /// The path is not below the root it must stay in.
    #[error("{} is not inside {}", .path.display(), .root.display())]
    Outside { path: PathBuf, root: PathBuf },
    /// The path, or a directory on the way to it, is a symlink; it is not followed.
    #[error("{} is a symlink; it is not followed", .path.display())]
    Symlink {
        path: PathBuf,
        target: Option<String>,
    },
    /// The path is not what was expected (a directory where a file should be, a FIFO, ...).
    #[error("{} is a {}, not a {}", .path.display(), .kind.describe(), .expected.describe())]
    WrongKind {
        path: PathBuf,
        kind: EntryKind,
        expected: EntryKind,
    },
    /// The file is larger than the caller is willing to read; nothing was read.
    #[error("{} is {size} bytes, more than the {limit} bytes allowed", .path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// Any other I/O error (permission denied, ...).
    #[error("{}: {message}", .path.display())]
    Io { path: PathBuf, message: String },
}

impl SafeError {
    /// A short camelCase word for evidence: missing, notConfined, outside, symlink, wrongKind,
    /// tooLarge, io.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing",
            Self::NotConfined(_) => "notConfined",
            Self::Outside { .. } => "outside",
            Self::Symlink { .. } => "symlink",
            Self::WrongKind { .. } => "wrongKind",
            Self::TooLarge { .. } => "tooLarge",
            Self::Io { .. } => "io",
        }
    }
}

fn io_error(path: &Path, e: io::Error) -> SafeError {
    SafeError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Join `relative` (from a spec) under `root`, refusing absolute paths, `..` and empty paths.
pub fn confine(root: &Path, relative: &str) -> Result<PathBuf, SafeError> {
    let rel = Path::new(relative);
    if relative.trim().is_empty() || relative.contains('\0') {
        return Err(SafeError::NotConfined(relative.to_string()));
    }
    let mut out = root.to_path_buf();
    let mut any = false;
    for component in rel.components() {
        match component {
            Component::Normal(c) => {
                out.push(c);
                any = true;
            }
            Component::CurDir => {}
            _ => return Err(SafeError::NotConfined(relative.to_string())),
        }
    }
    if !any {
        return Err(SafeError::NotConfined(relative.to_string()));
    }
    Ok(out)
}

/// The components of `path` below `root`, each a plain name; `None` when `path` is not below
/// `root` or has a `..` or root component. Shared with the write path (`crate::recover`).
pub fn names_below(root: &Path, path: &Path) -> Option<Vec<OsString>> {
    let rest = path.strip_prefix(root).ok()?;
    let mut out = Vec::new();
    for component in rest.components() {
        match component {
            Component::Normal(c) => out.push(c.to_os_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

fn components_below(root: &Path, path: &Path) -> Result<Vec<OsString>, SafeError> {
    names_below(root, path).ok_or_else(|| SafeError::Outside {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
    })
}

fn cstring(path: &Path, name: &OsStr) -> Result<CString, SafeError> {
    CString::new(name.as_bytes()).map_err(|_| SafeError::Io {
        path: path.to_path_buf(),
        message: "path contains a NUL byte".into(),
    })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
fn lstat_at(dir: &OwnedFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `dir` is an open descriptor, `name` a NUL-terminated string and `st` a valid
    // out-pointer; the struct is initialised when the call returns 0.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        // SAFETY: fstatat succeeded, so it filled the struct.
        Ok(unsafe { st.assume_init() })
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `openat(dir, name, flags)`.
fn open_at(dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: valid descriptor and NUL-terminated name; a non-negative result is a fresh
    // descriptor that we own.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: `fd` is a new descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `readlinkat(dir, name)`, lossy, capped.
fn read_link_at(dir: &OwnedFd, name: &CStr) -> Option<String> {
    let mut buf = vec![0u8; MAX_LINK_TARGET];
    // SAFETY: the buffer is valid for `buf.len()` bytes.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid descriptor and out-pointer.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc == 0 {
        // SAFETY: fstat succeeded.
        Ok(unsafe { st.assume_init() })
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mtime(st: &libc::stat) -> Option<Timestamp> {
    Timestamp::new(st.st_mtime, st.st_mtime_nsec as i32).ok()
}

fn entry_from_stat(
    dir: &OwnedFd,
    name_c: &CStr,
    name: &OsStr,
    path: PathBuf,
    st: &libc::stat,
) -> Entry {
    let kind = EntryKind::from_mode(st.st_mode);
    Entry {
        name: name.to_string_lossy().into_owned(),
        path,
        kind,
        size: st.st_size.max(0) as u64,
        permissions: st.st_mode & 0o7777,
        modified: mtime(st),
        link_target: (kind == EntryKind::Symlink)
            .then(|| read_link_at(dir, name_c))
            .flatten(),
    }
}

/// Open the trusted root directory (the one place symlinks are followed: the administrator
/// declared it).
fn open_root(root: &Path) -> Result<Option<OwnedFd>, SafeError> {
    let c = cstring(root, root.as_os_str())?;
    // SAFETY: NUL-terminated path; a non-negative result is a descriptor we own.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            Some(libc::ENOTDIR) => Err(SafeError::WrongKind {
                path: root.to_path_buf(),
                kind: std::fs::metadata(root)
                    .map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        EntryKind::from_mode(m.mode() as libc::mode_t)
                    })
                    .unwrap_or(EntryKind::Unknown),
                expected: EntryKind::Dir,
            }),
            _ => Err(io_error(root, e)),
        };
    }
    // SAFETY: fresh descriptor.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Walk `names` below `root`, each a real directory (never a symlink). `Ok(None)` when one of
/// them does not exist. Returns the innermost directory and its path.
fn walk_dirs(root: &Path, names: &[OsString]) -> Result<Option<(OwnedFd, PathBuf)>, SafeError> {
    let Some(mut dir) = open_root(root)? else {
        return Ok(None);
    };
    let mut path = root.to_path_buf();
    for name in names {
        path.push(name);
        let c = cstring(&path, name)?;
        let st = match lstat_at(&dir, &c) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
        };
        match EntryKind::from_mode(st.st_mode) {
            EntryKind::Dir => {}
            EntryKind::Symlink => {
                return Err(SafeError::Symlink {
                    target: read_link_at(&dir, &c),
                    path,
                })
            }
            kind => {
                return Err(SafeError::WrongKind {
                    path,
                    kind,
                    expected: EntryKind::Dir,
                })
            }
        }
        // O_NOFOLLOW | O_DIRECTORY: if the entry was swapped for a symlink since the lstat,
        // the open fails instead of following it.
        dir = match open_at(
            &dir,
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                return Err(match e.raw_os_error() {
                    Some(libc::ENOENT) => return Ok(None),
                    Some(libc::ELOOP) => SafeError::Symlink { path, target: None },
                    _ => io_error(&path, e),
                })
            }
        };
    }
    Ok(Some((dir, path)))
}

/// Split `path` (below `root`) into its parent directory names and its final name.
fn split_leaf(root: &Path, path: &Path) -> Result<(Vec<OsString>, OsString), SafeError> {
    let mut names = components_below(root, path)?;
    let leaf = names.pop().ok_or_else(|| SafeError::WrongKind {
        path: path.to_path_buf(),
        kind: EntryKind::Dir,
        expected: EntryKind::File,
    })?;
    Ok((names, leaf))
}

/// `lstat` of `path` (below `root`) without following any symlink on the way: `Ok(None)` when
/// it does not exist, `Err(Symlink)` when a directory on the way is a symlink. A symlink at the
/// end is returned as an [`EntryKind::Symlink`] entry.
pub fn stat(root: &Path, path: &Path) -> Result<Option<Entry>, SafeError> {
    let (parents, leaf) = split_leaf(root, path)?;
    let Some((dir, dir_path)) = walk_dirs(root, &parents)? else {
        return Ok(None);
    };
    let full = dir_path.join(&leaf);
    let c = cstring(&full, &leaf)?;
    match lstat_at(&dir, &c) {
        Ok(st) => Ok(Some(entry_from_stat(&dir, &c, &leaf, full, &st))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(io_error(&full, e)),
    }
}

/// Call `f` with each entry name of the open directory `fd` (`.` and `..` left out), streamed
/// in directory order until `f` breaks.
fn for_each_name(
    fd: &OwnedFd,
    dir_path: &Path,
    mut f: impl FnMut(&[u8]) -> ControlFlow<()>,
) -> Result<(), SafeError> {
    // fdopendir takes ownership of the descriptor it gets: give it a duplicate.
    let dup = fd.try_clone().map_err(|e| io_error(dir_path, e))?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(dup);
    // SAFETY: `raw` is an open directory descriptor whose ownership passes to the DIR.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours to close.
        unsafe { libc::close(raw) };
        return Err(io_error(dir_path, e));
    }
    loop {
        // SAFETY: `dirp` is a valid DIR stream used by this thread only.
        let ent = unsafe { libc::readdir(dirp) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if f(bytes).is_break() {
            break;
        }
    }
    // SAFETY: `dirp` is valid and closed exactly once (this closes `raw` too).
    unsafe { libc::closedir(dirp) };
    Ok(())
}

/// Call `f` with each entry of `dir` (below or equal to `root`) as `lstat` sees it, streamed
/// in directory order and never kept: memory does not grow with the directory (a worker's
/// may hold millions of entries). `Ok(false)` when the directory is missing.
pub fn visit_dir(root: &Path, dir: &Path, mut f: impl FnMut(Entry)) -> Result<bool, SafeError> {
    let names = components_below(root, dir)?;
    let Some((fd, dir_path)) = walk_dirs(root, &names)? else {
        return Ok(false);
    };
    let mut failed = None;
    for_each_name(&fd, &dir_path, |name| {
        let name = OsStr::from_bytes(name);
        let path = dir_path.join(name);
        let c = match cstring(&path, name) {
            Ok(c) => c,
            Err(e) => {
                failed = Some(e);
                return ControlFlow::Break(());
            }
        };
        match lstat_at(&fd, &c) {
            Ok(st) => f(entry_from_stat(&fd, &c, name, path, &st)),
            // Removed between readdir and lstat (a worker moving a task): not there any more.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(_) => f(Entry {
                name: name.to_string_lossy().into_owned(),
                path,
                kind: EntryKind::Unknown,
                size: 0,
                permissions: 0,
                modified: None,
                link_target: None,
            }),
        }
        ControlFlow::Continue(())
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(true),
    }
}

/// List `dir` (below or equal to `root`), classifying each entry without following it and
/// without recursing. At most `max_entries` entries are returned.
pub fn list_dir(root: &Path, dir: &Path, max_entries: usize) -> Result<Listing, SafeError> {
    let names = components_below(root, dir)?;
    let Some((fd, dir_path)) = walk_dirs(root, &names)? else {
        return Ok(Listing::Missing);
    };
    let mut raw_names: Vec<OsString> = Vec::new();
    let mut truncated = false;
    for_each_name(&fd, &dir_path, |name| {
        if raw_names.len() >= max_entries {
            truncated = true;
            return ControlFlow::Break(());
        }
        raw_names.push(OsString::from_vec(name.to_vec()));
        ControlFlow::Continue(())
    })?;
    raw_names.sort();
    let mut entries = Vec::with_capacity(raw_names.len());
    for name in raw_names {
        let path = dir_path.join(&name);
        let c = cstring(&path, &name)?;
        match lstat_at(&fd, &c) {
            Ok(st) => entries.push(entry_from_stat(&fd, &c, &name, path, &st)),
            // Removed between readdir and lstat (a worker moving a task): not there any more.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(_) => entries.push(Entry {
                name: name.to_string_lossy().into_owned(),
                path,
                kind: EntryKind::Unknown,
                size: 0,
                permissions: 0,
                modified: None,
                link_target: None,
            }),
        }
    }
    Ok(Listing::Present { entries, truncated })
}

/// Open `path` (below `root`) for reading if and only if it is a regular file reached without
/// any symlink. Returns the file and its `fstat`.
fn open_regular(root: &Path, path: &Path) -> Result<(File, libc::stat), SafeError> {
    let (parents, leaf) = split_leaf(root, path)?;
    let Some((dir, dir_path)) = walk_dirs(root, &parents)? else {
        return Err(SafeError::Missing(path.to_path_buf()));
    };
    let full = dir_path.join(&leaf);
    let c = cstring(&full, &leaf)?;
    // Classify first, so that FIFOs, sockets and devices are never opened at all.
    let st = match lstat_at(&dir, &c) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(SafeError::Missing(full)),
        Err(e) => return Err(io_error(&full, e)),
    };
    match EntryKind::from_mode(st.st_mode) {
        EntryKind::File => {}
        EntryKind::Symlink => {
            return Err(SafeError::Symlink {
                target: read_link_at(&dir, &c),
                path: full,
            })
        }
        kind => {
            return Err(SafeError::WrongKind {
                path: full,
                kind,
                expected: EntryKind::File,
            })
        }
    }
    // O_NOFOLLOW: a symlink swapped in since the lstat fails with ELOOP. O_NONBLOCK: a FIFO
    // swapped in does not block the open. The fstat below catches both kinds of swap.
    let fd = match open_at(
        &dir,
        &c,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) => SafeError::Missing(full),
                Some(libc::ELOOP) => SafeError::Symlink {
                    path: full,
                    target: None,
                },
                _ => io_error(&full, e),
            })
        }
    };
    let st = fstat(&fd).map_err(|e| io_error(&full, e))?;
    let kind = EntryKind::from_mode(st.st_mode);
    if kind != EntryKind::File {
        return Err(SafeError::WrongKind {
            path: full,
            kind,
            expected: EntryKind::File,
        });
    }
    Ok((File::from(fd), st))
}

/// Read a whole regular file of at most `limit` bytes. A larger file is refused with
/// [`SafeError::TooLarge`] without being read.
pub fn read_file(root: &Path, path: &Path, limit: u64) -> Result<FileContent, SafeError> {
    let (file, st) = open_regular(root, path)?;
    let size = st.st_size.max(0) as u64;
    if size > limit {
        return Err(SafeError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte more than the limit: a file that grew since the fstat is noticed, not read whole.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(SafeError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(FileContent {
        path: path.to_path_buf(),
        bytes,
        size,
        modified: mtime(&st),
        truncated: false,
        starts_mid_line: false,
    })
}

/// Read at most the last `max_bytes` bytes of a regular file.
pub fn read_tail(root: &Path, path: &Path, max_bytes: u64) -> Result<FileContent, SafeError> {
    let (mut file, st) = open_regular(root, path)?;
    let size = st.st_size.max(0) as u64;
    let start = size.saturating_sub(max_bytes);
    // One byte before the tail tells whether the tail starts at a line start.
    let peek = u64::from(start > 0);
    file.seek(SeekFrom::Start(start - peek))
        .map_err(|e| io_error(path, e))?;
    let mut bytes = Vec::with_capacity((size - start + peek) as usize);
    file.take(max_bytes + peek)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    let mut starts_mid_line = false;
    if peek == 1 && !bytes.is_empty() {
        starts_mid_line = bytes[0] != b'\n';
        bytes.remove(0);
    }
    Ok(FileContent {
        path: path.to_path_buf(),
        bytes,
        size,
        modified: mtime(&st),
        truncated: start > 0,
        starts_mid_line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    }

    fn names(listing: &Listing) -> Vec<(String, EntryKind)> {
        match listing {
            Listing::Missing => panic!("missing"),
            Listing::Present { entries, .. } => {
                entries.iter().map(|e| (e.name.clone(), e.kind)).collect()
            }
        }
    }

    #[test]
    fn confine_refuses_escapes() {
        let root = Path::new("/shared");
        assert_eq!(
            confine(root, "pipes/in").unwrap(),
            Path::new("/shared/pipes/in")
        );
        assert_eq!(
            confine(root, "./logs/a.log").unwrap(),
            Path::new("/shared/logs/a.log")
        );
        for bad in ["/etc/passwd", "../etc/passwd", "a/../../b", "", ".", "a\0b"] {
            assert!(
                matches!(confine(root, bad), Err(SafeError::NotConfined(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn listing_classifies_without_following() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = root.join("tasks/w/active");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.json"), b"{}").unwrap();
        std::fs::write(dir.join("empty.json"), b"").unwrap();
        std::fs::create_dir(dir.join("x.json")).unwrap();
        std::fs::write(dir.join("x.json/inner.json"), b"{}").unwrap();
        symlink("/etc/passwd", dir.join("passwd.json")).unwrap();
        symlink("/etc", dir.join("etc")).unwrap();
        mkfifo(&dir.join("pipe.json"));

        let listing = list_dir(root, &dir, 100).unwrap();
        assert_eq!(
            names(&listing),
            vec![
                ("a.json".to_string(), EntryKind::File),
                ("empty.json".to_string(), EntryKind::File),
                ("etc".to_string(), EntryKind::Symlink),
                ("passwd.json".to_string(), EntryKind::Symlink),
                ("pipe.json".to_string(), EntryKind::Fifo),
                ("x.json".to_string(), EntryKind::Dir),
            ]
        );
        let Listing::Present { entries, truncated } = &listing else {
            unreachable!()
        };
        assert!(!truncated);
        let link = entries.iter().find(|e| e.name == "passwd.json").unwrap();
        assert_eq!(link.link_target.as_deref(), Some("/etc/passwd"));
        assert_eq!(link.path, dir.join("passwd.json"));
        let fifo = entries.iter().find(|e| e.name == "pipe.json").unwrap();
        assert_eq!(fifo.mode_string(), "prw-r-----");
        assert_eq!(fifo.octal_mode(), "0640");
        assert!(entries[0].modified.is_some());

        // Capped listings say so.
        let Listing::Present { entries, truncated } = list_dir(root, &dir, 2).unwrap() else {
            unreachable!()
        };
        assert!(truncated);
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn missing_directories_are_an_answer() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        assert_eq!(
            list_dir(root, &root.join("tasks/w/active"), 10).unwrap(),
            Listing::Missing
        );
        assert_eq!(
            list_dir(&root.join("nope"), &root.join("nope/x"), 10).unwrap(),
            Listing::Missing
        );
        assert_eq!(stat(root, &root.join("pipes/in")).unwrap(), None);
        assert!(matches!(
            read_file(root, &root.join("a/b.json"), 10),
            Err(SafeError::Missing(_))
        ));
    }

    #[test]
    fn symlinked_directories_are_never_entered() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("tasks")).unwrap();
        symlink("/etc", root.join("tasks/w")).unwrap();
        let err = list_dir(root, &root.join("tasks/w"), 10).unwrap_err();
        assert!(
            matches!(&err, SafeError::Symlink { target: Some(t), .. } if t == "/etc"),
            "{err:?}"
        );
        let err = read_file(root, &root.join("tasks/w/passwd"), 1 << 20).unwrap_err();
        assert_eq!(err.reason(), "symlink");
        let err = stat(root, &root.join("tasks/w/passwd")).unwrap_err();
        assert_eq!(err.reason(), "symlink");
        // A file where a directory should be.
        std::fs::write(root.join("locks"), b"").unwrap();
        let err = list_dir(root, &root.join("locks"), 10).unwrap_err();
        assert!(matches!(
            err,
            SafeError::WrongKind {
                kind: EntryKind::File,
                expected: EntryKind::Dir,
                ..
            }
        ));
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("shared");
        std::fs::create_dir_all(&root).unwrap();
        for p in [
            PathBuf::from("/etc/passwd"),
            root.join("../shared/x"),
            tmp.path().join("other"),
        ] {
            assert!(
                matches!(read_file(&root, &p, 100), Err(SafeError::Outside { .. })),
                "{p:?}"
            );
        }
        assert!(matches!(
            list_dir(&root, Path::new("/etc"), 10),
            Err(SafeError::Outside { .. })
        ));
    }

    #[test]
    fn reads_only_regular_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("ok.json"), br#"{"id":"t1"}"#).unwrap();
        std::fs::write(root.join("empty.json"), b"").unwrap();
        symlink("/etc/passwd", root.join("passwd.json")).unwrap();
        std::fs::create_dir(root.join("x.json")).unwrap();
        mkfifo(&root.join("fifo.json"));

        let ok = read_file(root, &root.join("ok.json"), 1024).unwrap();
        assert_eq!(ok.bytes, br#"{"id":"t1"}"#);
        assert_eq!(ok.size, 11);
        assert!(!ok.truncated);
        let empty = read_file(root, &root.join("empty.json"), 1024).unwrap();
        assert!(empty.bytes.is_empty());

        let err = read_file(root, &root.join("passwd.json"), 1 << 20).unwrap_err();
        assert!(
            matches!(&err, SafeError::Symlink { target: Some(t), .. } if t == "/etc/passwd"),
            "{err:?}"
        );
        assert!(err.to_string().contains("not followed"));
        assert!(matches!(
            read_tail(root, &root.join("passwd.json"), 100),
            Err(SafeError::Symlink { .. })
        ));
        assert!(matches!(
            read_file(root, &root.join("x.json"), 1024),
            Err(SafeError::WrongKind {
                kind: EntryKind::Dir,
                ..
            })
        ));
        // A FIFO without a writer: refused at once, never opened (opening would block).
        assert!(matches!(
            read_file(root, &root.join("fifo.json"), 1024),
            Err(SafeError::WrongKind {
                kind: EntryKind::Fifo,
                ..
            })
        ));
        assert!(matches!(
            read_file(root, root, 1024),
            Err(SafeError::WrongKind { .. })
        ));
    }

    #[test]
    fn huge_files_are_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let huge = root.join("huge.log");
        // Sparse: 64 MiB of size without the disk use, then a last line.
        let f = File::create(&huge).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&huge)
                .unwrap();
            f.write_all(b"line one\nERROR: last line\n").unwrap();
        }
        let err = read_file(root, &huge, 1 << 20).unwrap_err();
        assert!(
            matches!(err, SafeError::TooLarge { size, limit, .. } if size > 64 << 20 && limit == 1 << 20)
        );
        // The last 17 bytes are exactly the last line: kept whole.
        let tail = read_tail(root, &huge, 17).unwrap();
        assert_eq!(tail.bytes.len(), 17);
        assert!(tail.truncated);
        assert!(!tail.starts_mid_line);
        assert_eq!(tail.last_lines(5), vec!["ERROR: last line".to_string()]);
        // One byte less cuts the line: the partial line is dropped.
        let tail = read_tail(root, &huge, 16).unwrap();
        assert!(tail.starts_mid_line);
        assert!(tail.last_lines(5).is_empty());
        let tail = read_tail(root, &huge, 30).unwrap();
        assert_eq!(tail.last_lines(5), vec!["ERROR: last line".to_string()]);

        let small = root.join("small.log");
        std::fs::write(&small, b"a\nb\r\nc\n").unwrap();
        let tail = read_tail(root, &small, 1024).unwrap();
        assert!(!tail.truncated);
        assert_eq!(tail.last_lines(2), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(tail.last_lines(10).len(), 3);
    }

    #[test]
    fn stat_reports_the_final_entry_as_is() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("pipes")).unwrap();
        mkfifo(&root.join("pipes/in"));
        symlink("/etc/passwd", root.join("pipes/out")).unwrap();
        let e = stat(root, &root.join("pipes/in")).unwrap().unwrap();
        assert_eq!(e.kind, EntryKind::Fifo);
        let e = stat(root, &root.join("pipes/out")).unwrap().unwrap();
        assert_eq!(e.kind, EntryKind::Symlink);
        assert_eq!(e.link_target.as_deref(), Some("/etc/passwd"));
        assert_eq!(e.age_seconds(Timestamp::UNIX_EPOCH), 0);
    }
}
