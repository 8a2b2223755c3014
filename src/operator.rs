//! `run`: start the controllers and the HTTP endpoints.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc},
};

use anyhow::{bail, Context as _};
use k8s_openapi::NamespaceResourceScope;
use kube::{
    api::{Api, ListParams},
    runtime::reflector,
    Client, CustomResourceExt, Resource,
};
use serde::de::DeserializeOwned;
use tracing::info;

use crate::{
    controller::{self, scope::Scope, Context},
    crd::{ResumePlan, Worker, WorkerRecovery},
    diagnose::host::DmesgProbe,
    http::HttpClient,
    leader::{self, Election},
    metrics::Metrics,
    runtime::DockerEngine,
    server,
    trust::Trust,
};

/// Options of the `run` command.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub listen: SocketAddr,
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Where Workers' shared roots may be, and file-only grants.
    pub trust: Trust,
    /// The client of webhooks and metrics endpoints, with the URL policy.
    pub http: HttpClient,
    /// How often an unchanged Worker status is written anyway.
    pub status_refresh: std::time::Duration,
    /// The Workers acted on: all, or one node's (`--node-name`).
    pub scope: Scope,
    /// Run the controllers only while holding this leader Lease (`--leader-elect`).
    pub leader: Option<Election>,
    /// The analyzer of the cores `Debug` runs collect (`--core-analyzer-image`).
    pub core_analyzer: Option<crate::crash::Analyzer>,
    /// The node's systemd (`--systemd-bus`: `system` or a D-Bus address).
    pub systemd_bus: Option<String>,
    /// Its journal (`--systemd-journal-dir`).
    pub systemd_journal_dirs: Vec<std::path::PathBuf>,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (set KUBECONFIG or run in a cluster)")?;
    let ns = opts.namespace.as_deref();
    ensure_crd_installed::<Worker>(&client, ns).await?;
    ensure_crd_installed::<WorkerRecovery>(&client, ns).await?;
    ensure_crd_installed::<ResumePlan>(&client, ns).await?;

    let docker = DockerEngine::connect().await.context(
        "cannot reach the Docker engine (set DOCKER_HOST or start dockerd); the operator needs it to observe workers",
    )?;
    info!(docker = %docker.version().await?, "connected to the Docker engine");

    let systemd = match opts.systemd_bus.as_deref() {
        None => None,
        Some(bus) => {
            let address = (bus != "system").then_some(bus);
            let systemd = crate::runtime::systemd::Systemd::connect(address)
                .await
                .with_context(|| format!("cannot reach systemd over D-Bus ({bus})"))?;
            info!(bus, "connected to systemd");
            let runtime: Arc<dyn crate::runtime::WorkerRuntime> =
                Arc::new(crate::runtime::systemd::runtime::SystemdRuntime::new(
                    systemd,
                    opts.systemd_journal_dirs.clone(),
                    Arc::new(DmesgProbe),
                ));
            Some(runtime)
        }
    };
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let http = tokio::spawn(server::serve(opts.listen, metrics.clone(), ready.clone()));

    // A standby serves /healthz and /readyz too: it is ready to take over.
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut leadership = match &opts.leader {
        Some(election) => Some(leader::acquire(client.clone(), election).await?),
        None => None,
    };
    let ctx = Context::new(
        client.clone(),
        Arc::new(docker),
        Arc::new(DmesgProbe),
        metrics,
        opts.trust.clone(),
        opts.http.clone(),
    )
    .with_status_refresh(opts.status_refresh)
    .with_scope(opts.scope.clone())
    .with_core_analyzer(opts.core_analyzer.clone())
    .with_systemd(systemd);
    info!(
        namespace = opts.namespace.as_deref().unwrap_or("<all>"),
        node = opts.scope.describe(),
        allowed_roots = %opts.trust.roots.describe_all(),
        "starting controllers"
    );
    let lost = async {
        match leadership.as_mut() {
            Some(l) => l.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = controllers(ctx, &client, opts.namespace.as_deref()) => info!("controllers stopped"),
        why = lost => bail!("lost the leader lease ({why}): exiting so that this process comes back as a standby"),
        res = http => match res {
            Ok(Ok(())) => bail!("HTTP server stopped unexpectedly"),
            Ok(Err(e)) => return Err(e).context(format!("cannot serve HTTP on {}", opts.listen)),
            Err(e) => bail!("HTTP server task failed: {e}"),
        },
    }
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    Ok(())
}

/// Run the three controllers (on `namespace`, or all) until a shutdown signal.
async fn controllers(ctx: Context, client: &Client, namespace: Option<&str>) {
    let (workers, recoveries, plans): (Api<Worker>, Api<WorkerRecovery>, Api<ResumePlan>) =
        match namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    // The Worker controller's cache is also where path claims are checked.
    let (worker_cache, worker_cache_writer) = reflector::store();
    let ctx = Arc::new(ctx.with_workers(worker_cache.clone()));
    tokio::join!(
        controller::worker::run(
            ctx.clone(),
            workers,
            recoveries.clone(),
            (worker_cache, worker_cache_writer)
        ),
        controller::watch::run_records(ctx.clone(), recoveries),
        controller::watch::run_records(ctx.clone(), plans),
    );
}

/// Fail with a clear message when a CRD is missing, instead of a watch that errors forever. The
/// list is made where the operator watches: with one namespace watched, its RBAC is a Role there.
async fn ensure_crd_installed<K>(client: &Client, namespace: Option<&str>) -> anyhow::Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + CustomResourceExt
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "the CustomResourceDefinition {} is not installed in this cluster; install the CRDs first: kubectl apply -f crds/",
            K::crd_name()
        ),
        Err(e) => Err(e).context(format!("cannot list {} (is the API server reachable?)", K::crd_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::mock_api;

    #[tokio::test]
    async fn a_missing_crd_is_named_with_the_fix() {
        let (client, _) = mock_api::client(|_, path, _| mock_api::not_found(path));
        let err = ensure_crd_installed::<Worker>(&client, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("workers.workerrecovery.io is not installed"),
            "{err}"
        );
        assert!(err.contains("kubectl apply -f crds/"), "{err}");
    }

    #[tokio::test]
    async fn an_installed_crd_passes() {
        let (client, requests) = mock_api::client(|_, _, _| {
            (
                200,
                serde_json::json!({"apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerList", "metadata": {}, "items": []}),
            )
        });
        ensure_crd_installed::<Worker>(&client, None).await.unwrap();
        // With one namespace watched, the check stays in it (a Role there is all the RBAC).
        ensure_crd_installed::<Worker>(&client, Some("team-a"))
            .await
            .unwrap();
        let recorded = requests.lock().unwrap();
        assert_eq!(recorded[0].path, "/apis/workerrecovery.io/v1alpha1/workers");
        assert_eq!(
            recorded[1].path,
            "/apis/workerrecovery.io/v1alpha1/namespaces/team-a/workers"
        );
    }
}
