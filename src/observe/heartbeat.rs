//! The worker's heartbeat file, and the one judge of its freshness.
//!
//! The runbook prescribes no heartbeat fields: many workers only rewrite or touch the file.
//! The time of a beat is taken from the content when it has a recognisable time field
//! ([`TIME_FIELDS`], RFC 3339 text or Unix seconds or milliseconds), and from the file's
//! modification time otherwise; the [`TimeSource`] says which. Content that is not a readable
//! heartbeat (empty, not JSON) is reported as such, while freshness is still judged by the
//! file's time: a worker that rewrites a half-written file every second is alive.

use std::{path::Path, time::Duration};

use k8s_openapi::jiff::{self, SignedDuration, Timestamp};
use serde_json::Value;

use crate::confined::{self, FileContent, FsError};

/// A heartbeat larger than this is not a heartbeat; it is not read.
pub const MAX_HEARTBEAT_BYTES: u64 = 64 * 1024;

/// Fields that carry a heartbeat's time, in order of preference.
pub const TIME_FIELDS: [&str; 5] = ["timestamp", "ts", "time", "last_heartbeat", "lastHeartbeat"];

/// Where the time of a heartbeat came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSource {
    /// A time field of the content.
    Content { field: &'static str },
    /// The file's modification time (the content has no readable time).
    FileModified,
}

/// Why the content of a heartbeat file is not a readable heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub enum ContentIssue {
    Empty,
    /// Not a JSON object.
    Corrupt(String),
    /// A time field is present but its value is not a time; the file's time was used.
    BadTime {
        field: &'static str,
        detail: TimeError,
    },
}

/// Why the value of a time field is not a time.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TimeError {
    #[error("{text:?} is neither RFC 3339 nor a Unix time: {source}")]
    NotATime {
        text: String,
        #[source]
        source: jiff::Error,
    },
    /// Neither a string nor a number: the value as JSON.
    #[error("{0} is neither text nor a number")]
    WrongKind(Value),
    #[error("{0} is not a Unix time")]
    NotUnixTime(f64),
    #[error("{number} is out of range: {source}")]
    OutOfRange {
        number: f64,
        #[source]
        source: jiff::Error,
    },
}

/// By what each says: a `jiff::Error` has no `PartialEq`.
impl PartialEq for TimeError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl ContentIssue {
    /// Short reason word for findings: `empty`, `corrupt`, `badTime`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Corrupt(_) => "corrupt",
            Self::BadTime { .. } => "badTime",
        }
    }

    /// Whether the file is not a heartbeat at all (as opposed to one odd field).
    pub fn is_unreadable(&self) -> bool {
        matches!(self, Self::Empty | Self::Corrupt(_))
    }
}

impl std::fmt::Display for ContentIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("heartbeat file is empty"),
            Self::Corrupt(e) => write!(f, "heartbeat is not a JSON object: {e}"),
            Self::BadTime { field, detail } => write!(f, "heartbeat field {field:?}: {detail}"),
        }
    }
}

/// A heartbeat as read: when it was written, by which source, and what it says.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub at: Timestamp,
    pub source: TimeSource,
    pub status: Option<String>,
    pub current_task: Option<String>,
    pub progress: Option<u64>,
    /// What is wrong with the content, when something is.
    pub issue: Option<ContentIssue>,
}

/// What reading the heartbeat file gave.
#[derive(Clone, Debug, PartialEq)]
pub enum HeartbeatObservation {
    Missing,
    /// The file exists but could not be read safely (symlink, not a file, too large, I/O error).
    Unreadable(String),
    /// Neither the content nor the file has a time (the file system gave no modification time).
    Invalid(String),
    Present(Heartbeat),
}

/// What the content of a heartbeat file says, before a time source is chosen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedContent {
    pub time: Option<(&'static str, Timestamp)>,
    pub status: Option<String>,
    pub current_task: Option<String>,
    pub progress: Option<u64>,
    pub issue: Option<ContentIssue>,
}

/// Parse heartbeat content. Never fails: what cannot be read is an [`ContentIssue`].
pub fn parse(bytes: &[u8]) -> ParsedContent {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return ParsedContent {
            issue: Some(ContentIssue::Empty),
            ..Default::default()
        };
    }
    let object = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return ParsedContent {
                issue: Some(ContentIssue::Corrupt(format!(
                    "expected an object, found {}",
                    json_kind(&other)
                ))),
                ..Default::default()
            }
        }
        Err(e) => {
            return ParsedContent {
                issue: Some(ContentIssue::Corrupt(e.to_string())),
                ..Default::default()
            }
        }
    };
    let mut parsed = ParsedContent {
        status: object
            .get("status")
            .and_then(Value::as_str)
            .map(String::from),
        current_task: match object
            .get("current_task")
            .or_else(|| object.get("currentTask"))
        {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        },
        progress: object.get("progress").and_then(Value::as_u64),
        ..Default::default()
    };
    for field in TIME_FIELDS {
        let Some(value) = object.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        match parse_time(value) {
            Ok(at) => {
                parsed.time = Some((field, at));
                parsed.issue = None;
                break;
            }
            // Remember the first bad field, but a later field may still carry the time.
            Err(detail) if parsed.issue.is_none() => {
                parsed.issue = Some(ContentIssue::BadTime { field, detail })
            }
            Err(_) => {}
        }
    }
    parsed
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Unix times above this are milliseconds: as seconds they would be past the year 5000.
const MILLISECONDS_FROM: f64 = 1e11;

