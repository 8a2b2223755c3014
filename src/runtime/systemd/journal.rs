//! A unit's log from the journal (runbook: `journalctl -u agent-worker-marie -n 100`), read from
//! the journal's files with `sdjournal` (pure Rust: the operator's image needs neither
//! libsystemd nor journalctl, only the journal directory mounted read-only). Blocking.

use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use sdjournal::{EntryRef, Journal};

/// Most bytes of log kept, as for `docker logs`.
const MAX_BYTES: usize = 1 << 20;

/// The last `tail` lines the unit logged since `since`, oldest first, each as
/// `<RFC 3339 time> <message>` (the form `docker logs --timestamps` gives): the service's own
/// output (`_SYSTEMD_UNIT=`) and what systemd said about it (`UNIT=`: exits, OOM kills).
pub fn tail(
    dirs: &[PathBuf],
    unit: &str,
    tail: u32,
    since: Timestamp,
) -> Result<Vec<String>, String> {
    let present: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| Path::new(d).is_dir())
        .cloned()
        .collect();
    if present.is_empty() {
        return Err(format!(
            "no journal directory found (looked in {})",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let journal =
        Journal::open_dirs(&present).map_err(|e| format!("cannot open the journal: {e}"))?;
    let since_us = u64::try_from(since.as_microsecond()).unwrap_or(0);
    let mut lines: Vec<(u64, String)> = Vec::new();
    for field in ["_SYSTEMD_UNIT", "UNIT"] {
        let mut query = journal.query();
        query
            .match_exact(field, unit.as_bytes())
            .since_realtime(since_us)
            .reverse(true)
            .limit(tail as usize);
        let entries = query
            .iter()
            .map_err(|e| format!("cannot read the journal: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read the journal: {e}"))?;
            lines.push((entry.realtime_usec(), line(&entry)));
        }
    }
    Ok(newest(lines, tail as usize))
}

fn line(entry: &EntryRef) -> String {
    let time = i64::try_from(entry.realtime_usec())
        .ok()
        .and_then(|us| Timestamp::from_microsecond(us).ok())
        .map_or_else(String::new, |t| t.to_string());
    let message = String::from_utf8_lossy(entry.get("MESSAGE").unwrap_or_default());
    format!("{time} {message}")
}

/// The newest `tail` lines, oldest first, within [`MAX_BYTES`].
fn newest(mut lines: Vec<(u64, String)>, tail: usize) -> Vec<String> {
    lines.sort_by(|a, b| b.cmp(a));
    lines.dedup();
    let mut kept = Vec::new();
    let mut bytes = 0;
    for (_, l) in lines.into_iter().take(tail) {
        bytes += l.len();
        if bytes > MAX_BYTES {
            break;
        }
        kept.push(l);
    }
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_lines_are_kept_oldest_first() {
        let lines = vec![
            (3, "c".to_string()),
            (1, "a".into()),
            (2, "b".into()),
            (3, "c".into()),
        ];
        assert_eq!(
            newest(lines, 2),
            ["b", "c"],
            "one of each entry, the last two"
        );
    }

    #[test]
    fn a_missing_journal_is_an_error_that_says_where_it_looked() {
        let e = tail(
            &[PathBuf::from("/nonexistent/journal")],
            "x.service",
            10,
            Timestamp::UNIX_EPOCH,
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent/journal"), "{e}");
    }
}
