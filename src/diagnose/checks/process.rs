//! Process (runbook "Verify Worker Status": `ps aux | grep watcher`): is the worker's own
//! process alive? Read from `/proc/<pid>/status` and `/proc/<pid>/cmdline` inside the container
//! with `docker exec`.
//!
//! Which process is the worker's ([`locate`], shared with the file-descriptor check): the
//! process named by `diagnostics.processName` when the spec names one; under an init
//! (`docker run --init`, or PID 1 is a known init such as `tini`), PID 1's main child; PID 1
//! otherwise. The finding says which PID was examined and how it was chosen. A systemd unit's
//! main process (`MainPID`) is read from the operator's own `/proc` instead
//! ([`crate::runtime::host_process`]): nothing runs inside a unit.

use std::sync::Arc;

use super::first_line;
use crate::runtime::ContainerState;
use crate::{
    diagnose::{CheckContext, CheckError, CheckName, CheckResult, FindingKind, Severity},
    runtime::{ContainerInfo, HostProcess, RuntimeError},
};

/// Names of init processes that run the real worker as their child.
pub const INIT_NAMES: [&str; 5] = ["docker-init", "tini", "dumb-init", "catatonit", "s6-svscan"];
/// Most processes read when searching the container's process table.
const MAX_PROCESSES: usize = 512;

/// How the examined process was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// PID 1: no init, no name in the spec.
    Pid1,
    /// The main child of the init that is PID 1.
    InitChild { init: String },
    /// The process the spec names (`diagnostics.processName`).
    Named(String),
    /// A unit's main process (`MainPID`), read from the operator's `/proc`.
    MainPid(HostProcess),
}

impl Selection {
    /// Evidence value: `pid1`, `initChild`, `processName`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pid1 => "pid1",
            Self::InitChild { .. } => "initChild",
            Self::Named(_) => "processName",
            Self::MainPid(_) => "mainPid",
        }
    }
}

/// The worker's own process, as found inside its container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Located {
    Found {
        pid: u32,
        status: ProcStatus,
        how: Selection,
    },
    /// The container runs, but the worker's process is not among its processes (an init with
    /// no child, or no process of the spec's name).
    Missing(String),
}

/// Why the worker's own process could not be looked for. Clone: it is found once per
/// diagnosis and shared by the checks that look at it ([`CheckContext::worker_process`]).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("container {0:?} is not running")]
    NotRunning(String),
    /// No container to ask the engine about (see [`CheckContext::container_ref`]).
    #[error(transparent)]
    Engine(Arc<RuntimeError>),
    #[error("cannot exec `{command}` in {container:?}")]
    Exec {
        command: String,
        container: String,
        #[source]
        source: Arc<RuntimeError>,
    },
    #[error("`{command}` in {container:?} exited with {exit_code}: {output}")]
    Exited {
        command: String,
        container: String,
        exit_code: String,
        output: String,
    },
    #[error("cannot parse {path} of {container:?}: {output}")]
    Unparseable {
        path: String,
        container: String,
        output: String,
    },
    #[error("`ls /proc` in {container:?} listed no process: {output}")]
    NoProcesses { container: String, output: String },
    /// A unit's main process is not among the operator's processes.
    #[error("the main process of {unit:?} is not visible from the operator's PID namespace (run the operator in the host's)")]
    NotVisible { unit: String },
    #[error("cannot read {path}")]
    HostRead {
        path: String,
        #[source]
        source: Arc<std::io::Error>,
    },
}

impl From<RuntimeError> for ProcessError {
    fn from(e: RuntimeError) -> Self {
        Self::Engine(Arc::new(e))
    }
}

/// `command` run in the worker's container failed.
fn exec_failed(ctx: &CheckContext, command: &str) -> impl FnOnce(RuntimeError) -> ProcessError {
    let container = ctx.spec.container.clone();
    let command = command.to_string();
    move |e| ProcessError::Exec {
        command,
        container,
        source: Arc::new(e),
    }
}

