//! Failover: a failed Worker's pending tasks move to a healthy backup Worker's `pending/`.
//!
//! The same protocol as the gradual resume (`super::batches`): the caller records a batch's
//! names in the Worker's status before it calls [`move_tasks`], and calls again with the same
//! names after a crash. Each task moves by one `rename` with `RENAME_NOREPLACE` (atomic: it is
//! in exactly one of the two directories at any instant); a name already taken at the backup
//! is moved under `<stem>.from-<worker>.json` (then `-2`, ...), never overwriting; a name no
//! longer in the source is counted as gone, never looked for elsewhere. So no task is lost or
//! moved twice, whenever the operator dies. Both tasks directories must be on one filesystem:
//! across filesystems the move is refused (EXDEV) with nothing done.

use std::ffi::{OsStr, OsString};

use crate::{
    bounded::{json_len, Smallest},
    confined::{open_child, open_path, open_root, rename_noreplace, ConfinedDir, FsError},
    crd::worker::ResolvedPaths,
};

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("invalid task name {0:?}: a task name must be a single file name")]
    InvalidName(String),
    #[error(
        "the backup's tasks directory is on another filesystem: tasks cannot be moved atomically"
    )]
    CrossDevice,
}

type Result<T, E = FailoverError> = std::result::Result<T, E>;

/// The tasks of the failed worker's `pending/`, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailoverScan {
    pub oldest: Vec<String>,
    pub eligible: u64,
}

/// What [`move_tasks`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub moved: Vec<String>,
    pub gone: Vec<String>,
    /// Moved under another name: `(name, name at the backup)`.
    pub renamed: Vec<(String, String)>,
}

fn pending(paths: &ResolvedPaths, create: bool) -> Result<Option<ConfinedDir>> {
    let root = open_root(&paths.trusted_root)?;
    let Some(tasks) = open_path(&root, &paths.tasks_dir, create)? else {
        return Ok(None);
    };
    Ok(open_child(&tasks, OsStr::new("pending"), create)?)
}

/// Longest task name moved (the backup may need `<stem>.from-<worker>-<n>.json`).
const MAX_NAME: usize = 200;
/// Most bytes the names of one batch take in the Worker's status (as JSON), where they are
/// recorded before they move: a batch of long names is smaller, never recorded in part.
pub const MAX_BATCH_NAME_BYTES: usize = 16 * 1024;

/// Regular `*.json` files with UTF-8 names of at most 200 bytes in `from`'s `pending/`, oldest
/// first (modification time, then name), at most `limit` and [`MAX_BATCH_NAME_BYTES`] of
/// names. Streamed: memory does not grow with the directory.
pub fn scan(from: &ResolvedPaths, limit: usize) -> Result<FailoverScan> {
    let Some(dir) = pending(from, false)? else {
        return Ok(FailoverScan::default());
    };
    let mut oldest = Smallest::new(limit);
    let mut eligible = 0;
    for name in dir.stream_names()? {
        let name = name?;
        let Some(text) = name.to_str() else { continue };
        // A longer name would be refused by `move_tasks` and stall the failover.
        if !text.ends_with(".json") || text.starts_with('.') || text.len() > MAX_NAME {
            continue;
        }
        if let Some(md) = dir.lstat(&name)? {
            if md.is_file() {
                eligible += 1;
                oldest.offer((md.modified().ok(), text.to_string()));
            }
        }
    }
    let mut used = 0;
    let oldest = oldest
        .into_sorted_vec()
        .into_iter()
        .map(|(_, n)| n)
        .take_while(|n| {
            used += json_len(n);
            used <= MAX_BATCH_NAME_BYTES
        })
        .collect();
    Ok(FailoverScan { oldest, eligible })
}

