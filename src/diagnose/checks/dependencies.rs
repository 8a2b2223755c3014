//! Dependencies (runbook "Root Cause Analysis / Dependency Issues"): required binaries on the
//! container's PATH and executable (and their `--version`), required Python packages in
//! `pip list`. Named pipes are checked by [`super::pipes`], which the diagnosis runs next to
//! this check and reports under it.
//!
//! Binaries are looked up with Docker's archive stat, which reads the container's filesystem
//! whether it runs or not: a worker that exited because a binary is missing is still checked.
//! `--version` and `pip` need a running container.

use crate::runtime::ContainerState;
use std::time::Duration;

use crate::{
    diagnose::{CheckContext, CheckError, CheckName, CheckResult, Finding, FindingKind, Severity},
    runtime::{ContainerInfo, PathStat, RuntimeError},
};

/// PATH when the container sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Longest a `<binary> --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// Symlinks followed at most.
const MAX_LINKS: usize = 8;
/// Go `os.FileMode` bits (what Docker's archive stat reports).
const MODE_DIR: u32 = 1 << 31;
const MODE_SYMLINK: u32 = 1 << 27;
const MODE_TYPE: u32 =
    MODE_DIR | MODE_SYMLINK | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19);

pub async fn run(ctx: &CheckContext) -> CheckResult {
    let d = &ctx.spec.diagnostics;
    if d.required_binaries.is_empty() && d.required_python_packages.is_empty() {
        return Ok(Vec::new());
    }
    let c = ctx.inspected_container(Some("its filesystem cannot be searched"))?;
    let running =
        c.running && c.status != ContainerState::Restarting && c.status != ContainerState::Paused;
    let mut findings = Vec::new();
    for binary in &d.required_binaries {
        findings.push(check_binary(ctx, c, running, binary).await?);
    }
    if !d.required_python_packages.is_empty() {
        findings.extend(check_packages(ctx, c, running).await);
    }
    Ok(findings)
}

/// The directories of the container's PATH (from its environment, else Docker's default).
pub fn search_path(env: &[String]) -> Vec<String> {
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let mut dirs: Vec<String> = Vec::new();
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let dir = dir.trim_end_matches('/');
        let dir = if dir.is_empty() { "/" } else { dir };
        if !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_string());
        }
    }
    dirs
}

fn join_path(dir: &str, file: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{file}")
    } else {
        format!("{dir}/{file}")
    }
}

/// The permission bits of a Go `os.FileMode` in octal (`-rwxr-xr-x` → `0755`).
pub fn octal_mode(mode: u32) -> String {
    format!("{:04o}", mode & 0o777)
}

fn is_executable_file(stat: &PathStat) -> bool {
    stat.mode & MODE_TYPE == 0 && stat.mode & 0o111 != 0
}

/// Where a name resolved to, after symlinks.
enum Lookup {
    /// An entry that exists: its path, the final target's stat, and the link target if any.
    Found {
        path: String,
        stat: PathStat,
        target: Option<String>,
    },
    /// A symlink whose target does not exist.
    Dangling {
        path: String,
        target: String,
    },
    Absent,
}

async fn lookup(ctx: &CheckContext, path: &str) -> Result<Lookup, RuntimeError> {
    let Some(mut stat) = ctx.docker.stat_path(ctx.container_ref()?, path).await? else {
        return Ok(Lookup::Absent);
    };
    let mut target = None;
    // Docker resolves a symlink's target fully (within the container's root); follow it.
    for _ in 0..MAX_LINKS {
        if stat.mode & MODE_SYMLINK == 0 {
            break;
        }
        let Some(link) = stat.link_target.clone() else {
            break;
        };
        let link = if link.starts_with('/') {
            link
        } else {
            let parent = path
                .rsplit_once('/')
                .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
            join_path(parent, &link)
        };
        match ctx.docker.stat_path(ctx.container_ref()?, &link).await? {
            Some(next) => {
                stat = next;
                target = Some(link);
            }
            None => {
                return Ok(Lookup::Dangling {
                    path: path.to_string(),
                    target: link,
                })
            }
        }
    }
    Ok(Lookup::Found {
        path: path.to_string(),
        stat,
        target,
    })
}

