//! Crash-log check (runbook: "Check Crash Logs"): the last `logTailLines` lines of the
//! container's log since `logWindowSeconds` ago (`docker logs --tail 100 --since 10m`, which works
//! for stopped containers too), and the tail of the worker's application log file when one is
//! declared. Error lines become a LogErrors finding whose evidence holds the lines themselves.

use k8s_openapi::jiff::SignedDuration;

use crate::{
    blocking,
    confined::{self, FsError},
    diagnose::{
        error, CheckContext, CheckError, CheckName, CheckResult, Finding, FindingKind, Severity,
    },
    runtime::{RuntimeError, RuntimeKind},
};

const CHECK: CheckName = CheckName::CrashLogs;

/// Matching lines kept as evidence (`line1` .. `line5`, the last ones).
pub const EVIDENCE_LINES: usize = 5;
/// Longest log line kept in evidence; longer ones are cut.
pub const MAX_LINE_CHARS: usize = 300;
/// Bytes read per requested line from the end of the application log (and an overall cap).
const APP_LOG_BYTES_PER_LINE: u64 = 1024;
const MAX_APP_LOG_BYTES: u64 = 1 << 20;

/// Why one of the logs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogFailure {
    #[error("container {0:?} does not exist")]
    NoContainer(String),
    #[error("cannot read the logs of container {container:?}")]
    ContainerLog {
        container: String,
        #[source]
        source: RuntimeError,
    },
    #[error(transparent)]
    AppLog(#[from] AppLogError),
}

/// Why the application log was not read.
#[derive(Debug, thiserror::Error)]
#[error("application log {path}")]
pub struct AppLogError {
    /// Where it was looked for: under the shared root, or as declared when that was refused.
    pub path: String,
    /// For evidence: missing, symlink, notRegularFile, or [`FsError::reason`] (io when the
    /// file reader failed).
    pub reason: &'static str,
    #[source]
    pub source: FsError,
}

/// Why a line counts as an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogPattern {
    Fatal,
    Panic,
    Error,
    Traceback,
    Exception,
    Killed,
    OutOfMemory,
    NotFound,
    TooManyOpenFiles,
}

impl LogPattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Panic => "panic",
            Self::Error => "error",
            Self::Traceback => "traceback",
            Self::Exception => "exception",
            Self::Killed => "killed",
            Self::OutOfMemory => "out of memory",
            Self::NotFound => "not found",
            Self::TooManyOpenFiles => "too many open files",
        }
    }

    /// FATAL and panic lines mean the process died of its own error.
    pub fn is_fatal(self) -> bool {
        matches!(self, Self::Fatal | Self::Panic)
    }
}

/// The patterns a log line matches, case-insensitively; empty when it is not an error line.
///
/// Words are matched as words (`ERROR:`, `RuntimeError`, `panicked`, `NullPointerException`
/// match; `errors=0` and `terrorist` do not), phrases as substrings.
pub fn classify_line(line: &str) -> Vec<LogPattern> {
    let lower = line.to_lowercase();
    // A line that says its own level is believed: an INFO line that mentions `fault_mode=oom`
    // or a WARN about memory is not an error line.
    if leading_level(&lower).is_some_and(|level| QUIET_LEVELS.contains(&level)) {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut push = |p: LogPattern| {
        if !found.contains(&p) {
            found.push(p);
        }
    };
    for word in lower.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        if word.starts_with("fatal") {
            push(LogPattern::Fatal);
        }
        if word.starts_with("panic") {
            push(LogPattern::Panic);
        }
        if word.ends_with("error") {
            push(LogPattern::Error);
        }
        if word == "traceback" {
            push(LogPattern::Traceback);
        }
        if word.ends_with("exception") {
            push(LogPattern::Exception);
        }
        if word == "killed" || word == "sigkill" {
            push(LogPattern::Killed);
        }
        if word == "oom" || word == "outofmemory" || word == "outofmemoryerror" {
            push(LogPattern::OutOfMemory);
        }
    }
    for (phrase, p) in [
        ("out of memory", LogPattern::OutOfMemory),
        ("cannot allocate memory", LogPattern::OutOfMemory),
        ("not found", LogPattern::NotFound),
        ("too many open files", LogPattern::TooManyOpenFiles),
    ] {
        if lower.contains(phrase) {
            push(p);
        }
    }
    found.sort();
    found
}

