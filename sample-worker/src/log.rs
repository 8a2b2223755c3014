//! One-line-per-event logging to stdout: `<RFC3339 UTC> <LEVEL>: <message>`.
//!
//! Everything goes to stdout (line-buffered, flushed per line) so that
//! `docker logs <c> | grep ...` sees every line, including FATAL ones.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::timefmt::now_rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Fatal => "FATAL",
        }
    }
}

/// Formats one log line (without the trailing newline).
pub fn format_line(ts: &str, level: Level, msg: &str) -> String {
    format!("{ts} {}: {msg}", level.as_str())
}

pub fn log(level: Level, msg: &str) {
    let line = format_line(&now_rfc3339(), level, msg);
    let out = std::io::stdout();
    let mut out = out.lock();
    // Logging must never take the worker down (e.g. a closed stdout).
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn info(msg: &str) {
    log(Level::Info, msg)
}
pub fn warn(msg: &str) {
    log(Level::Warn, msg)
}
pub fn error(msg: &str) {
    log(Level::Error, msg)
}
pub fn fatal(msg: &str) {
    log(Level::Fatal, msg)
}

/// Rate limiter for errors that repeat on every loop iteration (e.g. after
/// the fd-leak fault every `open` fails): the first occurrence of a message is
/// logged at once, repeats at most once per `every`, with a repeat count.
pub struct Throttle {
    every: Duration,
    last_msg: String,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            last_msg: String::new(),
            last_logged: None,
            suppressed: 0,
        }
    }

    /// Returns the text to log now, or `None` if this repeat is suppressed.
    pub fn check(&mut self, msg: &str, now: Instant) -> Option<String> {
        let due = match self.last_logged {
            None => true,
            Some(t) => msg != self.last_msg || now.duration_since(t) >= self.every,
        };
        if !due {
            self.suppressed += 1;
            return None;
        }
        let text = if self.suppressed > 0 && msg == self.last_msg {
            format!("{msg} (repeated {} more times)", self.suppressed)
        } else {
            msg.to_string()
        };
        self.last_msg = msg.to_string();
        self.last_logged = Some(now);
        self.suppressed = 0;
        Some(text)
    }

    pub fn log(&mut self, level: Level, msg: &str) {
        if let Some(text) = self.check(msg, Instant::now()) {
            log(level, &text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        assert_eq!(
            format_line("2026-11-27T23:59:01.123Z", Level::Info, "task t1 started"),
            "2026-11-27T23:59:01.123Z INFO: task t1 started"
        );
        assert_eq!(
            format_line("T", Level::Fatal, "simulated crash (fault mode crash)"),
            "T FATAL: simulated crash (fault mode crash)"
        );
    }

    #[test]
    fn throttle_suppresses_repeats() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.check("boom", t0).as_deref(), Some("boom"));
        assert_eq!(t.check("boom", t0 + Duration::from_secs(1)), None);
        assert_eq!(t.check("boom", t0 + Duration::from_secs(2)), None);
        assert_eq!(
            t.check("boom", t0 + Duration::from_secs(11)).as_deref(),
            Some("boom (repeated 2 more times)")
        );
        // A different message is always logged at once.
        assert_eq!(
            t.check("other", t0 + Duration::from_secs(12)).as_deref(),
            Some("other")
        );
    }
}
