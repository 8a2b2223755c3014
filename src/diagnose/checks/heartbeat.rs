//! Heartbeat check (runbook: "Check last heartbeat"): the heartbeat file is present, a regular
//! file, and younger than the Worker's `heartbeatTimeoutSeconds` (by the time it holds, or by
//! its modification time when its content has none or cannot be parsed, which is a finding
//! of its own); and, compared with the previous observation in the Worker's status, the worker
//! is making progress on its current task.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::{
    blocking,
    confined::{self, FsError},
    crd::worker::WorkerStatus,
    diagnose::{CheckContext, CheckError, CheckName, CheckResult, Finding, FindingKind, Severity},
    observe::heartbeat::{
        self, ContentIssue, Heartbeat, HeartbeatObservation, TimeSource, MAX_HEARTBEAT_BYTES,
    },
};

const CHECK: CheckName = CheckName::Heartbeat;

pub async fn run(ctx: &CheckContext) -> CheckResult {
    let root = ctx.paths.trusted_root.clone();
    let path = ctx.paths.heartbeat_file.clone();
    let read =
        blocking::run(move || confined::read_file(&root, &path, MAX_HEARTBEAT_BYTES)).await?;
    let path = ctx.paths.heartbeat_file.display().to_string();
    let content = match read {
        Ok(content) => content,
        Err(e) => return not_read(ctx, &path, e),
    };
    let hb = match heartbeat::interpret(&content) {
        HeartbeatObservation::Present(hb) => hb,
        HeartbeatObservation::Invalid(detail) => {
            return Ok(vec![no_time(ctx, &path, &detail, content.size)])
        }
        // `interpret` only answers Present or Invalid for a file that was read.
        other => return Err(CheckError::UnexpectedHeartbeat(Box::new(other))),
    };
    let mut findings = Vec::new();
    if let Some(issue) = hb.issue.as_ref().filter(|i| i.is_unreadable()) {
        findings.push(unreadable_content(
            ctx,
            &path,
            issue,
            content.size,
            content.modified,
        ));
    }
    findings.extend(assess(ctx, &hb, &path));
    Ok(findings)
}

/// The heartbeat file could not be read: missing, or not a file to trust (a symlink, too
/// large, not a regular file). Only an I/O error fails the check: the rest say something
/// about the worker.
fn not_read(ctx: &CheckContext, path: &str, e: FsError) -> CheckResult {
    match e {
        FsError::Missing(_) => Ok(vec![ctx
            .finding(
                CHECK,
                FindingKind::HeartbeatMissing,
                Severity::Critical,
                format!("no heartbeat file at {path}"),
            )
            .with("path", path)]),
        FsError::Io { source, .. } => Err(CheckError::HeartbeatUnreadable {
            path: path.to_string(),
            source,
        }),
        e => Ok(vec![not_a_heartbeat_file(ctx, path, &e)]),
    }
}

/// A heartbeat that is not read because of what the file is, with the reason as evidence.
fn not_a_heartbeat_file(ctx: &CheckContext, path: &str, e: &FsError) -> Finding {
    let invalid = |summary: String| {
        ctx.finding(
            CHECK,
            FindingKind::HeartbeatInvalid,
            Severity::Critical,
            summary,
        )
    };
    let (reason, finding) = match e {
        FsError::Symlink { target, .. } => (
            "symlink",
            invalid(format!(
                "the heartbeat {path} is a symlink; it is not followed"
            ))
            .with_opt("linkTarget", target.as_ref()),
        ),
        FsError::TooLarge { size, limit, .. } => (
            "huge",
            invalid(format!(
                "the heartbeat {path} is {size} bytes, too large to be a heartbeat; not read"
            ))
            .with("sizeBytes", size)
            .with("limitBytes", limit),
        ),
        FsError::WrongKind { kind, .. } => (
            "notRegularFile",
            invalid(format!(
                "the heartbeat {path} is a {kind}, not a regular file"
            ))
            .with("fileType", kind),
        ),
        _ => (
            e.reason(),
            invalid(format!("the heartbeat {path} cannot be read safely: {e}")),
        ),
    };
    finding
        .with("reason", reason)
        .with("detail", e)
        .with("path", path)
}