/// A time field: RFC 3339 text, or Unix seconds or milliseconds (as a number or as text).
fn parse_time(value: &Value) -> Result<Timestamp, TimeError> {
    let number = match value {
        Value::String(s) => match s.trim().parse::<Timestamp>() {
            Ok(t) => return Ok(t),
            Err(source) => s.trim().parse::<f64>().map_err(|_| TimeError::NotATime {
                text: s.clone(),
                source,
            })?,
        },
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        other => return Err(TimeError::WrongKind(other.clone())),
    };
    if !number.is_finite() || number < 0.0 {
        return Err(TimeError::NotUnixTime(number));
    }
    let millis = if number >= MILLISECONDS_FROM {
        number
    } else {
        number * 1000.0
    };
    Timestamp::from_millisecond(millis as i64)
        .map_err(|source| TimeError::OutOfRange { number, source })
}

/// Interpret a heartbeat file read safely: its content, or its modification time when the
/// content has no time.
pub fn interpret(file: &FileContent) -> HeartbeatObservation {
    let parsed = parse(&file.bytes);
    let (at, source) = match (parsed.time, file.modified) {
        (Some((field, at)), _) => (at, TimeSource::Content { field }),
        (None, Some(modified)) => (modified, TimeSource::FileModified),
        (None, None) => {
            return HeartbeatObservation::Invalid(match parsed.issue {
                Some(issue) => format!("{issue}, and the file has no modification time"),
                None => "heartbeat has no time field and the file has no modification time".into(),
            })
        }
    };
    HeartbeatObservation::Present(Heartbeat {
        at,
        source,
        status: parsed.status,
        current_task: parsed.current_task,
        progress: parsed.progress,
        issue: parsed.issue,
    })
}

/// How old a heartbeat is, and whether that is fresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// `now - at`; negative when the worker's clock is ahead of ours.
    pub age: SignedDuration,
    pub fresh: bool,
}

impl Freshness {
    /// Age for humans: whole seconds, never negative ("0" for a clock ahead of ours).
    pub fn age_seconds(&self) -> i64 {
        self.age.as_secs().max(0)
    }
}

/// The one judge of freshness, for the Worker controller and the diagnosis alike: a heartbeat
/// is stale when it is older than `timeout`, compared at full precision (10.4 s is over a
/// 10 s timeout). A time ahead of ours is fresh.
pub fn freshness(at: Timestamp, now: Timestamp, timeout: Duration) -> Freshness {
    let age = now.duration_since(at);
    let limit = SignedDuration::try_from(timeout).unwrap_or(SignedDuration::MAX);
    Freshness {
        age,
        fresh: age <= limit,
    }
}

