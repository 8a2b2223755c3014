//! Container (runbook "Verify Worker Status": `docker ps -a`): state, exit code, OOMKilled flag,
//! Docker's restart count, start and finish times, image.
//!
//! An OOM-killed container gives `OomKilled` *instead of* `ContainerExited`: the verdict weighs
//! `OomKilled` for OutOfMemory and `ContainerExited` for ApplicationCrash, and an OOM kill is
//! not a crash of the application's own making.
//!
//! A container that automatic recovery already started again also gets the findings of how it
//! ended before ([`CrashEvidence`](crate::diagnose::CrashEvidence)), marked
//! `restartedByAutoRecovery`.

use crate::runtime::ContainerState;
use crate::{
    diagnose::{CheckContext, CheckName, CheckResult, Finding, FindingKind, Severity},
    runtime::ContainerInfo,
};

pub async fn run(ctx: &CheckContext) -> CheckResult {
    let container = match &ctx.container {
        Err(reason) => return Err(ctx.uninspectable(reason)),
        Ok(None) => {
            return Ok(vec![ctx
                .finding(
                    CheckName::Container,
                    FindingKind::ContainerNotFound,
                    Severity::Critical,
                    format!("{} does not exist", ctx.target()),
                )
                .with("container", &ctx.spec.container)])
        }
        Ok(Some(c)) => c,
    };
    let mut out = findings(ctx, container);
    if let (Some(crash), true) = (&ctx.crash, container.running) {
        // Restarted by automatic recovery: the end it had is the evidence that counts.
        let ended = ContainerInfo {
            status: ContainerState::Exited,
            running: false,
            exit_code: crash.exit_code,
            oom_killed: crash.oom_killed,
            finished_at: crash.finished_at,
            ..container.clone()
        };
        for mut f in findings(ctx, &ended) {
            f.summary = format!("before automatic recovery started it again, {}", f.summary);
            out.push(f.with("restartedByAutoRecovery", true));
        }
    }
    Ok(out)
}

fn findings(ctx: &CheckContext, c: &ContainerInfo) -> Vec<Finding> {
    let target = ctx.target();
    let exit = c.exit_code.unwrap_or(0);
    let finding = |kind, severity, summary: String| {
        evidence(
            ctx.finding(CheckName::Container, kind, severity, summary),
            c,
        )
    };
    let last_exit = || {
        if c.oom_killed {
            Some(finding(
                FindingKind::OomKilled,
                Severity::Critical,
                format!(
                    "{target} was killed by the OOM killer (exit code {exit}{})",
                    c.memory_limit
                        .map(|l| format!(", memory limit {}", human_bytes(l)))
                        .unwrap_or_default()
                ),
            ))
        } else if exit != 0 {
            Some(finding(
                FindingKind::ContainerExited,
                Severity::Critical,
                format!(
                    "{target} last exited with code {exit} ({})",
                    exit_meaning(exit)
                ),
            ))
        } else {
            None
        }
    };
    match c.status.as_str() {
        "paused" => vec![finding(
            FindingKind::ContainerPaused,
            Severity::Warning,
            format!("{target} is paused: its processes are frozen"),
        )],
        "restarting" => {
            let mut out = vec![finding(
                FindingKind::ContainerRestarting,
                Severity::Warning,
                format!(
                    "{target} is being restarted by Docker's restart policy ({} restarts so far)",
                    c.restart_count
                ),
            )];
            out.extend(last_exit());
            out
        }
        _ if c.running => vec![finding(
            FindingKind::ContainerRunning,
            Severity::Info,
            format!(
                "{target} is running{}",
                c.started_at
                    .map(|t| format!(" since {t}"))
                    .unwrap_or_default()
            ),
        )],
        state => vec![last_exit().unwrap_or_else(|| {
            let summary = if state == "created" {
                format!("{target} was created but never started")
            } else {
                format!("{target} is {state} (exit code 0: it stopped cleanly, or was stopped)")
            };
            finding(FindingKind::ContainerExited, Severity::Critical, summary)
        })],
    }
}

/// The evidence every container finding carries.
fn evidence(mut f: Finding, c: &ContainerInfo) -> Finding {
    f = f
        .with("state", c.status)
        .with("containerId", &c.id)
        .with("oomKilled", c.oom_killed)
        .with("dockerRestartCount", c.restart_count);
    if let Some(code) = c.exit_code {
        f = f.with("exitCode", code);
        if code != 0 {
            f = f.with("exitMeaning", exit_meaning(code));
        }
    }
    f = f
        .with_opt("image", c.image.as_ref())
        .with_opt("startedAt", c.started_at)
        .with_opt("finishedAt", c.finished_at.filter(|_| !c.running))
        .with_opt("hostPid", c.pid)
        .with_opt("memoryLimitBytes", c.memory_limit);
    if let Some((soft, hard)) = c.nofile_limit {
        f = f.with("nofileLimit", format!("{soft}:{hard}"));
    }
    f
}

