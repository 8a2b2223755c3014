//! What makes a controller reconcile, and the loop every controller runs.
//!
//! A controller reconciles when its objects' spec changes (a new generation) and, for the
//! ones with finalizers, when one is deleted: never on the operator's own status writes, or
//! every status patch would loop back. What happens outside the API reaches the controllers
//! otherwise: the Docker event stream and a finished run (the Worker controller), and the
//! requeue each reconcile asks for.

use std::{fmt::Debug, future::Future, hash::Hash, sync::Arc};

use futures::{Stream, StreamExt};
use kube::{
    api::Api,
    runtime::{
        controller::{Action, Controller},
        predicates, reflector, watcher, PredicateConfig, WatchStreamExt,
    },
    Resource, ResourceExt,
};
use serde::de::DeserializeOwned;

use k8s_openapi::NamespaceResourceScope;
use tracing::Instrument;

use super::{
    error::{error_policy, ReconcileError},
    log_failure, read_fresh, Context,
};

/// Which changes of an object trigger a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A new generation.
    Spec,
    /// A new generation, or the start of a deletion (for objects with finalizers).
    SpecOrDeletion,
}

impl Trigger {
    fn key<K: Resource>(self, obj: &K) -> Option<u64> {
        match self {
            Self::Spec => predicates::generation(obj),
            Self::SpecOrDeletion => {
                let generation = obj.meta().generation.unwrap_or_default() as u64;
                let deleting = obj.meta().deletion_timestamp.is_some();
                Some(generation << 1 | u64::from(deleting))
            }
        }
    }
}

/// The objects of `api` (those `config` selects) that `trigger` lets through, cached into
/// `writer`'s store.
pub fn changes<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    trigger: Trigger,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config.any_semantic())
        .default_backoff()
        // Nobody reads who wrote which field: not keeping it shrinks the cache by half.
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(move |o: &K| trigger.key(o), PredicateConfig::default())
}

/// Run `controller` until a shutdown signal: `reconcile` each object it yields, retry
/// failures by the shared error policy, and log them.
pub async fn serve<K, E, F>(
    controller: Controller<K>,
    name: &'static str,
    reconcile: impl FnMut(Arc<K>, Arc<Context>) -> F,
    ctx: Arc<Context>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
    E: ReconcileError + std::error::Error + Send + 'static,
    F: Future<Output = Result<Action, E>> + Send + 'static,
{
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy(name), ctx)
        .for_each(log_failure(name))
        .await;
}

/// A kind whose status is the record of its own work (a run's steps, a plan's batches): it is
/// reconciled from a fresh read, never from the cache, on spec changes and deletions.
pub trait RecordsItsWork:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The controller's name in metrics and logs.
    const CONTROLLER: &'static str;
    type Error: ReconcileError + std::error::Error + From<kube::Error> + Send + 'static;

    /// The name of the Worker the object works on (in its namespace).
    fn worker_name(&self) -> &str;

    /// Move the object's work on, from `self` as the API server has it now.
    fn advance(&self, ctx: &Context) -> impl Future<Output = Result<Action, Self::Error>> + Send;
}

/// Run the controller of `K` until a shutdown signal.
pub async fn run_records<K: RecordsItsWork>(ctx: Arc<Context>, api: Api<K>) {
    let (reader, writer) = reflector::store();
    let trigger = changes(
        api,
        watcher::Config::default(),
        writer,
        Trigger::SpecOrDeletion,
    );
    let controller = Controller::for_stream(trigger, reader);
    serve(controller, K::CONTROLLER, reconcile_fresh::<K>, ctx).await;
}

async fn reconcile_fresh<K: RecordsItsWork>(
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, K::Error> {
    let span = tracing::info_span!(
        "reconcile",
        controller = K::CONTROLLER,
        object = %obj.name_any(),
        namespace = obj.namespace().unwrap_or_default(),
    );
    async {
        // A requeued reconcile can start before the watch brought the last write back.
        let Some(fresh) = read_fresh(&ctx.client, obj.as_ref()).await? else {
            return Ok(Action::await_change());
        };
        // A per-node agent leaves the runs and plans of other nodes' Workers alone: no status,
        // no Event, no step.
        let ns = fresh.namespace().unwrap_or_default();
        if !ctx
            .scope
            .covers_worker_named(&ctx.client, &ns, fresh.worker_name())
            .await?
        {
            tracing::debug!(
                worker = fresh.worker_name(),
                node = ctx.scope.describe(),
                "the Worker is not of this node; left alone"
            );
            return Ok(Action::await_change());
        }
        ctx.measured(K::CONTROLLER, &fresh, fresh.advance(&ctx))
            .await
    }
    .instrument(span)
    .await
}