/// Read the heartbeat file below `root` without following a symlink anywhere on the way and
/// without reading huge files.
pub async fn read(root: &Path, path: &Path) -> HeartbeatObservation {
    let (root, path) = (root.to_path_buf(), path.to_path_buf());
    let read =
        crate::blocking::try_run(move || confined::read_file(&root, &path, MAX_HEARTBEAT_BYTES))
            .await;
    match read {
        Ok(content) => interpret(&content),
        Err(FsError::Missing(_)) => HeartbeatObservation::Missing,
        Err(e) => HeartbeatObservation::Unreadable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time_of(bytes: &[u8]) -> Option<(&'static str, i64)> {
        parse(bytes).time.map(|(f, t)| (f, t.as_millisecond()))
    }

    #[test]
    fn parses_the_sample_worker_heartbeat() {
        let p = parse(br#"{"worker":"marie","timestamp":"2026-11-27T23:59:01.123Z","status":"working","current_task":"t-7","progress":42,"pid":1}"#);
        assert_eq!(p.time.unwrap().1.as_millisecond(), 1_795_823_941_123);
        assert_eq!(p.status.as_deref(), Some("working"));
        assert_eq!(p.current_task.as_deref(), Some("t-7"));
        assert_eq!(p.progress, Some(42));
        assert_eq!(p.issue, None);
    }

    #[test]
    fn accepts_the_common_time_fields_and_units() {
        let at = 1_795_823_941_500;
        for (input, field) in [
            (
                &br#"{"timestamp": 1795823941.5, "current_task": null}"#[..],
                "timestamp",
            ),
            (br#"{"ts": 1795823941500}"#, "ts"),
            (br#"{"time": "2026-11-27T23:59:01.5Z"}"#, "time"),
            (br#"{"last_heartbeat": "1795823941.5"}"#, "last_heartbeat"),
            (br#"{"lastHeartbeat": 1795823941.5}"#, "lastHeartbeat"),
            // A bad field earlier in the list does not hide a good one later.
            (br#"{"timestamp": "soon", "ts": 1795823941.5}"#, "ts"),
        ] {
            assert_eq!(
                time_of(input),
                Some((field, at)),
                "{}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(parse(input).issue, None);
        }
    }

    #[test]
    fn content_without_time_is_not_an_error() {
        let p = parse(br#"{"status": "ok", "beats": 17}"#);
        assert_eq!(p.time, None);
        assert_eq!(p.issue, None);
        assert_eq!(p.status.as_deref(), Some("ok"));
    }

    #[test]
    fn unreadable_content_is_an_issue() {
        for (input, want) in [
            (&b""[..], "empty"),
            (b"  \n", "empty"),
            (b"{not json", "corrupt"),
            (b"[1,2]", "corrupt"),
            (br#"{"timestamp":"yesterday"}"#, "badTime"),
            (br#"{"timestamp":-5}"#, "badTime"),
            (br#"{"timestamp":true}"#, "badTime"),
        ] {
            let p = parse(input);
            assert_eq!(p.time, None, "{input:?}");
            assert_eq!(
                p.issue.as_ref().map(ContentIssue::reason),
                Some(want),
                "{input:?}"
            );
        }
    }

    fn file(bytes: &[u8], modified: Option<&str>) -> FileContent {
        FileContent {
            path: "hb.json".into(),
            bytes: bytes.to_vec(),
            size: bytes.len() as u64,
            modified: modified.map(|m| m.parse().unwrap()),
            truncated: false,
            starts_mid_line: false,
        }
    }

    #[test]
    fn the_file_time_stands_in_for_a_missing_time() {
        let mtime = "2026-11-28T10:00:00Z";
        let HeartbeatObservation::Present(hb) =
            interpret(&file(br#"{"status":"ok","beats":17}"#, Some(mtime)))
        else {
            panic!("a heartbeat without a time field is still a heartbeat")
        };
        assert_eq!(hb.source, TimeSource::FileModified);
        assert_eq!(hb.at, mtime.parse::<Timestamp>().unwrap());
        assert_eq!(hb.issue, None);

        // Corrupt content: judged by the file's time, the issue kept.
        let HeartbeatObservation::Present(hb) = interpret(&file(b"{garbage", Some(mtime))) else {
            panic!()
        };
        assert_eq!(hb.source, TimeSource::FileModified);
        assert_eq!(hb.issue.as_ref().map(ContentIssue::reason), Some("corrupt"));

        // The content's own time wins over the file's.
        let HeartbeatObservation::Present(hb) =
            interpret(&file(br#"{"ts": 1795823941}"#, Some(mtime)))
        else {
            panic!()
        };
        assert_eq!(hb.source, TimeSource::Content { field: "ts" });
        assert_eq!(hb.at.as_second(), 1_795_823_941);

        assert!(matches!(
            interpret(&file(b"{}", None)),
            HeartbeatObservation::Invalid(_)
        ));
    }

    #[test]
    fn freshness_is_judged_at_full_precision_at_the_boundary() {
        let now: Timestamp = "2026-11-28T10:00:10.400Z".parse().unwrap();
        let timeout = Duration::from_secs(10);
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        // Exactly the timeout: still fresh.
        let f = freshness(at("2026-11-28T10:00:00.400Z"), now, timeout);
        assert!(f.fresh);
        assert_eq!(f.age, SignedDuration::from_secs(10));
        // 10.4 s over a 10 s timeout: stale, though it is 10 whole seconds.
        let f = freshness(at("2026-11-28T10:00:00Z"), now, timeout);
        assert!(!f.fresh, "{f:?}");
        assert_eq!(f.age_seconds(), 10);
        // One millisecond over.
        assert!(!freshness(at("2026-11-28T10:00:00.399Z"), now, timeout).fresh);
        // A worker clock ahead of ours is fresh, and its age shows as 0.
        let f = freshness(at("2026-11-28T10:00:15Z"), now, timeout);
        assert!(f.fresh);
        assert_eq!(f.age_seconds(), 0);
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
            HeartbeatObservation::Present(Heartbeat {
                source: TimeSource::Content { .. },
                ..
            })
        ));

        std::fs::write(&hb, b"garbage").unwrap();
        assert!(matches!(
            read(root, &hb).await,
            HeartbeatObservation::Present(Heartbeat {
                source: TimeSource::FileModified,
                issue: Some(_),
                ..
            })
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
