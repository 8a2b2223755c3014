//! The trust boundary: what a Worker may make the operator touch.
//!
//! The operator runs as root next to the Docker socket, and whoever may create a Worker writes
//! its spec. These rules keep a spec from reaching past what the administrator allowed:
//!
//! * **Allowed roots** ([`roots`]). The operator's own configuration (`--allowed-root`,
//!   `WRO_ALLOWED_ROOTS`, the Helm value `allowedRoots`) lists the directories that may hold
//!   shared roots, for every namespace or per namespace (`team-a=/shared/team-a`). A Worker
//!   whose `sharedRoot`, resolved through symlinks, is not inside a root of its namespace is
//!   refused before any of its files is read. Every later read walks from the allowed root down
//!   with `O_NOFOLLOW` (see [`crate::confined`]), so a symlink swapped in after this
//!   check is refused too.
//! * **Container consent.** A container is only inspected in detail, exec'd into, read or
//!   started when it carries the label [`CONSENT_LABEL`] whose value names exactly this Worker,
//!   `<namespace>/<name>`: one container, one Worker. Others are reported as existing, nothing
//!   more.
//! * **Files follow consent.** A Worker's files are read into status or changed only while its
//!   container exists and consents; a Worker whose container does not exist reaches no file,
//!   unless the administrator granted it file-only access (`--file-only-worker ns/name`).
//! * **Path claims** ([`claims`]). Two admitted Workers never share a task directory, state
//!   file, heartbeat file, tmp directory or lock prefix: the younger one is refused.
//!
//! [`admit`] applies all of them and is the only way the controllers and the `diagnose`
//! command get from a spec to paths and a container.

pub mod claims;
pub mod roots;

pub use roots::{AllowedRoots, RootError, RootGrant};

use std::path::PathBuf;

use kube::ResourceExt;

use crate::{
    crd::worker::{ResolvedPaths, SpecError, Worker},
    runtime::{
        systemd::unit::CONSENT_VARIABLE, ContainerInfo, ContainerObservation, RuntimeError,
        RuntimeKind, WorkerRuntime,
    },
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
    /// The container or unit exists but does not consent to this Worker (the label, the
    /// unit's environment variable).
    NotManaged,
    /// The container does not exist: nothing consents to this Worker's files being touched.
    ContainerNotFound,
    /// An older Worker claims one of this Worker's paths.
    PathsClaimed,
}

impl RefusalReason {
    /// The condition reason and Event reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SharedRootNotAllowed => "SharedRootNotAllowed",
            Self::SharedRootMissing => "SharedRootMissing",
            Self::NotManaged => "NotManaged",
            Self::ContainerNotFound => "ContainerNotFound",
            Self::PathsClaimed => "PathsClaimed",
        }
    }
}

/// Whether `info` (of the `runtime`) consents to the Worker `namespace/worker`: a container's
/// label, a unit's environment variable (reported as the label).
pub fn check_consent(
    info: &ContainerInfo,
    target: &str,
    runtime: RuntimeKind,
    namespace: &str,
    worker: &str,
) -> Result<(), Refusal> {
    let wanted = consent_value(namespace, worker);
    if info.labels.get(CONSENT_LABEL) == Some(&wanted) {
        return Ok(());
    }
    let message = match runtime {
        RuntimeKind::Docker => format!(
            "container {target:?} exists but does not carry the label {CONSENT_LABEL}={wanted}; \
             the operator leaves it alone (label the container to let this Worker manage it)"
        ),
        RuntimeKind::Systemd => format!(
            "unit {target:?} exists but its Environment= has no {CONSENT_VARIABLE}={wanted}; \
             the operator leaves it alone (add it to the unit to let this Worker manage it)"
        ),
    };
    Err(Refusal {
        reason: RefusalReason::NotManaged,
        message,
    })
}

/// A `--file-only-worker` entry that is not `NAMESPACE/NAME` or `NAMESPACE/*`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not NAMESPACE/NAME or NAMESPACE/*")]
pub struct BadFileOnlyGrant(pub String);

/// Workers the administrator lets reach their files without a container (`ns/name`, or
/// `ns/*` for a whole namespace): workers run outside Docker whose files the operator may
/// still clean up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileOnlyGrants(Vec<(String, Option<String>)>);

impl FileOnlyGrants {
    /// Parse `ns/name` and `ns/*` entries.
    pub fn parse(entries: &[String]) -> Result<Self, BadFileOnlyGrant> {
        let mut grants = Vec::new();
        for entry in entries {
            let (ns, name) = entry
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
                .ok_or_else(|| BadFileOnlyGrant(entry.clone()))?;
            grants.push((ns.to_string(), (name != "*").then(|| name.to_string())));
        }
        Ok(Self(grants))
    }

    pub fn allows(&self, namespace: &str, name: &str) -> bool {
        self.0
            .iter()
            .any(|(ns, n)| ns == namespace && n.as_deref().is_none_or(|n| n == name))
    }
}

/// The administrator's trust configuration.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub roots: AllowedRoots,
    pub file_only: FileOnlyGrants,
}

impl From<AllowedRoots> for Trust {
    fn from(roots: AllowedRoots) -> Self {
        Self {
            roots,
            file_only: FileOnlyGrants::default(),
        }
    }
}

/// A Worker the operator may act on: its paths below the resolved shared root, and its
/// container, which consents. Holding one is what allows reading and changing the Worker's
/// files.
#[derive(Clone, Debug, PartialEq)]
pub struct Admission {
    pub paths: ResolvedPaths,
    /// `Found` for a consenting container; `NotFound` only for a file-only Worker.
    pub container: ContainerObservation,
}

