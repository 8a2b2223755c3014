//! File descriptors (runbook "Root Cause Analysis / File Descriptor Exhaustion"): open
//! descriptors of the worker's process against its soft limit, and the system-wide file table
//! (`/proc/sys/fs/file-nr`).
//!
//! The runbook runs `ulimit -n` and `ls /proc/self/fd | wc -l` in a new shell, which measures
//! the shell, not the worker; here both come from the worker's own process
//! (`/proc/<pid>/limits`, `/proc/<pid>/fd`), the one the process check examines
//! ([`super::process::locate`], found once per diagnosis): the spec's `processName`, the main
//! child of an init, or PID 1.
//! Descriptors can only be counted in a running container: for a stopped one the check
//! cannot run. A unit's main process is read from the operator's own `/proc` instead
//! ([`crate::runtime::host_process`]).

use super::{
    first_line, percent,
    process::{Located, Selection},
};
use crate::diagnose::{
    CheckContext, CheckError, CheckName, CheckResult, Finding, FindingKind, Severity,
};
use crate::runtime::{ContainerState, HostProcess};

/// One `docker exec` reads everything about process `pid` (busybox `sh`, `cat`, `ls`, `wc`).
pub fn script(pid: u32) -> String {
    format!(
        "cat /proc/{pid}/limits; echo ---; ls /proc/{pid}/fd | wc -l; echo ---; cat /proc/sys/fs/file-nr"
    )
}
/// Open descriptors within this many of the soft limit count as exhausted: a process that hit
/// `EMFILE` rarely sits exactly at the limit (the sample worker's metrics thread keeps one
/// back, so with `nofile=64` it stops at 63), and a few free slots are no headroom.
pub const EXHAUSTED_MARGIN: u64 = 8;
/// Open descriptors at or above this share of the soft limit are a warning.
pub const NEAR_LIMIT_PERCENT: f64 = 80.0;
/// An allocated system file table at or above this share of its maximum is a warning.
pub const FILE_TABLE_WARN_PERCENT: f64 = 90.0;

pub async fn run(ctx: &CheckContext) -> CheckResult {
    let c = ctx.inspected_container(None)?;
    if !c.running || c.status == ContainerState::Restarting || c.status == ContainerState::Paused {
        return Err(CheckError::NotRunningToCountDescriptors { state: c.status });
    }
    let (pid, process, how) = match ctx.worker_process().await? {
        Located::Found { pid, status, how } => (pid, status.name, how),
        Located::Missing(why) => return Err(CheckError::NoWorkerProcess(why)),
    };
    let read = match &how {
        Selection::MainPid(p) => read_on_host(p, pid).await?,
        _ => read_in_container(ctx, pid).await?,
    };
    let mut findings = Vec::new();

    let limits = parse_nofile_limit(&read.limits);
    let open = read.count.trim().parse::<u64>().ok();
    match (open, limits) {
        (Some(open), Some(limit)) => findings.push(
            fd_finding(ctx, open, limit, c.nofile_limit)
                .with("pid", pid)
                .with("process", &process)
                .with("selectedBy", how.as_str()),
        ),
        _ => findings.push(
            ctx.finding(
                CheckName::FileDescriptors,
                FindingKind::CheckFailed,
                Severity::Warning,
                format!("cannot read the open descriptors or the limit of PID {pid}"),
            )
            .with("error", first_line(&read.stderr, "no output"))
            .with("limits", read.limits.trim())
            .with("count", read.count.trim()),
        ),
    }

    findings.push(file_table(ctx, &read.file_nr, &read.stderr));
    Ok(findings)
}

/// What the check reads about the process: `/proc/<pid>/limits`, its descriptor count, the
/// host's `/proc/sys/fs/file-nr`, and what went wrong reading them.
struct Readings {
    limits: String,
    count: String,
    file_nr: String,
    stderr: String,
}

