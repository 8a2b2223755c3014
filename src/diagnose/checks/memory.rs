//! Memory (runbook "Root Cause Analysis / Memory Issues"): the OOMKilled flag, Docker `oom`
//! events, memory usage against the limit, and the kernel's OOM-killer lines about this
//! container (the runbook greps syslog; these hosts only have `dmesg`).
//!
//! The `OomKilled` finding itself comes from the container check; here the flag is evidence.

use crate::runtime::ContainerState;
use std::collections::BTreeSet;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::{
    diagnose::{
        error, CheckContext, CheckError, CheckName, CheckResult, Finding, FindingKind, Severity,
    },
    runtime::ContainerInfo,
};

use super::{container::human_bytes, percent};

/// Usage at or above this share of the limit is a warning.
pub const NEAR_LIMIT_PERCENT: f64 = 90.0;
/// Kernel-log lines kept as evidence (the latest ones).
const MAX_KERNEL_LINES: usize = 4;
/// Docker `oom` events are looked for from this long before the container started.
const EVENT_MARGIN: SignedDuration = SignedDuration::from_secs(60);

pub async fn run(ctx: &CheckContext) -> CheckResult {
    let c = ctx.inspected_container(Some("no memory to look at"))?;
    let mut findings = Vec::new();
    // Usage against the limit (running), or the configured limit alone (stopped).
    findings.extend(usage(ctx, c).await);
    findings.extend(oom_events(ctx, c).await?);
    findings.extend(kernel_oom_kill(ctx, c).await);
    Ok(findings)
}

