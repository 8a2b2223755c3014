//! Test fixtures shared by the recovery steps' tests: a shared root holding worker `marie`'s
//! files (and an `outside/` next to it, for what a symlink may point to), a FIFO maker, and a
//! snapshot of a whole tree to prove that nothing changed.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::crd::worker::ResolvedPaths;

/// A temporary `base/` holding `shared/` (the trusted root, with worker marie's paths) and
/// `outside/`.
pub(crate) struct Tree {
    _tmp: tempfile::TempDir,
    /// Holds `shared/` (the trusted root) and `outside/`.
    pub(crate) base: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) paths: ResolvedPaths,
}

impl Tree {
    /// The tree with `dirs` (relative to the root) and `workers/marie` created.
    pub(crate) fn new(dirs: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let root = base.join("shared");
        for dir in dirs.iter().chain(&["workers/marie"]) {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::create_dir_all(base.join("outside")).unwrap();
        let paths = ResolvedPaths {
            worker_name: "marie".into(),
            shared_root: root.clone(),
            trusted_root: root.clone(),
            heartbeat_file: root.join("workers/marie/heartbeat.json"),
            tasks_dir: root.join("tasks/marie"),
            locks_dir: root.join("locks"),
            state_file: root.join("workers/marie/state.json"),
            tmp_dir: root.join("tmp/marie"),
            core_dump_dir: None,
        };
        Self {
            _tmp: tmp,
            base,
            root,
            paths,
        }
    }

    pub(crate) fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Write `bytes` at `rel`, creating its directories.
    pub(crate) fn put(&self, rel: &str, bytes: &[u8]) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    pub(crate) fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.p(rel)).unwrap()
    }

    pub(crate) fn text(&self, rel: &str) -> String {
        String::from_utf8(self.read(rel)).unwrap()
    }

    pub(crate) fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.p(rel)).is_ok()
    }

    /// Sorted names in a directory under the root (empty when missing).
    pub(crate) fn names(&self, rel: &str) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.p(rel)) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// A FIFO at `path`, mode 0640 (before the umask).
pub(crate) fn mkfifo(path: &Path) {
    use rustix::fs::{FileType, Mode, CWD};
    rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o640), 0).unwrap();
}

/// Every entry below `dir`, by lstat, with contents (sizes for files over 1 MiB), link
/// targets, modes and mtimes.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, entries: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let what = if ft.is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                walk(base, &p, entries);
                "dir".into()
            } else if ft.is_file() && md.len() <= 1 << 20 {
                format!("file {:?}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
            } else {
                format!("size {}", md.len())
            };
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            entries.insert(
                rel,
                format!(
                    "{what} mode {:o} mtime {}.{}",
                    md.mode(),
                    md.mtime(),
                    md.mtime_nsec()
                ),
            );
        }
    }
    let mut entries = BTreeMap::new();
    walk(dir, dir, &mut entries);
    entries
}