/// Find the worker's own process in the running container `c` (see the module doc), or a
/// unit's main process.
pub async fn locate(ctx: &CheckContext, c: &ContainerInfo) -> Result<Located, ProcessError> {
    if ctx.docker.capabilities().host_processes {
        return locate_on_host(ctx).await;
    }
    let name = &ctx.spec.container;
    let pid1 = read_status(ctx, 1).await?;
    let wanted = ctx.spec.diagnostics.process_name.as_deref();
    let is_init = c.init || INIT_NAMES.contains(&pid1.name.as_str());
    match wanted {
        Some(w) if name_matches(&pid1.name, w) => {
            return Ok(Located::Found {
                pid: 1,
                status: pid1,
                how: Selection::Named(w.to_string()),
            })
        }
        None if !is_init => {
            return Ok(Located::Found {
                pid: 1,
                status: pid1,
                how: Selection::Pid1,
            })
        }
        _ => {}
    }
    let processes = list_processes(ctx).await?;
    let lowest = |pred: &dyn Fn(&ProcStatus) -> bool| {
        processes
            .iter()
            .filter(|p| p.pid.is_some_and(|pid| pid != 1) && pred(p))
            .min_by_key(|p| p.pid)
            .cloned()
    };
    let (found, how) = match wanted {
        Some(w) => (
            lowest(&|p| name_matches(&p.name, w)),
            Selection::Named(w.to_string()),
        ),
        None => (
            lowest(&|p| p.ppid == Some(1)),
            Selection::InitChild {
                init: pid1.name.clone(),
            },
        ),
    };
    Ok(match found {
        Some(status) => Located::Found {
            pid: status.pid.unwrap_or(1),
            status,
            how,
        },
        None => Located::Missing(match how {
            Selection::Named(w) => format!(
                "no process named {w:?} runs in {name:?} (PID 1 is {:?})",
                pid1.name
            ),
            _ => format!(
                "PID 1 of {name:?} is the init {:?} and has no child: the worker process is gone",
                pid1.name
            ),
        }),
    })
}

/// A unit's main process, read from the operator's `/proc`.
async fn locate_on_host(ctx: &CheckContext) -> Result<Located, ProcessError> {
    let unit = ctx.container_ref()?;
    let Some(process) = ctx.docker.host_process(unit).await? else {
        return Err(ProcessError::NotVisible { unit: unit.into() });
    };
    let status = host_read(&process, "status").await?;
    let status = parse_status(&status).ok_or_else(|| ProcessError::Unparseable {
        path: format!("/proc/{}/status", process.host_pid),
        container: unit.into(),
        output: first_line(&status, "").to_string(),
    })?;
    Ok(Located::Found {
        pid: process.pid,
        status,
        how: Selection::MainPid(process),
    })
}

/// `/proc/<host pid>/<file>` of a unit's process, off the async threads.
pub async fn host_read(process: &HostProcess, file: &'static str) -> Result<String, ProcessError> {
    let p = process.clone();
    let read = tokio::task::spawn_blocking(move || p.read(file)).await;
    read.map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| ProcessError::HostRead {
            path: format!("/proc/{}/{file}", process.host_pid),
            source: Arc::new(e),
        })
}

/// `comm` is cut at 15 bytes by the kernel: a longer wanted name matches its first 15.
fn name_matches(comm: &str, wanted: &str) -> bool {
    comm == wanted || (comm.len() == 15 && wanted.starts_with(comm))
}

async fn read_status(ctx: &CheckContext, pid: u32) -> Result<ProcStatus, ProcessError> {
    let name = &ctx.spec.container;
    let path = format!("/proc/{pid}/status");
    let out = ctx
        .docker
        .exec(ctx.container_ref()?, &["cat", &path])
        .await
        .map_err(exec_failed(ctx, &format!("cat {path}")))?;
    if out.exit_code != Some(0) {
        return Err(ProcessError::Exited {
            command: format!("cat {path}"),
            container: name.clone(),
            exit_code: out.exit_code.map_or("no code".into(), |c| c.to_string()),
            output: first_line(&out.stderr, &out.stdout).to_string(),
        });
    }
    parse_status(&out.stdout).ok_or_else(|| ProcessError::Unparseable {
        path,
        container: name.clone(),
        output: first_line(&out.stdout, &out.stderr).to_string(),
    })
}

/// Every process of the container, from `ls /proc` and one `cat` of their status files
/// (no shell needed). Processes that end meanwhile are simply absent.
async fn list_processes(ctx: &CheckContext) -> Result<Vec<ProcStatus>, ProcessError> {
    let ls = ctx
        .docker
        .exec(ctx.container_ref()?, &["ls", "/proc"])
        .await
        .map_err(exec_failed(ctx, "ls /proc"))?;
    let paths: Vec<String> = ls
        .stdout
        .split_whitespace()
        .filter(|e| e.bytes().all(|b| b.is_ascii_digit()))
        .take(MAX_PROCESSES)
        .map(|pid| format!("/proc/{pid}/status"))
        .collect();
    if paths.is_empty() {
        return Err(ProcessError::NoProcesses {
            container: ctx.spec.container.clone(),
            output: first_line(&ls.stderr, &ls.stdout).to_string(),
        });
    }
    let mut cmd = vec!["cat"];
    cmd.extend(paths.iter().map(String::as_str));
    let out = ctx
        .docker
        .exec(ctx.container_ref()?, &cmd)
        .await
        .map_err(exec_failed(ctx, "cat /proc/*/status"))?;
    Ok(split_statuses(&out.stdout))
}