/// What a process exit code usually means.
pub fn exit_meaning(code: i64) -> String {
    match code {
        0 => "success".into(),
        126 => "command found but not executable".into(),
        127 => "command not found".into(),
        129..=192 => {
            let signal = code - 128;
            let name = match signal {
                1 => "SIGHUP",
                2 => "SIGINT",
                3 => "SIGQUIT",
                4 => "SIGILL",
                6 => "SIGABRT",
                7 => "SIGBUS",
                8 => "SIGFPE",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                13 => "SIGPIPE",
                15 => "SIGTERM",
                _ => "",
            };
            if name.is_empty() {
                format!("killed by signal {signal}")
            } else {
                format!("killed by signal {signal} ({name})")
            }
        }
        _ => "error exit of the process".into(),
    }
}

/// Bytes as a short human string (`16.0 MiB`).
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        diagnose::testing::*,
        runtime::{fake::FakeRuntime, RuntimeError},
    };

    async fn check(container: Result<Option<ContainerInfo>, RuntimeError>) -> CheckResult {
        run(&context(
            &worker(),
            container,
            FakeRuntime::default(),
            Ok(String::new()),
        ))
        .await
    }

    #[tokio::test]
    async fn running_container_is_info_with_its_facts() {
        let f = check(Ok(Some(running()))).await.unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FindingKind::ContainerRunning);
        assert_eq!(f[0].severity, Severity::Info);
        assert_eq!(f[0].evidence["state"], "running");
        assert_eq!(f[0].evidence["image"], "wro-sample-worker:dev");
        assert_eq!(f[0].evidence["hostPid"], "4242");
        assert_eq!(f[0].evidence["startedAt"], "2026-11-27T10:00:00Z");
        assert!(!f[0].evidence.contains_key("finishedAt"));
    }

    #[tokio::test]
    async fn oom_kill_replaces_exited() {
        let c = ContainerInfo {
            oom_killed: true,
            memory_limit: Some(16 * 1024 * 1024),
            ..exited(137)
        };
        let f = check(Ok(Some(c))).await.unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FindingKind::OomKilled);
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].evidence["exitCode"], "137");
        assert_eq!(f[0].evidence["memoryLimitBytes"], "16777216");
        assert_eq!(f[0].evidence["exitMeaning"], "killed by signal 9 (SIGKILL)");
        assert!(f[0].summary.contains("16.0 MiB"), "{}", f[0].summary);
    }

    #[tokio::test]
    async fn exited_container_carries_its_exit_code() {
        let f = check(Ok(Some(exited(127)))).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::ContainerExited);
        assert_eq!(f[0].evidence["exitCode"], "127");
        assert_eq!(f[0].evidence["exitMeaning"], "command not found");
        assert_eq!(f[0].evidence["finishedAt"], "2026-11-27T10:05:00Z");
        let f = check(Ok(Some(exited(0)))).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::ContainerExited);
    }

    #[tokio::test]
    async fn restarting_container_reports_the_last_exit_too() {
        let c = ContainerInfo {
            status: ContainerState::Restarting,
            running: true,
            restart_count: 4,
            ..exited(3)
        };
        let f = check(Ok(Some(c))).await.unwrap();
        assert_eq!(
            kinds(&f),
            [
                FindingKind::ContainerRestarting,
                FindingKind::ContainerExited
            ]
        );
        assert_eq!(f[0].evidence["dockerRestartCount"], "4");
    }

    #[tokio::test]
    async fn paused_missing_and_unreachable() {
        let paused = ContainerInfo {
            status: ContainerState::Paused,
            ..running()
        };
        assert_eq!(
            check(Ok(Some(paused))).await.unwrap()[0].kind,
            FindingKind::ContainerPaused
        );
        let f = check(Ok(None)).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::ContainerNotFound);
        assert_eq!(f[0].evidence["container"], "marie");
        let err = check(Err(RuntimeError::unavailable(
            crate::runtime::RuntimeKind::Docker,
            "no socket",
        )))
        .await
        .unwrap_err();
        assert_eq!(
            crate::diagnose::error::message(&err),
            "cannot inspect container \"marie\": Docker engine unreachable: no socket"
        );
    }

    #[test]
    fn exit_codes_and_sizes_read_well() {
        assert_eq!(exit_meaning(143), "killed by signal 15 (SIGTERM)");
        assert_eq!(exit_meaning(3), "error exit of the process");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2 * 1024 * 1024 * 1024), "2.0 GiB");
    }

    #[tokio::test]
    async fn a_crash_seen_before_an_automatic_restart_is_still_evidence() {
        let mut ctx = context(
            &worker(),
            Ok(Some(running())),
            FakeRuntime::default(),
            Ok(String::new()),
        );
        ctx.crash = Some(crate::diagnose::CrashEvidence {
            exit_code: Some(137),
            oom_killed: true,
            finished_at: None,
        });
        let found = run(&ctx).await.unwrap();
        let seen = kinds(&found);
        assert!(seen.contains(&FindingKind::ContainerRunning), "{seen:?}");
        let oom = found
            .iter()
            .find(|f| f.kind == FindingKind::OomKilled)
            .expect("OomKilled");
        assert!(
            oom.summary
                .starts_with("before automatic recovery started it again"),
            "{}",
            oom.summary
        );
    }
}
