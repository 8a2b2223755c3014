//! The Worker controller: observe the container and heartbeat, decide, act, write status.

pub mod decide;
mod error;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{
        controller::{Action, Controller},
        events::{Event, EventType},
        predicates, reflector, watcher, PredicateConfig, WatchStreamExt,
    },
    Resource, ResourceExt,
};
use serde_json::json;
use tracing::{info, instrument, warn};

pub use error::Error;

use self::decide::{ContainerObservation, Observation, Plan, RestartRecord};
use super::{Context, FIELD_MANAGER};
use crate::{
    crd::worker::{Worker, WorkerPhase, WorkerStatus},
    docker::{ContainerRuntime, StartOutcome},
    observe::heartbeat,
};

pub const CONTROLLER: &str = "worker";

/// Run the Worker controller until a shutdown signal.
///
/// Only spec changes (a new generation) trigger a reconcile: our own status writes must not,
/// or every status patch would loop back. Docker and the heartbeat are polled by requeueing.
pub async fn run(ctx: Arc<Context>, workers: Api<Worker>) {
    let (reader, writer) = reflector::store();
    let trigger = watcher(workers, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    Controller::for_stream(trigger, reader)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "worker reconcile failed");
            }
        })
        .await;
}

#[instrument(skip_all, fields(worker = %worker.name_any(), namespace = worker.namespace().unwrap_or_default()))]
async fn reconcile(worker: Arc<Worker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer(CONTROLLER);
    let result = reconcile_worker(&worker, &ctx).await;
    if result.is_ok() {
        ctx.backoff.reset(&object_key(&worker));
    }
    result
}

async fn reconcile_worker(worker: &Worker, ctx: &Context) -> Result<Action, Error> {
    let api: Api<Worker> =
        Api::namespaced(ctx.client.clone(), &worker.namespace().unwrap_or_default());
    let previous = worker.status.as_ref();
    let paths = match worker.resolved_paths() {
        Ok(paths) => paths,
        Err(e) => {
            write_invalid_spec(&api, worker, ctx, &e.to_string()).await?;
            return Err(e.into());
        }
    };
    let timeout = Duration::from_secs(u64::from(worker.spec.heartbeat_timeout_seconds));

    // Observe.
    let container = observe_container(ctx.docker.as_ref(), &worker.spec.container).await;
    let heartbeat = heartbeat::read(&paths.heartbeat_file).await;
    let mut obs = Observation {
        container,
        heartbeat,
        now: Timestamp::now(),
    };

    // Decide and act.
    let mut restart = None;
    if let Plan::StartContainer { why } =
        decide::plan(&obs.container, worker.spec.auto_recovery.enabled)
    {
        match ctx.docker.start(&worker.spec.container).await? {
            StartOutcome::Started => {
                info!(container = %worker.spec.container, %why, "started exited container");
                ctx.metrics.record_restart(CONTROLLER);
                let record = RestartRecord {
                    at: Timestamp::now(),
                };
                let count = previous.map(|s| s.restart_count).unwrap_or(0) + 1;
                publish(
                    ctx,
                    worker,
                    EventType::Normal,
                    "Restarted",
                    "RestartContainer",
                    format!("{why}; auto-recovery started it again (restart {count})"),
                )
                .await;
                restart = Some(record);
            }
            StartOutcome::AlreadyRunning => {}
        }
        // Report the container as it is now, not as it was before the start.
        obs.container = observe_container(ctx.docker.as_ref(), &worker.spec.container).await;
    }
    let assessment = decide::assess(&obs, timeout);
    let status = decide::next_status(
        previous,
        worker.metadata.generation,
        &obs,
        &assessment,
        restart.as_ref(),
    );

    // Write status, then tell humans about changes of health.
    patch_status(&api, worker, &status).await?;
    let previous_phase = previous.and_then(|s| s.phase);
    if previous_phase != Some(assessment.phase)
        && !(previous_phase.is_none() && assessment.phase == WorkerPhase::Healthy)
    {
        let (type_, reason) = match assessment.phase {
            WorkerPhase::Healthy => (EventType::Normal, "WorkerHealthy"),
            WorkerPhase::Degraded => (EventType::Warning, "WorkerDegraded"),
            WorkerPhase::Down => (EventType::Warning, "WorkerDown"),
            WorkerPhase::Unknown => (EventType::Warning, "WorkerUnknown"),
        };
        let note = format!(
            "{} -> {}: {}",
            previous_phase.map_or("none".to_string(), |p| p.to_string()),
            assessment.phase,
            assessment.ready.message
        );
        publish(ctx, worker, type_, reason, "ObserveWorker", note).await;
    }
    if let ContainerObservation::Unavailable(e) = obs.container {
        return Err(crate::docker::DockerError::Unavailable(e).into());
    }
    Ok(Action::requeue(decide::requeue_interval(timeout)))
}

async fn observe_container(docker: &dyn ContainerRuntime, name: &str) -> ContainerObservation {
    match docker.inspect(name).await {
        Ok(Some(info)) => ContainerObservation::Found(info),
        Ok(None) => ContainerObservation::NotFound,
        Err(e) => ContainerObservation::Unavailable(e.to_string()),
    }
}

async fn patch_status(
    api: &Api<Worker>,
    worker: &Worker,
    status: &WorkerStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": Worker::api_version(&()),
        "kind": Worker::kind(&()),
        "status": status,
    });
    api.patch_status(
        &worker.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Report a spec the operator cannot act on, in status and as an Event.
async fn write_invalid_spec(
    api: &Api<Worker>,
    worker: &Worker,
    ctx: &Context,
    message: &str,
) -> Result<(), Error> {
    use super::conditions::{merge, ConditionState, ConditionStatus};
    let previous = worker.status.clone().unwrap_or_default();
    let status = WorkerStatus {
        phase: Some(WorkerPhase::Unknown),
        conditions: merge(
            &previous.conditions,
            &[ConditionState {
                type_: decide::READY,
                status: ConditionStatus::False,
                reason: "InvalidSpec",
                message: message.to_string(),
            }],
            worker.metadata.generation,
            Timestamp::now(),
        ),
        observed_generation: worker.metadata.generation,
        ..previous
    };
    patch_status(api, worker, &status).await?;
    publish(
        ctx,
        worker,
        EventType::Warning,
        "InvalidSpec",
        "ValidateSpec",
        message.to_string(),
    )
    .await;
    Ok(())
}

/// Publish an Event; failing to publish is logged, never fatal to the reconcile.
async fn publish(
    ctx: &Context,
    worker: &Worker,
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
    if let Err(e) = ctx.recorder.publish(&event, &worker.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    }
}

fn object_key(worker: &Worker) -> String {
    format!(
        "{}/{}",
        worker.namespace().unwrap_or_default(),
        worker.name_any()
    )
}

fn error_policy(worker: Arc<Worker>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_failure(CONTROLLER, error.metric_label());
    if error.is_transient() {
        let delay = ctx.backoff.next_delay(&object_key(&worker));
        warn!(worker = %worker.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    } else {
        warn!(worker = %worker.name_any(), error = %error, "waiting for the spec to change");
        Action::await_change()
    }
}