async fn check_binary(
    ctx: &CheckContext,
    c: &ContainerInfo,
    running: bool,
    binary: &str,
) -> Result<Finding, CheckError> {
    let name = &ctx.spec.container;
    let dirs = if binary.contains('/') {
        Vec::new()
    } else {
        search_path(&c.env)
    };
    let candidates: Vec<String> = if binary.contains('/') {
        vec![binary.to_string()]
    } else {
        dirs.iter().map(|d| join_path(d, binary)).collect()
    };
    let mut not_executable: Option<(String, PathStat)> = None;
    let mut dangling: Vec<String> = Vec::new();
    for candidate in &candidates {
        let found = match lookup(ctx, candidate).await {
            Ok(found) => found,
            Err(RuntimeError::NotFound(_)) => {
                return Err(CheckError::Disappeared {
                    container: name.clone(),
                })
            }
            Err(e) => {
                return Ok(ctx
                    .finding(
                        CheckName::Dependencies,
                        FindingKind::CheckFailed,
                        Severity::Warning,
                        format!("cannot look for {binary:?} in {name:?}: {e}"),
                    )
                    .with("binary", binary)
                    .with("error", e))
            }
        };
        match found {
            Lookup::Absent => {}
            Lookup::Dangling { path, target } => dangling.push(format!("{path} -> {target}")),
            Lookup::Found { path, stat, target } => {
                if stat.is_dir || !is_executable_file(&stat) {
                    // A shell keeps searching past entries it cannot execute.
                    not_executable.get_or_insert((path, stat));
                    continue;
                }
                let mut f = ctx
                    .finding(
                        CheckName::Dependencies,
                        FindingKind::BinaryPresent,
                        Severity::Info,
                        format!("{binary:?} is present and executable at {path}"),
                    )
                    .with("binary", binary)
                    .with("path", &path)
                    .with("mode", octal_mode(stat.mode))
                    .with("sizeBytes", stat.size);
                f = f.with_opt("linkTarget", target.as_ref());
                return Ok(version(ctx, c, running, f, &path, target.as_deref()).await);
            }
        }
    }
    Ok(not_usable(ctx, binary, &dirs, not_executable, &dangling))
}

/// No executable `binary` was found: the first entry of its name that cannot be executed, or
/// none at all; with the directories searched and the symlinks that lead nowhere.
fn not_usable(
    ctx: &CheckContext,
    binary: &str,
    dirs: &[String],
    not_executable: Option<(String, PathStat)>,
    dangling: &[String],
) -> Finding {
    let name = &ctx.spec.container;
    let mut f = match not_executable {
        Some((path, stat)) => ctx
            .finding(
                CheckName::Dependencies,
                FindingKind::BinaryNotExecutable,
                Severity::Critical,
                format!(
                    "{binary:?} exists at {path} but is not executable ({}{})",
                    if stat.is_dir { "a directory, " } else { "" },
                    octal_mode(stat.mode)
                ),
            )
            .with("binary", binary)
            .with("path", path)
            .with("mode", octal_mode(stat.mode)),
        None => ctx
            .finding(
                CheckName::Dependencies,
                FindingKind::BinaryMissing,
                Severity::Critical,
                if dirs.is_empty() {
                    format!("required binary {binary:?} does not exist in {name:?}")
                } else {
                    format!("required binary {binary:?} is not on the PATH of {name:?}")
                },
            )
            .with("binary", binary),
    };
    if !dirs.is_empty() {
        f = f.with("searchedDirs", dirs.join(":"));
    }
    if !dangling.is_empty() {
        f = f.with("danglingSymlinks", dangling.join(", "));
    }
    f
}

/// Add `<path> --version`'s first line to a present binary's finding (when running).
async fn version(
    ctx: &CheckContext,
    c: &ContainerInfo,
    running: bool,
    f: Finding,
    path: &str,
    target: Option<&str>,
) -> Finding {
    if !running {
        return f.with("version", "not checked: the container is not running");
    }
    // The container's own main program usually ignores `--version` and would start a second
    // worker inside the container: never run it.
    if let Some(main) = c.command.first() {
        let main_resolved = main.as_str();
        if main_resolved == path
            || Some(main_resolved) == target
            || (!main.contains('/') && path.ends_with(&format!("/{main}")))
        {
            return f.with(
                "version",
                "not checked: this is the container's main program",
            );
        }
    }
    match tokio::time::timeout(
        VERSION_TIMEOUT,
        ctx.docker.exec(&c.id, &[path, "--version"]),
    )
    .await
    {
        Ok(Ok(out)) => {
            let text = if out.stdout.trim().is_empty() {
                &out.stderr
            } else {
                &out.stdout
            };
            let line = text.trim().lines().next().unwrap_or("").trim().to_string();
            let code = out.exit_code.map_or("none".into(), |c| c.to_string());
            let f = f.with("versionExitCode", code);
            if line.is_empty() {
                f.with("version", "(no output)")
            } else {
                f.with("version", line)
            }
        }
        Ok(Err(e)) => f.with("versionError", e),
        Err(_) => f.with(
            "versionError",
            format!(
                "`{path} --version` did not finish within {}s",
                VERSION_TIMEOUT.as_secs()
            ),
        ),
    }
}

