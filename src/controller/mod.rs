//! Controllers of the operator and what they share.

pub mod backoff;
pub mod conditions;
pub mod error;
pub mod finalizer;
#[cfg(test)]
mod health_checks;
pub mod recovery;
pub mod resume_plan;
pub mod scope;
pub mod watch;
pub mod worker;
pub mod writer;

use std::{fmt::Debug, sync::Arc};

use k8s_openapi::NamespaceResourceScope;
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
    Resource, ResourceExt,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::json;
use tracing::warn;

use self::conditions::Waiting;
use crate::{
    crd::worker::Worker,
    diagnose::HostProbe,
    http::HttpClient,
    metrics::Metrics,
    runtime::{RuntimeError, WorkerRuntime},
    trust::{self, claims, Admission, AdmitError, Trust},
};

/// Field manager under which the operator server-side-applies status.
pub const FIELD_MANAGER: &str = "worker-recovery-operator";

/// What every reconcile needs: the API client, the container engine, the trust rules, events
/// and metrics.
pub struct Context {
    pub client: kube::Client,
    pub docker: Arc<dyn WorkerRuntime>,
    /// Where shared roots may be, and which Workers may reach files without a container
    /// (`crate::trust`).
    pub trust: Trust,
    /// Which Worker claims which paths, from the Workers the operator watches.
    pub claims: claims::Registry,
    /// Host facts for the diagnosis (kernel log).
    pub host: Arc<dyn HostProbe>,
    /// Webhooks and metrics endpoints, under the operator's URL policy.
    pub http: HttpClient,
    /// Escalation webhooks, delivered off the reconcile path.
    pub notifier: crate::escalation::notifier::Notifier,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub backoff: backoff::Backoff,
    /// Recovery steps this process is carrying out now (`<run>/<step>`), so that a step polled
    /// again is not counted as a new attempt, while one resumed after a restart is.
    pub running_steps: std::sync::Mutex<std::collections::HashSet<String>>,
    /// An unchanged Worker status is written at most this often.
    pub status_refresh: std::time::Duration,
    /// The Worker status this process wrote last, per Worker (`object_key`).
    pub worker_status:
        std::sync::Mutex<std::collections::HashMap<String, crate::crd::worker::WorkerStatus>>,
    /// The Workers this process acts on (all, or one node's).
    pub scope: scope::Scope,
    /// Memory samples of the failure prediction, per Worker (its UID).
    pub memory_samples:
        std::sync::Mutex<std::collections::HashMap<String, crate::observe::trend::Samples>>,
    /// The core analyzer the administrator configured, if any.
    pub core_analyzer: Option<crate::crash::Analyzer>,
    /// The node's systemd, for Workers run as services (`--systemd-bus`).
    pub systemd: Option<Arc<dyn WorkerRuntime>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        docker: Arc<dyn WorkerRuntime>,
        host: Arc<dyn HostProbe>,
        metrics: Arc<Metrics>,
        trust: impl Into<Trust>,
        http: HttpClient,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            docker,
            trust: trust.into(),
            claims: claims::Registry::new(empty_store()),
            host,
            notifier: crate::escalation::notifier::Notifier::new(http.clone()),
            http,
            metrics,
            backoff: backoff::Backoff::default(),
            running_steps: Default::default(),
            status_refresh: worker::decide::STATUS_REFRESH,
            worker_status: Default::default(),
            scope: scope::Scope::all(),
            memory_samples: Default::default(),
            core_analyzer: None,
            systemd: None,
        }
    }
}

