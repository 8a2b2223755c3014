//! Shared-directory layout and task-file parsing/ordering (the pure parts).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Task sub-directories under `tasks/<name>/`, in the runbook's spelling.
pub const TASK_DIRS: [&str; 5] = ["pending", "active", "staged", "done", "failed"];

/// Paths under the shared root, exactly as the runbook lays them out.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub name: String,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Layout {
            root: root.into(),
            name: name.into(),
        }
    }
    pub fn worker_dir(&self) -> PathBuf {
        self.root.join("workers").join(&self.name)
    }
    pub fn heartbeat(&self) -> PathBuf {
        self.worker_dir().join("heartbeat.json")
    }
    pub fn state(&self) -> PathBuf {
        self.worker_dir().join("state.json")
    }
    /// One-shot fault control file.
    pub fn fault_file(&self) -> PathBuf {
        self.worker_dir().join("fault")
    }
    pub fn tasks(&self, sub: &str) -> PathBuf {
        self.root.join("tasks").join(&self.name).join(sub)
    }
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// `locks/<name>_<taskid>.lock` (task id made file-name safe).
    pub fn lock_file(&self, task_id: &str) -> PathBuf {
        self.locks_dir()
            .join(format!("{}_{}.lock", self.name, file_safe(task_id)))
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp").join(&self.name)
    }
    /// Every directory the worker creates at start.
    pub fn all_dirs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.worker_dir(), self.locks_dir(), self.tmp_dir()];
        v.extend(TASK_DIRS.iter().map(|d| self.tasks(d)));
        v
    }
}

/// Replaces every character outside `[A-Za-z0-9._-]` with `_` so a task id can
/// be used in a file name. Ordinary ids (`t1`, `task-42`, `abc.def`) are kept
/// unchanged.
pub fn file_safe(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match s.as_str() {
        "" | "." | ".." => s.replace('.', "_") + "_",
        _ => s,
    }
}

/// A parsed task file.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub kind: Option<String>,
    /// `"fail": true` makes the task end in `failed/`.
    pub fail: bool,
    /// Optional per-task `"duration_ms"` overriding `TASK_DURATION_MS`.
    pub duration: Option<Duration>,
    /// `"crash": true` makes the worker crash (exit 3) when it works on the task: a poison task.
    pub crash: bool,
}

