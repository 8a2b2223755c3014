//! The WorkerRecovery controller: one run of the runbook against one Worker.
//!
//! A run is the list of steps of its mode (`plan`), carried out one after another (`steps`).
//! Each step's progress is written into `status.steps` before and after it runs, so an operator
//! killed at any moment resumes the run at the step it was in; every step is idempotent. A
//! finished run is not repeated. Only a run that created a debug container gets a finalizer,
//! which removes that container when the run is deleted.

mod error;
pub mod plan;
pub mod steps;
mod trace;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{
        controller::{Action, Controller},
        events::EventType,
        reflector, watcher, WatchStreamExt,
    },
    ResourceExt,
};
use serde_json::json;
use tracing::{info, instrument, warn, Instrument};

pub use error::Error;

use self::{
    plan::{COMPLETED, DIAGNOSED},
    steps::{Outcome, Run},
};
use super::{
    apply_status,
    conditions::{merge, ConditionState, ConditionStatus, Waiting, WAITING},
    log_failure, object_key, writer, Context,
};
use crate::{
    crd::{
        monitoring::MetricsWatch,
        worker::Worker,
        worker_recovery::{
            RecoveryMode, RecoveryPhase, StepName, StepState, StepStatus, WorkerRecovery,
            WorkerRecoveryStatus,
        },
    },
    diagnose::{self, Diagnosis},
    observe::monitor,
    telemetry::recovery_trace,
    trust::AdmitError,
};

pub const CONTROLLER: &str = "workerrecovery";
/// Finalizer of a run that created a debug container.
pub const FINALIZER: &str = "workerrecovery.io/debug-container";
/// How long to wait for a Worker that does not exist (yet).
const WORKER_WAIT: Duration = Duration::from_secs(15);

/// Run the WorkerRecovery controller until a shutdown signal.
pub async fn run(ctx: Arc<Context>, recoveries: Api<WorkerRecovery>) {
    let (reader, writer) = reflector::store();
    // Spec changes and deletions trigger a reconcile; the operator's own status writes do not.
    let trigger = watcher(recoveries, watcher::Config::default().any_semantic())
        .default_backoff()
        // Nobody reads who wrote which field: not keeping it shrinks the cache by half.
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            |r: &WorkerRecovery| {
                Some(
                    (r.metadata.generation.unwrap_or_default() as u64) << 1
                        | u64::from(r.metadata.deletion_timestamp.is_some()),
                )
            },
            Default::default(),
        );
    Controller::for_stream(trigger, reader)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(log_failure(CONTROLLER))
        .await;
}

#[instrument(skip_all, fields(recovery = %rec.name_any(), namespace = rec.namespace().unwrap_or_default()))]
async fn reconcile(rec: Arc<WorkerRecovery>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The run's status is the record of its steps: read it as it is now, not as the cache had
    // it (a requeued reconcile can start before the watch brought the last write back).
    let api: Api<WorkerRecovery> =
        Api::namespaced(ctx.client.clone(), &rec.namespace().unwrap_or_default());
    let Some(fresh) = api.get_opt(&rec.name_any()).await? else {
        return Ok(Action::await_change());
    };
    ctx.measured(CONTROLLER, &fresh, run_steps(&fresh, &ctx))
        .await
}