/// A Workers' cache that holds none and is ready: what a context has until the operator hands
/// it the Worker controller's cache.
fn empty_store() -> Store<Worker> {
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

impl Context {
    /// Check path claims against the Workers in `workers` (the Worker controller's cache).
    pub fn with_workers(mut self, workers: Store<Worker>) -> Self {
        self.claims = claims::Registry::new(workers);
        self
    }

    /// Write an unchanged Worker status at most every `refresh` (zero: at every look).
    pub fn with_status_refresh(mut self, refresh: std::time::Duration) -> Self {
        self.status_refresh = refresh;
        self
    }

    /// Analyze the cores of `Debug` runs with `analyzer`.
    pub fn with_core_analyzer(mut self, analyzer: Option<crate::crash::Analyzer>) -> Self {
        self.core_analyzer = analyzer;
        self
    }

    /// Act only on the Workers `scope` covers.
    pub fn with_scope(mut self, scope: scope::Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Apply the trust rules to `worker` (see [`trust::admit`]): only an [`Admission`] lets
    /// a controller read or change the Worker's files or act on its container.
    pub async fn admit(&self, worker: &Worker) -> Result<Admission, AdmitError> {
        let runtime = self
            .runtime(worker)
            .map_err(AdmitError::ContainerStateUnknown)?;
        trust::admit(worker, &self.trust, runtime.as_ref(), Some(&self.claims)).await
    }

    /// The runtime that runs `worker`: Docker, or the node's systemd for a service (an error
    /// when the operator was not given one).
    pub fn runtime(&self, worker: &Worker) -> Result<Arc<dyn WorkerRuntime>, RuntimeError> {
        if !worker.is_systemd() {
            return Ok(self.docker.clone());
        }
        self.systemd.clone().ok_or_else(|| {
            RuntimeError::unavailable(
                crate::runtime::RuntimeKind::Systemd,
                "this operator manages no systemd units (start it with --systemd-bus)",
            )
        })
    }

    /// Manage Workers run as systemd services with `systemd`.
    pub fn with_systemd(mut self, systemd: Option<Arc<dyn WorkerRuntime>>) -> Self {
        self.systemd = systemd;
        self
    }

    /// Run one reconcile of `obj` by `controller`: count and time it, and forget the object's
    /// backoff when it succeeds.
    pub async fn measured<K: Resource<DynamicType = ()>, T, E>(
        &self,
        controller: &'static str,
        obj: &K,
        reconcile: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let _timer = self.metrics.reconcile_timer(controller);
        let result = reconcile.await;
        if result.is_ok() {
            self.backoff.reset(&object_key(obj));
        }
        result
    }

    /// Publish an Event about `obj`. Failing to publish is logged, never fatal to a reconcile.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// `obj` as the API server has it now; `None` once it is gone. A run's and a plan's status is
/// the record of their work: a requeued reconcile can start before the watch brought the last
/// write back, so they are reconciled from a fresh read, not from the cache.
pub async fn read_fresh<K>(client: &kube::Client, obj: &K) -> kube::Result<Option<K>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    api.get_opt(&obj.name_any()).await
}

/// Whether a run or a plan may act on its Worker.
pub enum Admitted {
    /// It may: the Worker and its admission (and, for one that acts, the writer Lease).
    Yes(Box<(Worker, Admission)>),
    /// Not now, or never: its status says why; the reconcile ends with this action.
    No(Action),
}

/// Why a run or a plan does not act on its Worker now.
#[derive(Debug)]
pub enum Held {
    /// It waits, nothing of it lost, and looks again: the engine cannot vouch for the
    /// container, or another run or plan is changing the Worker.
    Waits { why: Waiting, message: String },
    /// The Worker is not admitted: the run or plan fails and says why.
    Refused {
        reason: &'static str,
        message: String,
    },
}

impl Held {
    /// What a failed admission of `worker` means for a run or plan against it.
    pub fn of(error: AdmitError, worker: &Worker) -> Self {
        match error {
            // Nothing is read or changed while the engine cannot vouch for the container.
            AdmitError::ContainerStateUnknown(e) => Self::Waits {
                why: Waiting::ContainerStateUnknown,
                message: format!(
                    "the runtime cannot say whether {:?} exists and consents ({e}); nothing is read or changed until it can",
                    worker.target()
                ),
            },
            refused => {
                let (reason, message) = refused.reason_and_message(&worker.name_any());
                Self::Refused { reason, message }
            }
        }
    }
}

/// Server-side apply `status` to `obj` under the operator's field manager.
pub async fn apply_status<K>(api: &Api<K>, obj: &K, status: &impl Serialize) -> kube::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Key of an object in the backoff table: `Kind/namespace/name`.
pub fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Log what a controller's reconcile stream reports as failed.
pub fn log_failure<T, E: std::fmt::Display>(
    controller: &'static str,
) -> impl Fn(Result<T, E>) -> std::future::Ready<()> {
    move |result| {
        if let Err(e) = result {
            warn!(controller, error = %e, "reconcile failed");
        }
        std::future::ready(())
    }
}
