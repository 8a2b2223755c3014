//! Named pipes (runbook: Dependency Issues, "Check named pipes": `ls -la /shared/pipes/`,
//! `stat $pipe`): each of the Worker's `diagnostics.namedPipes`, relative to the shared root,
//! exists and really is a FIFO. Nothing is opened; a symlink is not followed and counts as not
//! a FIFO. Part of the dependencies check, run by the diagnosis next to it.

use crate::{
    blocking,
    confined::{self, Entry, EntryKind, FsError},
    diagnose::{CheckContext, CheckName, Finding, FindingKind, Severity},
};

const CHECK: CheckName = CheckName::Dependencies;

/// One finding per declared pipe: PipePresent, PipeMissing, PipeNotFifo, or CheckFailed when
/// the path is refused (absolute or `..`) or cannot be looked at.
pub async fn check_named_pipes(ctx: &CheckContext) -> Vec<Finding> {
    let mut findings = Vec::new();
    for rel in &ctx.spec.diagnostics.named_pipes {
        findings.push(check_one(ctx, rel).await);
    }
    findings
}

async fn check_one(ctx: &CheckContext, rel: &str) -> Finding {
    let root = ctx.paths.trusted_root.clone();
    let path = match confined::confine(&ctx.paths.shared_root, rel) {
        Ok(p) => p,
        Err(e) => {
            return ctx
                .finding(
                    CHECK,
                    FindingKind::CheckFailed,
                    Severity::Warning,
                    format!("named pipe {rel:?} not checked: {e}"),
                )
                .with("path", rel)
                .with("error", e)
        }
    };
    let shown = path.display().to_string();
    match blocking::try_run(move || confined::stat(&root, &path)).await {
        Ok(Some(entry)) => what_is_there(ctx, &shown, &entry),
        Ok(None) => ctx
            .finding(
                CHECK,
                FindingKind::PipeMissing,
                Severity::Critical,
                format!("named pipe {shown} does not exist"),
            )
            .with("path", &shown),
        Err(e) => not_reached(ctx, &shown, e),
    }
}

/// What stands at a pipe's path: a FIFO, or something else (a symlink is not followed).
fn what_is_there(ctx: &CheckContext, shown: &str, entry: &Entry) -> Finding {
    if entry.kind == EntryKind::Fifo {
        return ctx
            .finding(
                CHECK,
                FindingKind::PipePresent,
                Severity::Info,
                format!("named pipe {shown} is a FIFO ({})", entry.mode_string()),
            )
            .with("path", shown)
            .with("mode", entry.octal_mode())
            .with("permissions", entry.mode_string())
            .with(
                "modifiedAt",
                entry.modified.map(|m| m.to_string()).unwrap_or_default(),
            );
    }
    ctx.finding(
        CHECK,
        FindingKind::PipeNotFifo,
        Severity::Critical,
        format!(
            "named pipe {shown} is a {}, not a FIFO{}",
            entry.kind,
            if entry.kind == EntryKind::Symlink {
                "; it is not followed"
            } else {
                ""
            }
        ),
    )
    .with("path", shown)
    .with("what", entry.kind)
    .with("permissions", entry.mode_string())
    .with_opt("linkTarget", entry.link_target.as_ref())
}

