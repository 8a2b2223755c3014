//! Poison tasks: a task that was in `active/` at `poisonAfterCrashes` consecutive crashes of
//! its worker is moved to `failed/` with reason `poison`, so one bad task cannot keep the
//! worker crash-looping. Called only while the worker's container is stopped (after a crash,
//! before the restart).
//!
//! Crash safety: the reason file is written first (temp, fsync, rename), then the task is
//! moved by one `rename` with `RENAME_NOREPLACE`; a crash in between leaves the task in
//! `active/` and its reason file in `failed/`, and the retry completes the move. A task no
//! longer in `active/` is reported gone, so a retry never moves anything twice.

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
};

use k8s_openapi::jiff::Timestamp;

use crate::{
    bounded::{json_len, Smallest},
    confined::{
        dir_owner, io_err, open_child, open_path, open_root, rename_noreplace, write_new,
        ConfinedDir, FsError,
    },
    crd::worker::ResolvedPaths,
};

/// Most tasks whose crash counts are kept (in the Worker's status).
pub const MAX_COUNTED: usize = 100;
/// Most bytes their names take in the Worker's status (as JSON keys): 100 names of up to
/// 255 bytes fit unless escapes blow them up; then the highest counts are kept.
pub const MAX_COUNTED_BYTES: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PoisonError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("invalid task name {0:?}: a task name must be a single file name")]
    InvalidName(String),
}

type Result<T, E = PoisonError> = std::result::Result<T, E>;

/// Where a poison task went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoisonMove {
    Moved { to: String },
    Gone,
}

fn task_dir(paths: &ResolvedPaths, sub: &str, create: bool) -> Result<Option<ConfinedDir>> {
    let root = open_root(&paths.trusted_root)?;
    let Some(tasks) = open_path(&root, &paths.tasks_dir, false)? else {
        return Ok(None);
    };
    Ok(open_child(&tasks, OsStr::new(sub), create)?)
}

/// The task files in `<tasks>/active/` (regular `*.json` files with UTF-8 names), sorted;
/// at most [`MAX_COUNTED`], the first by name (the same ones at every crash, so their counts
/// go on), streamed: memory does not grow with the directory.
pub fn active_tasks(paths: &ResolvedPaths) -> Result<Vec<String>> {
    let Some(active) = task_dir(paths, "active", false)? else {
        return Ok(Vec::new());
    };
    let mut first = Smallest::new(MAX_COUNTED);
    for name in active.stream_names()? {
        let name = name?;
        let Some(text) = name.to_str() else { continue };
        if !text.ends_with(".json") || text.starts_with('.') {
            continue;
        }
        if active.lstat(&name)?.is_some_and(|md| md.is_file()) {
            first.offer(text.to_string());
        }
    }
    Ok(first.into_sorted_vec())
}

/// The crash counts after a crash at which `active` were in `active/`: one more for each of
/// them; a task not there is dropped, since the count is of consecutive crashes. At most
/// [`MAX_COUNTED`] entries and [`MAX_COUNTED_BYTES`] of names (the highest counts kept). Returns the tasks whose count reached
/// `threshold` (0: never).
pub fn count_crash(
    counts: &BTreeMap<String, u32>,
    active: &[String],
    threshold: u32,
) -> (BTreeMap<String, u32>, Vec<String>) {
    let mut next: BTreeMap<String, u32> = active
        .iter()
        .map(|n| {
            (
                n.clone(),
                counts.get(n).copied().unwrap_or(0).saturating_add(1),
            )
        })
        .collect();
    let bytes = |m: &BTreeMap<String, u32>| m.keys().map(|k| json_len(k) + 12).sum::<usize>();
    if next.len() > MAX_COUNTED || bytes(&next) > MAX_COUNTED_BYTES {
        let mut by_count: Vec<_> = next.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut used = 0;
        next = by_count
            .into_iter()
            .take(MAX_COUNTED)
            .filter(|(name, _)| {
                used += json_len(name) + 12;
                used <= MAX_COUNTED_BYTES
            })
            .collect();
    }
    let poisoned = if threshold == 0 {
        Vec::new()
    } else {
        next.iter()
            .filter(|(_, c)| **c >= threshold)
            .map(|(n, _)| n.clone())
            .collect()
    };
    (next, poisoned)
}