/// Why a Worker is not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The engine could not say whether the container exists and consents: nothing may be
    /// read or written until it can (transient). The engine's error is the source: printed
    /// with it (`{:#}` of anyhow), "the container's state is unknown: Docker engine ...".
    #[error("the container's state is unknown")]
    ContainerStateUnknown(#[source] RuntimeError),
}

impl AdmitError {
    /// The condition reason and the message for a run or plan against the Worker `worker`.
    pub fn reason_and_message(&self, worker: &str) -> (&'static str, String) {
        match self {
            Self::InvalidSpec(e) => (
                "InvalidWorkerSpec",
                format!("Worker {worker} has an invalid spec: {e}"),
            ),
            Self::Refused(r) => (
                r.reason.as_str(),
                format!("Worker {worker} is refused: {r}"),
            ),
            Self::ContainerStateUnknown(e) => ("ContainerStateUnknown", e.to_string()),
        }
    }
}

/// Apply the trust rules to `worker`: the shared root first (nothing is inspected for a refused
/// root), then path claims (when `claims` is given), then the container's consent.
pub async fn admit(
    worker: &Worker,
    trust: &Trust,
    docker: &dyn WorkerRuntime,
    claims: Option<&claims::Registry>,
) -> Result<Admission, AdmitError> {
    // Validate the spec's paths before touching the disk at all.
    worker.resolved_paths()?;
    let ns = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let declared = PathBuf::from(&worker.spec.shared_root);
    let roots = trust.roots.clone();
    let namespace = ns.clone();
    let (allowed, resolved) =
        tokio::task::spawn_blocking(move || roots.admit(&namespace, &declared))
            .await
            .map_err(|e| Refusal {
                reason: RefusalReason::SharedRootMissing,
                message: format!("cannot resolve sharedRoot: {e}"),
            })??;
    let paths = worker.resolved_paths_at(&resolved, &allowed)?;
    if let Some(registry) = claims {
        registry
            .check(&claims::Claim::of(worker, &paths), &trust.roots)
            .await?;
    }
    // The container is named by the spec only here, to find it; everything after this
    // addresses the consenting container by its ID.
    let container = ContainerObservation::of(docker, worker.target()).await;
    match &container {
        ContainerObservation::Found(info) => {
            check_consent(info, worker.target(), docker.capabilities().runtime, &ns, &name)?
        }
        ContainerObservation::NotFound if trust.file_only.allows(&ns, &name) => {}
        ContainerObservation::NotFound => {
            return Err(Refusal {
                reason: RefusalReason::ContainerNotFound,
                message: format!(
                    "container {:?} does not exist; a Worker's files are read and changed only while a container labelled {CONSENT_LABEL}={} consents (or with a file-only grant from the operator's administrator)",
                    worker.target(),
                    consent_value(&ns, &name)
                ),
            }
            .into())
        }
        ContainerObservation::Unavailable(e) => {
            return Err(AdmitError::ContainerStateUnknown(e.clone()))
        }
    }
    Ok(Admission { paths, container })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_container_state_carries_the_engine_error() {
        let e = AdmitError::ContainerStateUnknown(RuntimeError::unavailable(
            crate::runtime::RuntimeKind::Docker,
            "no socket",
        ));
        assert_eq!(
            format!("{:#}", anyhow::Error::new(e)),
            "the container's state is unknown: Docker engine unreachable: no socket"
        );
        let e = AdmitError::ContainerStateUnknown(RuntimeError::unavailable(
            crate::runtime::RuntimeKind::Docker,
            "no socket",
        ));
        assert_eq!(
            e.reason_and_message("marie"),
            (
                "ContainerStateUnknown",
                "Docker engine unreachable: no socket".to_string()
            )
        );
    }

    #[test]
    fn file_only_grants_name_a_worker_or_a_namespace() {
        let grants = FileOnlyGrants::parse(&["team-a/legacy".into(), "team-b/*".into()]).unwrap();
        assert!(grants.allows("team-a", "legacy"));
        assert!(!grants.allows("team-a", "other"));
        assert!(grants.allows("team-b", "anything"));
        assert!(!grants.allows("team-c", "legacy"));
        for bad in ["legacy", "/x", "a/", "a/b/c"] {
            assert!(FileOnlyGrants::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert_eq!(
            FileOnlyGrants::parse(&["ok/x".into(), "a/b/c".into()])
                .unwrap_err()
                .to_string(),
            "\"a/b/c\" is not NAMESPACE/NAME or NAMESPACE/*"
        );
    }

    #[test]
    fn consent_binds_one_container_to_one_worker() {
        let mut info = ContainerInfo {
            name: "marie".into(),
            ..Default::default()
        };
        let err = check_consent(&info, "marie", RuntimeKind::Docker, "prod", "marie").unwrap_err();
        assert_eq!(err.reason, RefusalReason::NotManaged);
        assert!(err.message.contains("workerrecovery.io/worker=prod/marie"));
        info.labels
            .insert(CONSENT_LABEL.into(), consent_value("prod", "marie"));
        assert!(check_consent(&info, "marie", RuntimeKind::Docker, "prod", "marie").is_ok());
        // The same container cannot be claimed by a Worker of another name or namespace.
        assert!(check_consent(&info, "marie", RuntimeKind::Docker, "dev", "marie").is_err());
        assert!(check_consent(&info, "marie", RuntimeKind::Docker, "prod", "anga").is_err());
    }
}