/// Log levels below error.
const QUIET_LEVELS: [&str; 6] = ["trace", "debug", "info", "notice", "warn", "warning"];
/// Words that name a log level when they lead a line.
const LEVELS: [&str; 11] = [
    "trace", "debug", "info", "notice", "warn", "warning", "error", "err", "fatal", "critical",
    "panic",
];

/// The level a line starts with, after timestamps and other tokens with digits
/// (`2026-11-28T00:02:22.459Z INFO: ...` is `info`); `None` for unstructured lines.
fn leading_level(lower: &str) -> Option<&str> {
    let first_word = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .find(|t| !t.chars().any(|c| c.is_ascii_digit()))?;
    LEVELS.contains(&first_word).then_some(first_word)
}

/// Error lines of a log, with the patterns that matched.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogScan {
    pub lines_read: usize,
    /// (line, patterns) of every error line, in log order.
    pub errors: Vec<(String, Vec<LogPattern>)>,
}

impl LogScan {
    pub fn of(lines: &[String]) -> Self {
        let errors = lines
            .iter()
            .filter_map(|l| {
                let p = classify_line(l);
                (!p.is_empty()).then(|| (l.clone(), p))
            })
            .collect();
        Self {
            lines_read: lines.len(),
            errors,
        }
    }

    pub fn has_fatal(&self) -> bool {
        self.errors
            .iter()
            .any(|(_, p)| p.iter().any(|p| p.is_fatal()))
    }

    /// Distinct patterns seen, in a stable order.
    pub fn patterns(&self) -> Vec<LogPattern> {
        let mut all: Vec<LogPattern> = self.errors.iter().flat_map(|(_, p)| p.clone()).collect();
        all.sort();
        all.dedup();
        all
    }
}

fn cut(line: &str) -> String {
    let line = line.trim_end();
    if line.chars().count() <= MAX_LINE_CHARS {
        return line.to_string();
    }
    let mut s: String = line.chars().take(MAX_LINE_CHARS).collect();
    s.push_str(" …[cut]");
    s
}