async fn run_steps(rec: &WorkerRecovery, ctx: &Context) -> Result<Action, Error> {
    let ns = rec.namespace().unwrap_or_default();
    let api: Api<WorkerRecovery> = Api::namespaced(ctx.client.clone(), &ns);
    if rec.metadata.deletion_timestamp.is_some() {
        return clean_up(rec, ctx, &api).await;
    }
    let mut status = rec.status.clone().unwrap_or_default();
    if status.observed_generation == rec.metadata.generation
        && status.phase.is_some_and(RecoveryPhase::is_terminal)
    {
        return Ok(Action::await_change());
    }
    let workers: Api<Worker> = Api::namespaced(ctx.client.clone(), &ns);
    let worker_name = rec.spec.worker_ref.name.clone();
    // Whole seconds: `metav1.Time` keeps no more, and a step resumed after a restart must see
    // exactly the time the first attempt used (it is written into requeued tasks).
    let started = status.start_time.as_ref().map_or_else(
        || Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time"),
        |t| t.0,
    );

    let Some(worker) = workers.get_opt(&worker_name).await? else {
        let next = early_status(
            rec,
            RecoveryPhase::Pending,
            started,
            "WorkerNotFound",
            format!("Worker {worker_name:?} does not exist in namespace {ns}; waiting for it"),
        );
        apply_status(&api, rec, &next).await?;
        return Ok(Action::requeue(WORKER_WAIT));
    };
    let admission = match ctx.admit(&worker).await {
        Ok(admission) => admission,
        Err(AdmitError::ContainerStateUnknown(e)) => {
            // Nothing is read or changed while the engine cannot vouch for the container.
            let message = format!(
                "the Docker engine cannot say whether container {:?} exists and consents ({e}); nothing is read or changed until it can",
                worker.spec.container
            );
            wait(
                ctx,
                rec,
                &api,
                status,
                Waiting::ContainerStateUnknown,
                message,
            )
            .await?;
            return Ok(Action::requeue(WAIT_POLL));
        }
        Err(e) => return refuse(ctx, rec, &api, &status, started, &worker_name, e).await,
    };
    if acts(rec) {
        let me = writer::Holder::Run(rec.name_any());
        let uid = rec.uid();
        if let writer::Acquired::HeldBy(holder) =
            writer::acquire(&ctx.client, &worker, &me, uid.as_deref()).await?
        {
            let message = format!(
                "{holder} is changing Worker {worker_name}; this run starts when it finishes"
            );
            wait(ctx, rec, &api, status, Waiting::AnotherRunActive, message).await?;
            return Ok(Action::requeue(WAIT_POLL));
        }
    }

    // The steps and the start time are recorded before any step runs: a step resumed after a
    // restart of the operator sees the same start time (the `last_failure` it writes).
    status.start_time = Some(Time(started));
    status.trace.get_or_insert_with(recovery_trace::new_trace);
    status.steps = plan::reconcile_steps(rec.spec.mode, &status.steps);
    // By UID: a run deleted and created again under its name starts its steps afresh.
    let run_key = rec.uid().unwrap_or_else(|| object_key(rec));
    while let Some(i) = plan::next_step(&status.steps) {
        let name = status.steps[i].name;
        let active_key = format!("{run_key}/{name:?}");
        // Only the first poll of an attempt in this process is traced as the attempt.
        let traced;
        {
            // A step counts as a new attempt unless this process is already carrying it out
            // (a verify step polling); after an operator restart it is attempted again.
            let fresh = ctx.running_steps.lock().unwrap().insert(active_key.clone());
            traced = fresh;
            let step = &mut status.steps[i];
            if fresh || step.state == StepState::Pending {
                step.attempt += 1;
            }
            step.state = StepState::Running;
            step.start_time.get_or_insert(Time(Timestamp::now()));
            step.span_id.get_or_insert_with(recovery_trace::new_span_id);
        }
        if name == StepName::DebugStart && !rec.spec.dry_run {
            ensure_finalizer(rec, &api).await?;
        }
        if matches!(name, StepName::VerifyHealth | StepName::Resume) {
            watch_metrics(ctx, rec, &worker, &mut status).await;
        }
        write_progress(rec, &api, &mut status).await?;
        // Work of the step is traced under the step's span; polls of a waiting step are not.
        let attempt_span = trace::attempt_span(&status, i, traced);
        info!(step = ?name, attempt = status.steps[i].attempt, "step started");
        if name == StepName::Resume && !rec.spec.dry_run {
            status.resume_plan = Some(steps::resume_plan_name(rec));
        }

        let run = Run {
            ctx,
            rec,
            worker: &worker,
            admission: &admission,
            started,
            failure_reason: status
                .failure_reason
                .clone()
                .unwrap_or_else(|| "worker_crash".into()),
            container_started_at: status.container_started_at.as_ref().map(|t| t.0),
        };
        let step = status.steps[i].clone();
        let requeued = status
            .steps
            .iter()
            .find(|s| s.name == StepName::CleanState)
            .and_then(|s| s.figures.get("requeued").copied());
        let trace_ref = status.trace.clone();
        let outcome = async {
            match name {
                StepName::Diagnose => steps::diagnose(&run).await,
                StepName::CleanState => steps::clean_state(&run).await,
                StepName::Restart => steps::restart(&run, &step).await,
                StepName::DebugStart => steps::debug_start(&run).await,
                StepName::VerifyHealth => steps::verify_health(&run, &step).await,
                StepName::Resume => steps::resume(&run, &step, requeued, trace_ref.as_ref()).await,
            }
        }
        .instrument(attempt_span.clone())
        .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                // Retried with backoff; the step stays Running and is attempted again.
                ctx.running_steps.lock().unwrap().remove(&active_key);
                status.steps[i].message = Some(format!(
                    "attempt {} failed, retrying: {e}",
                    status.steps[i].attempt
                ));
                trace::attempt_failed(&attempt_span, &e.to_string());
                write_progress(rec, &api, &mut status).await?;
                return Err(e);
            }
        };
        match outcome {
            Outcome::Wait { after, message } => {
                status.steps[i].message = Some(message);
                write_progress(rec, &api, &mut status).await?;
                return Ok(Action::requeue(after));
            }
            Outcome::Done(result) => {
                ctx.running_steps.lock().unwrap().remove(&active_key);
                let step = &mut status.steps[i];
                step.state = result.state();
                step.finish_time = Some(Time(Timestamp::now()));
                step.message = Some(result.message.clone());
                step.figures = result.figures;
                step.details = result.details;
                if let Some(diagnosis) = result.diagnosis {
                    status.failure_reason = Some(plan::failure_reason(&diagnosis.verdict).into());
                    status.diagnosis = Some(diagnosis);
                }
                if let Some(at) = result.container_started_at {
                    status.container_started_at = Some(Time(at));
                }
                info!(step = ?name, state = ?status.steps[i].state, message = %result.message, "step finished");
                if status.steps[i].state == StepState::Failed {
                    trace::attempt_failed(&attempt_span, &result.message);
                }
                write_progress(rec, &api, &mut status).await?;
                step_event(ctx, rec, name, &status.steps[i]).await;
                if let Some(span) = trace::step_span(rec, &status, i) {
                    recovery_trace::emit(span);
                }
            }
        }
    }
    write_progress(rec, &api, &mut status).await?;
    if acts(rec) && !debug_copy_stands(rec, &status) {
        writer::release(
            &ctx.client,
            &ns,
            &worker_name,
            &writer::Holder::Run(rec.name_any()),
        )
        .await?;
    }
    if let Some(span) = trace::root_span(rec, &status) {
        recovery_trace::emit(span);
    }
    let completed = plan::completed_condition(&status.steps, rec.spec.dry_run);
    let (type_, reason) = match status.phase {
        Some(RecoveryPhase::Succeeded) => (EventType::Normal, "RecoveryComplete"),
        _ => (EventType::Warning, "RecoveryFailed"),
    };
    ctx.publish(rec, type_, reason, "Recover", completed.message)
        .await;
    Ok(Action::await_change())
}

