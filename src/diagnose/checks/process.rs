//! Process (runbook "Verify Worker Status": `ps aux | grep watcher`): is the worker's main
//! process (PID 1 of the container) alive? Read from `/proc/1/status` and `/proc/1/cmdline`
//! inside the container with `docker exec`.

use crate::{
    diagnose::{CheckContext, CheckName, CheckResult, FindingKind, Severity},
    docker::ContainerInfo,
};

pub async fn run(ctx: &CheckContext) -> CheckResult {
    let name = &ctx.spec.container;
    let c = match &ctx.container {
        Err(reason) => return Err(format!("cannot inspect container {name:?}: {reason}")),
        Ok(None) => {
            return Ok(vec![ctx
                .finding(
                    CheckName::Process,
                    FindingKind::ProcessMissing,
                    Severity::Critical,
                    format!("no worker process: container {name:?} does not exist"),
                )
                .with("state", "notFound")])
        }
        Ok(Some(c)) => c,
    };
    // A restarting container's process is gone until Docker starts it again (its PID is 0).
    if !c.running || c.status == "restarting" {
        return Ok(vec![missing(
            ctx,
            c,
            format!(
                "no worker process: container {name:?} is {}{}",
                c.status,
                c.exit_code
                    .map(|e| format!(" (exit code {e})"))
                    .unwrap_or_default()
            ),
        )]);
    }
    if c.status == "paused" {
        return Err(format!(
            "container {name:?} is paused: its process is frozen and exec is refused"
        ));
    }
    let status = ctx
        .docker
        .exec(name, &["cat", "/proc/1/status"])
        .await
        .map_err(|e| format!("cannot exec `cat /proc/1/status` in {name:?}: {e}"))?;
    if status.exit_code != Some(0) {
        return Err(format!(
            "`cat /proc/1/status` in {name:?} exited with {}: {}",
            status.exit_code.map_or("no code".into(), |c| c.to_string()),
            first_line(&status.stderr, &status.stdout)
        ));
    }
    let Some(proc) = parse_status(&status.stdout) else {
        return Err(format!(
            "cannot parse /proc/1/status of {name:?}: {}",
            first_line(&status.stdout, &status.stderr)
        ));
    };
    // The command line is a nice-to-have: no failure if it cannot be read.
    let cmdline = match ctx.docker.exec(name, &["cat", "/proc/1/cmdline"]).await {
        Ok(out) if out.exit_code == Some(0) => Some(parse_cmdline(&out.stdout)),
        _ => None,
    };
    let zombie = proc.state.starts_with('Z') || proc.state.starts_with('X');
    let mut f = if zombie {
        missing(
            ctx,
            c,
            format!(
                "the worker process {:?} (PID 1 of {name:?}) is a zombie: state {}",
                proc.name, proc.state
            ),
        )
    } else {
        ctx.finding(
            CheckName::Process,
            FindingKind::ProcessAlive,
            Severity::Info,
            format!(
                "the worker process {:?} (PID 1 of {name:?}) is alive: state {}, {} threads",
                proc.name,
                proc.state,
                proc.threads.map_or("?".into(), |t| t.to_string())
            ),
        )
        .with("state", &proc.state)
    };
    f = f.with("pid", 1).with("name", &proc.name);
    f = f
        .with_opt("hostPid", c.pid)
        .with_opt("threads", proc.threads)
        .with_opt("vmRssKiB", proc.vm_rss_kib)
        .with_opt("ppid", proc.ppid)
        .with_opt("cmdline", cmdline.filter(|c| !c.is_empty()));
    if !c.command.is_empty() {
        f = f.with("expectedCommand", c.command.join(" "));
    }
    Ok(vec![f])
}

fn missing(ctx: &CheckContext, c: &ContainerInfo, summary: String) -> crate::diagnose::Finding {
    ctx.finding(
        CheckName::Process,
        FindingKind::ProcessMissing,
        Severity::Critical,
        summary,
    )
    .with("containerState", &c.status)
    .with_opt("exitCode", c.exit_code.filter(|_| !c.running))
}

fn first_line<'a>(preferred: &'a str, other: &'a str) -> &'a str {
    let text = if preferred.trim().is_empty() {
        other
    } else {
        preferred
    };
    text.trim().lines().next().unwrap_or("")
}

/// What `/proc/<pid>/status` says about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStatus {
    pub name: String,
    /// State letter and word, e.g. `S (sleeping)`.
    pub state: String,
    pub ppid: Option<u64>,
    pub threads: Option<u64>,
    pub vm_rss_kib: Option<u64>,
}