/// A heartbeat whose content has no time and whose file has no modification time either.
fn no_time(ctx: &CheckContext, path: &str, detail: &str, size: u64) -> Finding {
    ctx.finding(
        CHECK,
        FindingKind::HeartbeatInvalid,
        Severity::Critical,
        format!("the heartbeat {path} has no time: {detail}"),
    )
    .with("reason", "noTime")
    .with("detail", detail)
    .with("path", path)
    .with("sizeBytes", size)
}

/// Content that cannot be read (empty, corrupt): still a finding, but not a dead worker, since
/// freshness is then judged by the file's modification time.
fn unreadable_content(
    ctx: &CheckContext,
    path: &str,
    issue: &ContentIssue,
    size: u64,
    modified: Option<Timestamp>,
) -> Finding {
    ctx.finding(
        CHECK,
        FindingKind::HeartbeatInvalid,
        Severity::Warning,
        format!(
            "the heartbeat {path} is {}: {issue}; its freshness is judged by the file's modification time",
            issue.reason()
        ),
    )
    .with("reason", issue.reason())
    .with("detail", issue)
    .with("path", path)
    .with("sizeBytes", size)
    .with_opt("fileModified", modified)
}

/// Judge a heartbeat: fresh or stale (by the one judge the Worker controller uses too), and
/// whether it shows progress.
fn assess(ctx: &CheckContext, hb: &Heartbeat, path: &str) -> Vec<Finding> {
    let timeout = ctx.spec.heartbeat_timeout_seconds;
    let judged = heartbeat::freshness(hb.at, ctx.now, Duration::from_secs(u64::from(timeout)));
    let age = judged.age_seconds();
    let (source, field) = match hb.source {
        TimeSource::Content { field } => ("content", Some(field)),
        TimeSource::FileModified => ("fileModified", None),
    };
    let describe = |f: Finding| -> Finding {
        f.with("path", path)
            .with("timeSource", source)
            .with_opt("timeField", field)
            .with_opt(
                "contentIssue",
                hb.issue.as_ref().filter(|i| !i.is_unreadable()),
            )
            .with_opt("status", hb.status.as_ref())
            .with_opt("currentTask", hb.current_task.as_ref())
            .with_opt("progress", hb.progress)
    };
    let by = match hb.source {
        TimeSource::Content { .. } => "",
        TimeSource::FileModified => ", by the file's modification time",
    };
    if !judged.fresh {
        let f = ctx
            .finding(
                CHECK,
                FindingKind::HeartbeatStale,
                Severity::Critical,
                format!(
                    "last heartbeat {:.1}s ago ({}{by}), older than the {timeout}s timeout",
                    judged.age.as_secs_f64(),
                    hb.at
                ),
            )
            .with("ageSeconds", age)
            .with("timeoutSeconds", timeout)
            .with("lastTimestamp", hb.at);
        return vec![describe(f)];
    }
    let mut fresh = ctx
        .finding(
            CHECK,
            FindingKind::HeartbeatFresh,
            Severity::Info,
            format!("heartbeat {age}s old (timeout {timeout}s{by})"),
        )
        .with("ageSeconds", age)
        .with("timeoutSeconds", timeout)
        .with("timestamp", hb.at);
    if judged.age.as_secs() < -1 {
        // The worker's clock is ahead of ours: worth knowing, not a failure.
        fresh = fresh.with("clockAheadSeconds", -judged.age.as_secs());
    }
    let progress = compare_progress(ctx, hb);
    if let Progress::Reset { previous } = &progress {
        fresh = fresh.with("previousProgress", previous);
    }
    let mut findings = vec![describe(fresh)];
    if let Progress::Stalled {
        since_seconds,
        last_progress_time,
        task,
    } = progress
    {
        let threshold = i64::from(ctx.spec.diagnostics.stuck_task_seconds);
        let severity = if since_seconds > 2 * threshold {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let f = ctx
            .finding(
                CHECK,
                FindingKind::NoProgress,
                severity,
                format!(
                    "the worker beats but has made no progress on task {task} for {since_seconds}s (threshold {threshold}s)"
                ),
            )
            .with("sinceSeconds", since_seconds)
            .with("thresholdSeconds", threshold)
            .with("lastProgressTime", last_progress_time)
            .with("currentTask", &task)
            .with(
                "progress",
                hb.progress
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "none".into()),
            );
        findings.push(f);
    }
    findings
}