/// How often a waiting run looks again.
const WAIT_POLL: Duration = Duration::from_secs(2);

/// Whether the run changes the Worker's files or container: every mode but `Diagnose`,
/// unless it is a dry run. Only those take the Worker's writer lease.
fn acts(rec: &WorkerRecovery) -> bool {
    rec.spec.mode != RecoveryMode::Diagnose && !rec.spec.dry_run
}

/// A succeeded `Debug` run whose copy stands in for the worker keeps the lease until deleted.
fn debug_copy_stands(rec: &WorkerRecovery, status: &WorkerRecoveryStatus) -> bool {
    rec.spec.mode == RecoveryMode::Debug && status.phase == Some(RecoveryPhase::Succeeded)
}

/// Record that the run waits, and why; nothing of the run is lost. A run that has not begun
/// stays `Pending`. An Event tells when the waiting begins.
async fn wait(
    ctx: &Context,
    rec: &WorkerRecovery,
    api: &Api<WorkerRecovery>,
    mut status: WorkerRecoveryStatus,
    why: Waiting,
    message: String,
) -> Result<(), Error> {
    let was_waiting = status
        .conditions
        .iter()
        .find(|c| c.type_ == WAITING)
        .filter(|c| c.status == "True")
        .map(|c| c.reason.clone());
    if status.steps.iter().all(|s| s.state == StepState::Pending) {
        status.phase = Some(RecoveryPhase::Pending);
    }
    status.observed_generation = rec.metadata.generation;
    let waiting = ConditionState {
        type_: WAITING,
        status: ConditionStatus::True,
        reason: why.reason(),
        message: message.clone(),
    };
    status.conditions = merge(
        &status.conditions,
        &[
            diagnosed_condition(&status),
            plan::completed_condition(&status.steps, rec.spec.dry_run),
            waiting,
        ],
        rec.metadata.generation,
        Timestamp::now(),
    );
    apply_status(api, rec, &status).await?;
    if was_waiting.as_deref() != Some(why.reason()) {
        info!(reason = why.reason(), %message, "the run waits");
        ctx.publish(rec, EventType::Normal, why.reason(), "Recover", message)
            .await;
    }
    Ok(())
}