/// Parse `/proc/<pid>/status`; `None` when it has no `Name:` and `State:`.
pub fn parse_status(text: &str) -> Option<ProcStatus> {
    let mut p = ProcStatus::default();
    let (mut has_name, mut has_state) = (false, false);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let number = || value.split_whitespace().next().and_then(|n| n.parse().ok());
        match key {
            "Name" => {
                p.name = value.to_string();
                has_name = true;
            }
            "State" => {
                p.state = value.to_string();
                has_state = true;
            }
            "PPid" => p.ppid = number(),
            "Threads" => p.threads = number(),
            "VmRSS" => p.vm_rss_kib = number(),
            _ => {}
        }
    }
    (has_name && has_state).then_some(p)
}

/// `/proc/<pid>/cmdline` (NUL-separated) as one line.
pub fn parse_cmdline(raw: &str) -> String {
    raw.split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        diagnose::host::testing::*,
        docker::{fake::FakeRuntime, ExecOutput},
    };

    /// `/proc/1/status` of the sample worker, as read in a real container (trimmed).
    const STATUS: &str = "Name:\tsample-worker\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1\nNgid:\t0\nPid:\t1\nPPid:\t0\nTracerPid:\t0\nFDSize:\t64\nVmPeak:\t    4608 kB\nVmRSS:\t    2316 kB\nThreads:\t3\nSigQ:\t0/15511\n";

    fn ok(stdout: &str) -> Result<ExecOutput, String> {
        Ok(ExecOutput {
            exit_code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        })
    }

    fn fake(status: Result<ExecOutput, String>) -> FakeRuntime {
        let mut fake = FakeRuntime::default();
        fake.exec.insert("cat /proc/1/status".into(), status);
        fake.exec.insert(
            "cat /proc/1/cmdline".into(),
            ok("/usr/local/bin/sample-worker\0"),
        );
        fake
    }

    #[test]
    fn status_fixture_parses() {
        let p = parse_status(STATUS).unwrap();
        assert_eq!(p.name, "sample-worker");
        assert_eq!(p.state, "S (sleeping)");
        assert_eq!(p.threads, Some(3));
        assert_eq!(p.vm_rss_kib, Some(2316));
        assert_eq!(p.ppid, Some(0));
        assert_eq!(parse_status("garbage\n"), None);
        assert_eq!(parse_cmdline("sh\0-c\0sleep 1\0"), "sh -c sleep 1");
    }

    #[tokio::test]
    async fn alive_process_has_its_numbers() {
        let ctx = context(
            &worker(),
            Ok(Some(running())),
            fake(ok(STATUS)),
            Ok(String::new()),
        );
        let f = run(&ctx).await.unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FindingKind::ProcessAlive);
        assert_eq!(f[0].evidence["pid"], "1");
        assert_eq!(f[0].evidence["name"], "sample-worker");
        assert_eq!(f[0].evidence["state"], "S (sleeping)");
        assert_eq!(f[0].evidence["threads"], "3");
        assert_eq!(f[0].evidence["vmRssKiB"], "2316");
        assert_eq!(f[0].evidence["hostPid"], "4242");
        assert_eq!(f[0].evidence["cmdline"], "/usr/local/bin/sample-worker");
    }

    #[tokio::test]
    async fn zombie_is_missing() {
        let zombie = STATUS.replace("S (sleeping)", "Z (zombie)");
        let ctx = context(
            &worker(),
            Ok(Some(running())),
            fake(ok(&zombie)),
            Ok(String::new()),
        );
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::ProcessMissing);
        assert_eq!(f[0].severity, Severity::Critical);
    }

    #[tokio::test]
    async fn stopped_or_absent_container_has_no_process() {
        let ctx = context(
            &worker(),
            Ok(Some(exited(3))),
            FakeRuntime::default(),
            Ok(String::new()),
        );
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::ProcessMissing);
        assert_eq!(f[0].evidence["containerState"], "exited");
        assert_eq!(f[0].evidence["exitCode"], "3");
        let ctx = context(
            &worker(),
            Ok(None),
            FakeRuntime::default(),
            Ok(String::new()),
        );
        assert_eq!(
            run(&ctx).await.unwrap()[0].kind,
            FindingKind::ProcessMissing
        );
    }

    #[tokio::test]
    async fn refused_exec_fails_the_check() {
        let ctx = context(
            &worker(),
            Ok(Some(running())),
            fake(Err("container is not running".into())),
            Ok(String::new()),
        );
        let err = run(&ctx).await.unwrap_err();
        assert!(err.contains("container is not running"), "{err}");
    }
}