/// Move `active/<name>` to `failed/<name>` (or `<stem>.poison-<n>.json` when that is taken)
/// with a `.reason` file written first. A task no longer in `active/` is [`PoisonMove::Gone`].
pub fn quarantine_poison(
    paths: &ResolvedPaths,
    name: &str,
    crashes: u32,
    time: Timestamp,
) -> Result<PoisonMove> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 200
        || name.contains(['/', '\0'])
    {
        return Err(PoisonError::InvalidName(name.into()));
    }
    let Some(active) = task_dir(paths, "active", false)? else {
        return Ok(PoisonMove::Gone);
    };
    let source = OsString::from(name);
    match active.lstat(&source)? {
        Some(md) if md.is_file() => {}
        _ => return Ok(PoisonMove::Gone),
    }
    let Some(failed) = task_dir(paths, "failed", true)? else {
        let missing = std::io::ErrorKind::NotFound.into();
        return Err(io_err("open", paths.tasks_dir.join("failed"), missing).into());
    };
    let stem = name.strip_suffix(".json").unwrap_or(name);
    let target = (1..=1000)
        .map(|i| {
            if i == 1 {
                name.to_string()
            } else {
                format!("{stem}.poison-{i}.json")
            }
        })
        .find(|candidate| {
            // A reason file of ours without its task is a retry's: its name is the target.
            let task_free = failed.lstat(OsStr::new(candidate)).ok().flatten().is_none();
            task_free
        })
        .ok_or_else(|| {
            io_err(
                "choose a name",
                failed.path.join(name),
                std::io::Error::other("1000 poison copies of this name exist"),
            )
        })?;
    let reason = serde_json::json!({
        "reason": "poison",
        "task": name,
        "crashes": crashes,
        "worker": paths.worker_name,
        "time": time.to_string(),
        "message": format!("the task was in active/ at {crashes} consecutive crashes of the worker"),
    });
    let reason_name = OsString::from(format!("{target}.reason"));
    let temp = OsString::from(format!(".wro-poison-{target}.reason.tmp"));
    let owner = dir_owner(&failed)?;
    write_new(
        &failed,
        &temp,
        format!("{reason}\n").as_bytes(),
        owner,
        true,
    )?;
    failed
        .dir
        .rename(&temp, &failed.dir, &reason_name)
        .map_err(|e| io_err("rename", failed.path.join(&temp), e))?;
    failed.fsync()?;
    match rename_noreplace(&active, &source, &failed, OsStr::new(&target)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(PoisonMove::Gone),
        Err(e) => return Err(e.into()),
    }
    failed.fsync()?;
    active.fsync()?;
    Ok(PoisonMove::Moved { to: target })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn paths(root: &std::path::Path) -> ResolvedPaths {
        let mut w = crate::testing::worker();
        w.spec.shared_root = root.display().to_string();
        w.resolved_paths().unwrap()
    }

    #[test]
    fn counts_are_of_consecutive_crashes() {
        let a = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (c, p) = count_crash(&BTreeMap::new(), &a(&["x.json", "y.json"]), 3);
        assert!(p.is_empty());
        let (c, p) = count_crash(&c, &a(&["x.json"]), 3);
        assert_eq!(
            c.get("y.json"),
            None,
            "not there at the second crash: forgotten"
        );
        assert!(p.is_empty());
        let (c, p) = count_crash(&c, &a(&["x.json", "y.json"]), 3);
        assert_eq!(p, a(&["x.json"]));
        assert_eq!(c["x.json"], 3);
        assert_eq!(c["y.json"], 1);
        let (_, p) = count_crash(&c, &a(&["x.json"]), 0);
        assert!(p.is_empty(), "threshold 0 is off");
        let many: Vec<String> = (0..1500).map(|i| format!("t{i}.json")).collect();
        let (c, _) = count_crash(&BTreeMap::new(), &many, 3);
        assert_eq!(c.len(), MAX_COUNTED);
        // Names that JSON escapes six-fold: fewer kept, within the byte budget.
        let worst: Vec<String> = (0..200)
            .map(|i| format!("{i:03}{}.json", "\u{1}".repeat(247)))
            .collect();
        let (c, _) = count_crash(&BTreeMap::new(), &worst, 3);
        assert!(!c.is_empty() && c.len() < MAX_COUNTED, "{}", c.len());
        assert!(serde_json::to_vec(&c).unwrap().len() <= MAX_COUNTED_BYTES);
    }

    #[test]
    fn a_poison_task_moves_to_failed_with_its_reason_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let p = paths(&root);
        let active = root.join("tasks/marie/active");
        fs::create_dir_all(&active).unwrap();
        fs::create_dir_all(root.join("tasks/marie/failed")).unwrap();
        fs::write(active.join("bad.json"), br#"{"id":"bad","crash":true}"#).unwrap();
        fs::write(active.join("notes.txt"), b"x").unwrap();
        // An older failure of the same name is never overwritten.
        fs::write(root.join("tasks/marie/failed/bad.json"), b"old").unwrap();
        assert_eq!(active_tasks(&p).unwrap(), vec!["bad.json".to_string()]);
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let moved = quarantine_poison(&p, "bad.json", 3, t).unwrap();
        assert_eq!(
            moved,
            PoisonMove::Moved {
                to: "bad.poison-2.json".into()
            }
        );
        let failed = root.join("tasks/marie/failed");
        assert_eq!(fs::read(failed.join("bad.json")).unwrap(), b"old");
        assert_eq!(
            fs::read(failed.join("bad.poison-2.json")).unwrap(),
            br#"{"id":"bad","crash":true}"#
        );
        let reason: serde_json::Value =
            serde_json::from_slice(&fs::read(failed.join("bad.poison-2.json.reason")).unwrap())
                .unwrap();
        assert_eq!(reason["reason"], "poison");
        assert_eq!(reason["crashes"], 3);
        assert!(!active.join("bad.json").exists());
        assert_eq!(
            quarantine_poison(&p, "bad.json", 3, t).unwrap(),
            PoisonMove::Gone
        );
        assert!(quarantine_poison(&p, "../x.json", 3, t).is_err());
    }
}