/// A Worker that is not admitted fails the run, which says why.
async fn refuse(
    ctx: &Context,
    rec: &WorkerRecovery,
    api: &Api<WorkerRecovery>,
    status: &WorkerRecoveryStatus,
    started: Timestamp,
    worker_name: &str,
    error: AdmitError,
) -> Result<Action, Error> {
    let (reason, message) = error.reason_and_message(worker_name);
    let mut failed = early_status(rec, RecoveryPhase::Failed, started, reason, message.clone());
    failed.completion_time = Some(Time(Timestamp::now()));
    failed.trace = Some(
        status
            .trace
            .clone()
            .unwrap_or_else(recovery_trace::new_trace),
    );
    apply_status(api, rec, &failed).await?;
    if let Some(span) = trace::root_span(rec, &failed) {
        recovery_trace::emit(span);
    }
    ctx.publish(rec, EventType::Warning, reason, "Recover", message)
        .await;
    Ok(Action::await_change())
}

/// The runbook's "Monitoring During Recovery": while the run verifies and resumes, scrape the
/// worker's metrics endpoint (when it declares one) every `monitorIntervalSeconds`.
async fn watch_metrics(
    ctx: &Context,
    rec: &WorkerRecovery,
    worker: &Worker,
    status: &mut WorkerRecoveryStatus,
) {
    let Some(metrics) = &worker.spec.metrics else {
        return;
    };
    let now = Timestamp::now();
    let interval = Duration::from_secs(u64::from(rec.spec.monitor_interval_seconds));
    if rec.spec.dry_run || !monitor::due(status.monitoring.as_ref(), interval, now) {
        return;
    }
    let scraped = monitor::scrape(&ctx.http, &metrics.url).await;
    monitor::record(
        status.monitoring.get_or_insert_with(MetricsWatch::default),
        scraped,
        now,
    );
}

/// Sum the steps up into phase, current step and conditions, and write the status.
async fn write_progress(
    rec: &WorkerRecovery,
    api: &Api<WorkerRecovery>,
    status: &mut WorkerRecoveryStatus,
) -> Result<(), Error> {
    let phase = plan::phase(&status.steps);
    status.phase = Some(phase);
    // Written with the terminal phase, never after it: a reader that sees the run finished
    // also sees when.
    if !phase.is_terminal() {
        status.completion_time = None;
    } else if status.completion_time.is_none() {
        status.completion_time = Some(Time(Timestamp::now()));
    }
    status.current_step = plan::current_step(&status.steps);
    status.observed_generation = rec.metadata.generation;
    let previous = rec
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let not_waiting = ConditionState {
        type_: WAITING,
        status: ConditionStatus::False,
        reason: if acts(rec) { "Writer" } else { "ReadOnly" },
        message: if acts(rec) {
            "this run is the only one changing the Worker".into()
        } else {
            "a diagnosis or a dry run changes nothing and never waits".into()
        },
    };
    status.conditions = merge(
        previous,
        &[
            diagnosed_condition(status),
            plan::completed_condition(&status.steps, rec.spec.dry_run),
            not_waiting,
        ],
        rec.metadata.generation,
        Timestamp::now(),
    );
    apply_status(api, rec, status).await?;
    Ok(())
}

fn diagnosed_condition(status: &WorkerRecoveryStatus) -> ConditionState {
    let step = status.steps.iter().find(|s| s.name == StepName::Diagnose);
    let (status_, reason, message) = match (step.map(|s| s.state), &status.diagnosis) {
        (Some(StepState::Succeeded), Some(d)) => (
            ConditionStatus::True,
            "DiagnosisComplete",
            verdict_summary(d),
        ),
        (Some(StepState::Running), _) => (
            ConditionStatus::False,
            "Diagnosing",
            "running the runbook's checks".to_string(),
        ),
        _ => (
            ConditionStatus::False,
            "NotDiagnosed",
            "the diagnosis has not run".to_string(),
        ),
    };
    ConditionState {
        type_: DIAGNOSED,
        status: status_,
        reason,
        message,
    }
}

/// Events a human should see: the diagnosis, a restart, a failed step.
async fn step_event(ctx: &Context, rec: &WorkerRecovery, name: StepName, step: &StepStatus) {
    let message = step.message.clone().unwrap_or_default();
    match (name, step.state) {
        (_, StepState::Failed) => {
            ctx.publish(
                rec,
                EventType::Warning,
                "StepFailed",
                &format!("{name:?}"),
                format!("{name:?}: {message}"),
            )
            .await
        }
        (StepName::Diagnose, StepState::Succeeded) => {
            ctx.publish(rec, EventType::Normal, "Diagnosed", "Diagnose", message)
                .await
        }
        (StepName::CleanState | StepName::Restart | StepName::DebugStart, StepState::Succeeded) => {
            ctx.publish(
                rec,
                EventType::Normal,
                &format!("{name:?}Done"),
                &format!("{name:?}"),
                message,
            )
            .await
        }
        _ => {}
    }
}

