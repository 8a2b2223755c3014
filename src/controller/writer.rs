//! One writer per Worker: at most one recovery run, resume plan or failover changes a Worker's
//! files or container at a time.
//!
//! The writer is recorded in a `coordination.k8s.io/v1` Lease next to the Worker
//! (`wro-writer.<worker>`), created and taken over with the API server's optimistic
//! concurrency (create, or replace at a resourceVersion), so the rule holds across operator
//! restarts and between replicas. The Lease names its holder (`WorkerRecovery/<name>`,
//! `ResumePlan/<name>`, `Worker/<name>` for a failover) and the holder's UID once known.
//!
//! A holder keeps the Lease while it is live: a run that has not finished (or a `Debug` run
//! whose debug copy still stands in for the worker), a plan that has not completed, halted or
//! failed, a failover still moving tasks. It releases it when it ends; a Lease whose holder
//! has ended, was deleted, or belongs to an earlier Worker of the same name is taken over.
//! A holder that does not exist yet (an automatic attempt takes the Lease for the run it is
//! about to create) counts as live for [`MISSING_HOLDER_GRACE`]. A plan created by the run
//! that holds the Lease acts under its run's hold.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    api::{Api, DeleteParams, PostParams, Preconditions},
    Resource, ResourceExt,
};
use tracing::info;

use crate::crd::{
    resume_plan::{ResumePhase, ResumePlan},
    worker::{FailoverState, Worker},
    worker_recovery::{RecoveryMode, RecoveryPhase, WorkerRecovery},
};

/// How long a Lease whose holder does not exist is still respected: time for the holder's
/// object to be created after the Lease was taken for it.
pub const MISSING_HOLDER_GRACE: Duration = Duration::from_secs(60);
/// Annotation with the holder's UID.
const HOLDER_UID: &str = "workerrecovery.io/holder-uid";
/// Annotation with the Worker's UID: a Lease of an earlier Worker of the same name is stale.
const WORKER_UID: &str = "workerrecovery.io/worker-uid";

/// Who changes a Worker's files or container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Run(String),
    Plan(String),
    /// The Worker controller moving pending tasks to a backup Worker.
    Failover(String),
}

impl Holder {
    /// The Lease's `holderIdentity`.
    pub fn identity(&self) -> String {
        match self {
            Self::Run(n) => format!("WorkerRecovery/{n}"),
            Self::Plan(n) => format!("ResumePlan/{n}"),
            Self::Failover(n) => format!("Worker/{n}"),
        }
    }

    fn parse(identity: &str) -> Option<Self> {
        let (kind, name) = identity.split_once('/')?;
        match kind {
            "WorkerRecovery" => Some(Self::Run(name.into())),
            "ResumePlan" => Some(Self::Plan(name.into())),
            "Worker" => Some(Self::Failover(name.into())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Run(n) => write!(f, "WorkerRecovery {n}"),
            Self::Plan(n) => write!(f, "ResumePlan {n}"),
            Self::Failover(n) => write!(f, "the failover of Worker {n}"),
        }
    }
}

/// What asking for the Lease gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The caller is the Worker's writer.
    Yes,
    /// Someone else is: wait for it.
    HeldBy(Holder),
}

/// The Lease's name for `worker`: `wro-writer.<worker>`, shortened with a hash when that
/// would pass the 253 characters a name may have.
pub fn lease_name(worker: &str) -> String {
    let name = format!("wro-writer.{worker}");
    if name.len() <= 253 {
        return name;
    }
    // FNV-1a: stable across builds and replicas, which is all a name needs.
    let hash = worker.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("wro-writer.{}-{hash:016x}", &worker[..200])
}