async fn check_packages(ctx: &CheckContext, c: &ContainerInfo, running: bool) -> Vec<Finding> {
    let name = &ctx.spec.container;
    let target = ctx.target();
    let wanted = &ctx.spec.diagnostics.required_python_packages;
    let failed = |reason: String| {
        ctx.finding(
            CheckName::Dependencies,
            FindingKind::CheckFailed,
            Severity::Warning,
            format!("required Python packages not checked: {reason}"),
        )
        .with("packages", wanted.join(", "))
        .with("error", reason)
    };
    if !running {
        return vec![failed(format!(
            "{target} is {}; `pip list` needs a running container",
            c.status
        ))];
    }
    let mut errors = Vec::new();
    let mut listed = None;
    for (label, cmd) in [
        ("pip", &["pip", "list", "--format=freeze"][..]),
        (
            "python3 -m pip",
            &["python3", "-m", "pip", "list", "--format=freeze"][..],
        ),
    ] {
        match ctx.docker.exec(&c.id, cmd).await {
            Ok(out) if out.exit_code == Some(0) => {
                listed = Some((label, out.stdout));
                break;
            }
            Ok(out) => errors.push(format!(
                "`{}` exited with {}: {}",
                cmd.join(" "),
                out.exit_code.map_or("no code".into(), |c| c.to_string()),
                out.stderr
                    .trim()
                    .lines()
                    .next()
                    .unwrap_or(out.stdout.trim())
            )),
            Err(e) => errors.push(format!("`{}`: {e}", cmd.join(" "))),
        }
    }
    let Some((via, text)) = listed else {
        return vec![failed(format!(
            "pip is not usable in {name:?}: {}",
            errors.join("; ")
        ))];
    };
    let installed = parse_pip_freeze(&text);
    wanted
        .iter()
        .map(|want| match match_package(want, &installed) {
            Some(found) => ctx
                .finding(
                    CheckName::Dependencies,
                    FindingKind::PackagePresent,
                    Severity::Info,
                    format!(
                        "Python package {want:?} is installed ({})",
                        describe(&found)
                    ),
                )
                .with("package", want)
                .with("installed", describe(&found))
                .with("via", via),
            None => ctx
                .finding(
                    CheckName::Dependencies,
                    FindingKind::PackageMissing,
                    Severity::Critical,
                    format!("Python package {want:?} is not installed in {name:?}"),
                )
                .with("package", want)
                .with("installedCount", installed.len())
                .with("via", via),
        })
        .collect()
}