/// The status of a run that cannot start its steps (no Worker, Worker refused).
fn early_status(
    rec: &WorkerRecovery,
    phase: RecoveryPhase,
    started: Timestamp,
    reason: &'static str,
    message: String,
) -> WorkerRecoveryStatus {
    let previous = rec.status.clone().unwrap_or_default();
    WorkerRecoveryStatus {
        phase: Some(phase),
        conditions: merge(
            &previous.conditions,
            &[
                ConditionState {
                    type_: DIAGNOSED,
                    status: ConditionStatus::False,
                    reason,
                    message: message.clone(),
                },
                ConditionState {
                    type_: COMPLETED,
                    status: ConditionStatus::False,
                    reason,
                    message,
                },
            ],
            rec.metadata.generation,
            Timestamp::now(),
        ),
        observed_generation: rec.metadata.generation,
        start_time: Some(Time(started)),
        ..Default::default()
    }
}

/// "root cause: OutOfMemory (...); 14 findings, 3 critical"
pub(crate) fn verdict_summary(d: &Diagnosis) -> String {
    let critical = d
        .findings
        .iter()
        .filter(|f| f.severity == diagnose::Severity::Critical)
        .count();
    let cause = match d.verdict.causes.first() {
        Some(top) => format!("root cause: {:?} ({})", top.cause, top.summary),
        None => "no root cause found: every check looks healthy".to_string(),
    };
    format!(
        "{cause}; {} findings, {critical} critical",
        d.findings.len()
    )
}

async fn ensure_finalizer(rec: &WorkerRecovery, api: &Api<WorkerRecovery>) -> Result<(), Error> {
    // Read the object as it is now: the status writes of the steps before changed its
    // resourceVersion since the reconcile began.
    let fresh = api.get(&rec.name_any()).await?;
    if fresh.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let mut finalizers = fresh.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    set_finalizers(api, &fresh, finalizers).await
}