/// Become `worker`'s writer as `holder` (with its UID when it has one), unless a live holder
/// has the Lease. Idempotent: the holder asking again gets `Yes`.
pub async fn acquire(
    client: &kube::Client,
    worker: &Worker,
    holder: &Holder,
    holder_uid: Option<&str>,
) -> Result<Acquired, kube::Error> {
    let ns = worker.namespace().unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let name = lease_name(&worker.name_any());
    // A conflict means another writer got there first: look again, a few times.
    for _ in 0..5 {
        let Some(lease) = api.get_opt(&name).await? else {
            let lease = new_lease(&name, worker, holder, holder_uid);
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => return Ok(Acquired::Yes),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        };
        let current = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .and_then(Holder::parse);
        let stale = match &current {
            Some(h) if h == holder && uid_matches(&lease, holder_uid) => {
                if holder_uid.is_some() && annotation(&lease, HOLDER_UID).is_none() {
                    // Taken for this run before it existed: record its UID now.
                    replace(&api, &lease, worker, holder, holder_uid).await?;
                }
                return Ok(Acquired::Yes);
            }
            Some(h) if annotation(&lease, WORKER_UID) == worker.uid().as_deref() => {
                !is_live(client, &ns, &lease, h).await?
            }
            _ => true,
        };
        if !stale {
            return Ok(Acquired::HeldBy(current.expect("a live holder was parsed")));
        }
        match replace(&api, &lease, worker, holder, holder_uid).await {
            Ok(()) => {
                info!(worker = %worker.name_any(), holder = %holder, previous = ?current, "took over the writer lease from a holder that ended");
                return Ok(Acquired::Yes);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    // Five conflicts in a row: someone else keeps winning, so someone else is the writer.
    Ok(match current_holder(client, worker).await? {
        Some(h) if &h != holder => Acquired::HeldBy(h),
        _ => Acquired::HeldBy(holder.clone()),
    })
}

/// Give the Lease back when `holder` has it.
pub async fn release(
    client: &kube::Client,
    worker_namespace: &str,
    worker_name: &str,
    holder: &Holder,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), worker_namespace);
    let name = lease_name(worker_name);
    let Some(lease) = api.get_opt(&name).await? else {
        return Ok(());
    };
    let held = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    if held != Some(holder.identity().as_str()) {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: lease.resource_version(),
            uid: lease.uid(),
        }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        // Gone, or changed hands meanwhile: not ours to delete any more.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The live holder of `worker`'s Lease, if any.
pub async fn current_holder(
    client: &kube::Client,
    worker: &Worker,
) -> Result<Option<Holder>, kube::Error> {
    let ns = worker.namespace().unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let Some(lease) = api.get_opt(&lease_name(&worker.name_any())).await? else {
        return Ok(None);
    };
    if annotation(&lease, WORKER_UID) != worker.uid().as_deref() {
        return Ok(None);
    }
    let Some(holder) = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .and_then(Holder::parse)
    else {
        return Ok(None);
    };
    Ok(is_live(client, &ns, &lease, &holder)
        .await?
        .then_some(holder))
}

/// Whether a plan acts under its run's hold: the Lease's holder is the run that owns it.
pub async fn held_by_owner_run(
    client: &kube::Client,
    worker: &Worker,
    plan: &ResumePlan,
) -> Result<bool, kube::Error> {
    let Some(owner) = plan
        .owner_references()
        .iter()
        .find(|o| o.kind == WorkerRecovery::kind(&()) && o.controller == Some(true))
    else {
        return Ok(false);
    };
    let api: Api<Lease> = Api::namespaced(client.clone(), &worker.namespace().unwrap_or_default());
    let Some(lease) = api.get_opt(&lease_name(&worker.name_any())).await? else {
        return Ok(false);
    };
    let run = Holder::Run(owner.name.clone());
    let held = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    Ok(held == Some(run.identity().as_str())
        && annotation(&lease, HOLDER_UID).is_none_or(|uid| uid == owner.uid))
}

fn annotation<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
    lease.annotations().get(key).map(String::as_str)
}

fn uid_matches(lease: &Lease, holder_uid: Option<&str>) -> bool {
    match (annotation(lease, HOLDER_UID), holder_uid) {
        (Some(held), Some(mine)) => held == mine,
        _ => true,
    }
}

fn new_lease(name: &str, worker: &Worker, holder: &Holder, holder_uid: Option<&str>) -> Lease {
    let now = MicroTime(Timestamp::now());
    let mut lease = Lease {
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.identity()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_duration_seconds: Some(MISSING_HOLDER_GRACE.as_secs() as i32),
            ..Default::default()
        }),
        ..Default::default()
    };
    lease.metadata.name = Some(name.to_string());
    lease.metadata.namespace = worker.namespace();
    // Deleted with the Worker.
    lease.metadata.owner_references = worker.controller_owner_ref(&()).map(|o| vec![o]);
    let mut annotations = std::collections::BTreeMap::new();
    if let Some(uid) = worker.uid() {
        annotations.insert(WORKER_UID.to_string(), uid);
    }
    if let Some(uid) = holder_uid {
        annotations.insert(HOLDER_UID.to_string(), uid.to_string());
    }
    lease.metadata.annotations = Some(annotations);
    lease
}