/// Parses a task file. `Err` carries the human-readable reason written next to
/// the file in `failed/` (`<file>.reason`).
pub fn parse_task(bytes: &[u8], file_stem: &str) -> Result<Task, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = match &v {
        Value::Object(o) => o,
        other => {
            return Err(format!(
                "task is not a JSON object (found {})",
                json_type(other)
            ))
        }
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => file_stem.to_string(),
        Some(Value::String(s)) if s.trim().is_empty() => file_stem.to_string(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "field \"id\" must be a string or number (found {})",
                json_type(other)
            ))
        }
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let fail = matches!(obj.get("fail"), Some(Value::Bool(true)));
    let crash = matches!(obj.get("crash"), Some(Value::Bool(true)));
    let duration = obj
        .get("duration_ms")
        .and_then(Value::as_u64)
        .map(Duration::from_millis);
    Ok(Task {
        id,
        kind,
        fail,
        duration,
        crash,
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether a directory entry name is a task file candidate (`*.json`, not
/// hidden).
pub fn is_task_file_name(name: &str) -> bool {
    name.len() > ".json".len() && name.ends_with(".json") && !name.starts_with('.')
}

/// File stem used as the default task id.
pub fn file_stem(name: &str) -> &str {
    Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name)
}

/// Oldest modification time first; ties broken by file name.
pub fn order_candidates(mut v: Vec<(SystemTime, OsString)>) -> Vec<OsString> {
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// JSON body of a lock file.
pub fn lock_json(holder: &str, pid: u32, task: &str, acquired_at: &str) -> String {
    let v = serde_json::json!({
        "holder": holder,
        "pid": pid,
        "task": task,
        "acquired_at": acquired_at,
    });
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn layout_paths() {
        let l = Layout::new("/shared", "marie");
        assert_eq!(
            l.heartbeat(),
            PathBuf::from("/shared/workers/marie/heartbeat.json")
        );
        assert_eq!(l.state(), PathBuf::from("/shared/workers/marie/state.json"));
        assert_eq!(l.fault_file(), PathBuf::from("/shared/workers/marie/fault"));
        assert_eq!(
            l.tasks("pending"),
            PathBuf::from("/shared/tasks/marie/pending")
        );
        assert_eq!(
            l.lock_file("t1"),
            PathBuf::from("/shared/locks/marie_t1.lock")
        );
        assert_eq!(l.tmp_dir(), PathBuf::from("/shared/tmp/marie"));
        assert_eq!(l.all_dirs().len(), 8);
    }

    #[test]
    fn file_safe_ids() {
        assert_eq!(file_safe("task-42.a_b"), "task-42.a_b");
        assert_eq!(file_safe("a/b c"), "a_b_c");
        assert_eq!(file_safe(".."), "___");
        assert_eq!(file_safe(""), "_");
    }

    #[test]
    fn parses_valid_task() {
        let t = parse_task(br#"{"id":"t1","type":"review","extra":[1]}"#, "file").unwrap();
        assert_eq!(
            t,
            Task {
                id: "t1".into(),
                kind: Some("review".into()),
                fail: false,
                duration: None,
                crash: false,
            }
        );
        assert!(
            parse_task(br#"{"id":"p","crash":true}"#, "p")
                .unwrap()
                .crash
        );
    }

    #[test]
    fn id_defaults_to_stem_and_accepts_numbers() {
        assert_eq!(parse_task(b"{}", "t9").unwrap().id, "t9");
        assert_eq!(parse_task(br#"{"id":""}"#, "t9").unwrap().id, "t9");
        assert_eq!(parse_task(br#"{"id":null}"#, "t9").unwrap().id, "t9");
        assert_eq!(parse_task(br#"{"id":42}"#, "t9").unwrap().id, "42");
    }

    #[test]
    fn fail_and_duration() {
        let t = parse_task(br#"{"id":"x","fail":true,"duration_ms":5}"#, "x").unwrap();
        assert!(t.fail);
        assert_eq!(t.duration, Some(Duration::from_millis(5)));
        assert!(!parse_task(br#"{"fail":"yes"}"#, "x").unwrap().fail);
    }

    #[test]
    fn malformed_tasks_have_reasons() {
        let e = parse_task(b"not json", "x").unwrap_err();
        assert!(e.starts_with("invalid JSON: "), "{e}");
        let e = parse_task(b"", "x").unwrap_err();
        assert!(e.starts_with("invalid JSON: "), "{e}");
        assert_eq!(
            parse_task(b"[1,2]", "x").unwrap_err(),
            "task is not a JSON object (found array)"
        );
        assert_eq!(
            parse_task(b"\"s\"", "x").unwrap_err(),
            "task is not a JSON object (found string)"
        );
        assert_eq!(
            parse_task(br#"{"id":[1]}"#, "x").unwrap_err(),
            "field \"id\" must be a string or number (found array)"
        );
    }

    #[test]
    fn task_file_names() {
        assert!(is_task_file_name("t1.json"));
        assert!(!is_task_file_name(".t1.json"));
        assert!(!is_task_file_name(".json"));
        assert!(!is_task_file_name("t1.json.reason"));
        assert!(!is_task_file_name("t1.txt"));
        assert_eq!(file_stem("t1.json"), "t1");
    }

    #[test]
    fn ordering_oldest_first() {
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        let v = vec![
            (t(30), OsString::from("c.json")),
            (t(10), OsString::from("b.json")),
            (t(10), OsString::from("a.json")),
        ];
        assert_eq!(order_candidates(v), vec!["a.json", "b.json", "c.json"]);
    }

    #[test]
    fn lock_body() {
        let s = lock_json("marie", 7, "t1", "2026-01-01T00:00:00.000Z");
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["holder"], "marie");
        assert_eq!(v["pid"], 7);
        assert_eq!(v["task"], "t1");
        assert_eq!(v["acquired_at"], "2026-01-01T00:00:00.000Z");
    }
}
