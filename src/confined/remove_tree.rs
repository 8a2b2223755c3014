//! Removing a directory tree that a hostile process shaped, and may change while it is
//! removed: 10,000 levels deep, 200,000 entries wide, full of symlinks, moved under us.
//!
//! Not recursive: one loop over an explicit stack of levels, each the name of a directory in
//! the level above and its (dev, inode) as recorded on the way down. Only the deepest
//! [`OPEN_LEVELS`] levels keep an open directory stream, so the open descriptors and the
//! stack of the thread stay bounded whatever the depth (cap-std's `remove_dir_all` holds a
//! descriptor and a stack frame per level: EMFILE or a stack overflow on a deep tree).
//!
//! A level whose stream was closed is reopened, when the walk comes back up to it, as `..`
//! of its child (`O_NOFOLLOW | O_DIRECTORY`), and must have the recorded (dev, inode); every
//! level the walk returns to must still have its recorded parent as `..`. A tree moved under
//! us therefore stops the removal with [`FsError::Moved`] instead of following `..` into a
//! directory outside it. Entries are unlinked as they are, a symlink as a link (never
//! followed); a directory is entered with `openat(O_NOFOLLOW | O_DIRECTORY)`, so one swapped
//! for a symlink after it was listed is unlinked as a link, not entered.

use std::{
    ffi::{OsStr, OsString},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::PathBuf,
};

use rustix::{
    fs::{AtFlags, Dir, FileType, Mode, OFlags},
    io::Errno,
};

use super::{io_err, ConfinedDir, FsError, Result};

/// Directory streams kept open at once (the deepest levels); the levels above are reopened
/// through `..` when the walk comes back to them.
pub(crate) const OPEN_LEVELS: usize = 8;
/// Times a directory found refilled (not empty after its listing ended) is listed again
/// before the removal gives up: a process that keeps adding entries must not keep us here.
const MAX_REFILLS: u32 = 1000;

/// What a test may look at, or change, just before a directory is entered.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Visit<'a> {
    /// Levels below the removed directory (1 for its direct children).
    pub(crate) depth: usize,
    /// Directory streams open now.
    pub(crate) open_streams: usize,
    pub(crate) name: &'a OsStr,
}

/// A directory on the way down.
struct Level {
    /// Its name in the level above (for level 0, in the directory the removal started from).
    name: OsString,
    /// (dev, inode) when it was entered.
    id: (u64, u64),
    /// Open for the deepest [`OPEN_LEVELS`] levels only.
    stream: Option<Dir>,
    /// Offset after the entry last read: where a reopened stream goes on.
    resume: i64,
}

/// What to do with the entry just read.
enum Next {
    Skip,
    Unlink(OsString),
    Enter(OsString),
    /// The listing ended: remove the (now empty) directory from the level above.
    Up,
}

/// Remove `parent/name` and everything below it; a symlink or file there is unlinked as it
/// is. Returns how many entries were removed, `name` included (0 when it did not exist).
pub(crate) fn remove_tree(parent: &ConfinedDir, name: &OsStr) -> Result<u64> {
    remove_tree_with(parent, name, |_| {})
}

/// [`remove_tree`], calling `visit` before each directory is entered (tests swap entries).
pub(crate) fn remove_tree_with(
    parent: &ConfinedDir,
    name: &OsStr,
    mut visit: impl FnMut(&Visit<'_>),
) -> Result<u64> {
    let mut walk = Walk {
        parent,
        levels: Vec::new(),
        removed: 0,
        refills: 0,
    };
    let fd = match open_dir(parent.dir.as_fd(), name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(0),
        // Not a directory (or swapped for a symlink since the caller looked): unlinked as is.
        Err(Errno::LOOP | Errno::NOTDIR) => return walk.unlink_top(name),
        Err(e) => return Err(io_err("open directory", parent.path.join(name), e.into())),
    };
    walk.push(name.to_os_string(), fd)?;
    loop {
        match walk.next()? {
            Next::Skip => {}
            Next::Unlink(n) => walk.unlink(n)?,
            Next::Enter(n) => {
                visit(&Visit {
                    depth: walk.levels.len(),
                    open_streams: walk.open_streams(),
                    name: &n,
                });
                walk.enter(n)?;
            }
            Next::Up => {
                if walk.up()? {
                    return Ok(walk.removed);
                }
            }
        }
    }
}

struct Walk<'a> {
    parent: &'a ConfinedDir,
    levels: Vec<Level>,
    removed: u64,
    refills: u32,
}

fn open_dir(dir: BorrowedFd<'_>, name: impl rustix::path::Arg) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
}