/// Replace `lease` with one held by `holder`, at its resourceVersion (a conflict when someone
/// else changed it since it was read).
async fn replace(
    api: &Api<Lease>,
    lease: &Lease,
    worker: &Worker,
    holder: &Holder,
    holder_uid: Option<&str>,
) -> Result<(), kube::Error> {
    let name = lease.name_any();
    let mut next = new_lease(&name, worker, holder, holder_uid);
    next.metadata.resource_version = lease.resource_version();
    let transitions = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0);
    if let Some(spec) = next.spec.as_mut() {
        spec.lease_transitions = Some(transitions + 1);
    }
    api.replace(&name, &PostParams::default(), &next).await?;
    Ok(())
}

/// Whether `holder` still acts on the Worker.
async fn is_live(
    client: &kube::Client,
    ns: &str,
    lease: &Lease,
    holder: &Holder,
) -> Result<bool, kube::Error> {
    let uid = annotation(lease, HOLDER_UID);
    let same = |o: Option<String>| uid.is_none_or(|u| o.as_deref() == Some(u));
    let live = match holder {
        Holder::Run(name) => {
            let api: Api<WorkerRecovery> = Api::namespaced(client.clone(), ns);
            api.get_opt(name)
                .await?
                .map(|r| same(r.uid()) && run_holds(&r))
        }
        Holder::Plan(name) => {
            let api: Api<ResumePlan> = Api::namespaced(client.clone(), ns);
            api.get_opt(name)
                .await?
                .map(|p| same(p.uid()) && plan_holds(&p))
        }
        Holder::Failover(name) => {
            let api: Api<Worker> = Api::namespaced(client.clone(), ns);
            api.get_opt(name).await?.map(|w| {
                w.status
                    .and_then(|s| s.escalation?.failover)
                    .is_some_and(|f| f.state == FailoverState::Moving)
            })
        }
    };
    Ok(live.unwrap_or_else(|| within_grace(lease)))
}

/// A run keeps the Worker while it has not finished, and a `Debug` run while its debug copy
/// stands in for the worker (until the run is deleted).
pub fn run_holds(run: &WorkerRecovery) -> bool {
    let phase = run.status.as_ref().and_then(|s| s.phase);
    let debug_copy_up =
        run.spec.mode == RecoveryMode::Debug && phase == Some(RecoveryPhase::Succeeded);
    run.metadata.deletion_timestamp.is_none()
        && (!phase.is_some_and(RecoveryPhase::is_terminal) || debug_copy_up)
}

/// A plan keeps the Worker until it completed, halted or failed.
pub fn plan_holds(plan: &ResumePlan) -> bool {
    let phase = plan.status.as_ref().and_then(|s| s.phase);
    plan.metadata.deletion_timestamp.is_none()
        && !matches!(
            phase,
            Some(ResumePhase::Completed | ResumePhase::Halted | ResumePhase::Failed)
        )
}

