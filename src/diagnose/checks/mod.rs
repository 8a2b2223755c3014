//! The checks of the diagnosis, one module each. A check module exposes
//! `pub async fn run(ctx: &CheckContext) -> CheckResult`: its findings, or a
//! [`CheckError`](super::CheckError) when it cannot run at all, which the diagnosis turns into
//! a CheckFailed finding. [`pipes`] is the exception: it is part of the dependencies check and
//! exposes `check_named_pipes(ctx) -> Vec<Finding>`, one finding per declared pipe, each pipe
//! that cannot be looked at being its own CheckFailed finding; the diagnosis runs it next to
//! [`dependencies::run`] and merges the two.

pub mod container;
pub mod crash_logs;
pub mod deadlock;
pub mod dependencies;
pub mod file_descriptors;
pub mod heartbeat;
pub mod memory;
pub mod metrics_endpoint;
pub mod pipes;
pub mod process;

/// The first line of a command's output: of `preferred` (say stderr), or of `other` when
/// `preferred` is blank.
fn first_line<'a>(preferred: &'a str, other: &'a str) -> &'a str {
    let text = if preferred.trim().is_empty() {
        other
    } else {
        preferred
    };
    text.trim().lines().next().unwrap_or("")
}

/// `used` as a percentage of `of`; 0 when `of` is 0.
fn percent(used: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        used as f64 * 100.0 / of as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_lines_and_percentages() {
        assert_eq!(first_line(" \n", "out\nmore"), "out");
        assert_eq!(first_line("\n err\nmore", "out"), "err");
        assert_eq!(first_line("", ""), "");
        assert_eq!(percent(1, 4), 25.0);
        assert_eq!(percent(1, 0), 0.0);
    }
}