fn id_of(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl Walk<'_> {
    /// A path for messages: the removed directory, and the deepest name when below it.
    fn path(&self) -> PathBuf {
        let mut p = self.parent.path.clone();
        if let Some(first) = self.levels.first() {
            p.push(&first.name);
        }
        if self.levels.len() > 1 {
            let last = self.levels.last().expect("not empty");
            p.push(format!("...({} levels)", self.levels.len() - 2));
            p.push(&last.name);
        }
        p
    }

    fn err(&self, op: &'static str, e: Errno) -> FsError {
        io_err(op, self.path(), e.into())
    }

    fn open_streams(&self) -> usize {
        self.levels.iter().filter(|l| l.stream.is_some()).count()
    }

    fn top_fd(&self) -> BorrowedFd<'_> {
        let top = self.levels.last().expect("not empty");
        top.stream
            .as_ref()
            .expect("the deepest level is open")
            .fd()
            .expect("a stream has its descriptor")
    }

    /// Enter a directory just opened; the level [`OPEN_LEVELS`] above it closes its stream.
    fn push(&mut self, name: OsString, fd: OwnedFd) -> Result<()> {
        let st = rustix::fs::fstat(&fd).map_err(|e| self.err("inspect", e))?;
        let stream = Dir::new(fd).map_err(|e| self.err("list", e))?;
        self.levels.push(Level {
            name,
            id: id_of(&st),
            stream: Some(stream),
            resume: 0,
        });
        if let Some(i) = self.levels.len().checked_sub(OPEN_LEVELS + 1) {
            self.levels[i].stream = None;
        }
        Ok(())
    }

    /// Read the deepest level's next entry and decide what to do with it.
    fn next(&mut self) -> Result<Next> {
        let top = self.levels.last_mut().expect("not empty");
        let stream = top.stream.as_mut().expect("the deepest level is open");
        let entry = match stream.read() {
            None => return Ok(Next::Up),
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(self.err("list", e)),
        };
        top.resume = entry.offset();
        let name = entry.file_name();
        if name == c"." || name == c".." {
            return Ok(Next::Skip);
        }
        let os = OsStr::from_bytes(name.to_bytes()).to_os_string();
        let kind = match entry.file_type() {
            FileType::Unknown => match rustix::fs::statat(
                stream.fd().expect("a stream has its descriptor"),
                name,
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => FileType::from_raw_mode(st.st_mode),
                Err(Errno::NOENT) => return Ok(Next::Skip),
                Err(e) => return Err(self.err("inspect", e)),
            },
            kind => kind,
        };
        Ok(match kind {
            FileType::Directory => Next::Enter(os),
            _ => Next::Unlink(os),
        })
    }

    /// Unlink a non-directory entry of the deepest level (a symlink as a link).
    fn unlink(&mut self, name: OsString) -> Result<()> {
        match rustix::fs::unlinkat(self.top_fd(), name.as_os_str(), AtFlags::empty()) {
            Ok(()) => self.removed += 1,
            Err(Errno::NOENT) => {}
            // Swapped for a directory since it was listed: entered instead.
            Err(Errno::ISDIR | Errno::PERM) => self.enter(name)?,
            Err(e) => return Err(self.err("remove", e)),
        }
        Ok(())
    }

    fn enter(&mut self, name: OsString) -> Result<()> {
        match open_dir(self.top_fd(), name.as_os_str()) {
            Ok(fd) => self.push(name, fd),
            Err(Errno::NOENT) => Ok(()),
            // Swapped for a symlink (or a file) since it was listed: unlinked, not followed.
            Err(Errno::LOOP | Errno::NOTDIR) => {
                match rustix::fs::unlinkat(self.top_fd(), name.as_os_str(), AtFlags::empty()) {
                    Ok(()) => {
                        self.removed += 1;
                        Ok(())
                    }
                    Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(self.err("remove", e)),
                }
            }
            Err(e) => Err(self.err("open directory", e)),
        }
    }

    /// The top itself is not a directory: unlink it as it is.
    fn unlink_top(&mut self, name: &OsStr) -> Result<u64> {
        match rustix::fs::unlinkat(self.parent.dir.as_fd(), name, AtFlags::empty()) {
            Ok(()) => Ok(1),
            Err(Errno::NOENT) => Ok(0),
            Err(e) => Err(io_err("remove", self.parent.path.join(name), e.into())),
        }
    }

    /// The deepest level was listed to its end: remove it from the level above, reopening
    /// that one through `..` when its stream was closed. `true` once the whole tree is gone.
    fn up(&mut self) -> Result<bool> {
        let done = self.levels.pop().expect("not empty");
        let done_fd = done.stream.as_ref().expect("the deepest level is open");
        let done_fd = done_fd.fd().expect("a stream has its descriptor");
        let Some(up) = self.levels.last() else {
            return self.remove_top(done);
        };
        if up.stream.is_none() {
            let expected = up.id;
            let fd = open_dir(done_fd, c"..").map_err(|e| self.err("open directory", e))?;
            let st = rustix::fs::fstat(&fd).map_err(|e| self.err("inspect", e))?;
            if id_of(&st) != expected {
                return Err(FsError::Moved { path: self.path() });
            }
            let mut stream = Dir::new(fd).map_err(|e| self.err("list", e))?;
            // Only where to go on: an offset the filesystem does not honour at worst lists
            // entries again (removed ones are gone) or skips some, found by the rmdir below.
            if stream.seek(up.resume).is_err() {
                stream.rewind();
            }
            self.levels.last_mut().expect("not empty").stream = Some(stream);
        }
        self.check_parent()?;
        let up_fd = self.top_fd();
        match rustix::fs::unlinkat(up_fd, done.name.as_os_str(), AtFlags::REMOVEDIR) {
            Ok(()) => self.removed += 1,
            Err(Errno::NOENT) => {}
            // Refilled meanwhile, or its name now holds something else: list the level again.
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) => self.refilled()?,
            Err(e) => return Err(self.err("remove directory", e)),
        }
        Ok(false)
    }

    /// The level the walk came back to still has its recorded parent as `..`: it was not
    /// moved out of the tree (then its remaining entries are not ours to remove).
    fn check_parent(&self) -> Result<()> {
        let expected = match self.levels.len() {
            0 => return Ok(()),
            1 => {
                let st = rustix::fs::fstat(self.parent.dir.as_fd())
                    .map_err(|e| self.err("inspect", e))?;
                id_of(&st)
            }
            n => self.levels[n - 2].id,
        };
        let st = rustix::fs::statat(self.top_fd(), c"..", AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err("inspect", e))?;
        if id_of(&st) != expected {
            return Err(FsError::Moved { path: self.path() });
        }
        Ok(())
    }

    fn refilled(&mut self) -> Result<()> {
        self.refills += 1;
        if self.refills > MAX_REFILLS {
            return Err(self.err("remove directory", Errno::NOTEMPTY));
        }
        let top = self.levels.last_mut().expect("not empty");
        top.stream
            .as_mut()
            .expect("the deepest level is open")
            .rewind();
        Ok(())
    }

    /// Remove the emptied top directory from `parent`, if it is still the one we entered.
    fn remove_top(&mut self, done: Level) -> Result<bool> {
        let parent = self.parent;
        let path = || parent.path.join(&done.name);
        let name = done.name.as_os_str();
        match rustix::fs::statat(parent.dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if id_of(&st) == done.id => {}
            Ok(_) => return Err(FsError::Moved { path: path() }),
            Err(Errno::NOENT) => return Ok(true),
            Err(e) => return Err(io_err("inspect", path(), e.into())),
        }
        match rustix::fs::unlinkat(parent.dir.as_fd(), name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                self.removed += 1;
                Ok(true)
            }
            Err(Errno::NOENT) => Ok(true),
            Err(Errno::NOTEMPTY | Errno::EXIST) => {
                self.refills += 1;
                if self.refills > MAX_REFILLS {
                    return Err(io_err("remove directory", path(), Errno::NOTEMPTY.into()));
                }
                let mut stream = done.stream.expect("the deepest level is open");
                stream.rewind();
                self.levels.push(Level {
                    stream: Some(stream),
                    ..done
                });
                Ok(false)
            }
            Err(e) => Err(io_err("remove directory", path(), e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confined::open_root;
    use std::{fs, os::unix::fs::symlink, path::Path, time::Instant};

    fn fds() -> usize {
        fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// `depth` directories `d` nested in `base/top`, a file and a symlink to `outside` in each
    /// level: built with `openat`, as the path of the deepest is far beyond PATH_MAX.
    fn deep_tree(base: &Path, depth: usize, outside: &Path) {
        fs::create_dir(base.join("top")).unwrap();
        let mut fd = open_dir(
            rustix::fs::openat(
                rustix::fs::CWD,
                base,
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .unwrap()
            .as_fd(),
            "top",
        )
        .unwrap();
        for _ in 0..depth {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            let f = rustix::fs::openat(
                &fd,
                "f",
                OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .unwrap();
            drop(f);
            rustix::fs::symlinkat(outside, &fd, "l").unwrap();
            fd = open_dir(fd.as_fd(), "d").unwrap();
        }
    }

    #[test]
    fn a_tree_10000_levels_deep_is_removed_with_few_descriptors_open() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"keep").unwrap();
        let base = tmp.path().join("tmp");
        fs::create_dir(&base).unwrap();
        let depth = 10_000;
        let start = Instant::now();
        deep_tree(&base, depth, &outside);
        let built = start.elapsed();
        let dir = open_root(&base).unwrap();
        let before = fds();
        let (mut most_streams, mut most_fds, mut deepest) = (0, 0, 0);
        let start = Instant::now();
        let removed = remove_tree_with(&dir, OsStr::new("top"), |v| {
            most_streams = most_streams.max(v.open_streams);
            deepest = deepest.max(v.depth);
            if v.depth % 1000 == 0 {
                most_fds = most_fds.max(fds());
            }
        })
        .unwrap();
        let took = start.elapsed();
        let after = fds();
        eprintln!(
            "depth {depth}: built in {built:?}, removed {removed} entries in {took:?}; \
             fds before {before}, at most {most_fds} inside, after {after}; \
             at most {most_streams} streams"
        );
        // Every level: the directory, its file and its symlink; and `top`.
        assert_eq!(removed, 3 * depth as u64 + 1);
        assert_eq!(deepest, depth);
        assert!(most_streams <= OPEN_LEVELS, "{most_streams}");
        // Other tests open descriptors on other threads meanwhile: a generous margin, far
        // below the 10,000 a descriptor per level would take.
        assert!(
            most_fds <= before + OPEN_LEVELS + 64,
            "{before} -> {most_fds}"
        );
        assert!(after <= before + 64, "{before} -> {after}");
        assert_eq!(fs::read_dir(&base).unwrap().count(), 0);
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"keep");
    }

    #[test]
    fn symlinks_are_unlinked_never_followed_even_when_swapped_in() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("keep"), b"keep").unwrap();
        fs::write(outside.join("sub/keep"), b"keep").unwrap();
        let base = tmp.path().join("tmp");
        fs::create_dir_all(base.join("top/a/swap")).unwrap();
        fs::write(base.join("top/a/swap/x"), b"x").unwrap();
        symlink(&outside, base.join("top/link-dir")).unwrap();
        symlink(outside.join("keep"), base.join("top/a/link-file")).unwrap();
        let dir = open_root(&base).unwrap();
        // Just before `swap` is entered, it becomes a symlink to the outside directory.
        let aside = tmp.path().join("aside");
        remove_tree_with(&dir, OsStr::new("top"), |v| {
            if v.name == "swap" {
                fs::rename(base.join("top/a/swap"), &aside).unwrap();
                symlink(&outside, base.join("top/a/swap")).unwrap();
            }
        })
        .unwrap();
        assert!(!base.join("top").exists());
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"keep");
        assert_eq!(fs::read(outside.join("sub/keep")).unwrap(), b"keep");
        assert_eq!(fs::read(aside.join("x")).unwrap(), b"x");
        // A symlink (or a file) at the top is unlinked as it is.
        symlink(&outside, base.join("top")).unwrap();
        assert_eq!(remove_tree(&dir, OsStr::new("top")).unwrap(), 1);
        assert!(outside.join("sub/keep").exists());
        assert_eq!(remove_tree(&dir, OsStr::new("top")).unwrap(), 0);
    }

    #[test]
    fn a_level_moved_out_of_the_tree_stops_the_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"keep").unwrap();
        let base = tmp.path().join("tmp");
        // top/d0/d1/.../d29, a file in each.
        let mut p = base.join("top");
        for i in 0..30 {
            p.push(format!("d{i}"));
        }
        fs::create_dir_all(&p).unwrap();
        let dir = open_root(&base).unwrap();
        // Deep down, d2 (whose stream is closed by then) moves out of the tree, into outside/.
        let moved = outside.join("d2");
        let err = remove_tree_with(&dir, OsStr::new("top"), |v| {
            if v.depth == 25 {
                fs::rename(base.join("top/d0/d1/d2"), &moved).unwrap();
            }
        })
        .unwrap_err();
        assert!(matches!(err, FsError::Moved { .. }), "{err}");
        // Its parent d1 stays; outside/ keeps its own files.
        assert!(base.join("top/d0/d1").is_dir());
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"keep");
        assert!(
            moved.is_dir(),
            "the moved level itself is not removed from outside/"
        );
    }
}
