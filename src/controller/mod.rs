//! Controllers of the operator and what they share.

pub mod backoff;
pub mod conditions;
pub mod recovery;
pub mod resume_plan;
pub mod worker;
pub mod writer;

use std::{fmt::Debug, sync::Arc};

use futures::Stream;
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        predicates,
        reflector::{self, Store},
        watcher, PredicateConfig, WatchStreamExt,
    },
    Resource, ResourceExt,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::json;
use tracing::warn;

use crate::{
    crd::worker::Worker,
    diagnose::HostProbe,
    docker::ContainerRuntime,
    http::HttpClient,
    metrics::Metrics,
    trust::{self, claims, Admission, AdmitError, Trust},
};

/// Field manager under which the operator server-side-applies status.
pub const FIELD_MANAGER: &str = "worker-recovery-operator";

/// What every reconcile needs: the API client, the container engine, the trust rules, events
/// and metrics.
pub struct Context {
    pub client: kube::Client,
    pub docker: Arc<dyn ContainerRuntime>,
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
}

impl Context {
    pub fn new(
        client: kube::Client,
        docker: Arc<dyn ContainerRuntime>,
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

    /// Apply the trust rules to `worker` (see [`trust::admit`]): only an [`Admission`] lets
    /// a controller read or change the Worker's files or act on its container.
    pub async fn admit(&self, worker: &Worker) -> Result<Admission, AdmitError> {
        trust::admit(
            worker,
            &self.trust,
            self.docker.as_ref(),
            Some(&self.claims),
        )
        .await
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

/// The objects of `api` whose spec changed (a new generation), cached into `writer`'s store.
///
/// Only spec changes trigger a reconcile: the operator's own status writes must not, or every
/// status patch would loop back. What happens outside the API (Docker, files) reaches the
/// controllers through the engine's event stream and requeues.
pub fn spec_changes<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        // Nobody reads who wrote which field: not keeping it shrinks the cache by half.
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default())
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

/// A Kubernetes API server in memory, for fast unit tests of reconcilers.
#[cfg(test)]
pub mod mock_api {
    use std::sync::{Arc, Mutex};

    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::Value;

    /// One request the mock answered.
    #[derive(Clone, Debug)]
    pub struct Recorded {
        pub method: Method,
        pub path: String,
        pub body: Value,
    }

    /// A client whose every request is recorded and answered by `answer(method, path, body)`
    /// with a status code and a JSON body; Leases are kept by a [`Leases`] store.
    pub fn client(
        answer: impl Fn(&Method, &str, &Value) -> (u16, Value) + Send + 'static,
    ) -> (kube::Client, Arc<Mutex<Vec<Recorded>>>) {
        let (client, log, _) = client_and_leases(answer);
        (client, log)
    }

    /// [`client`], and the store of the Leases it keeps.
    pub fn client_and_leases(
        answer: impl Fn(&Method, &str, &Value) -> (u16, Value) + Send + 'static,
    ) -> (kube::Client, Arc<Mutex<Vec<Recorded>>>, Leases) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let recorded = log.clone();
        let leases = Leases::default();
        let store = leases.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let path = parts.uri.path();
                let (code, reply) = store
                    .answer(&parts.method, path, &body)
                    .unwrap_or_else(|| answer(&parts.method, path, &body));
                recorded.lock().unwrap().push(Recorded {
                    method: parts.method,
                    path: path.to_string(),
                    body,
                });
                let response = Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), log, leases)
    }

    /// Leases as an API server keeps them: a create conflicts with an existing one, a replace
    /// or a delete with a stale resourceVersion conflicts.
    #[derive(Clone, Default)]
    pub struct Leases {
        pub objects: Arc<Mutex<std::collections::HashMap<String, Value>>>,
        /// Put this Lease in place just before the next create, as a racing writer would.
        pub race: Arc<Mutex<Option<Value>>>,
    }

    impl Leases {
        fn answer(&self, method: &Method, path: &str, body: &Value) -> Option<(u16, Value)> {
            let rest = path.strip_prefix("/apis/coordination.k8s.io/v1/namespaces/")?;
            let (_, rest) = rest.split_once("/leases")?;
            let name = rest.trim_start_matches('/').to_string();
            let mut leases = self.objects.lock().unwrap();
            let conflict = (
                409,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": "Conflict", "code": 409, "message": "conflict"}),
            );
            let version = |l: &Value| -> u64 {
                l["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let stored = |mut l: Value, rv: u64| {
                l["metadata"]["resourceVersion"] = serde_json::json!(rv.to_string());
                l["metadata"]["uid"] = serde_json::json!("lease-uid");
                l
            };
            Some(match *method {
                Method::GET => match leases.get(&name) {
                    Some(l) => (200, l.clone()),
                    None => not_found(path),
                },
                Method::POST => {
                    if let Some(winner) = self.race.lock().unwrap().take() {
                        let n = winner["metadata"]["name"].as_str().unwrap().to_string();
                        leases.insert(n, stored(winner, 1));
                    }
                    let name = body["metadata"]["name"].as_str().unwrap_or_default();
                    if leases.contains_key(name) {
                        return Some(conflict);
                    }
                    let l = stored(body.clone(), 1);
                    leases.insert(name.to_string(), l.clone());
                    (201, l)
                }
                Method::PUT => {
                    let current = leases.get(&name).cloned().unwrap_or_default();
                    if current["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]
                    {
                        return Some(conflict);
                    }
                    let l = stored(body.clone(), version(&current) + 1);
                    leases.insert(name, l.clone());
                    (200, l)
                }
                Method::DELETE => {
                    let current = leases.get(&name).cloned().unwrap_or_default();
                    let wanted = &body["preconditions"]["resourceVersion"];
                    if !wanted.is_null() && current["metadata"]["resourceVersion"] != *wanted {
                        return Some(conflict);
                    }
                    leases.remove(&name);
                    (
                        200,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    )
                }
                _ => not_found(path),
            })
        }

        /// The `holderIdentity` of the Lease `name`.
        pub fn holder(&self, name: &str) -> Option<String> {
            let leases = self.objects.lock().unwrap();
            leases.get(name)?["spec"]["holderIdentity"]
                .as_str()
                .map(String::from)
        }
    }

    /// The `Status` an API server sends with a 404.
    pub fn not_found(what: &str) -> (u16, Value) {
        (
            404,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("{what} not found"), "reason": "NotFound", "code": 404
            }),
        )
    }
}
