//! The shared root's files: snapshots, crashed tasks and where tasks are.

use std::{collections::BTreeMap, fs, path::Path};

use serde_json::Value;

use super::{docker_ok, WorkerContainer};

/// Every file below `dir` with its content (a symlink as its target, a directory as `name/`),
/// to compare trees byte for byte.
pub fn tree_snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                pending.push(path);
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, target.display().to_string().into_bytes());
            } else {
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Write `n` task files `t-0000.json`, ... into `dir` (as a crashed worker left them in
/// `active/`), each with its lock `locks/<worker>_<id>.lock` under `root`.
pub fn crashed_tasks(root: &Path, worker: &str, n: usize) -> Vec<String> {
    let active = root.join("tasks").join(worker).join("active");
    let locks = root.join("locks");
    fs::create_dir_all(&active).unwrap();
    fs::create_dir_all(&locks).unwrap();
    (0..n)
        .map(|i| {
            let id = format!("t-{i:04}");
            fs::write(
                active.join(format!("{id}.json")),
                format!(r#"{{"id":"{id}"}}"#),
            )
            .unwrap();
            fs::write(locks.join(format!("{worker}_{id}.lock")), b"{}").unwrap();
            id
        })
        .collect()
}

/// Where each task id is among `dirs` of the worker's task directory, and its `retry_count`.
pub fn task_places(wc: &WorkerContainer, ids: &[String]) -> BTreeMap<String, Vec<(String, i64)>> {
    let mut out = BTreeMap::new();
    for dir in ["pending", "staged", "active", "done", "failed"] {
        let Ok(entries) = fs::read_dir(wc.tasks_dir(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Ok(task) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let Some(id) = task["id"].as_str().filter(|id| ids.iter().any(|i| i == id)) else {
                continue;
            };
            let retries = task["retry_count"].as_i64().unwrap_or(0);
            out.entry(id.to_string())
                .or_insert_with(Vec::new)
                .push((dir.to_string(), retries));
        }
    }
    out
}

/// Every task once, `retry_count` up by one (counted with the worker stopped, so that no task
/// moves while the directories are read).
pub fn assert_requeued_once(wc: &WorkerContainer, ids: &[String]) {
    docker_ok(&["stop", "-t", "2", &wc.container]);
    let places = task_places(wc, ids);
    assert_eq!(places.len(), ids.len(), "no task lost");
    for (id, at) in places {
        assert_eq!(at.len(), 1, "{id} in one place: {at:?}");
        assert_eq!(at[0].1, 1, "{id}: retry_count went up once: {at:?}");
    }
}

impl WorkerContainer {
    /// A stopped worker that left `n` tasks in `active/` with their locks (see
    /// [`crashed_tasks`]), each to take `task_ms` milliseconds when it runs again: what a Clean
    /// run starts from. Returns it and the task ids.
    pub fn crashed_with_tasks(
        ns: &str,
        name: &str,
        task_ms: &str,
        n: usize,
    ) -> (WorkerContainer, Vec<String>) {
        let wc = WorkerContainer::start(ns, name, &[], &[("TASK_DURATION_MS", task_ms)]);
        docker_ok(&["stop", "-t", "2", &wc.container]);
        let ids = crashed_tasks(&wc.shared_root(), name, n);
        (wc, ids)
    }
}