/// What the heartbeat says about progress compared with the previous observation.
#[derive(Debug, PartialEq)]
enum Progress {
    /// Nothing to compare with, no current task, or progress since the last change.
    Unknown,
    Moving,
    /// The progress counter went down: the worker restarted since the last observation.
    Reset {
        previous: u64,
    },
    /// Same task and progress as when progress last changed, for longer than the threshold.
    Stalled {
        since_seconds: i64,
        last_progress_time: Timestamp,
        task: String,
    },
}

fn compare_progress(ctx: &CheckContext, hb: &Heartbeat) -> Progress {
    let Some(WorkerStatus {
        heartbeat: Some(prev),
        last_progress_time,
        ..
    }) = ctx.previous.as_ref()
    else {
        return Progress::Unknown;
    };
    if let (Some(now), Some(before)) = (hb.progress, prev.progress) {
        if now < before {
            return Progress::Reset { previous: before };
        }
    }
    if hb.progress != prev.progress || hb.current_task != prev.current_task {
        return Progress::Moving;
    }
    let (Some(task), Some(since)) = (hb.current_task.as_ref(), last_progress_time.as_ref()) else {
        return Progress::Unknown;
    };
    let since_seconds = ctx.now.duration_since(since.0).as_secs();
    if since_seconds > i64::from(ctx.spec.diagnostics.stuck_task_seconds) {
        Progress::Stalled {
            since_seconds,
            last_progress_time: since.0,
            task: task.clone(),
        }
    } else {
        Progress::Moving
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::{
        crd::worker::HeartbeatSummary,
        diagnose::testing::{self, context_at as ctx_at},
    };

    fn write_hb(root: &Path, content: &[u8]) -> std::path::PathBuf {
        let dir = root.join("workers/marie");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("heartbeat.json");
        std::fs::write(&p, content).unwrap();
        p
    }

    fn set_mtime(path: &Path, at: &str) {
        testing::set_modified(path, at.parse().unwrap());
    }

    fn hb_json(ts: &str, task: Option<&str>, progress: u64) -> Vec<u8> {
        serde_json::json!({"worker":"marie","timestamp":ts,"status":"working","current_task":task,"progress":progress,"pid":1})
            .to_string()
            .into_bytes()
    }

    fn one(findings: &[Finding]) -> &Finding {
        assert_eq!(findings.len(), 1, "{findings:#?}");
        &findings[0]
    }

    #[tokio::test]
    async fn fresh_heartbeat_with_content() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx_at(tmp.path());
        // ctx.now is 2026-11-27T10:10:00Z.
        write_hb(
            tmp.path(),
            &hb_json("2026-11-27T10:09:58.500Z", Some("t-7"), 42),
        );
        let findings = run(&ctx).await.unwrap();
        let f = one(&findings);
        assert_eq!(f.kind, FindingKind::HeartbeatFresh);
        assert_eq!(f.severity, Severity::Info);
        assert_eq!(f.evidence["ageSeconds"], "1");
        assert_eq!(f.evidence["timeoutSeconds"], "60");
        assert_eq!(f.evidence["timestamp"], "2026-11-27T10:09:58.5Z");
        assert_eq!(f.evidence["status"], "working");
        assert_eq!(f.evidence["currentTask"], "t-7");
        assert_eq!(f.evidence["progress"], "42");
        assert!(f.evidence["path"].ends_with("workers/marie/heartbeat.json"));
    }

    #[tokio::test]
    async fn stale_heartbeat() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx_at(tmp.path());
        write_hb(tmp.path(), &hb_json("2026-11-27T10:07:55Z", Some("p1"), 3));
        let findings = run(&ctx).await.unwrap();
        let f = one(&findings);
        assert_eq!(f.kind, FindingKind::HeartbeatStale);
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.evidence["ageSeconds"], "125");
        assert_eq!(f.evidence["timeoutSeconds"], "60");
        assert_eq!(f.evidence["lastTimestamp"], "2026-11-27T10:07:55Z");
        assert_eq!(f.evidence["currentTask"], "p1");
    }

    #[tokio::test]
    async fn missing_heartbeat() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx_at(tmp.path());
        let f = run(&ctx).await.unwrap();
        let f = one(&f);
        assert_eq!(f.kind, FindingKind::HeartbeatMissing);
        assert_eq!(f.severity, Severity::Critical);
        assert!(f.evidence["path"].ends_with("workers/marie/heartbeat.json"));
    }

    #[tokio::test]
    async fn invalid_heartbeats_are_findings() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx_at(tmp.path());
        for (content, reason) in [
            (&b""[..], "empty"),
            (b" \n", "empty"),
            (b"{\"timestamp\": ", "corrupt"),
            (b"[1,2,3]", "corrupt"),
        ] {
            let p = write_hb(tmp.path(), content);
            set_mtime(&p, "2026-11-27T10:09:58Z");
            let findings = run(&ctx).await.unwrap();
            assert_eq!(findings.len(), 2, "{findings:#?}");
            let f = &findings[0];
            assert_eq!(f.kind, FindingKind::HeartbeatInvalid, "{content:?}");
            assert_eq!(
                f.severity,
                Severity::Warning,
                "a finding, not a dead worker"
            );
            assert_eq!(f.evidence["reason"], reason, "{content:?}");
            assert!(f.evidence.contains_key("detail"));
            // Freshness is still judged, by the file's time.
            let fresh = &findings[1];
            assert_eq!(fresh.kind, FindingKind::HeartbeatFresh);
            assert_eq!(fresh.evidence["timeSource"], "fileModified");
            assert_eq!(fresh.evidence["ageSeconds"], "2");
        }

        // Huge: not read.
        write_hb(tmp.path(), &vec![b'{'; MAX_HEARTBEAT_BYTES as usize + 1]);
        let findings = run(&ctx).await.unwrap();
        let f = one(&findings);
        assert_eq!(f.evidence["reason"], "huge");
        assert_eq!(
            f.evidence["sizeBytes"],
            (MAX_HEARTBEAT_BYTES + 1).to_string()
        );

        // Symlink to a file outside: not followed.
        let p = write_hb(tmp.path(), b"");
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        let findings = run(&ctx).await.unwrap();
        let f = one(&findings);
        assert_eq!(f.kind, FindingKind::HeartbeatInvalid);
        assert_eq!(f.evidence["reason"], "symlink");
        assert_eq!(f.evidence["linkTarget"], "/etc/passwd");

        // A directory where the file should be.
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        let findings = run(&ctx).await.unwrap();
        assert_eq!(one(&findings).evidence["reason"], "notRegularFile");
        assert_eq!(one(&findings).evidence["fileType"], "directory");
    }

    #[tokio::test]
    async fn symlinked_worker_directory_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(
            outside.path().join("heartbeat.json"),
            hb_json("2026-11-27T10:09:59Z", None, 1),
        )
        .unwrap();
        std::fs::create_dir_all(tmp.path().join("workers")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("workers/marie")).unwrap();
        let ctx = ctx_at(tmp.path());
        let findings = run(&ctx).await.unwrap();
        let f = one(&findings);
        assert_eq!(f.kind, FindingKind::HeartbeatInvalid);
        assert_eq!(f.evidence["reason"], "symlink");
    }

    fn previous(task: Option<&str>, progress: u64, since: &str) -> Option<WorkerStatus> {
        Some(WorkerStatus {
            heartbeat: Some(HeartbeatSummary {
                status: Some("working".into()),
                current_task: task.map(String::from),
                progress: Some(progress),
                ..Default::default()
            }),
            last_progress_time: Some(Time(since.parse().unwrap())),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn beating_without_progress_is_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ctx = ctx_at(tmp.path());
        ctx.spec.diagnostics.stuck_task_seconds = 300;
        write_hb(tmp.path(), &hb_json("2026-11-27T10:09:59Z", Some("t-9"), 5));

        // Same task and progress since 09:50: 600s > 300s.
        ctx.previous = previous(Some("t-9"), 5, "2026-11-27T10:00:00Z");
        let findings = run(&ctx).await.unwrap();
        assert_eq!(findings.len(), 2, "{findings:#?}");
        assert_eq!(findings[0].kind, FindingKind::HeartbeatFresh);
        let f = &findings[1];
        assert_eq!(f.kind, FindingKind::NoProgress);
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(f.evidence["sinceSeconds"], "600");
        assert_eq!(f.evidence["thresholdSeconds"], "300");
        assert_eq!(f.evidence["lastProgressTime"], "2026-11-27T10:00:00Z");
        assert_eq!(f.evidence["currentTask"], "t-9");
        assert_eq!(f.evidence["progress"], "5");

        // More than twice the threshold: critical.
        ctx.previous = previous(Some("t-9"), 5, "2026-11-27T09:00:00Z");
        let findings = run(&ctx).await.unwrap();
        assert_eq!(findings[1].severity, Severity::Critical);

        // Not long enough yet.
        ctx.previous = previous(Some("t-9"), 5, "2026-11-27T10:06:00Z");
        assert_eq!(run(&ctx).await.unwrap().len(), 1);

        // Progress changed since the previous observation.
        ctx.previous = previous(Some("t-9"), 4, "2026-11-27T09:00:00Z");
        assert_eq!(run(&ctx).await.unwrap().len(), 1);
        ctx.previous = previous(Some("t-8"), 5, "2026-11-27T09:00:00Z");
        assert_eq!(run(&ctx).await.unwrap().len(), 1);

        // Idle (no current task) is not stuck.
        write_hb(tmp.path(), &hb_json("2026-11-27T10:09:59Z", None, 5));
        ctx.previous = previous(None, 5, "2026-11-27T09:00:00Z");
        assert_eq!(run(&ctx).await.unwrap().len(), 1);

        // No previous observation: nothing to compare.
        ctx.previous = None;
        assert_eq!(run(&ctx).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn progress_going_down_is_a_restart_not_a_stall() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ctx = ctx_at(tmp.path());
        write_hb(tmp.path(), &hb_json("2026-11-27T10:09:59Z", Some("t-1"), 0));
        ctx.previous = previous(Some("t-1"), 12, "2026-11-27T09:00:00Z");
        let findings = run(&ctx).await.unwrap();
        let f = one(&findings);
        assert_eq!(f.kind, FindingKind::HeartbeatFresh);
        assert_eq!(f.evidence["previousProgress"], "12");
    }

    #[tokio::test]
    async fn a_heartbeat_without_a_time_field_is_judged_by_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx_at(tmp.path());
        let p = write_hb(tmp.path(), br#"{"status": "ok", "beats": 17}"#);
        set_mtime(&p, "2026-11-27T10:09:57Z");
        let findings = run(&ctx).await.unwrap();
        let f = one(&findings);
        assert_eq!(f.kind, FindingKind::HeartbeatFresh);
        assert_eq!(f.evidence["timeSource"], "fileModified");
        assert_eq!(f.evidence["ageSeconds"], "3");
        assert_eq!(f.evidence["status"], "ok");

        set_mtime(&p, "2026-11-27T10:05:00Z");
        let findings = run(&ctx).await.unwrap();
        let f = one(&findings);
        assert_eq!(f.kind, FindingKind::HeartbeatStale);
        assert_eq!(f.evidence["timeSource"], "fileModified");
    }

    /// The diagnosis and the Worker controller share one judge: 10.4 s over a 10 s timeout is
    /// stale here too, though it is 10 whole seconds.
    #[tokio::test]
    async fn freshness_at_the_boundary_agrees_with_the_controller() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ctx = ctx_at(tmp.path());
        ctx.spec.heartbeat_timeout_seconds = 10;
        // ctx.now is 2026-11-27T10:10:00Z.
        write_hb(tmp.path(), &hb_json("2026-11-27T10:09:49.600Z", None, 1));
        let f = run(&ctx).await.unwrap();
        assert_eq!(one(&f).kind, FindingKind::HeartbeatStale);
        assert_eq!(one(&f).evidence["ageSeconds"], "10");
        write_hb(tmp.path(), &hb_json("2026-11-27T10:09:50Z", None, 1));
        assert_eq!(
            one(&run(&ctx).await.unwrap()).kind,
            FindingKind::HeartbeatFresh
        );
    }
}