/// From when Docker's `oom` events are looked for: since the container started or the log
/// window began, whichever is earlier (so an OOM before a Docker restart is seen too), with a
/// margin.
fn oom_events_since(
    now: Timestamp,
    log_window_seconds: u32,
    started_at: Option<Timestamp>,
) -> Timestamp {
    let window_start = now
        .checked_sub(SignedDuration::from_secs(i64::from(log_window_seconds)))
        .unwrap_or(now);
    started_at
        .map_or(window_start, |s| s.min(window_start))
        .checked_sub(EVENT_MARGIN)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Docker's `oom` events of the container until now: a finding when there are any, a partial
/// failure when they cannot be read.
async fn oom_events(ctx: &CheckContext, c: &ContainerInfo) -> Result<Option<Finding>, CheckError> {
    let name = &ctx.spec.container;
    let since = oom_events_since(
        ctx.now,
        ctx.spec.diagnostics.log_window_seconds,
        c.started_at,
    );
    match ctx
        .docker
        .oom_events(ctx.container_ref()?, since, ctx.now)
        .await
    {
        Ok(times) if !times.is_empty() => {
            let list = times
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            Ok(Some(
                ctx.finding(
                    CheckName::Memory,
                    FindingKind::OomEvent,
                    Severity::Critical,
                    format!(
                        "Docker reported {} oom event(s) for {name:?}, last at {}",
                        times.len(),
                        times[times.len() - 1]
                    ),
                )
                .with("count", times.len())
                .with("times", list)
                .with("since", since)
                .with("oomKilled", c.oom_killed)
                .with_opt("memoryLimitBytes", c.memory_limit),
            ))
        }
        Ok(_) => Ok(None),
        Err(e) => Ok(Some(failed(
            ctx,
            format!("cannot read Docker oom events: {e}"),
        ))),
    }
}

/// The kernel's own account of OOM kills in the container, when the host log is readable.
async fn kernel_oom_kill(ctx: &CheckContext, c: &ContainerInfo) -> Option<Finding> {
    let name = &ctx.spec.container;
    let log = match ctx.host.kernel_log().await {
        Ok(log) => log,
        Err(e) => {
            let why = error::message(&e);
            return Some(
                ctx.finding(
                    CheckName::Memory,
                    FindingKind::KernelLogUnavailable,
                    Severity::Info,
                    format!("the kernel log cannot be read, OOM-killer lines not checked: {why}"),
                )
                .with("reason", why),
            );
        }
    };
    let pids: Vec<u64> = c
        .pid
        .and_then(|p| u64::try_from(p).ok())
        .into_iter()
        .collect();
    let kill = kernel_oom_lines(&log, &c.id, &pids);
    if kill.lines.is_empty() {
        return None;
    }
    let mut f = ctx
        .finding(
            CheckName::Memory,
            FindingKind::KernelOomKill,
            Severity::Critical,
            format!(
                "the kernel log shows the OOM killer acting in {name:?} ({} line(s))",
                kill.lines.len()
            ),
        )
        // The most recent kills, so that a crash loop's last one is not cut.
        .with(
            "lines",
            kill.lines[kill.lines.len().saturating_sub(MAX_KERNEL_LINES)..].join("\n"),
        )
        .with("lineCount", kill.lines.len())
        .with("containerId", &c.id);
    if !kill.killed_pids.is_empty() {
        f = f.with("killedPids", join(&kill.killed_pids));
    }
    Some(f.with_opt("task", kill.tasks.first()))
}

async fn usage(ctx: &CheckContext, c: &ContainerInfo) -> Vec<Finding> {
    let name = &ctx.spec.container;
    let target = ctx.target();
    if !c.running || c.status == ContainerState::Restarting {
        let summary = match c.memory_limit {
            Some(l) => format!(
                "{target} is {}: no usage to measure; memory limit {} ({l} bytes)",
                c.status,
                human_bytes(l)
            ),
            None => format!(
                "{target} is {}: no usage to measure; no memory limit set",
                c.status
            ),
        };
        let f = ctx
            .finding(
                CheckName::Memory,
                FindingKind::MemoryUsage,
                Severity::Info,
                summary,
            )
            .with("containerState", c.status)
            .with("oomKilled", c.oom_killed)
            .with_opt("memoryLimitBytes", c.memory_limit);
        return vec![f];
    }
    let stats = match ctx.docker.memory_stats(&c.id).await {
        Ok(s) => s,
        Err(e) => {
            return vec![failed(ctx, format!("cannot read memory stats: {e}"))
                .with("oomKilled", c.oom_killed)
                .with_opt("memoryLimitBytes", c.memory_limit)]
        }
    };
    let percent = percent(stats.usage_bytes, stats.limit_bytes);
    let near = percent >= NEAR_LIMIT_PERCENT;
    let limit_kind = if c.memory_limit.is_some() {
        "limit"
    } else {
        "host memory (no limit set)"
    };
    let mut f = ctx
        .finding(
            CheckName::Memory,
            if near {
                FindingKind::MemoryNearLimit
            } else {
                FindingKind::MemoryUsage
            },
            if near {
                Severity::Warning
            } else {
                Severity::Info
            },
            format!(
                "{name:?} uses {} of {} {limit_kind} ({percent:.1}%)",
                human_bytes(stats.usage_bytes as i64),
                human_bytes(stats.limit_bytes as i64)
            ),
        )
        .with("usageBytes", stats.usage_bytes)
        .with("limitBytes", stats.limit_bytes)
        .with("usagePercent", format!("{percent:.1}"))
        .with("oomKilled", c.oom_killed)
        .with_opt("memoryLimitBytes", c.memory_limit);
    if c.memory_limit.is_none() {
        f = f.with("limitIsHostMemory", true);
    }
    vec![f]
}

fn failed(ctx: &CheckContext, reason: String) -> Finding {
    ctx.finding(
        CheckName::Memory,
        FindingKind::CheckFailed,
        Severity::Warning,
        format!("part of the memory check could not run: {reason}"),
    )
    .with("error", reason)
}

fn join(values: &[u64]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The kernel-log lines about OOM kills in one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelOomKill {
    /// Matching lines, in log order, as the kernel wrote them.
    pub lines: Vec<String>,
    /// PIDs (host namespace) the OOM killer killed in the container.
    pub killed_pids: Vec<u64>,
    /// Names of the killed tasks.
    pub tasks: Vec<String>,
}

/// Find the OOM-killer lines of the container `id` (full 64-hex ID) in `dmesg` text.
///
/// The kernel names the memory cgroup in its `oom-kill:` summary (`oom_memcg=/docker/<id>`,
/// `task_memcg=/docker/<id>` on cgroup v1; `.../docker-<id>.scope` under systemd) and, on
/// older kernels, in `Task in /docker/<id> killed as a result of limit of ...`; the following
/// `Killed process <pid> (<name>)` and `oom_reaper: reaped process <pid>` lines name only the
/// PID. So: lines that mention the ID and the OOM killer, then lines about the PIDs they (or
/// `extra_pids`, the container's current PIDs) name.
pub fn kernel_oom_lines(log: &str, id: &str, extra_pids: &[u64]) -> KernelOomKill {
    let mut out = KernelOomKill::default();
    // A short or empty ID would match unrelated containers (a unit is matched whole).
    if id.len() < 12 && !id.ends_with(".service") {
        return out;
    }
    let lines: Vec<&str> = log.lines().collect();
    let mut pids: BTreeSet<u64> = extra_pids.iter().copied().collect();
    let mut keep = vec![false; lines.len()];
    for (i, line) in lines.iter().enumerate() {
        let lower = line.to_ascii_lowercase();
        let about_oom = lower.contains("oom-kill")
            || lower.contains("oom_memcg")
            || lower.contains("killed process")
            || lower.contains("memory cgroup out of memory")
            || lower.contains("killed as a result of limit");
        if about_oom && mentions(line, id) {
            keep[i] = true;
            if let Some(pid) = field(line, "pid=").and_then(|p| p.parse().ok()) {
                pids.insert(pid);
            }
            if let Some(task) = field(line, "task=") {
                push_unique(&mut out.tasks, task.to_string());
            }
        }
    }
    for (i, line) in lines.iter().enumerate() {
        if let Some((pid, task)) = killed_process(line) {
            if pids.contains(&pid) {
                keep[i] = true;
                if !out.killed_pids.contains(&pid) {
                    out.killed_pids.push(pid);
                }
                if let Some(task) = task {
                    push_unique(&mut out.tasks, task);
                }
            }
        } else if let Some(pid) = reaped_process(line) {
            keep[i] |= pids.contains(&pid);
        }
    }
    out.lines = lines
        .iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(l, _)| l.trim_end().to_string())
        .collect();
    out
}

/// Whether `line` names `id`: a container ID anywhere; a systemd unit only as a whole cgroup
/// path component (`/system.slice/<unit>`), so that `a-b.service` is not found in
/// `/system.slice/x-a-b.service`.
fn mentions(line: &str, id: &str) -> bool {
    if !id.ends_with(".service") {
        return line.contains(id);
    }
    line.match_indices(id).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + id.len()..].chars().next();
        before == Some('/') && after.is_none_or(|c| matches!(c, '/' | ',' | ' '))
    })
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// The value of `key` in a `k=v,k=v` list (`pid=1234,uid=0`).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line
        .match_indices(key)
        .find(|(i, _)| *i == 0 || matches!(line.as_bytes()[i - 1], b',' | b' ' | b':'))?
        .0
        + key.len();
    let rest = &line[start..];
    let end = rest.find([',', ' ']).unwrap_or(rest.len());
    Some(rest[..end].trim()).filter(|v| !v.is_empty())
}