/// Move each named task from `from`'s `pending/` to `to`'s `pending/`; see the module docs.
pub fn move_tasks(from: &ResolvedPaths, to: &ResolvedPaths, names: &[String]) -> Result<Moved> {
    for n in names {
        if n.is_empty() || n == "." || n == ".." || n.len() > MAX_NAME || n.contains(['/', '\0']) {
            return Err(FailoverError::InvalidName(n.clone()));
        }
    }
    let mut outcome = Moved::default();
    let Some(source) = pending(from, false)? else {
        outcome.gone = names.to_vec();
        return Ok(outcome);
    };
    let Some(target) = pending(to, true)? else {
        unreachable!("created when missing");
    };
    let result = move_all(&source, &target, &from.worker_name, names, &mut outcome);
    let synced = target.fsync().and_then(|()| source.fsync());
    result?;
    synced?;
    Ok(outcome)
}

fn move_all(
    source: &ConfinedDir,
    target: &ConfinedDir,
    from_worker: &str,
    names: &[String],
    outcome: &mut Moved,
) -> Result<()> {
    for name in names {
        let os = OsString::from(name);
        match source.lstat(&os)? {
            Some(md) if md.is_file() => {}
            _ => {
                outcome.gone.push(name.clone());
                continue;
            }
        }
        let stem = name.strip_suffix(".json").unwrap_or(name);
        let mut placed = false;
        for i in 1..=100 {
            let candidate = match i {
                1 => name.clone(),
                2 => format!("{stem}.from-{from_worker}.json"),
                n => format!("{stem}.from-{from_worker}-{n}.json"),
            };
            match rename_noreplace(source, &os, target, OsStr::new(&candidate)) {
                Ok(()) => {
                    if i == 1 {
                        outcome.moved.push(name.clone());
                    } else {
                        outcome.renamed.push((name.clone(), candidate));
                    }
                    placed = true;
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    return Err(FailoverError::CrossDevice)
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    outcome.gone.push(name.clone());
                    placed = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !placed {
            return Err(FailoverError::InvalidName(format!(
                "{name}: 100 tasks of that name at the backup already"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn paths(root: &std::path::Path, worker: &str) -> ResolvedPaths {
        let mut w = crate::testing::worker();
        w.metadata.name = Some(worker.into());
        w.spec.shared_root = root.display().to_string();
        w.resolved_paths().unwrap()
    }

    #[test]
    fn tasks_move_once_oldest_first_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (a, b) = (paths(&root, "primy"), paths(&root, "backy"));
        let from = root.join("tasks/primy/pending");
        fs::create_dir_all(&from).unwrap();
        let base = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for (i, n) in ["c.json", "a.json", "b.json"].iter().enumerate() {
            fs::write(from.join(n), n.as_bytes()).unwrap();
            fs::File::options()
                .write(true)
                .open(from.join(n))
                .unwrap()
                .set_modified(base + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        let scan = scan(&a, 10).unwrap();
        assert_eq!(scan.oldest, ["c.json", "a.json", "b.json"]);
        // The backup already has an a.json of its own.
        fs::create_dir_all(root.join("tasks/backy/pending")).unwrap();
        fs::write(root.join("tasks/backy/pending/a.json"), b"theirs").unwrap();
        // A crash after the first rename: the retry moves the rest, each exactly once.
        fs::rename(from.join("c.json"), root.join("tasks/backy/pending/c.json")).unwrap();
        let m = move_tasks(&a, &b, &scan.oldest).unwrap();
        assert_eq!(m.gone, ["c.json"]);
        assert_eq!(m.moved, ["b.json"]);
        assert_eq!(
            m.renamed,
            [("a.json".to_string(), "a.from-primy.json".to_string())]
        );
        let to = root.join("tasks/backy/pending");
        assert_eq!(fs::read(to.join("a.json")).unwrap(), b"theirs");
        assert_eq!(fs::read(to.join("a.from-primy.json")).unwrap(), b"a.json");
        assert_eq!(fs::read_dir(&from).unwrap().count(), 0);
        let again = move_tasks(&a, &b, &scan.oldest).unwrap();
        assert_eq!(again.gone.len(), 3, "nothing moves twice");
        assert_eq!(fs::read_dir(&to).unwrap().count(), 4);
        assert!(move_tasks(&a, &b, &["../x.json".to_string()]).is_err());
    }
}
