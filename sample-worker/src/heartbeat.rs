//! Heartbeat file (`workers/<name>/heartbeat.json`) and the thread writing it.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::log::{Level, Throttle};
use crate::state::{lock, Shared};
use crate::tasks::Layout;
use crate::timefmt::{rfc3339, since_epoch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Starting,
    Idle,
    Working,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Idle => "idle",
            Status::Working => "working",
        }
    }
}

/// The heartbeat document (one line of JSON plus newline).
pub fn heartbeat_json(
    worker: &str,
    timestamp: &str,
    status: Status,
    current_task: Option<&str>,
    progress: u64,
    pid: u32,
) -> String {
    let v = serde_json::json!({
        "worker": worker,
        "timestamp": timestamp,
        "status": status.as_str(),
        "current_task": current_task,
        "progress": progress,
        "pid": pid,
    });
    format!("{v}\n")
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, then `rename` over the target.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let file_name = path
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("heartbeat.json");
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(contents)?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Writes one heartbeat now, unless heartbeating has been stopped (hang mode).
/// Serialised with other writers so the hang path can write a final beat.
pub fn beat(shared: &Shared, layout: &Layout) -> io::Result<()> {
    let _guard = lock(&shared.hb_write);
    if shared.hb_stopped.load(Ordering::SeqCst) {
        return Ok(());
    }
    let (status, current) = {
        let s = lock(&shared.hb);
        (s.status, s.current_task.clone())
    };
    let now = SystemTime::now();
    let body = heartbeat_json(
        &layout.name,
        &rfc3339(now),
        status,
        current.as_deref(),
        shared.metrics.completed.load(Ordering::Relaxed),
        std::process::id(),
    );
    write_atomic(&layout.heartbeat(), body.as_bytes())?;
    let ms = since_epoch(now).as_millis() as u64;
    shared.metrics.heartbeat_ms.store(ms, Ordering::Relaxed);
    Ok(())
}

/// Heartbeat loop, run in its own thread so it keeps beating during tasks.
pub fn run(shared: Arc<Shared>, layout: Layout, interval: Duration) {
    let mut errors = Throttle::new(Duration::from_secs(10));
    loop {
        if let Err(e) = beat(&shared, &layout) {
            errors.log(
                Level::Error,
                &format!(
                    "heartbeat write failed ({}): {e}",
                    layout.heartbeat().display()
                ),
            );
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn heartbeat_document() {
        let s = heartbeat_json(
            "marie",
            "2026-11-27T23:59:01.123Z",
            Status::Working,
            Some("t1"),
            3,
            1,
        );
        assert!(s.ends_with('\n'));
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["worker"], "marie");
        assert_eq!(v["timestamp"], "2026-11-27T23:59:01.123Z");
        assert_eq!(v["status"], "working");
        assert_eq!(v["current_task"], "t1");
        assert_eq!(v["progress"], 3);
        assert_eq!(v["pid"], 1);
        assert_eq!(v.as_object().unwrap().len(), 6);
    }

    #[test]
    fn idle_heartbeat_has_null_task() {
        let s = heartbeat_json("a", "T", Status::Idle, None, 0, 9);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["status"], "idle");
        assert!(v["current_task"].is_null());
        assert_eq!(Status::Starting.as_str(), "starting");
    }

    #[test]
    fn atomic_write_replaces_file() {
        let dir = std::env::temp_dir().join(format!("sw-hb-test-{}", std::process::id()));
        // A leftover of an aborted run with the same pid would break the count.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("heartbeat.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        // no temp file left behind
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