/// Replace the finalizer list; the resourceVersion makes it a compare-and-swap with other
/// writers of the list (a conflict is retried with backoff).
async fn set_finalizers(
    api: &Api<WorkerRecovery>,
    obj: &WorkerRecovery,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// A deleted run: remove the debug container it created, then let the object go.
async fn clean_up(
    rec: &WorkerRecovery,
    ctx: &Context,
    api: &Api<WorkerRecovery>,
) -> Result<Action, Error> {
    if !rec.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = rec.namespace().unwrap_or_default();
    // The container name is taken from the Worker when it still exists, else from the step.
    let workers: Api<Worker> =
        Api::namespaced(ctx.client.clone(), &rec.namespace().unwrap_or_default());
    let container = match workers.get_opt(&rec.spec.worker_ref.name).await? {
        Some(w) => Some(w.spec.container),
        None => rec
            .status
            .as_ref()
            .and_then(|s| s.steps.iter().find(|s| s.name == StepName::DebugStart))
            .and_then(|s| s.details.get("container")?.first().cloned())
            .and_then(|n| n.strip_suffix("-debug").map(String::from)),
    };
    if let Some(container) = container {
        if steps::remove_debug_container(ctx, rec, &container).await? {
            info!(container = %format!("{container}-debug"), "removed the run's debug container");
        }
    }
    // The debug copy stood in for the worker: the Worker is free for the next writer.
    let me = writer::Holder::Run(rec.name_any());
    writer::release(&ctx.client, &ns, &rec.spec.worker_ref.name, &me).await?;
    let fresh = api.get(&rec.name_any()).await?;
    let finalizers: Vec<String> = fresh
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(api, &fresh, finalizers).await?;
    Ok(Action::await_change())
}

fn error_policy(rec: Arc<WorkerRecovery>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_failure(CONTROLLER, error.metric_label());
    let delay = ctx.backoff.next_delay(&object_key(rec.as_ref()));
    warn!(recovery = %rec.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Method;
    use serde_json::{json, Value};

    use super::*;
    use crate::{
        controller::mock_api,
        docker::fake::FakeRuntime,
        metrics::Metrics,
        testing::{self, FakeHost},
        trust::AllowedRoots,
    };

    const RECOVERY_STATUS: &str =
        "/apis/workerrecovery.io/v1alpha1/namespaces/default/workerrecoveries/marie-1/status";
    const WORKER: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workers/marie";
    const RUNS: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workerrecoveries";

    fn recovery() -> WorkerRecovery {
        recovery_with(json!({"workerRef": {"name": "marie"}}))
    }

    fn recovery_with(spec: Value) -> WorkerRecovery {
        serde_json::from_value(json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
            "metadata": {"name": "marie-1", "namespace": "default", "generation": 1, "uid": "0b5e4a4c-run"},
            "spec": spec
        }))
        .unwrap()
    }

    /// A context whose API server knows the Worker `marie` (when `worker_exists`) with its
    /// shared root at `root`, and whose operator allows the shared roots under `allowed`.
    fn context(
        worker_exists: bool,
        root: &std::path::Path,
        allowed: &[std::path::PathBuf],
    ) -> (Context, Arc<std::sync::Mutex<Vec<mock_api::Recorded>>>) {
        let (ctx, requests, _, _) = context_with_fake(worker_exists, root, allowed);
        (ctx, requests)
    }

    /// Other runs the API server knows, by name.
    type Runs = Arc<std::sync::Mutex<std::collections::HashMap<String, Value>>>;

    /// A context whose API server knows the Worker `marie` (when `worker_exists`), the runs
    /// put into the returned map and Leases; its engine has `marie` exited.
    fn context_with_fake(
        worker_exists: bool,
        root: &std::path::Path,
        allowed: &[std::path::PathBuf],
    ) -> (
        Context,
        Arc<std::sync::Mutex<Vec<mock_api::Recorded>>>,
        Arc<FakeRuntime>,
        Runs,
    ) {
        let mut worker = testing::worker();
        worker.spec.shared_root = root.display().to_string();
        worker.metadata.uid = Some("worker-uid".into());
        let runs = Runs::default();
        let others = runs.clone();
        let (client, requests) =
            mock_api::client(move |method, path, body: &Value| match (method, path) {
                (&Method::GET, WORKER) if worker_exists => {
                    (200, serde_json::to_value(&worker).unwrap())
                }
                (&Method::PATCH, RECOVERY_STATUS) => {
                    let mut object = serde_json::to_value(recovery()).unwrap();
                    object["status"] = body["status"].clone();
                    (200, object)
                }
                (&Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events") => {
                    (201, body.clone())
                }
                (&Method::GET, p) if p.starts_with(RUNS) => {
                    let name = p.rsplit('/').next().unwrap_or_default();
                    match others.lock().unwrap().get(name) {
                        Some(r) => (200, r.clone()),
                        None => mock_api::not_found(path),
                    }
                }
                _ => mock_api::not_found(path),
            });
        let fake = Arc::new(FakeRuntime::with_container(testing::exited(3)));
        let ctx = Context::new(
            client,
            fake.clone(),
            Arc::new(FakeHost(Ok(String::new()))),
            Arc::new(Metrics::default()),
            AllowedRoots::new(allowed).unwrap(),
            crate::http::testing::client(),
        );
        (ctx, requests, fake, runs)
    }

    fn last_status(requests: &std::sync::Mutex<Vec<mock_api::Recorded>>) -> Value {
        let recorded = requests.lock().unwrap();
        let patch = recorded
            .iter()
            .rev()
            .find(|r| r.method == Method::PATCH && r.path == RECOVERY_STATUS)
            .expect("a status patch");
        patch.body["status"].clone()
    }

    #[tokio::test]
    async fn a_missing_worker_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, requests) = context(false, dir.path(), &[dir.path().into()]);
        let action = run_steps(&recovery(), &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(WORKER_WAIT));
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Pending");
        assert_eq!(status["conditions"][0]["reason"], "WorkerNotFound");
    }

    #[tokio::test]
    async fn a_diagnosis_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, requests) = context(true, dir.path(), &[dir.path().into()]);
        let diagnose_only =
            recovery_with(json!({"workerRef": {"name": "marie"}, "mode": "Diagnose"}));
        run_steps(&diagnose_only, &ctx).await.unwrap();
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Succeeded");
        assert_eq!(status["conditions"][0]["type"], DIAGNOSED);
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(
            status["diagnosis"]["verdict"]["topCause"],
            "ApplicationCrash"
        );
        assert!(status["completionTime"].is_string());
        let recorded = requests.lock().unwrap().clone();
        let event = recorded
            .iter()
            .find(|r| r.body["reason"] == "Diagnosed")
            .expect("a Diagnosed event");
        assert!(event.body["note"]
            .as_str()
            .unwrap()
            .contains("ApplicationCrash"));

        assert_eq!(status["steps"][0]["name"], "Diagnose");
        assert_eq!(status["steps"][0]["state"], "Succeeded");
        assert_eq!(status["steps"][0]["attempt"], 1);
        assert_eq!(status["failureReason"], "worker_crash");

        // The finished run, as the watch brings it back, is not run again.
        let mut done = diagnose_only.clone();
        done.status = Some(serde_json::from_value(status).unwrap());
        let before = requests.lock().unwrap().len();
        assert_eq!(
            run_steps(&done, &ctx).await.unwrap(),
            Action::await_change()
        );
        assert_eq!(
            requests.lock().unwrap().len(),
            before,
            "no request for a finished run"
        );
    }

    #[tokio::test]
    async fn a_refused_worker_fails_the_run_without_a_diagnosis() {
        let allowed = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let (ctx, requests) = context(true, outside.path(), &[allowed.path().into()]);
        assert_eq!(
            run_steps(&recovery(), &ctx).await.unwrap(),
            Action::await_change()
        );
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["conditions"][0]["reason"], "SharedRootNotAllowed");
        assert!(status.get("diagnosis").is_none(), "{status}");
        let recorded = requests.lock().unwrap().clone();
        assert!(recorded
            .iter()
            .any(|r| r.body["reason"] == "SharedRootNotAllowed" && r.body["type"] == "Warning"));
    }

    fn fresh_heartbeat(root: &std::path::Path) {
        let dir = root.join("workers/marie");
        std::fs::create_dir_all(&dir).unwrap();
        let body = json!({"timestamp": Timestamp::now().to_string(), "status": "idle"});
        std::fs::write(dir.join("heartbeat.json"), body.to_string()).unwrap();
    }

    fn step<'a>(status: &'a Value, name: &str) -> &'a Value {
        status["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {status}"))
    }

    #[tokio::test]
    async fn a_quick_run_diagnoses_restarts_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        fresh_heartbeat(dir.path());
        let (ctx, requests, fake, _) = context_with_fake(true, dir.path(), &[dir.path().into()]);
        let action = run_steps(&recovery(), &ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        assert_eq!(*fake.starts.lock().unwrap(), 1, "started once");
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Succeeded", "{status:#}");
        for name in ["Diagnose", "Restart", "VerifyHealth"] {
            assert_eq!(
                step(&status, name)["state"],
                "Succeeded",
                "{name}: {status:#}"
            );
        }
        assert_eq!(status["currentStep"], "VerifyHealth");
        assert!(status["containerStartedAt"].is_string());
        let completed = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == COMPLETED)
            .unwrap();
        assert_eq!(completed["status"], "True");
        // Each step was written Running before it ran, and no write shows the run finished
        // without its completion time.
        let recorded = requests.lock().unwrap().clone();
        assert!(recorded
            .iter()
            .filter(|r| r.body["status"]["phase"] == "Succeeded")
            .all(|r| r.body["status"]["completionTime"].is_string()));
        assert!(recorded
            .iter()
            .any(|r| r.body["status"]["currentStep"] == "Restart"
                && step(&r.body["status"], "Restart")["state"] == "Running"));
    }

    #[tokio::test]
    async fn a_dry_run_changes_nothing_and_says_what_it_would_do() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, requests, fake, _) = context_with_fake(true, dir.path(), &[dir.path().into()]);
        let dry =
            recovery_with(json!({"workerRef": {"name": "marie"}, "mode": "Quick", "dryRun": true}));
        run_steps(&dry, &ctx).await.unwrap();
        assert_eq!(*fake.starts.lock().unwrap(), 0, "nothing started");
        assert!(fake.actions.lock().unwrap().is_empty());
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Succeeded");
        let restart = step(&status, "Restart");
        assert!(
            restart["message"]
                .as_str()
                .unwrap()
                .starts_with("dry run: would start"),
            "{restart}"
        );
        assert_eq!(step(&status, "VerifyHealth")["state"], "Skipped");
    }

    #[tokio::test]
    async fn verify_waits_for_a_heartbeat_then_fails_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, requests, _, _) = context_with_fake(true, dir.path(), &[dir.path().into()]);
        let rec = recovery_with(json!({"workerRef": {"name": "marie"}, "verifyTimeoutSeconds": 1}));
        // No heartbeat file: the verify step waits ...
        let action = run_steps(&rec, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(1)));
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Running");
        let verify = step(&status, "VerifyHealth");
        assert_eq!(verify["state"], "Running");
        assert!(
            verify["message"].as_str().unwrap().contains("no heartbeat"),
            "{verify}"
        );
        // ... and, past its deadline, fails the run.
        let mut again = rec.clone();
        let mut st: WorkerRecoveryStatus = serde_json::from_value(status).unwrap();
        st.steps[2].start_time = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        again.status = Some(st);
        run_steps(&again, &ctx).await.unwrap();
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Failed", "{status:#}");
        let verify = step(&status, "VerifyHealth");
        assert_eq!(verify["state"], "Failed");
        assert_eq!(verify["attempt"], 1, "polling is one attempt");
        let recorded = requests.lock().unwrap().clone();
        assert!(recorded
            .iter()
            .any(|r| r.body["reason"] == "StepFailed" && r.body["type"] == "Warning"));
    }

    /// One writer per Worker: a run applied while another is changing the Worker waits in
    /// `Pending` with `Waiting=True` (AnotherRunActive) and touches nothing, then starts when
    /// the other one has finished. A diagnosis never waits.
    #[tokio::test]
    async fn a_second_acting_run_waits_for_the_first_to_finish() {
        let dir = tempfile::tempdir().unwrap();
        fresh_heartbeat(dir.path());
        let (ctx, requests, fake, runs) = context_with_fake(true, dir.path(), &[dir.path().into()]);
        let first = json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
            "metadata": {"name": "clean-1", "namespace": "default", "uid": "uid-clean-1"},
            "spec": {"workerRef": {"name": "marie"}, "mode": "Clean"},
            "status": {"phase": "Running", "currentStep": "CleanState"},
        });
        runs.lock().unwrap().insert("clean-1".into(), first.clone());
        let worker: Worker = serde_json::from_value(
            json!({"apiVersion": "workerrecovery.io/v1alpha1", "kind": "Worker",
                "metadata": {"name": "marie", "namespace": "default", "uid": "worker-uid"},
                "spec": {"container": "marie"}}),
        )
        .unwrap();
        let held = writer::acquire(
            &ctx.client,
            &worker,
            &writer::Holder::Run("clean-1".into()),
            Some("uid-clean-1"),
        )
        .await
        .unwrap();
        assert_eq!(held, writer::Acquired::Yes);

        let quick = recovery();
        let action = run_steps(&quick, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(WAIT_POLL));
        assert!(fake.actions.lock().unwrap().is_empty() && *fake.starts.lock().unwrap() == 0);
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Pending", "{status:#}");
        let waiting = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == WAITING)
            .unwrap();
        assert_eq!(waiting["status"], "True");
        assert_eq!(waiting["reason"], "AnotherRunActive");
        assert!(waiting["message"]
            .as_str()
            .unwrap()
            .contains("WorkerRecovery clean-1"));

        let diagnose = recovery_with(json!({"workerRef": {"name": "marie"}, "mode": "Diagnose"}));
        run_steps(&diagnose, &ctx).await.unwrap();
        assert_eq!(
            last_status(&requests)["phase"],
            "Succeeded",
            "a diagnosis never waits"
        );

        // The first run finishes: the second one starts and restarts the worker.
        let mut done = first;
        done["status"]["phase"] = json!("Succeeded");
        runs.lock().unwrap().insert("clean-1".into(), done);
        run_steps(&quick, &ctx).await.unwrap();
        assert_eq!(*fake.starts.lock().unwrap(), 1);
        assert_eq!(last_status(&requests)["phase"], "Succeeded");
    }

    /// No writes while blind: with the engine not answering, a run waits (ContainerStateUnknown)
    /// and nothing moves; when it answers, the run goes on.
    #[tokio::test]
    async fn a_run_waits_while_the_engine_cannot_vouch_for_the_container() {
        let dir = tempfile::tempdir().unwrap();
        fresh_heartbeat(dir.path());
        let active = dir.path().join("tasks/marie/active");
        std::fs::create_dir_all(&active).unwrap();
        std::fs::write(active.join("t1.json"), r#"{"id":"t1"}"#).unwrap();
        let (ctx, requests, fake, _) = context_with_fake(true, dir.path(), &[dir.path().into()]);
        fake.engine_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let clean = recovery_with(json!({"workerRef": {"name": "marie"}, "mode": "Clean"}));
        assert_eq!(
            run_steps(&clean, &ctx).await.unwrap(),
            Action::requeue(WAIT_POLL)
        );
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Pending");
        assert!(status.get("diagnosis").is_none());
        assert!(active.join("t1.json").exists(), "nothing moved");
        let waiting = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == WAITING)
            .unwrap();
        assert_eq!(waiting["reason"], "ContainerStateUnknown");
    }
}