/// Split concatenated `/proc/<pid>/status` files: each starts with its `Name:` line.
pub fn split_statuses(text: &str) -> Vec<ProcStatus> {
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("Name:") || blocks.is_empty() {
            blocks.push(String::new());
        }
        let block = blocks.last_mut().expect("a block was pushed");
        block.push_str(line);
        block.push('\n');
    }
    blocks.iter().filter_map(|b| parse_status(b)).collect()
}

/// The running container whose process is examined, or the check's result when there is none
/// (absent, stopped, restarting) or it cannot be looked into (paused).
fn examined(ctx: &CheckContext) -> Result<&ContainerInfo, CheckResult> {
    let name = &ctx.spec.container;
    let target = ctx.target();
    let c = match &ctx.container {
        Err(reason) => return Err(Err(ctx.uninspectable(reason))),
        Ok(None) => {
            return Err(Ok(vec![ctx
                .finding(
                    CheckName::Process,
                    FindingKind::ProcessMissing,
                    Severity::Critical,
                    format!("no worker process: {target} does not exist"),
                )
                .with("state", "notFound")]))
        }
        Ok(Some(c)) => c,
    };
    // A restarting container's process is gone until Docker starts it again (its PID is 0).
    if !c.running || c.status == ContainerState::Restarting {
        return Err(Ok(vec![missing(
            ctx,
            c,
            format!(
                "no worker process: {target} is {}{}",
                c.status,
                c.exit_code
                    .map(|e| format!(" (exit code {e})"))
                    .unwrap_or_default()
            ),
        )]));
    }
    if c.status == ContainerState::Paused {
        return Err(Err(CheckError::Paused {
            container: name.clone(),
        }));
    }
    Ok(c)
}

pub async fn run(ctx: &CheckContext) -> CheckResult {
    let name = &ctx.spec.container;
    let c = match examined(ctx) {
        Ok(c) => c,
        Err(done) => return done,
    };
    let (pid, proc, how) = match ctx.worker_process().await? {
        Located::Found { pid, status, how } => (pid, status, how),
        Located::Missing(why) => return Ok(vec![missing(ctx, c, why)]),
    };
    let cmdline = cmdline(ctx, pid, &how).await?;
    let which = match &how {
        Selection::Pid1 => format!("PID 1 of {name:?}"),
        Selection::InitChild { init } => {
            format!("PID {pid} of {name:?}, child of the init {init:?}")
        }
        Selection::Named(w) => format!("PID {pid} of {name:?}, named {w:?} in the spec"),
        Selection::MainPid(p) => format!("main PID {pid} of {name:?}, PID {} here", p.host_pid),
    };
    let zombie = proc.state.starts_with('Z') || proc.state.starts_with('X');
    let mut f = if zombie {
        missing(
            ctx,
            c,
            format!(
                "the worker process {:?} ({which}) is a zombie: state {}",
                proc.name, proc.state
            ),
        )
    } else {
        ctx.finding(
            CheckName::Process,
            FindingKind::ProcessAlive,
            Severity::Info,
            format!(
                "the worker process {:?} ({which}) is alive: state {}, {} threads",
                proc.name,
                proc.state,
                proc.threads.map_or("?".into(), |t| t.to_string())
            ),
        )
        .with("state", &proc.state)
    };
    f = f
        .with("pid", pid)
        .with("name", &proc.name)
        .with("selectedBy", how.as_str());
    if let Selection::InitChild { init } = &how {
        f = f.with("init", init);
    }
    f = f
        .with_opt("hostPid", host_pid(c, pid, &how))
        .with_opt("threads", proc.threads)
        .with_opt("vmRssKiB", proc.vm_rss_kib)
        // A unit's parent is numbered in the operator's namespace, not the unit's: left out.
        .with_opt(
            "ppid",
            proc.ppid.filter(|_| !matches!(how, Selection::MainPid(_))),
        )
        .with_opt("cmdline", cmdline.filter(|c| !c.is_empty()));
    if !c.command.is_empty() {
        f = f.with("expectedCommand", c.command.join(" "));
    }
    Ok(vec![f])
}

