//! The trust boundary: what a Worker may make the operator touch.
//!
//! The operator runs as root next to the Docker socket, and whoever may create a Worker writes
//! its spec. Two rules keep a spec from reaching past what the administrator allowed:
//!
//! * **Allowed roots.** The operator's own configuration (`--allowed-root`, `WRO_ALLOWED_ROOTS`,
//!   the Helm value `allowedRoots`) lists the directories that may hold shared roots. A Worker
//!   whose `sharedRoot`, resolved through symlinks, is not inside one of them is refused before
//!   any of its files is read. Every later read walks from the allowed root down with
//!   `O_NOFOLLOW` (see [`crate::observe::fs_safe`]), so a symlink swapped in after this check
//!   is refused too.
//! * **Container consent.** A container is only inspected in detail, exec'd into, read or
//!   started when it carries the label [`CONSENT_LABEL`] whose value names exactly this Worker,
//!   `<namespace>/<name>`: one container, one Worker. Others are reported as existing, nothing
//!   more.
//!
//! [`admit`] applies both and is the only way the controllers and the `diagnose` command get
//! from a spec to paths and a container.

use std::path::{Path, PathBuf};

use kube::ResourceExt;

use crate::{
    crd::worker::{ResolvedPaths, SpecError, Worker},
    docker::{ContainerInfo, ContainerObservation, ContainerRuntime},
};

/// Label a container must carry for the operator to manage it; its value is
/// `<namespace>/<Worker name>`.
pub const CONSENT_LABEL: &str = "workerrecovery.io/worker";

/// The value of [`CONSENT_LABEL`] that hands a container to one Worker.
pub fn consent_value(namespace: &str, worker: &str) -> String {
    format!("{namespace}/{worker}")
}

/// Why a Worker is refused. The message never says more about what lies outside the allowed
/// roots than that it is outside.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// `sharedRoot` is outside every allowed root (or none is configured).
    SharedRootNotAllowed,
    /// `sharedRoot` is inside an allowed root but does not exist (yet).
    SharedRootMissing,
    /// The container exists but does not carry the consent label for this Worker.
    ContainerNotManaged,
}

impl RefusalReason {
    /// The condition reason and Event reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SharedRootNotAllowed => "SharedRootNotAllowed",
            Self::SharedRootMissing => "SharedRootMissing",
            Self::ContainerNotManaged => "ContainerNotManaged",
        }
    }
}

/// The directories that may hold shared roots, resolved through symlinks once at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedRoots {
    roots: Vec<PathBuf>,
}