/// The LogErrors or LogClean finding of one log source.
fn findings_of(ctx: &CheckContext, scan: &LogScan, source: &str, describe: &str) -> Finding {
    if scan.errors.is_empty() {
        return ctx
            .finding(
                CHECK,
                FindingKind::LogClean,
                Severity::Info,
                format!(
                    "no error lines in the last {} lines of {describe}",
                    scan.lines_read
                ),
            )
            .with("source", source)
            .with("linesRead", scan.lines_read);
    }
    let severity = if scan.has_fatal() {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let last = &scan.errors[scan.errors.len() - 1].0;
    let mut f = ctx
        .finding(
            CHECK,
            FindingKind::LogErrors,
            severity,
            format!(
                "{} error {} in the last {} lines of {describe}; last: {}",
                scan.errors.len(),
                if scan.errors.len() == 1 {
                    "line"
                } else {
                    "lines"
                },
                scan.lines_read,
                cut_short(last)
            ),
        )
        .with("source", source)
        .with("linesRead", scan.lines_read)
        .with("errorLines", scan.errors.len())
        .with(
            "patterns",
            scan.patterns()
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(","),
        )
        .with("firstError", cut(&scan.errors[0].0));
    let skip = scan.errors.len().saturating_sub(EVIDENCE_LINES);
    for (i, (line, _)) in scan.errors[skip..].iter().enumerate() {
        f = f.with(&format!("line{}", i + 1), cut(line));
    }
    f
}

fn cut_short(line: &str) -> String {
    let line = line.trim();
    if line.chars().count() <= 160 {
        return line.to_string();
    }
    let mut s: String = line.chars().take(160).collect();
    s.push('…');
    s
}

pub async fn run(ctx: &CheckContext) -> CheckResult {
    let d = &ctx.spec.diagnostics;
    let tail = d.log_tail_lines;
    let window = d.log_window_seconds;
    let mut findings = Vec::new();
    let mut failures = Vec::new();

    // The container's log.
    let container = &ctx.spec.container;
    let since = ctx
        .now
        .checked_sub(SignedDuration::from_secs(i64::from(window)))
        .unwrap_or(ctx.now);
    let docker_lines = match &ctx.container {
        Ok(None) => Err(LogFailure::NoContainer(container.clone())),
        _ => ctx
            .docker
            .logs(ctx.container_ref()?, tail, since)
            .await
            .map_err(|source| LogFailure::ContainerLog {
                container: container.clone(),
                source,
            }),
    };
    match docker_lines {
        Ok(lines) => {
            let scan = LogScan::of(&lines);
            // A unit's log is its journal.
            let source = match ctx.docker.capabilities().runtime {
                RuntimeKind::Docker => "container",
                RuntimeKind::Systemd => "journal",
            };
            let f = findings_of(
                ctx,
                &scan,
                source,
                &format!("the log of {} (since {since})", ctx.target()),
            )
            .with("tail", tail)
            .with("window", format!("{window}s"))
            .with("since", since);
            findings.push(f);
        }
        Err(e) => failures.push(e),
    }

    // The application log file.
    if let Some(rel) = &d.app_log_file {
        match read_app_log(ctx, rel, tail).await {
            Ok((path, lines, size)) => {
                let scan = LogScan::of(&lines);
                let f = findings_of(ctx, &scan, "appLog", &format!("application log {path}"))
                    .with("path", &path)
                    .with("tail", tail)
                    .with("fileBytes", size);
                findings.push(f);
            }
            Err(e) => {
                let detail = error::message(&e.source);
                let f = ctx
                    .finding(
                        CHECK,
                        FindingKind::AppLogUnavailable,
                        Severity::Info,
                        format!("application log {} not read: {detail}", e.path),
                    )
                    .with("path", &e.path)
                    .with("reason", e.reason)
                    .with("detail", &detail);
                if findings.is_empty() && !failures.is_empty() {
                    failures.push(e.into());
                } else {
                    findings.push(f);
                }
            }
        }
    }

    if findings.is_empty() {
        return Err(CheckError::LogsUnreadable(failures));
    }
    for failure in failures {
        let failure = error::message(&failure);
        let f = ctx
            .finding(
                CHECK,
                FindingKind::CheckFailed,
                Severity::Warning,
                format!("the crashLogs check could not read the container log: {failure}"),
            )
            .with("error", failure);
        findings.push(f);
    }
    Ok(findings)
}

/// Read the last `tail` lines of the application log: (path, lines, file size).
async fn read_app_log(
    ctx: &CheckContext,
    rel: &str,
    tail: u32,
) -> Result<(String, Vec<String>, u64), AppLogError> {
    let root = ctx.paths.trusted_root.clone();
    let path = confined::confine(&ctx.paths.shared_root, rel).map_err(|e| AppLogError {
        path: rel.to_string(),
        reason: e.reason(),
        source: e,
    })?;
    let shown = path.display().to_string();
    let max_bytes = (u64::from(tail) * APP_LOG_BYTES_PER_LINE).min(MAX_APP_LOG_BYTES);
    match blocking::try_run(move || confined::read_tail(&root, &path, max_bytes)).await {
        Ok(content) => Ok((shown, content.last_lines(tail as usize), content.size)),
        Err(e) => {
            let reason = match &e {
                FsError::Missing(_) => "missing",
                FsError::Symlink { .. } => "symlink",
                FsError::WrongKind { .. } => "notRegularFile",
                other => other.reason(),
            };
            Err(AppLogError {
                path: shown,
                reason,
                source: e,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{diagnose::testing, runtime::fake::FakeRuntime};

    const CRASH: &str = "2026-11-28T00:02:22.459Z FATAL: simulated crash (fault mode crash) while processing task p1; exiting with code 3";
    const FD: &str =
        "2026-11-28T00:03:10.001Z ERROR: Too many open files (os error 24) after 59 descriptors";
    const DEP: &str =
        "2026-11-28T00:04:00.000Z FATAL: required dependency 'claude' not found in PATH";

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classifies_the_sample_worker_lines() {
        use LogPattern::*;
        assert_eq!(classify_line(CRASH), vec![Fatal]);
        assert_eq!(classify_line(FD), vec![Error, TooManyOpenFiles]);
        assert_eq!(classify_line(DEP), vec![Fatal, NotFound]);
        for quiet in [
            "2026-11-28T00:00:00.000Z INFO: sample-worker 0.1.0 starting: worker=marie pid=1 fault_mode=none",
            "2026-11-28T00:00:01.000Z INFO: task p1 done (0 errors)",
            "2026-11-28T00:00:02.000Z WARN: fault injection: mode crash triggered by env",
            "2026-11-28T00:29:26.239Z INFO: sample-worker 0.1.0 starting: worker=oom pid=1 fault_mode=oom",
            "2026-11-28T00:29:26.249825060Z 2026-11-28T00:29:26.249Z WARN: oom: 8 MiB allocated and resident",
            "[2026-11-28 00:00:00] DEBUG worker: not found in cache, fetching",
            "INFO: metrics listening on http://0.0.0.0:9091/metrics",
            "",
        ] {
            assert!(classify_line(quiet).is_empty(), "{quiet}");
        }
    }

    #[test]
    fn classifies_other_runtimes_errors() {
        use LogPattern::*;
        for (line, want) in [
            ("thread 'main' panicked at src/main.rs:10:5:", vec![Panic]),
            ("Traceback (most recent call last):", vec![Traceback]),
            ("RuntimeError: boom", vec![Error]),
            ("java.lang.NullPointerException", vec![Exception]),
            ("Exception in thread \"main\"", vec![Exception]),
            ("Killed", vec![Killed]),
            (
                "fatal error: runtime: out of memory",
                vec![Fatal, Error, OutOfMemory],
            ),
            (
                "MemoryError: Cannot allocate memory",
                vec![Error, OutOfMemory],
            ),
            ("sh: claude: not found", vec![NotFound]),
            ("error: x", vec![Error]),
        ] {
            assert_eq!(classify_line(line), want, "{line}");
        }
    }

    #[tokio::test]
    async fn container_log_with_a_fatal_line() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeRuntime {
            logs: lines(&[
                "2026-11-28T00:02:20.000Z INFO: task p0 done",
                "2026-11-28T00:02:21.000Z ERROR: task p0b failed: boom (moved to failed/)",
                CRASH,
            ]),
            ..Default::default()
        };
        let ctx = testing::context_in(tmp.path(), Ok(Some(testing::exited(3))), fake);
        let findings = run(&ctx).await.unwrap();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(f.kind, FindingKind::LogErrors);
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.evidence["source"], "container");
        assert_eq!(f.evidence["linesRead"], "3");
        assert_eq!(f.evidence["errorLines"], "2");
        assert_eq!(f.evidence["line2"], CRASH);
        assert!(f.evidence["line1"].contains("ERROR: task p0b failed"));
        assert!(f.evidence["firstError"].contains("p0b"));
        assert_eq!(f.evidence["patterns"], "fatal,error");
        assert_eq!(f.evidence["tail"], "100");
        assert_eq!(f.evidence["window"], "600s");
        assert_eq!(f.evidence["since"], "2026-11-27T10:00:00Z");
        assert!(f.summary.contains("simulated crash"));
    }

    #[tokio::test]
    async fn only_the_last_lines_are_kept_and_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let mut logs: Vec<String> = (0..8)
            .map(|i| format!("ERROR: failure number {i}"))
            .collect();
        logs.push(format!("ERROR: {}", "x".repeat(1000)));
        let fake = FakeRuntime {
            logs,
            ..Default::default()
        };
        let ctx = testing::context_in(tmp.path(), Ok(Some(testing::running())), fake);
        let f = &run(&ctx).await.unwrap()[0];
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(f.evidence["errorLines"], "9");
        assert_eq!(f.evidence["line1"], "ERROR: failure number 4");
        assert!(!f.evidence.contains_key("line6"));
        assert!(f.evidence["line5"].ends_with("…[cut]"));
        assert!(f.evidence["line5"].chars().count() < 320);
        assert_eq!(f.evidence["firstError"], "ERROR: failure number 0");
    }

    #[tokio::test]
    async fn clean_log() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeRuntime {
            logs: lines(&["INFO: a", "INFO: b"]),
            ..Default::default()
        };
        let ctx = testing::context_in(tmp.path(), Ok(Some(testing::running())), fake);
        let findings = run(&ctx).await.unwrap();
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].kind, FindingKind::LogClean);
        assert_eq!(findings[0].evidence["linesRead"], "2");
    }

    #[tokio::test]
    async fn app_log_tail_is_read_confined() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("logs")).unwrap();
        let mut content = String::new();
        for i in 0..500 {
            content.push_str(&format!("INFO: line {i}\n"));
        }
        content.push_str(FD);
        content.push('\n');
        std::fs::write(root.join("logs/marie.log"), &content).unwrap();
        let fake = FakeRuntime {
            logs: lines(&["INFO: ok"]),
            ..Default::default()
        };
        let mut ctx = testing::context_in(root, Ok(Some(testing::running())), fake);
        ctx.spec.diagnostics.app_log_file = Some("logs/marie.log".into());
        let findings = run(&ctx).await.unwrap();
        assert_eq!(findings.len(), 2, "{findings:#?}");
        assert_eq!(findings[0].kind, FindingKind::LogClean);
        let f = &findings[1];
        assert_eq!(f.kind, FindingKind::LogErrors);
        assert_eq!(f.evidence["source"], "appLog");
        assert_eq!(f.evidence["linesRead"], "100");
        assert_eq!(f.evidence["line1"], FD);
        assert!(f.evidence["path"].ends_with("logs/marie.log"));
        assert_eq!(f.evidence["fileBytes"], content.len().to_string());

        // A symlink to a file outside the shared root is not followed.
        std::fs::remove_file(root.join("logs/marie.log")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("logs/marie.log")).unwrap();
        let findings = run(&ctx).await.unwrap();
        let f = &findings[1];
        assert_eq!(f.kind, FindingKind::AppLogUnavailable);
        assert_eq!(f.severity, Severity::Info);
        assert_eq!(f.evidence["reason"], "symlink");

        // Missing, and escaping paths.
        std::fs::remove_file(root.join("logs/marie.log")).unwrap();
        assert_eq!(run(&ctx).await.unwrap()[1].evidence["reason"], "missing");
        ctx.spec.diagnostics.app_log_file = Some("../../etc/passwd".into());
        assert_eq!(
            run(&ctx).await.unwrap()[1].evidence["reason"],
            "notConfined"
        );
    }

    #[tokio::test]
    async fn missing_container_keeps_the_app_log() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("app.log"), format!("{DEP}\n")).unwrap();
        let mut ctx = testing::context_in(root, Ok(None), FakeRuntime::default());
        ctx.spec.diagnostics.app_log_file = Some("app.log".into());
        let findings = run(&ctx).await.unwrap();
        assert_eq!(findings.len(), 2, "{findings:#?}");
        assert_eq!(findings[0].kind, FindingKind::LogErrors);
        assert_eq!(findings[0].severity, Severity::Critical);
        assert_eq!(findings[1].kind, FindingKind::CheckFailed);
        assert!(findings[1].evidence["error"].contains("does not exist"));

        // Nothing readable at all: the check fails.
        std::fs::remove_file(root.join("app.log")).unwrap();
        let err = run(&ctx).await.unwrap_err().to_string();
        assert!(
            err.contains("does not exist") && err.contains("app.log"),
            "{err}"
        );
        ctx.spec.diagnostics.app_log_file = None;
        assert!(run(&ctx).await.is_err());
    }
}