/// The command line is a nice-to-have: no failure if it cannot be read.
async fn cmdline(
    ctx: &CheckContext,
    pid: u32,
    how: &Selection,
) -> Result<Option<String>, CheckError> {
    if let Selection::MainPid(p) = how {
        return Ok(host_read(p, "cmdline")
            .await
            .ok()
            .map(|raw| parse_cmdline(&raw)));
    }
    let path = format!("/proc/{pid}/cmdline");
    Ok(
        match ctx.docker.exec(ctx.container_ref()?, &["cat", &path]).await {
            Ok(out) if out.exit_code == Some(0) => Some(parse_cmdline(&out.stdout)),
            _ => None,
        },
    )
}

/// The examined process's PID on the operator's host, where it is known: Docker's PID is the
/// host PID of the container's PID 1; a unit's was mapped.
fn host_pid(c: &ContainerInfo, pid: u32, how: &Selection) -> Option<i64> {
    match how {
        Selection::MainPid(p) => Some(i64::from(p.host_pid)),
        _ => c.pid.filter(|_| pid == 1),
    }
}

fn missing(ctx: &CheckContext, c: &ContainerInfo, summary: String) -> crate::diagnose::Finding {
    ctx.finding(
        CheckName::Process,
        FindingKind::ProcessMissing,
        Severity::Critical,
        summary,
    )
    .with("containerState", c.status)
    .with_opt("exitCode", c.exit_code.filter(|_| !c.running))
}