fn within_grace(lease: &Lease) -> bool {
    let Some(renewed) = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()) else {
        return false;
    };
    Timestamp::now().duration_since(renewed.0).unsigned_abs() < MISSING_HOLDER_GRACE
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use http::Method;
    use serde_json::{json, Value};

    use super::*;
    use crate::testing::mock_api;

    const RUNS: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workerrecoveries";

    /// An API server with Leases ([`mock_api::Leases`]) that serves the runs in `runs`.
    #[derive(Clone, Default)]
    struct Server {
        runs: Arc<Mutex<HashMap<String, Value>>>,
        leases: Option<mock_api::Leases>,
    }

    impl Server {
        fn client(&mut self) -> kube::Client {
            let runs = self.runs.clone();
            let (client, _, leases) = mock_api::client_and_leases(move |method, path, _| {
                let name = path.rsplit('/').next().unwrap_or_default();
                match (method, runs.lock().unwrap().get(name)) {
                    (&Method::GET, Some(r)) if path.starts_with(RUNS) => (200, r.clone()),
                    _ => mock_api::not_found(path),
                }
            });
            self.leases = Some(leases);
            client
        }

        fn leases(&self) -> &mock_api::Leases {
            self.leases.as_ref().expect("client() was called")
        }

        fn run(&self, name: &str, mode: &str, phase: Option<&str>) {
            let mut r = json!({
                "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
                "spec": {"workerRef": {"name": "marie"}, "mode": mode},
            });
            if let Some(p) = phase {
                r["status"] = json!({"phase": p});
            }
            self.runs.lock().unwrap().insert(name.into(), r);
        }

        fn holder(&self) -> Option<String> {
            self.leases().holder("wro-writer.marie")
        }
    }

    fn worker() -> Worker {
        serde_json::from_value(json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "Worker",
            "metadata": {"name": "marie", "namespace": "default", "uid": "worker-uid"},
            "spec": {"container": "marie"},
        }))
        .unwrap()
    }

    fn run(name: &str) -> Holder {
        Holder::Run(name.into())
    }

    #[tokio::test]
    async fn one_live_run_at_a_time_and_the_next_takes_over_when_it_ends() {
        let mut server = Server::default();
        let client = server.client();
        let w = worker();
        server.run("a", "Clean", Some("Running"));
        server.run("b", "Quick", None);
        assert_eq!(
            acquire(&client, &w, &run("a"), Some("uid-a"))
                .await
                .unwrap(),
            Acquired::Yes
        );
        assert_eq!(
            acquire(&client, &w, &run("a"), Some("uid-a"))
                .await
                .unwrap(),
            Acquired::Yes,
            "idempotent"
        );
        assert_eq!(
            acquire(&client, &w, &run("b"), Some("uid-b"))
                .await
                .unwrap(),
            Acquired::HeldBy(run("a"))
        );
        assert_eq!(current_holder(&client, &w).await.unwrap(), Some(run("a")));
        // Someone else's release changes nothing.
        release(&client, "default", "marie", &run("b"))
            .await
            .unwrap();
        assert_eq!(server.holder().as_deref(), Some("WorkerRecovery/a"));

        // a ends without releasing (a crash after its last status write): b takes over.
        server.run("a", "Clean", Some("Succeeded"));
        assert_eq!(current_holder(&client, &w).await.unwrap(), None);
        assert_eq!(
            acquire(&client, &w, &run("b"), Some("uid-b"))
                .await
                .unwrap(),
            Acquired::Yes
        );
        assert_eq!(server.holder().as_deref(), Some("WorkerRecovery/b"));
        release(&client, "default", "marie", &run("b"))
            .await
            .unwrap();
        assert_eq!(server.holder(), None);
    }

    #[tokio::test]
    async fn a_debug_copy_keeps_the_worker_until_its_run_is_deleted() {
        let mut server = Server::default();
        let client = server.client();
        let w = worker();
        server.run("dbg", "Debug", Some("Succeeded"));
        assert_eq!(
            acquire(&client, &w, &run("dbg"), Some("uid-dbg"))
                .await
                .unwrap(),
            Acquired::Yes
        );
        assert_eq!(
            acquire(&client, &w, &run("next"), None).await.unwrap(),
            Acquired::HeldBy(run("dbg"))
        );
        server.runs.lock().unwrap().remove("dbg");
        // Deleted: its Lease is taken over once the grace for a holder not created yet is over.
        if let Some(l) = server
            .leases()
            .objects
            .lock()
            .unwrap()
            .get_mut("wro-writer.marie")
        {
            l["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
        }
        assert_eq!(
            acquire(&client, &w, &run("next"), None).await.unwrap(),
            Acquired::Yes
        );
    }

    #[tokio::test]
    async fn a_holder_not_created_yet_is_respected_for_a_while() {
        let mut server = Server::default();
        let client = server.client();
        let w = worker();
        // An automatic attempt takes the Lease for the run it is about to create.
        assert_eq!(
            acquire(&client, &w, &run("marie-auto-1"), None)
                .await
                .unwrap(),
            Acquired::Yes
        );
        assert_eq!(
            acquire(&client, &w, &run("manual"), None).await.unwrap(),
            Acquired::HeldBy(run("marie-auto-1"))
        );
        // The run, once created, finds the Lease its own and records its UID.
        server.run("marie-auto-1", "Quick", None);
        assert_eq!(
            acquire(&client, &w, &run("marie-auto-1"), Some("uid-marie-auto-1"))
                .await
                .unwrap(),
            Acquired::Yes
        );
        let leases = server.leases().objects.lock().unwrap();
        assert_eq!(
            leases["wro-writer.marie"]["metadata"]["annotations"][HOLDER_UID],
            "uid-marie-auto-1"
        );
    }

    #[tokio::test]
    async fn a_lost_create_race_reads_the_winner_and_waits() {
        let mut server = Server::default();
        let client = server.client();
        let w = worker();
        server.run("winner", "Clean", Some("Running"));
        let winner = serde_json::to_value(new_lease(
            "wro-writer.marie",
            &w,
            &run("winner"),
            Some("uid-winner"),
        ))
        .unwrap();
        let mut winner = winner;
        winner["metadata"]["resourceVersion"] = json!("1");
        *server.leases().race.lock().unwrap() = Some(winner);
        assert_eq!(
            acquire(&client, &w, &run("loser"), None).await.unwrap(),
            Acquired::HeldBy(run("winner"))
        );
    }

    #[tokio::test]
    async fn a_lease_of_an_earlier_worker_of_the_same_name_is_stale() {
        let mut server = Server::default();
        let client = server.client();
        let mut old = worker();
        old.metadata.uid = Some("old-worker".into());
        server.run("old-run", "Clean", Some("Running"));
        acquire(&client, &old, &run("old-run"), Some("uid-old-run"))
            .await
            .unwrap();
        let new = worker();
        assert_eq!(current_holder(&client, &new).await.unwrap(), None);
        assert_eq!(
            acquire(&client, &new, &run("fresh"), None).await.unwrap(),
            Acquired::Yes
        );
    }

    #[test]
    fn names_fit_and_identities_round_trip() {
        assert_eq!(lease_name("marie"), "wro-writer.marie");
        let long = "a".repeat(253);
        let name = lease_name(&long);
        assert!(name.len() <= 253, "{}", name.len());
        assert_ne!(name, lease_name(&"a".repeat(252)));
        for h in [
            Holder::Run("r".into()),
            Holder::Plan("p".into()),
            Holder::Failover("w".into()),
        ] {
            assert_eq!(Holder::parse(&h.identity()), Some(h));
        }
        assert_eq!(Holder::parse("Pod/x"), None);
    }
}
