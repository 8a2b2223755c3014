//! The worker's heartbeat file: `{"timestamp": ..., "status": ..., "current_task": ..., "progress": ...}`.

use std::path::Path;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use super::fs_safe::{self, SafeError};

/// A heartbeat larger than this is not a heartbeat; it is not read.
pub const MAX_HEARTBEAT_BYTES: u64 = 64 * 1024;

/// A parsed heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub timestamp: Timestamp,
    pub status: Option<String>,
    pub current_task: Option<String>,
    pub progress: Option<u64>,
}

/// What reading the heartbeat file gave.
#[derive(Clone, Debug, PartialEq)]
pub enum HeartbeatObservation {
    Missing,
    /// The file exists but could not be read safely (symlink, not a file, too large, I/O error).
    Unreadable(String),
    /// The file was read but is not a heartbeat.
    Invalid(String),
    Valid(Heartbeat),
}

#[derive(Deserialize)]
struct RawHeartbeat {
    timestamp: Option<serde_json::Value>,
    status: Option<String>,
    #[serde(alias = "currentTask")]
    current_task: Option<serde_json::Value>,
    progress: Option<u64>,
}

/// Parse heartbeat JSON. `timestamp` is RFC 3339 text or Unix seconds.
pub fn parse(bytes: &[u8]) -> Result<Heartbeat, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("heartbeat file is empty".into());
    }
    let raw: RawHeartbeat =
        serde_json::from_slice(bytes).map_err(|e| format!("heartbeat is not valid JSON: {e}"))?;
    let timestamp = match raw.timestamp {
        None | Some(serde_json::Value::Null) => return Err("heartbeat has no timestamp".into()),
        Some(serde_json::Value::String(s)) => s
            .parse::<Timestamp>()
            .map_err(|e| format!("heartbeat timestamp {s:?} is not RFC 3339: {e}"))?,
        Some(serde_json::Value::Number(n)) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            if !secs.is_finite() || secs < 0.0 {
                return Err(format!("heartbeat timestamp {n} is not a Unix time"));
            }
            Timestamp::from_millisecond((secs * 1000.0) as i64)
                .map_err(|e| format!("heartbeat timestamp {n} is out of range: {e}"))?
        }
        Some(other) => {
            return Err(format!(
                "heartbeat timestamp {other} is neither text nor a number"
            ))
        }
    };
    let current_task = match raw.current_task {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    Ok(Heartbeat {
        timestamp,
        status: raw.status,
        current_task,
        progress: raw.progress,
    })
}

/// Read the heartbeat file below `root` without following a symlink anywhere on the way and
/// without reading huge files.
pub async fn read(root: &Path, path: &Path) -> HeartbeatObservation {
    let (root, path) = (root.to_path_buf(), path.to_path_buf());
    let read =
        fs_safe::off_thread(move || fs_safe::read_file(&root, &path, MAX_HEARTBEAT_BYTES)).await;
    match read {
        Ok(Ok(content)) => match parse(&content.bytes) {
            Ok(hb) => HeartbeatObservation::Valid(hb),
            Err(reason) => HeartbeatObservation::Invalid(reason),
        },
        Ok(Err(SafeError::Missing(_))) => HeartbeatObservation::Missing,
        Ok(Err(e)) => HeartbeatObservation::Unreadable(e.to_string()),
        Err(e) => HeartbeatObservation::Unreadable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sample_worker_heartbeat() {
        let hb = parse(br#"{"worker":"marie","timestamp":"2026-11-27T23:59:01.123Z","status":"working","current_task":"t-7","progress":42,"pid":1}"#).unwrap();
        assert_eq!(hb.timestamp.as_millisecond(), 1_795_823_941_123);
        assert_eq!(hb.status.as_deref(), Some("working"));
        assert_eq!(hb.current_task.as_deref(), Some("t-7"));
        assert_eq!(hb.progress, Some(42));
    }

    #[test]
    fn accepts_unix_seconds_and_null_task() {
        let hb = parse(br#"{"timestamp": 1795823941.5, "current_task": null}"#).unwrap();
        assert_eq!(hb.timestamp.as_millisecond(), 1_795_823_941_500);
        assert_eq!(hb.current_task, None);
    }

    #[test]
    fn rejects_what_is_not_a_heartbeat() {
        for (input, want) in [
            (&b""[..], "empty"),
            (b"  \n", "empty"),
            (b"{not json", "not valid JSON"),
            (b"[1,2]", "not valid JSON"),
            (b"{}", "no timestamp"),
            (br#"{"timestamp":"yesterday"}"#, "not RFC 3339"),
            (br#"{"timestamp":-5}"#, "not a Unix time"),
            (br#"{"timestamp":true}"#, "neither text nor a number"),
        ] {
            let err = parse(input).unwrap_err();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }

    #[tokio::test]
    async fn reads_files_safely() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let hb = root.join("heartbeat.json");
        assert_eq!(read(root, &hb).await, HeartbeatObservation::Missing);

        std::fs::write(&hb, br#"{"timestamp":"2026-11-27T23:59:01Z"}"#).unwrap();
        assert!(matches!(
            read(root, &hb).await,
            HeartbeatObservation::Valid(_)
        ));

        std::fs::write(&hb, b"garbage").unwrap();
        assert!(matches!(
            read(root, &hb).await,
            HeartbeatObservation::Invalid(_)
        ));

        std::fs::write(&hb, vec![b' '; (MAX_HEARTBEAT_BYTES + 1) as usize]).unwrap();
        let huge = read(root, &hb).await;
        assert!(
            matches!(&huge, HeartbeatObservation::Unreadable(m) if m.contains("bytes")),
            "{huge:?}"
        );

        let link = root.join("link.json");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        let linked = read(root, &link).await;
        assert!(
            matches!(&linked, HeartbeatObservation::Unreadable(m) if m.contains("symlink")),
            "{linked:?}"
        );

        // A symlinked directory on the way is not followed either.
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/heartbeat.json"), br#"{"timestamp":1}"#).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("workers")).unwrap();
        let through = read(root, &root.join("workers/heartbeat.json")).await;
        assert!(
            matches!(&through, HeartbeatObservation::Unreadable(m) if m.contains("symlink")),
            "{through:?}"
        );

        std::fs::create_dir(root.join("dir.json")).unwrap();
        assert!(matches!(
            read(root, &root.join("dir.json")).await,
            HeartbeatObservation::Unreadable(_)
        ));
    }
}
