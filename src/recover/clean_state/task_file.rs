//! What the step makes of a task file: the requeued content (a pure function of the source
//! bytes and the run's inputs, so that it can be recomputed after a crash) and its `"id"`.

use k8s_openapi::jiff::Timestamp;
use serde_json::value::RawValue;

use super::TASK_KEYS;
use crate::confined::json_object::{
    json_f64, json_string, last_value, parse_object, replace_fields, ObjectError,
};

/// Why a task file cannot be requeued: the text is its quarantine reason.
#[derive(Debug, thiserror::Error)]
pub(super) enum TaskFileError {
    #[error(transparent)]
    NotAnObject(#[from] ObjectError),
    /// `retry_count` is not a count: its raw value, clipped.
    #[error("retry_count is {0}, not a non-negative integer")]
    BadRetryCount(String),
    #[error("retry_count {0} cannot be incremented")]
    RetryOverflow(u64),
}

/// Unix seconds as a float, like Python's `time.time()`: `1795823941.5`.
pub(super) fn unix_float(t: Timestamp) -> f64 {
    t.as_duration().as_secs_f64()
}

/// A requeued task's content: the same object with `retry_count` + 1, `last_failure` and
/// `failure_reason` set. Pure in (bytes, failure time, failure reason). `Err` is a reason
/// to quarantine.
pub(super) fn transform_task(
    bytes: &[u8],
    failure_time: Timestamp,
    failure_reason: &str,
) -> Result<(Vec<u8>, u64), TaskFileError> {
    let pairs = parse_object(bytes)?;
    let old = match last_value(&pairs, "retry_count") {
        None => 0,
        Some(raw) => serde_json::from_str::<u64>(raw.get())
            .map_err(|_| TaskFileError::BadRetryCount(clip(raw.get(), 64)))?,
    };
    let retry = old
        .checked_add(1)
        .ok_or(TaskFileError::RetryOverflow(old))?;
    let fields = [
        (TASK_KEYS[0], retry.to_string()),
        (TASK_KEYS[1], json_f64(unix_float(failure_time))),
        (TASK_KEYS[2], json_string(failure_reason)),
    ];
    Ok((replace_fields(&pairs, &fields), retry))
}

/// A task's `"id"` as its worker names its lock: a string as it is, a number as written.
pub(super) fn task_id(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let raw = serde_json::from_slice::<Id<'_>>(bytes).ok()?.id?;
    match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(_) => Some(raw.get().to_string()),
        _ => None,
    }
}

/// At most `max` characters of `s`, marked when cut.
pub(super) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