impl AllowedRoots {
    /// Resolve each configured root. A root must be an absolute path to an existing directory:
    /// a typo here would otherwise refuse every Worker in silence.
    pub fn new(configured: &[PathBuf]) -> Result<Self, String> {
        let mut roots = Vec::with_capacity(configured.len());
        for root in configured {
            if !root.is_absolute() {
                return Err(format!(
                    "allowed root {} must be an absolute path",
                    root.display()
                ));
            }
            let resolved = std::fs::canonicalize(root)
                .map_err(|e| format!("allowed root {}: {e}", root.display()))?;
            if !resolved.is_dir() {
                return Err(format!(
                    "allowed root {} is not a directory",
                    root.display()
                ));
            }
            if !roots.contains(&resolved) {
                roots.push(resolved);
            }
        }
        Ok(Self { roots })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// "/shared, /srv/workers" for messages.
    fn describe(&self) -> String {
        if self.roots.is_empty() {
            return "none are configured (--allowed-root)".into();
        }
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Resolve `shared_root` through symlinks and find the allowed root that holds it:
    /// `(allowed root, resolved shared root)`. Blocking (it resolves symlinks on disk).
    pub fn admit(&self, shared_root: &Path) -> Result<(PathBuf, PathBuf), Refusal> {
        let not_allowed = || {
            Refusal {
            reason: RefusalReason::SharedRootNotAllowed,
            message: format!(
                "sharedRoot {} is not inside an allowed root of the operator (allowed: {}); nothing was read",
                shared_root.display(),
                self.describe()
            ),
        }
        };
        if !shared_root.is_absolute() {
            return Err(not_allowed());
        }
        let holder = |p: &Path| self.roots.iter().find(|r| p.starts_with(r)).cloned();
        match std::fs::canonicalize(shared_root) {
            Ok(resolved) => match holder(&resolved) {
                Some(root) => Ok((root, resolved)),
                None => Err(not_allowed()),
            },
            // Only say "missing" for a path that would be allowed: outside the allowed roots the
            // answer is the same whether the path exists or not, so it cannot be used to probe.
            Err(e) if holder(shared_root).is_some() => Err(Refusal {
                reason: RefusalReason::SharedRootMissing,
                message: format!(
                    "sharedRoot {} cannot be resolved: {e}",
                    shared_root.display()
                ),
            }),
            Err(_) => Err(not_allowed()),
        }
    }
}

/// Whether `info` carries the consent label for the Worker `namespace/worker`.
pub fn check_consent(
    info: &ContainerInfo,
    spec_container: &str,
    namespace: &str,
    worker: &str,
) -> Result<(), Refusal> {
    let wanted = consent_value(namespace, worker);
    if info.labels.get(CONSENT_LABEL) == Some(&wanted) {
        return Ok(());
    }
    Err(Refusal {
        reason: RefusalReason::ContainerNotManaged,
        message: format!(
            "container {spec_container:?} exists but does not carry the label {CONSENT_LABEL}={wanted}; \
             the operator leaves it alone (label the container to let this Worker manage it)"
        ),
    })
}

/// A Worker the operator may act on: its paths below the resolved shared root, and its
/// container if it exists and consents.
#[derive(Clone, Debug, PartialEq)]
pub struct Admission {
    pub paths: ResolvedPaths,
    /// `Found` only for a consenting container.
    pub container: ContainerObservation,
}

/// Why a Worker is not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Apply the trust rules to `worker`: the shared root first (nothing is inspected for a refused
/// root), then the container's consent.
pub async fn admit(
    worker: &Worker,
    roots: &AllowedRoots,
    docker: &dyn ContainerRuntime,
) -> Result<Admission, AdmitError> {
    // Validate the spec's paths before touching the disk at all.
    worker.resolved_paths()?;
    let declared = PathBuf::from(&worker.spec.shared_root);
    let roots = roots.clone();
    let (allowed, resolved) = tokio::task::spawn_blocking(move || roots.admit(&declared))
        .await
        .map_err(|e| Refusal {
            reason: RefusalReason::SharedRootMissing,
            message: format!("cannot resolve sharedRoot: {e}"),
        })??;
    let paths = worker.resolved_paths_at(&resolved, &allowed)?;
    let container = ContainerObservation::of(docker, &worker.spec.container).await;
    if let ContainerObservation::Found(info) = &container {
        check_consent(
            info,
            &worker.spec.container,
            &worker.namespace().unwrap_or_default(),
            &worker.name_any(),
        )?;
    }
    Ok(Admission { paths, container })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_resolve_through_symlinks_and_refuse_what_leaves_them() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(allowed.join("team/shared")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
        std::os::unix::fs::symlink(allowed.join("team/shared"), allowed.join("alias")).unwrap();
        let roots = AllowedRoots::new(std::slice::from_ref(&allowed)).unwrap();
        let real = std::fs::canonicalize(&allowed).unwrap();

        let (root, resolved) = roots.admit(&allowed.join("team/shared")).unwrap();
        assert_eq!(root, real);
        assert_eq!(resolved, real.join("team/shared"));
        // A symlink inside the allowed root that stays inside is resolved to its target.
        assert_eq!(
            roots.admit(&allowed.join("alias")).unwrap().1,
            real.join("team/shared")
        );
        for refused in [
            outside.clone(),
            allowed.join("escape"),
            PathBuf::from("/"),
            PathBuf::from("/etc"),
            allowed.join("team/../../outside"),
        ] {
            let err = roots.admit(&refused).unwrap_err();
            assert_eq!(
                err.reason,
                RefusalReason::SharedRootNotAllowed,
                "{refused:?}"
            );
            assert!(
                !err.message.contains(outside.to_str().unwrap()) || refused.starts_with(&outside),
                "the resolved target is not disclosed: {}",
                err.message
            );
        }
        // A sibling whose name merely starts like the allowed root is outside it.
        std::fs::create_dir_all(dir.path().join("allowed-not")).unwrap();
        assert!(roots.admit(&dir.path().join("allowed-not")).is_err());
        // Missing inside: said so; missing outside: the same answer as any outside path.
        assert_eq!(
            roots.admit(&allowed.join("nope")).unwrap_err().reason,
            RefusalReason::SharedRootMissing
        );
        assert_eq!(
            roots.admit(Path::new("/nope/nothing")).unwrap_err().reason,
            RefusalReason::SharedRootNotAllowed
        );
    }

    #[test]
    fn no_configured_root_refuses_everything() {
        let roots = AllowedRoots::default();
        let err = roots.admit(Path::new("/tmp")).unwrap_err();
        assert_eq!(err.reason, RefusalReason::SharedRootNotAllowed);
        assert!(err.message.contains("none are configured"), "{err}");
    }

    #[test]
    fn configured_roots_must_exist() {
        assert!(AllowedRoots::new(&[PathBuf::from("relative")]).is_err());
        assert!(AllowedRoots::new(&[PathBuf::from("/does/not/exist/wro")]).is_err());
    }

    #[test]
    fn consent_binds_one_container_to_one_worker() {
        let mut info = ContainerInfo {
            name: "marie".into(),
            ..Default::default()
        };
        let err = check_consent(&info, "marie", "prod", "marie").unwrap_err();
        assert_eq!(err.reason, RefusalReason::ContainerNotManaged);
        assert!(err.message.contains("workerrecovery.io/worker=prod/marie"));
        info.labels
            .insert(CONSENT_LABEL.into(), consent_value("prod", "marie"));
        assert!(check_consent(&info, "marie", "prod", "marie").is_ok());
        // The same container cannot be claimed by a Worker of another name or namespace.
        assert!(check_consent(&info, "marie", "dev", "marie").is_err());
        assert!(check_consent(&info, "marie", "prod", "anga").is_err());
    }
}