fn describe(found: &[(String, String)]) -> String {
    found
        .iter()
        .map(|(n, v)| {
            if v.is_empty() {
                n.clone()
            } else {
                format!("{n}=={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `pip list --format=freeze` lines: `name==version` (or `name @ url` for direct installs).
pub fn parse_pip_freeze(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('-'))
        .filter_map(|l| {
            if let Some((n, v)) = l.split_once("==") {
                Some((n.trim().to_string(), v.trim().to_string()))
            } else if let Some((n, _)) = l.split_once(" @ ") {
                Some((n.trim().to_string(), String::new()))
            } else {
                l.split_whitespace()
                    .next()
                    .map(|n| (n.to_string(), String::new()))
            }
        })
        .collect()
}

/// A package name as PEP 503 compares them: lower case, runs of `-`, `_`, `.` as one `-`.
pub fn normalize_package(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for ch in name.trim().chars() {
        if matches!(ch, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(ch.to_ascii_lowercase());
        }
    }
    out
}

/// The installed packages that satisfy `wanted`: the package itself, else (as the runbook's
/// `pip list | grep opentelemetry` does) its family, `wanted-*` (`opentelemetry-api`, ...).
pub fn match_package(
    wanted: &str,
    installed: &[(String, String)],
) -> Option<Vec<(String, String)>> {
    let want = normalize_package(wanted);
    let exact: Vec<_> = installed
        .iter()
        .filter(|(n, _)| normalize_package(n) == want)
        .cloned()
        .collect();
    if !exact.is_empty() {
        return Some(exact);
    }
    let prefix = format!("{want}-");
    let family: Vec<_> = installed
        .iter()
        .filter(|(n, _)| normalize_package(n).starts_with(&prefix))
        .cloned()
        .collect();
    (!family.is_empty()).then_some(family)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        diagnose::testing::*,
        runtime::{fake::FakeRuntime, ExecOutput},
    };

    const FREEZE: &str = "opentelemetry-api==1.27.0\nopentelemetry-sdk==1.27.0\nprometheus_client==0.21.0\nPyYAML==6.0.2\nmypkg @ file:///src/mypkg\n";

    fn exe(size: i64) -> PathStat {
        PathStat {
            mode: 0o755,
            size,
            ..Default::default()
        }
    }

    fn ctx(
        container: ContainerInfo,
        binaries: &[&str],
        packages: &[&str],
        fake: FakeRuntime,
    ) -> crate::diagnose::CheckContext {
        let mut w = worker();
        w.spec.diagnostics.required_binaries = binaries.iter().map(|s| s.to_string()).collect();
        w.spec.diagnostics.required_python_packages =
            packages.iter().map(|s| s.to_string()).collect();
        context(&w, Ok(Some(container)), fake, Ok(String::new()))
    }

    #[test]
    fn parsers() {
        assert_eq!(
            search_path(&[]),
            DEFAULT_PATH.split(':').collect::<Vec<_>>()
        );
        assert_eq!(
            search_path(&["PATH=/opt/bin/:relative:/bin:/bin".into()]),
            ["/opt/bin", "/bin"]
        );
        assert_eq!(octal_mode(0o755), "0755");
        assert_eq!(octal_mode(MODE_SYMLINK | 0o777), "0777");
        assert!(is_executable_file(&exe(1)));
        assert!(!is_executable_file(&PathStat {
            mode: 0o644,
            ..Default::default()
        }));
        assert!(!is_executable_file(&PathStat {
            mode: MODE_DIR | 0o755,
            ..Default::default()
        }));
        let installed = parse_pip_freeze(FREEZE);
        assert_eq!(installed.len(), 5);
        assert_eq!(installed[4], ("mypkg".into(), String::new()));
        assert_eq!(normalize_package("Prometheus_Client"), "prometheus-client");
        assert_eq!(normalize_package("zope.interface"), "zope-interface");
        assert_eq!(
            match_package("prometheus-client", &installed).unwrap(),
            [("prometheus_client".to_string(), "0.21.0".to_string())]
        );
        assert_eq!(match_package("opentelemetry", &installed).unwrap().len(), 2);
        assert_eq!(match_package("pyyaml", &installed).unwrap()[0].1, "6.0.2");
        assert!(match_package("structlog", &installed).is_none());
        assert!(match_package("prometheus", &installed).is_some());
        assert!(match_package("open", &installed).is_none());
    }

    #[tokio::test]
    async fn nothing_declared_nothing_reported() {
        let f = run(&ctx(running(), &[], &[], FakeRuntime::default()))
            .await
            .unwrap();
        assert!(f.is_empty());
    }

    #[tokio::test]
    async fn missing_binary_in_a_stopped_container() {
        let mut fake = FakeRuntime::default();
        fake.paths
            .insert("/usr/local/bin/sample-worker".into(), exe(1_000_000));
        let f = run(&ctx(
            exited(127),
            &["claude", "sample-worker"],
            &["structlog"],
            fake,
        ))
        .await
        .unwrap();
        assert_eq!(
            kinds(&f),
            [
                FindingKind::BinaryMissing,
                FindingKind::BinaryPresent,
                FindingKind::CheckFailed
            ]
        );
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].evidence["binary"], "claude");
        assert_eq!(f[0].evidence["searchedDirs"], "/usr/local/bin:/bin");
        assert_eq!(f[1].evidence["path"], "/usr/local/bin/sample-worker");
        assert_eq!(f[1].evidence["mode"], "0755");
        assert_eq!(
            f[1].evidence["version"],
            "not checked: the container is not running"
        );
        assert!(f[2].evidence["error"].contains("needs a running container"));
    }

    #[tokio::test]
    async fn present_binary_via_symlink_with_version() {
        let mut fake = FakeRuntime::default();
        fake.paths.insert(
            "/bin/claude".into(),
            PathStat {
                mode: MODE_SYMLINK | 0o777,
                size: 7,
                is_dir: false,
                link_target: Some("/opt/claude/bin/claude".into()),
            },
        );
        fake.paths.insert("/opt/claude/bin/claude".into(), exe(42));
        fake.exec.insert(
            "/bin/claude --version".into(),
            exec_ok("1.0.3 (Claude Code)\nmore\n"),
        );
        let f = run(&ctx(running(), &["claude"], &[], fake)).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::BinaryPresent);
        assert_eq!(f[0].evidence["path"], "/bin/claude");
        assert_eq!(f[0].evidence["linkTarget"], "/opt/claude/bin/claude");
        assert_eq!(f[0].evidence["sizeBytes"], "42");
        assert_eq!(f[0].evidence["version"], "1.0.3 (Claude Code)");
        assert_eq!(f[0].evidence["versionExitCode"], "0");
    }

    #[tokio::test]
    async fn main_program_is_never_run_and_version_failure_is_evidence() {
        let mut fake = FakeRuntime::default();
        fake.paths
            .insert("/usr/local/bin/sample-worker".into(), exe(1));
        fake.paths.insert("/bin/tool".into(), exe(1));
        let f = run(&ctx(running(), &["sample-worker", "tool"], &[], fake))
            .await
            .unwrap();
        assert_eq!(
            f[0].evidence["version"],
            "not checked: this is the container's main program"
        );
        assert_eq!(f[1].kind, FindingKind::BinaryPresent);
        assert!(f[1].evidence["versionError"].contains("no canned answer"));
    }

    #[tokio::test]
    async fn not_executable_and_absolute_paths() {
        let mut fake = FakeRuntime::default();
        fake.paths.insert(
            "/usr/local/bin/claude".into(),
            PathStat {
                mode: 0o644,
                size: 10,
                ..Default::default()
            },
        );
        fake.paths.insert(
            "/bin/dangling".into(),
            PathStat {
                mode: MODE_SYMLINK | 0o777,
                link_target: Some("/nowhere".into()),
                ..Default::default()
            },
        );
        let f = run(&ctx(
            exited(126),
            &["claude", "/opt/x", "dangling"],
            &[],
            fake,
        ))
        .await
        .unwrap();
        assert_eq!(f[0].kind, FindingKind::BinaryNotExecutable);
        assert_eq!(f[0].evidence["mode"], "0644");
        assert_eq!(f[0].evidence["path"], "/usr/local/bin/claude");
        assert_eq!(f[1].kind, FindingKind::BinaryMissing);
        assert!(!f[1].evidence.contains_key("searchedDirs"));
        assert_eq!(f[2].kind, FindingKind::BinaryMissing);
        assert_eq!(
            f[2].evidence["danglingSymlinks"],
            "/bin/dangling -> /nowhere"
        );
    }

    #[tokio::test]
    async fn packages_from_pip_with_fallback() {
        let mut fake = FakeRuntime::default();
        fake.exec.insert(
            "pip list --format=freeze".into(),
            Ok(ExecOutput {
                exit_code: Some(127),
                stdout: String::new(),
                stderr: "exec: \"pip\": executable file not found in $PATH".into(),
            }),
        );
        fake.exec.insert(
            "python3 -m pip list --format=freeze".into(),
            exec_ok(FREEZE),
        );
        let f = run(&ctx(
            running(),
            &[],
            &["opentelemetry", "Prometheus-Client", "structlog"],
            fake,
        ))
        .await
        .unwrap();
        assert_eq!(
            kinds(&f),
            [
                FindingKind::PackagePresent,
                FindingKind::PackagePresent,
                FindingKind::PackageMissing
            ]
        );
        assert_eq!(
            f[0].evidence["installed"],
            "opentelemetry-api==1.27.0, opentelemetry-sdk==1.27.0"
        );
        assert_eq!(f[1].evidence["via"], "python3 -m pip");
        assert_eq!(f[2].severity, Severity::Critical);
    }

    #[tokio::test]
    async fn no_pip_fails_packages_only() {
        let mut fake = FakeRuntime::default();
        fake.paths.insert("/bin/tool".into(), exe(1));
        fake.exec
            .insert("/bin/tool --version".into(), exec_ok("tool 2\n"));
        let f = run(&ctx(running(), &["tool"], &["structlog"], fake))
            .await
            .unwrap();
        assert_eq!(f[0].kind, FindingKind::BinaryPresent);
        assert_eq!(f[1].kind, FindingKind::CheckFailed);
        assert!(
            f[1].evidence["error"].contains("pip is not usable"),
            "{:?}",
            f[1].evidence
        );
    }
}