/// The [`script`]'s output from one `docker exec` in the container, cut into its sections.
async fn read_in_container(ctx: &CheckContext, pid: u32) -> Result<Readings, CheckError> {
    let out = ctx
        .docker
        .exec(ctx.container_ref()?, &["sh", "-c", &script(pid)])
        .await
        .map_err(|source| CheckError::CountDescriptors {
            container: ctx.spec.container.clone(),
            source,
        })?;
    let sections: Vec<&str> = out.stdout.split("---\n").collect();
    let [limits, count, file_nr, ..] = sections[..] else {
        return Err(CheckError::UnexpectedOutput {
            exit_code: out.exit_code.map_or("none".into(), |c| c.to_string()),
            output: first_line(&out.stderr, &out.stdout).to_string(),
            script: script(pid),
        });
    };
    Ok(Readings {
        limits: limits.into(),
        count: count.into(),
        file_nr: file_nr.into(),
        stderr: out.stderr.clone(),
    })
}

/// The same, read from the operator's `/proc` for a unit's process (`pid` as the unit names
/// it); what cannot be read is left empty and said in `stderr`.
async fn read_on_host(p: &HostProcess, pid: u32) -> Result<Readings, CheckError> {
    let p = p.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        let mut section = |r: std::io::Result<String>| {
            r.unwrap_or_else(|e| {
                errors.push(e.to_string());
                String::new()
            })
        };
        let limits = section(p.read("limits"));
        let count = section(p.open_descriptors().map(|n| n.to_string()));
        let file_nr = section(p.read_host("sys/fs/file-nr"));
        Readings {
            limits,
            count,
            file_nr,
            stderr: errors.join("; "),
        }
    });
    read.await.map_err(|e| CheckError::UnexpectedOutput {
        exit_code: "none".into(),
        output: e.to_string(),
        script: script(pid),
    })
}

/// The system-wide file table from `/proc/sys/fs/file-nr`, or why it cannot be read.
fn file_table(ctx: &CheckContext, file_nr: &str, stderr: &str) -> Finding {
    let Some(nr) = parse_file_nr(file_nr) else {
        return ctx
            .finding(
                CheckName::FileDescriptors,
                FindingKind::CheckFailed,
                Severity::Warning,
                "cannot read /proc/sys/fs/file-nr".to_string(),
            )
            .with("error", first_line(file_nr, stderr));
    };
    let percent = percent(nr.allocated, nr.max);
    let warn = percent >= FILE_TABLE_WARN_PERCENT;
    ctx.finding(
        CheckName::FileDescriptors,
        FindingKind::SystemFileTable,
        if warn {
            Severity::Warning
        } else {
            Severity::Info
        },
        format!(
            "system file table: {} of {} handles allocated ({percent:.1}%)",
            nr.allocated, nr.max
        ),
    )
    .with("allocated", nr.allocated)
    .with("free", nr.free)
    .with("max", nr.max)
    .with("usagePercent", format!("{percent:.1}"))
}

fn fd_finding(
    ctx: &CheckContext,
    open: u64,
    limit: NofileLimit,
    configured: Option<(i64, i64)>,
) -> Finding {
    let name = &ctx.spec.container;
    let (kind, severity, summary) = match limit.soft {
        Some(soft) => {
            let percent = percent(open, soft);
            if open >= soft.saturating_sub(EXHAUSTED_MARGIN) {
                (
                    FindingKind::FdExhausted,
                    Severity::Critical,
                    format!("the worker in {name:?} has {open} of {soft} file descriptors open: exhausted ({percent:.1}%)"),
                )
            } else if percent >= NEAR_LIMIT_PERCENT {
                (
                    FindingKind::FdNearLimit,
                    Severity::Warning,
                    format!("the worker in {name:?} has {open} of {soft} file descriptors open ({percent:.1}%)"),
                )
            } else {
                (
                    FindingKind::FdUsage,
                    Severity::Info,
                    format!("the worker in {name:?} has {open} of {soft} file descriptors open ({percent:.1}%)"),
                )
            }
        }
        None => (
            FindingKind::FdUsage,
            Severity::Info,
            format!("the worker in {name:?} has {open} file descriptors open (no limit)"),
        ),
    };
    let mut f = ctx
        .finding(CheckName::FileDescriptors, kind, severity, summary)
        .with("openFds", open)
        .with(
            "softLimit",
            limit.soft.map_or("unlimited".into(), |s| s.to_string()),
        )
        .with(
            "hardLimit",
            limit.hard.map_or("unlimited".into(), |h| h.to_string()),
        );
    if let Some(soft) = limit.soft {
        f = f.with("usagePercent", format!("{:.1}", percent(open, soft)));
    }
    if let Some((soft, hard)) = configured {
        f = f.with("configuredUlimit", format!("nofile={soft}:{hard}"));
    }
    f
}