/// The pipe's path could not be reached: a symlink or a non-directory on the way means no
/// FIFO can be there; anything else fails this pipe's check.
fn not_reached(ctx: &CheckContext, shown: &str, e: FsError) -> Finding {
    match e {
        FsError::Symlink { path: at, target } => {
            // A directory on the way is a symlink: what is behind it is not looked at.
            ctx.finding(
                CHECK,
                FindingKind::PipeNotFifo,
                Severity::Critical,
                format!(
                    "named pipe {shown} is behind a symlink ({}); it is not followed",
                    at.display()
                ),
            )
            .with("path", shown)
            .with("what", format!("symlink on the way at {}", at.display()))
            .with_opt("linkTarget", target)
        }
        FsError::WrongKind { path: at, kind, .. } => ctx
            .finding(
                CHECK,
                FindingKind::PipeNotFifo,
                Severity::Critical,
                format!(
                    "named pipe {shown} cannot exist: {} is a {kind}, not a directory",
                    at.display()
                ),
            )
            .with("path", shown)
            .with("what", format!("{kind} on the way at {}", at.display())),
        e => ctx
            .finding(
                CHECK,
                FindingKind::CheckFailed,
                Severity::Warning,
                format!("named pipe {shown} could not be looked at: {e}"),
            )
            .with("path", shown)
            .with("error", e),
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, path::Path};

    use super::*;
    use crate::{diagnose::testing, runtime::fake::FakeRuntime};

    fn mkfifo(path: &Path, mode: libc::mode_t) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), mode) }, 0);
        // mkfifo honours the umask; set the mode exactly.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }

    #[tokio::test]
    async fn pipes_are_checked_without_following() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("pipes")).unwrap();
        mkfifo(&root.join("pipes/in"), 0o660);
        std::fs::write(root.join("pipes/file"), b"").unwrap();
        std::fs::create_dir(root.join("pipes/dir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("pipes/link")).unwrap();
        // A symlinked directory holding a real FIFO elsewhere.
        let elsewhere = tempfile::tempdir().unwrap();
        mkfifo(&elsewhere.path().join("out"), 0o600);
        std::os::unix::fs::symlink(elsewhere.path(), root.join("linked")).unwrap();

        let mut w = testing::worker();
        w.spec.shared_root = root.display().to_string();
        w.spec.diagnostics.named_pipes = [
            "pipes/in",
            "pipes/missing",
            "pipes/file",
            "pipes/dir",
            "pipes/link",
            "linked/out",
            "pipes/file/x",
            "/etc/passwd",
            "../x",
        ]
        .map(String::from)
        .to_vec();
        let ctx = testing::context(
            &w,
            Ok(Some(testing::running())),
            FakeRuntime::default(),
            Ok(String::new()),
        );
        let f = check_named_pipes(&ctx).await;
        assert_eq!(f.len(), 9);
        assert!(f.iter().all(|f| f.check == CheckName::Dependencies));

        assert_eq!(f[0].kind, FindingKind::PipePresent);
        assert_eq!(f[0].severity, Severity::Info);
        assert_eq!(f[0].evidence["mode"], "0660");
        assert_eq!(f[0].evidence["permissions"], "prw-rw----");
        assert!(f[0].evidence["path"].ends_with("pipes/in"));

        assert_eq!(f[1].kind, FindingKind::PipeMissing);
        assert_eq!(f[1].severity, Severity::Critical);

        assert_eq!(f[2].kind, FindingKind::PipeNotFifo);
        assert_eq!(f[2].evidence["what"], "regular file");
        assert_eq!(f[3].evidence["what"], "directory");
        assert_eq!(f[4].kind, FindingKind::PipeNotFifo);
        assert_eq!(f[4].evidence["what"], "symlink");
        assert_eq!(f[4].evidence["linkTarget"], "/etc/passwd");
        assert_eq!(f[5].kind, FindingKind::PipeNotFifo);
        assert!(
            f[5].evidence["what"].starts_with("symlink on the way"),
            "{:?}",
            f[5]
        );
        assert_eq!(f[6].kind, FindingKind::PipeNotFifo);
        assert!(f[6].evidence["what"].starts_with("regular file on the way"));

        assert_eq!(f[7].kind, FindingKind::CheckFailed);
        assert_eq!(f[8].kind, FindingKind::CheckFailed);
        assert!(f[8].evidence["error"].contains("relative"));
    }

    #[tokio::test]
    async fn no_pipes_declared_no_findings() {
        let ctx = testing::context(
            &testing::worker(),
            Ok(None),
            FakeRuntime::default(),
            Ok(String::new()),
        );
        assert!(check_named_pipes(&ctx).await.is_empty());
    }
}