/// What `/proc/<pid>/status` says about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// `Pid:` (in the container's PID namespace).
    pub pid: Option<u32>,
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
            "Pid" => p.pid = value.parse().ok(),
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
        diagnose::testing::*,
        runtime::{fake::FakeRuntime, ExecOutput},
    };

    /// `/proc/1/status` of the sample worker, as read in a real container (trimmed).
    const STATUS: &str = "Name:\tsample-worker\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1\nNgid:\t0\nPid:\t1\nPPid:\t0\nTracerPid:\t0\nFDSize:\t64\nVmPeak:\t    4608 kB\nVmRSS:\t    2316 kB\nThreads:\t3\nSigQ:\t0/15511\n";

    fn fake(status: Result<ExecOutput, String>) -> FakeRuntime {
        let mut fake = FakeRuntime::default();
        fake.exec.insert("cat /proc/1/status".into(), status);
        fake.exec.insert(
            "cat /proc/1/cmdline".into(),
            exec_ok("/usr/local/bin/sample-worker\0"),
        );
        fake
    }

    /// A systemd runtime whose unit's main process is PID 602 in its namespace and `host_pid`
    /// in a `/proc` of fixtures (`None`: not visible).
    fn unit_runtime(proc_root: &std::path::Path, host_pid: Option<u32>) -> FakeRuntime {
        let mut fake = FakeRuntime {
            capabilities: Some(crate::runtime::Capabilities::SYSTEMD),
            ..Default::default()
        };
        fake.host_process = host_pid.map(|host_pid| HostProcess {
            pid: 602,
            host_pid,
            proc_root: proc_root.to_path_buf(),
        });
        fake
    }

    #[tokio::test]
    async fn a_units_main_process_is_read_from_the_hosts_proc() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("14450");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("status"),
            STATUS.replace("PPid:\t0", "PPid:\t1167"),
        )
        .unwrap();
        std::fs::write(dir.join("cmdline"), "/usr/local/bin/sample-worker\0").unwrap();
        let ctx = context(
            &worker(),
            Ok(Some(running())),
            unit_runtime(root.path(), Some(14450)),
            Ok(String::new()),
        );
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::ProcessAlive, "{f:?}");
        let e = &f[0].evidence;
        assert_eq!((e["pid"].as_str(), e["hostPid"].as_str()), ("602", "14450"));
        assert_eq!(e["selectedBy"], "mainPid");
        assert_eq!(e["cmdline"], "/usr/local/bin/sample-worker");
        assert!(!e.contains_key("ppid"), "the host's numbering: {e:?}");

        // Not visible from the operator's PID namespace: the check says why it cannot run.
        let ctx = context(
            &worker(),
            Ok(Some(running())),
            unit_runtime(root.path(), None),
            Ok(String::new()),
        );
        let err = run(&ctx).await.unwrap_err().to_string();
        assert!(
            err.contains("not visible from the operator's PID namespace"),
            "{err}"
        );
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
            fake(exec_ok(STATUS)),
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
            fake(exec_ok(&zombie)),
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
        let err = crate::diagnose::error::message(&run(&ctx).await.unwrap_err());
        // The same words as when errors were strings: what failed, then why.
        assert_eq!(
            err,
            "cannot exec `cat /proc/1/status` in \"marie\": Docker engine refused exec: container is not running"
        );
    }

    fn status_of(pid: u32, ppid: u32, name: &str) -> String {
        format!("Name:\t{name}\nState:\tS (sleeping)\nPid:\t{pid}\nPPid:\t{ppid}\nThreads:\t1\n")
    }

    /// A container whose processes are `(pid, ppid, name)`; exec'd commands have PPid 0.
    fn table(processes: &[(u32, u32, &str)]) -> FakeRuntime {
        let mut fake = FakeRuntime::default();
        let pids: Vec<String> = processes.iter().map(|p| p.0.to_string()).collect();
        fake.exec.insert(
            "ls /proc".into(),
            exec_ok(&format!("{}\nself\nsys\nuptime\n", pids.join("\n"))),
        );
        let cat = std::iter::once("cat".to_string())
            .chain(pids.iter().map(|p| format!("/proc/{p}/status")))
            .collect::<Vec<_>>()
            .join(" ");
        let all: String = processes
            .iter()
            .map(|&(p, pp, n)| status_of(p, pp, n))
            .collect();
        fake.exec.insert(cat, exec_ok(&all));
        let (_, _, init) = processes[0];
        fake.exec
            .insert("cat /proc/1/status".into(), exec_ok(&status_of(1, 0, init)));
        for &(pid, _, name) in processes {
            fake.exec.insert(
                format!("cat /proc/{pid}/cmdline"),
                exec_ok(&format!("/bin/{name}\0")),
            );
        }
        fake
    }

    #[tokio::test]
    async fn under_init_the_main_child_is_examined() {
        let mut c = running();
        c.init = true;
        // The `ls`/`cat` of the check itself run with PPid 0 and are not the worker.
        let fake = table(&[
            (1, 0, "docker-init"),
            (7, 1, "sample-worker"),
            (31, 0, "cat"),
        ]);
        let ctx = context(&worker(), Ok(Some(c)), fake, Ok(String::new()));
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::ProcessAlive, "{f:#?}");
        assert_eq!(f[0].evidence["pid"], "7");
        assert_eq!(f[0].evidence["name"], "sample-worker");
        assert_eq!(f[0].evidence["selectedBy"], "initChild");
        assert_eq!(f[0].evidence["init"], "docker-init");
        assert_eq!(f[0].evidence["cmdline"], "/bin/sample-worker");
        assert!(
            !f[0].evidence.contains_key("hostPid"),
            "the host PID is docker-init's"
        );
        assert!(f[0].summary.contains("PID 7"), "{}", f[0].summary);

        // A known init as PID 1 is recognised without `--init` too (tini as entrypoint).
        let fake = table(&[(1, 0, "tini"), (6, 1, "watcher"), (8, 6, "helper")]);
        let ctx = context(&worker(), Ok(Some(running())), fake, Ok(String::new()));
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].evidence["pid"], "6");
        assert_eq!(f[0].evidence["name"], "watcher");
    }

    #[tokio::test]
    async fn an_init_without_child_means_the_worker_is_gone() {
        let mut c = running();
        c.init = true;
        let fake = table(&[(1, 0, "docker-init"), (12, 0, "ls")]);
        let ctx = context(&worker(), Ok(Some(c)), fake, Ok(String::new()));
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::ProcessMissing);
        assert!(f[0].summary.contains("has no child"), "{}", f[0].summary);
    }

    #[tokio::test]
    async fn a_process_named_in_the_spec_is_examined() {
        let mut w = worker();
        w.spec.diagnostics.process_name = Some("python3".into());
        let fake = table(&[(1, 0, "sh"), (5, 1, "sidecar"), (9, 1, "python3")]);
        let ctx = context(&w, Ok(Some(running())), fake, Ok(String::new()));
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].evidence["pid"], "9");
        assert_eq!(f[0].evidence["selectedBy"], "processName");

        w.spec.diagnostics.process_name = Some("ruby".into());
        let fake = table(&[(1, 0, "sh"), (9, 1, "python3")]);
        let ctx = context(&w, Ok(Some(running())), fake, Ok(String::new()));
        let f = run(&ctx).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::ProcessMissing);
        assert!(
            f[0].summary.contains("no process named \"ruby\""),
            "{}",
            f[0].summary
        );
    }

    #[test]
    fn concatenated_status_files_split_per_process() {
        let text = format!("{}{}", status_of(1, 0, "docker-init"), status_of(7, 1, "w"));
        let all = split_statuses(&text);
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[1].pid, all[1].ppid, all[1].name.as_str()),
            (Some(7), Some(1), "w")
        );
        assert!(name_matches("a-very-long-nam", "a-very-long-name-indeed"));
        assert!(!name_matches("short", "shorter"));
    }
}