/// Soft and hard `Max open files` of a process; `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Parse the `Max open files  <soft>  <hard>  files` line of `/proc/<pid>/limits`.
pub fn parse_nofile_limit(limits: &str) -> Option<NofileLimit> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut words = line["Max open files".len()..].split_whitespace();
    let value = |w: Option<&str>| -> Option<Option<u64>> {
        match w? {
            "unlimited" => Some(None),
            n => n.parse().ok().map(Some),
        }
    };
    Some(NofileLimit {
        soft: value(words.next())?,
        hard: value(words.next())?,
    })
}

/// `/proc/sys/fs/file-nr`: allocated handles, allocated-but-free handles, maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileNr {
    pub allocated: u64,
    pub free: u64,
    pub max: u64,
}

pub fn parse_file_nr(text: &str) -> Option<FileNr> {
    let mut n = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    Some(FileNr {
        allocated: n.next()??,
        free: n.next()??,
        max: n.next()??,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        diagnose::testing::*,
        runtime::{fake::FakeRuntime, ContainerInfo, ExecOutput},
    };

    /// `/proc/1/limits` of the sample worker run with `--ulimit nofile=64:64`.
    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max file size             unlimited            unlimited            bytes     \n\
        Max processes             unlimited            unlimited            processes \n\
        Max open files            64                   64                   files     \n\
        Max locked memory         8388608              8388608              bytes     \n";

    fn output(open: u64) -> String {
        format!("{LIMITS}---\n{open}\n---\n2144\t0\t9223372036854775807\n")
    }

    fn ctx_with(stdout: String) -> crate::diagnose::CheckContext {
        let mut fake = FakeRuntime::default();
        fake.exec.insert(
            "cat /proc/1/status".into(),
            Ok(ExecOutput {
                exit_code: Some(0),
                stdout: "Name:\tsample-worker\nState:\tS (sleeping)\nPid:\t1\nPPid:\t0\n".into(),
                stderr: String::new(),
            }),
        );
        fake.exec.insert(
            format!("sh -c {}", script(1)),
            Ok(ExecOutput {
                exit_code: Some(0),
                stdout,
                stderr: String::new(),
            }),
        );
        let c = ContainerInfo {
            nofile_limit: Some((64, 64)),
            ..running()
        };
        context(&worker(), Ok(Some(c)), fake, Ok(String::new()))
    }

    #[test]
    fn parsers_read_the_fixtures() {
        assert_eq!(
            parse_nofile_limit(LIMITS),
            Some(NofileLimit {
                soft: Some(64),
                hard: Some(64)
            })
        );
        assert_eq!(
            parse_nofile_limit(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Some(NofileLimit {
                soft: None,
                hard: None
            })
        );
        assert_eq!(
            parse_nofile_limit("Max cpu time unlimited unlimited seconds\n"),
            None
        );
        assert_eq!(
            parse_file_nr("2144\t0\t9223372036854775807\n"),
            Some(FileNr {
                allocated: 2144,
                free: 0,
                max: 9_223_372_036_854_775_807
            })
        );
        assert_eq!(parse_file_nr("1 2\n"), None);
    }

    /// A unit's main process in a `/proc` of fixtures: its limits, 61 descriptors, and the
    /// host's file table.
    #[tokio::test]
    async fn a_units_descriptors_are_counted_in_the_hosts_proc() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("14450");
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        std::fs::create_dir_all(root.path().join("sys/fs")).unwrap();
        std::fs::write(
            dir.join("status"),
            "Name:\tsample-worker\nState:\tS (sleeping)\n",
        )
        .unwrap();
        std::fs::write(dir.join("limits"), LIMITS).unwrap();
        for fd in 0..61 {
            std::os::unix::fs::symlink("/dev/null", dir.join("fd").join(fd.to_string())).unwrap();
        }
        std::fs::write(
            root.path().join("sys/fs/file-nr"),
            "2144\t0\t9223372036854775807\n",
        )
        .unwrap();
        let mut fake = FakeRuntime {
            capabilities: Some(crate::runtime::Capabilities::SYSTEMD),
            ..Default::default()
        };
        fake.host_process = Some(HostProcess {
            pid: 602,
            host_pid: 14450,
            proc_root: root.path().to_path_buf(),
        });
        let ctx = context(&worker(), Ok(Some(running())), fake, Ok(String::new()));
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::FdExhausted, "{f:?}");
        assert_eq!(f[0].evidence["openFds"], "61");
        assert_eq!(
            (
                f[0].evidence["pid"].as_str(),
                f[0].evidence["selectedBy"].as_str()
            ),
            ("602", "mainPid")
        );
        assert_eq!(f[1].evidence["allocated"], "2144");
    }

    #[tokio::test]
    async fn leaked_descriptors_are_exhaustion() {
        let f = run(&ctx_with(output(63))).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::FdExhausted);
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].evidence["openFds"], "63");
        assert_eq!(f[0].evidence["softLimit"], "64");
        assert_eq!(f[0].evidence["hardLimit"], "64");
        assert_eq!(f[0].evidence["usagePercent"], "98.4");
        assert_eq!(f[0].evidence["configuredUlimit"], "nofile=64:64");
        assert_eq!(f[1].kind, FindingKind::SystemFileTable);
        assert_eq!(f[1].severity, Severity::Info);
        assert_eq!(f[1].evidence["allocated"], "2144");
        assert_eq!(f[1].evidence["max"], "9223372036854775807");
    }

    #[tokio::test]
    async fn thresholds() {
        assert_eq!(
            run(&ctx_with(output(5))).await.unwrap()[0].kind,
            FindingKind::FdUsage
        );
        assert_eq!(
            run(&ctx_with(output(52))).await.unwrap()[0].kind,
            FindingKind::FdNearLimit
        );
        assert_eq!(
            run(&ctx_with(output(56))).await.unwrap()[0].kind,
            FindingKind::FdExhausted
        );
        let full = format!("{LIMITS}---\n5\n---\n950\t0\t1000\n");
        assert_eq!(
            run(&ctx_with(full)).await.unwrap()[1].severity,
            Severity::Warning
        );
    }

    #[tokio::test]
    async fn stopped_container_and_garbage_fail() {
        let ctx = context(
            &worker(),
            Ok(Some(exited(137))),
            FakeRuntime::default(),
            Ok(String::new()),
        );
        let err = run(&ctx).await.unwrap_err().to_string();
        assert!(
            err.contains("only be counted in a running container"),
            "{err}"
        );
        let err = run(&ctx_with("sh: not found".into()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("unexpected output"), "{err}");
        let partial = run(&ctx_with(format!("nope\n---\nx\n---\n{}", "1 0 100")))
            .await
            .unwrap();
        assert_eq!(partial[0].kind, FindingKind::CheckFailed);
        assert_eq!(partial[1].kind, FindingKind::SystemFileTable);
    }
}