/// `Killed process 1234 (name) total-vm:...` → (1234, Some("name")).
fn killed_process(line: &str) -> Option<(u64, Option<String>)> {
    let at = line.find("Killed process ")? + "Killed process ".len();
    let rest = &line[at..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let pid = digits.parse().ok()?;
    let name = rest[digits.len()..]
        .trim_start()
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .map(|(n, _)| n.to_string());
    Some((pid, name))
}

/// `oom_reaper: reaped process 1234 (name), now anon-rss:0kB` → 1234.
fn reaped_process(line: &str) -> Option<u64> {
    let at = line.find("reaped process ")? + "reaped process ".len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        diagnose::{testing::*, KernelLogError},
        runtime::{fake::FakeRuntime, ContainerInfo, MemoryStats},
    };

    const ID: &str = "3f2a9c1e7b4d5a6f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f";
    const OTHER: &str = "aaaaaaaaaaaabbbbbbbbbbbbccccccccccccddddddddddddeeeeeeeeeeeeffff";

    /// dmesg of a cgroup v1 host (Debian 12 kernel) with two OOM kills: another container's
    /// and ours.
    fn dmesg() -> String {
        format!(
            "[ 1000.000001] other invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n\
             [ 1000.000300] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={OTHER},mems_allowed=0,oom_memcg=/docker/{OTHER},task_memcg=/docker/{OTHER},task=other,pid=777,uid=0\n\
             [ 1000.000301] Memory cgroup out of memory: Killed process 777 (other) total-vm:20000kB, anon-rss:16000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:80kB oom_score_adj:0\n\
             [ 2345.678901] sample-worker invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n\
             [ 2345.678950] memory: usage 16384kB, limit 16384kB, failcnt 57\n\
             [ 2345.679000] Memory cgroup stats for /docker/{ID}:\n\
             [ 2345.679100] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={ID},mems_allowed=0,oom_memcg=/docker/{ID},task_memcg=/docker/{ID},task=sample-worker,pid=31337,uid=0\n\
             [ 2345.679101] Memory cgroup out of memory: Killed process 31337 (sample-worker) total-vm:23512kB, anon-rss:15872kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:84kB oom_score_adj:0\n\
             [ 2345.680000] oom_reaper: reaped process 31337 (sample-worker), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB\n"
        )
    }

    #[test]
    fn kernel_lines_of_this_container_only() {
        let k = kernel_oom_lines(&dmesg(), ID, &[]);
        assert_eq!(k.lines.len(), 3, "{:#?}", k.lines);
        assert!(k.lines[0].contains("oom-kill:constraint=CONSTRAINT_MEMCG"));
        assert!(k.lines[1].contains("Killed process 31337 (sample-worker)"));
        assert!(k.lines[2].contains("reaped process 31337"));
        assert_eq!(k.killed_pids, [31337]);
        assert_eq!(k.tasks, ["sample-worker"]);
        assert!(k.lines.iter().all(|l| !l.contains("777")));
    }

    #[test]
    fn kernel_lines_by_pid_and_old_kernels() {
        // Older kernels: the cgroup is named in a "Task in ... killed" line.
        let old = format!(
            "[  12.3] Task in /docker/{ID} killed as a result of limit of /docker/{ID}\n\
             [  12.4] Memory cgroup out of memory: Kill process 42 (python3) score 1000 or sacrifice child\n\
             [  12.5] Killed process 42 (python3) total-vm:1000kB, anon-rss:900kB, file-rss:0kB\n"
        );
        let k = kernel_oom_lines(&old, ID, &[42]);
        assert_eq!(k.lines.len(), 2, "{:#?}", k.lines);
        assert_eq!(k.killed_pids, [42]);
        assert_eq!(k.tasks, ["python3"]);
        // Nothing about us, no short IDs.
        assert!(kernel_oom_lines(&dmesg(), &ID.replace('3', "4"), &[])
            .lines
            .is_empty());
        assert!(kernel_oom_lines(&dmesg(), "", &[]).lines.is_empty());
    }

    #[test]
    fn oom_events_are_looked_for_from_the_earlier_of_start_and_window() {
        let at = |t: &str| t.parse::<Timestamp>().unwrap();
        let now = at("2026-11-27T10:10:00Z");
        // Started within the window: from the window's start, less the margin.
        assert_eq!(
            oom_events_since(now, 600, Some(at("2026-11-27T10:05:00Z"))),
            at("2026-11-27T09:59:00Z")
        );
        // Started before it: from the start.
        assert_eq!(
            oom_events_since(now, 600, Some(at("2026-11-27T08:00:00Z"))),
            at("2026-11-27T07:59:00Z")
        );
        assert_eq!(oom_events_since(now, 600, None), at("2026-11-27T09:59:00Z"));
    }

    #[test]
    fn a_unit_is_found_as_a_whole_cgroup_component() {
        let line = "oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/docker/abc/system.slice/agent-worker-b.service,task_memcg=/docker/abc/system.slice/agent-worker-b.service,task=sample-worker,pid=900,uid=0";
        assert!(mentions(line, "agent-worker-b.service"));
        assert!(
            !mentions(line, "worker-b.service"),
            "a suffix of another unit"
        );
        let k = kernel_oom_lines(
            &format!("{line}\nMemory cgroup out of memory: Killed process 900 (sample-worker) total-vm:1kB\n"),
            "agent-worker-b.service",
            &[],
        );
        assert_eq!((k.lines.len(), k.killed_pids.as_slice()), (2, &[900][..]));
    }

    #[test]
    fn key_value_fields() {
        assert_eq!(field("a,task=sw,pid=12,uid=0", "pid="), Some("12"));
        assert_eq!(field("a,tgid=5,pid=12", "pid="), Some("12"));
        assert_eq!(field("nothing", "pid="), None);
        assert_eq!(
            killed_process("Killed process 9 (x y) total"),
            Some((9, Some("x y".into())))
        );
        assert_eq!(reaped_process("oom_reaper: reaped process 9 (x)"), Some(9));
    }

    fn oomed() -> ContainerInfo {
        ContainerInfo {
            id: ID.into(),
            oom_killed: true,
            memory_limit: Some(16_777_216),
            ..exited(137)
        }
    }

    #[tokio::test]
    async fn oom_killed_container_has_events_limit_and_kernel_lines() {
        let fake = FakeRuntime {
            oom_events: vec!["2026-11-27T10:04:59Z".parse().unwrap()],
            ..Default::default()
        };
        let ctx = context(&worker(), Ok(Some(oomed())), fake, Ok(dmesg()));
        let f = run(&ctx).await.unwrap();
        assert_eq!(
            kinds(&f),
            [
                FindingKind::MemoryUsage,
                FindingKind::OomEvent,
                FindingKind::KernelOomKill
            ]
        );
        assert_eq!(f[0].evidence["memoryLimitBytes"], "16777216");
        assert_eq!(f[0].evidence["oomKilled"], "true");
        assert_eq!(f[1].evidence["times"], "2026-11-27T10:04:59Z");
        assert_eq!(f[1].evidence["count"], "1");
        assert_eq!(f[2].severity, Severity::Critical);
        assert_eq!(f[2].evidence["killedPids"], "31337");
        assert!(f[2].evidence["lines"].contains("Killed process 31337"));
    }

    #[tokio::test]
    async fn running_container_usage_and_near_limit() {
        let fake = FakeRuntime {
            memory: Some(MemoryStats {
                usage_bytes: 8 * 1024 * 1024,
                limit_bytes: 16 * 1024 * 1024,
            }),
            ..Default::default()
        };
        let c = ContainerInfo {
            memory_limit: Some(16_777_216),
            ..running()
        };
        let ctx = context(&worker(), Ok(Some(c.clone())), fake, Ok(String::new()));
        let f = run(&ctx).await.unwrap();
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].kind, FindingKind::MemoryUsage);
        assert_eq!(f[0].evidence["usageBytes"], "8388608");
        assert_eq!(f[0].evidence["limitBytes"], "16777216");
        assert_eq!(f[0].evidence["usagePercent"], "50.0");

        let fake = FakeRuntime {
            memory: Some(MemoryStats {
                usage_bytes: 15 * 1024 * 1024,
                limit_bytes: 16 * 1024 * 1024,
            }),
            ..Default::default()
        };
        let ctx = context(
            &worker(),
            Ok(Some(c)),
            fake,
            Err(KernelLogError::NotInstalled {
                program: "dmesg".into(),
            }),
        );
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::MemoryNearLimit);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].evidence["usagePercent"], "93.8");
        assert_eq!(f[1].kind, FindingKind::KernelLogUnavailable);
        assert_eq!(
            f[1].evidence["reason"],
            "dmesg is not installed on the operator's host (not on PATH)"
        );
    }

    #[tokio::test]
    async fn stats_failure_is_partial() {
        // FakeRuntime without memory answers "not found".
        let ctx = context(
            &worker(),
            Ok(Some(running())),
            FakeRuntime::default(),
            Ok(String::new()),
        );
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::CheckFailed);
        assert!(f[0].evidence["error"].contains("memory stats"));
        let ctx = context(
            &worker(),
            Ok(None),
            FakeRuntime::default(),
            Ok(String::new()),
        );
        assert!(run(&ctx).await.is_err());
    }
}
