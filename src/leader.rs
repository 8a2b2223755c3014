//! Leader election for the single-host Deployment mode (`--leader-elect`): of several operator
//! processes, only the one holding the Lease runs the controllers; the others wait.
//!
//! The Lease is kept by `kube-lease-manager`. A process that loses it stops acting at once by
//! exiting with an error: its pod restarts and comes back as a standby. Stopping controllers
//! mid-step and starting them again later inside one process would have to forget every
//! cache and in-memory record; a new process starts clean.

use std::time::Duration;

use anyhow::Context as _;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

/// Default name of the Lease.
pub const DEFAULT_LEASE: &str = "worker-recovery-operator";

/// Where and how to elect the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    /// Name of the Lease.
    pub lease: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// Who this process is, as the Lease's holder.
    pub identity: String,
    /// How long the Lease holds without a renewal (seconds).
    pub lease_seconds: u64,
    /// How often the leader renews it (seconds, less than `lease_seconds`).
    pub renew_seconds: u64,
}

impl Election {
    /// Check the timings: a renewal must come before the Lease runs out.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.renew_seconds >= 1 && self.renew_seconds < self.lease_seconds,
            "the renew interval ({} s) must be at least 1 s and shorter than the lease ({} s)",
            self.renew_seconds,
            self.lease_seconds
        );
        Ok(())
    }

    /// Seconds before the Lease runs out at which the leader renews it (the lease manager's
    /// "grace").
    fn grace(&self) -> u64 {
        self.lease_seconds - self.renew_seconds
    }
}

/// This process's identity as a Lease holder: the pod's name, else the host name, with the
/// process id (two processes of one host are two candidates).
pub fn identity(pod_name: Option<String>, hostname: Option<String>) -> String {
    let host = pod_name
        .or(hostname)
        .unwrap_or_else(|| "worker-recovery-operator".into());
    format!("{host}-{}", std::process::id())
}

/// The Lease held by this process.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Wait until this process holds the Lease of `election`.
pub async fn acquire(client: kube::Client, election: &Election) -> anyhow::Result<Leadership> {
    election.validate()?;
    let manager = LeaseManagerBuilder::new(client, &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(election.lease_seconds)
        .with_grace(election.grace())
        .build()
        .await
        .with_context(|| format!("cannot use Lease {}/{}", election.namespace, election.lease))?;
    let (mut state, task) = manager.watch().await;
    info!(
        lease = %election.lease,
        namespace = %election.namespace,
        identity = %election.identity,
        "standing by until this process holds the leader lease"
    );
    while !*state.borrow_and_update() {
        state
            .changed()
            .await
            .context("the lease manager stopped before this process became the leader")?;
    }
    info!(identity = %election.identity, "became the leader");
    Ok(Leadership { state, task })
}

impl Leadership {
    /// Resolves when this process no longer holds the Lease, with why.
    pub async fn lost(&mut self) -> &'static str {
        loop {
            if self.state.changed().await.is_err() {
                return "the lease manager stopped";
            }
            if !*self.state.borrow_and_update() {
                return "another process holds the leader lease";
            }
        }
    }

    /// Give the Lease up (at a clean shutdown), so that a standby takes over at once.
    pub async fn release(self) {
        drop(self.state);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => info!("released the leader lease"),
            Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader lease"),
            Ok(Err(e)) => warn!(error = %e, "the lease manager task failed"),
            Err(_) => warn!("releasing the leader lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(lease_seconds: u64, renew_seconds: u64) -> Election {
        Election {
            lease: DEFAULT_LEASE.into(),
            namespace: "default".into(),
            identity: "me".into(),
            lease_seconds,
            renew_seconds,
        }
    }

    #[test]
    fn renewals_come_before_the_lease_runs_out() {
        assert!(election(15, 5).validate().is_ok());
        assert_eq!(election(15, 5).grace(), 10);
        assert!(election(15, 15).validate().is_err());
        assert!(election(15, 0).validate().is_err());
    }

    #[test]
    fn identity_prefers_the_pod_name_and_adds_the_pid() {
        let pid = std::process::id();
        assert_eq!(
            identity(Some("op-0".into()), Some("host".into())),
            format!("op-0-{pid}")
        );
        assert_eq!(identity(None, Some("host".into())), format!("host-{pid}"));
        assert_eq!(
            identity(None, None),
            format!("worker-recovery-operator-{pid}")
        );
    }
}
