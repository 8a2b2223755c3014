//! The WorkerRecovery controller: one run of the runbook against one Worker.
//!
//! A run is the list of steps of its mode (`plan`), carried out one after another (`steps`).
//! Each step's progress is written into `status.steps` before and after it runs, so an operator
//! killed at any moment resumes the run at the step it was in; every step is idempotent. A
//! finished run is not repeated. Only a run that created a debug container gets a finalizer,
//! which removes that container when the run is deleted.

mod cores;
mod error;
pub mod plan;
pub mod steps;
mod trace;

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::Api,
    runtime::{controller::Action, events::EventType},
    ResourceExt,
};
use tracing::{info, Instrument};

pub use error::Error;

use self::{
    plan::{COMPLETED, DIAGNOSED},
    steps::{Outcome, Run},
};
use super::{
    apply_status,
    conditions::{merge, ConditionState, ConditionStatus, Waiting, WAITING},
    finalizer, object_key,
    watch::RecordsItsWork,
    writer, Admitted, Context, Held,
};
use crate::{
    crash,
    crd::{
        monitoring::MetricsWatch,
        worker::Worker,
        worker_recovery::{
            RecoveryMode, RecoveryPhase, StepName, StepState, StepStatus, WorkerRecovery,
            WorkerRecoveryStatus,
        },
    },
    diagnose::{self, CheckName, Diagnosis},
    metrics::{RunOutcome, Usage, WorkerKey},
    observe::monitor,
    postmortem,
    telemetry::recovery_trace,
    trust::Admission,
};

pub const CONTROLLER: &str = "workerrecovery";
/// Finalizer of a run that created a debug container.
pub const FINALIZER: &str = "workerrecovery.io/debug-container";
/// How long to wait for a Worker that does not exist (yet).
const WORKER_WAIT: Duration = Duration::from_secs(15);

impl RecordsItsWork for WorkerRecovery {
    const CONTROLLER: &'static str = CONTROLLER;
    type Error = Error;

    fn worker_name(&self) -> &str {
        &self.spec.worker_ref.name
    }

    async fn advance(&self, ctx: &Context) -> Result<Action, Error> {
        run_steps(self, ctx).await
    }
}

async fn run_steps(rec: &WorkerRecovery, ctx: &Context) -> Result<Action, Error> {
    let api: Api<WorkerRecovery> =
        Api::namespaced(ctx.client.clone(), &rec.namespace().unwrap_or_default());
    if rec.metadata.deletion_timestamp.is_some() {
        return clean_up(rec, ctx, &api).await;
    }
    let mut status = rec.status.clone().unwrap_or_default();
    if status.observed_generation == rec.metadata.generation
        && status.phase.is_some_and(RecoveryPhase::is_terminal)
    {
        return follow_cores(rec, ctx, &api, status).await;
    }
    // Whole seconds: `metav1.Time` keeps no more, and a step resumed after a restart must see
    // exactly the time the first attempt used (it is written into requeued tasks).
    let started = status.start_time.as_ref().map_or_else(
        || Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time"),
        |t| t.0,
    );
    let (worker, admission) = match admit(rec, ctx, &api, &status, started).await? {
        Admitted::Yes(admitted) => *admitted,
        Admitted::No(action) => return Ok(action),
    };

    // The steps and the start time are recorded before any step runs: a step resumed after a
    // restart of the operator sees the same start time (the `last_failure` it writes).
    status.start_time = Some(Time(started));
    status.trace.get_or_insert_with(recovery_trace::new_trace);
    status.steps = plan::reconcile_steps(rec.spec.mode, &status.steps);
    let steps = StepLoop {
        ctx,
        rec,
        api: &api,
        worker: &worker,
        admission: &admission,
        started,
        // By UID: a run deleted and created again under its name starts its steps afresh.
        run_key: rec.uid().unwrap_or_else(|| object_key(rec)),
    };
    while let Some(i) = plan::next_step(&status.steps) {
        if let Some(action) = steps.run_one(&mut status, i).await? {
            return Ok(action);
        }
    }
    steps.finish(&mut status).await
}

/// Find the run's Worker, admit it and, for a run that acts, take its writer Lease. A missing
/// Worker, an engine that cannot vouch for the container and another writer make the run
/// wait; a refused Worker fails it.
async fn admit(
    rec: &WorkerRecovery,
    ctx: &Context,
    api: &Api<WorkerRecovery>,
    status: &WorkerRecoveryStatus,
    started: Timestamp,
) -> Result<Admitted, Error> {
    let ns = rec.namespace().unwrap_or_default();
    let worker_name = &rec.spec.worker_ref.name;
    let workers: Api<Worker> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(worker) = workers.get_opt(worker_name).await? else {
        let next = early_status(
            rec,
            RecoveryPhase::Pending,
            started,
            "WorkerNotFound",
            format!("Worker {worker_name:?} does not exist in namespace {ns}; waiting for it"),
        );
        apply_status(api, rec, &next).await?;
        return Ok(Admitted::No(Action::requeue(WORKER_WAIT)));
    };
    let admission = match ctx.admit(&worker).await.map_err(|e| Held::of(e, &worker)) {
        Ok(admission) => admission,
        Err(Held::Waits { why, message }) => {
            wait(ctx, rec, api, status.clone(), why, message).await?;
            return Ok(Admitted::No(Action::requeue(WAIT_POLL)));
        }
        Err(Held::Refused { reason, message }) => {
            refuse(ctx, rec, api, status, started, reason, message).await?;
            return Ok(Admitted::No(Action::await_change()));
        }
    };
    if acts(rec) {
        let me = writer::Holder::Run(rec.name_any());
        if let writer::Acquired::HeldBy(holder) =
            writer::acquire(&ctx.client, &worker, &me, rec.uid().as_deref()).await?
        {
            let message = format!(
                "{holder} is changing Worker {worker_name}; this run starts when it finishes"
            );
            wait(
                ctx,
                rec,
                api,
                status.clone(),
                Waiting::AnotherRunActive,
                message,
            )
            .await?;
            return Ok(Admitted::No(Action::requeue(WAIT_POLL)));
        }
    }
    Ok(Admitted::Yes(Box::new((worker, admission))))
}

/// The steps of one run against its admitted Worker.
struct StepLoop<'a> {
    ctx: &'a Context,
    rec: &'a WorkerRecovery,
    api: &'a Api<WorkerRecovery>,
    worker: &'a Worker,
    admission: &'a Admission,
    started: Timestamp,
    run_key: String,
}

/// A step being attempted, as [`StepLoop::begin`] recorded it.
struct Attempt {
    /// `<run uid>/<step>`, in `Context::running_steps` while this process carries it out.
    active_key: String,
    /// The attempt's span: the work of the step is traced under it.
    span: tracing::Span,
}

impl StepLoop<'_> {
    /// Attempt the step at `i`: record it running, run it, record what it gave. `Some` ends
    /// the reconcile with that action (the step waits).
    async fn run_one(
        &self,
        status: &mut WorkerRecoveryStatus,
        i: usize,
    ) -> Result<Option<Action>, Error> {
        let attempt = self.begin(status, i).await?;
        let outcome = self
            .dispatch(status, i)
            .instrument(attempt.span.clone())
            .await;
        match outcome {
            Err(e) => {
                // Retried with backoff; the step stays Running and is attempted again.
                self.forget(&attempt);
                let step = &mut status.steps[i];
                step.message = Some(format!("attempt {} failed, retrying: {e}", step.attempt));
                trace::attempt_failed(&attempt.span, &e.to_string());
                write_progress(self.rec, self.api, status).await?;
                Err(e)
            }
            Ok(Outcome::Wait { after, message }) => {
                status.steps[i].message = Some(message);
                write_progress(self.rec, self.api, status).await?;
                Ok(Some(Action::requeue(after)))
            }
            Ok(Outcome::Done(result)) => {
                self.forget(&attempt);
                self.record_done(status, i, result, &attempt.span).await?;
                Ok(None)
            }
        }
    }

    /// Count the attempt, mark the step running and write that down before it runs.
    async fn begin(&self, status: &mut WorkerRecoveryStatus, i: usize) -> Result<Attempt, Error> {
        let name = status.steps[i].name;
        let active_key = format!("{}/{name:?}", self.run_key);
        // A step counts as a new attempt unless this process is already carrying it out (a
        // verify step polling); after an operator restart it is attempted again. Only the first
        // poll of an attempt in this process is traced as the attempt.
        let fresh = self
            .ctx
            .running_steps
            .lock()
            .unwrap()
            .insert(active_key.clone());
        let step = &mut status.steps[i];
        if fresh || step.state == StepState::Pending {
            step.attempt += 1;
        }
        step.state = StepState::Running;
        step.start_time.get_or_insert(Time(Timestamp::now()));
        step.span_id.get_or_insert_with(recovery_trace::new_span_id);
        if name == StepName::DebugStart && !self.rec.spec.dry_run {
            finalizer::add(self.api, self.rec, FINALIZER).await?;
        }
        if matches!(name, StepName::VerifyHealth | StepName::Resume) {
            watch_metrics(self.ctx, self.rec, self.worker, status).await;
        }
        write_progress(self.rec, self.api, status).await?;
        let span = trace::attempt_span(status, i, fresh);
        info!(step = ?name, attempt = status.steps[i].attempt, "step started");
        if name == StepName::Resume && !self.rec.spec.dry_run {
            status.resume_plan = Some(steps::resume_plan_name(self.rec));
        }
        Ok(Attempt { active_key, span })
    }

    /// Carry out the step at `i`.
    async fn dispatch(&self, status: &WorkerRecoveryStatus, i: usize) -> Result<Outcome, Error> {
        let run = Run {
            ctx: self.ctx,
            rec: self.rec,
            worker: self.worker,
            admission: self.admission,
            started: self.started,
            failure_reason: status
                .failure_reason
                .clone()
                .unwrap_or_else(|| "worker_crash".into()),
            container_started_at: status.container_started_at.as_ref().map(|t| t.0),
        };
        let step = &status.steps[i];
        match step.name {
            StepName::Diagnose => steps::diagnose(&run).await,
            StepName::CleanState => steps::clean_state(&run).await,
            StepName::Restart => steps::restart(&run, step).await,
            StepName::DebugStart => steps::debug_start(&run).await,
            StepName::VerifyHealth => steps::verify_health(&run, step).await,
            StepName::Resume => {
                let requeued = status
                    .steps
                    .iter()
                    .find(|s| s.name == StepName::CleanState)
                    .and_then(|s| s.figures.get("requeued").copied());
                steps::resume(&run, step, requeued, status.trace.as_ref()).await
            }
        }
    }

    /// Record a finished step: its state, figures and what it found; then its Event and span.
    async fn record_done(
        &self,
        status: &mut WorkerRecoveryStatus,
        i: usize,
        result: steps::StepResult,
        span: &tracing::Span,
    ) -> Result<(), Error> {
        let step = &mut status.steps[i];
        step.state = result.state();
        step.finish_time = Some(Time(Timestamp::now()));
        step.message = Some(result.message.clone());
        step.figures = result.figures;
        step.details = result.details;
        let (name, state) = (step.name, step.state);
        if let Some(diagnosis) = result.diagnosis {
            status.failure_reason = Some(plan::failure_reason(&diagnosis.verdict).into());
            status.diagnosis = Some(diagnosis);
        }
        if let Some(at) = result.container_started_at {
            status.container_started_at = Some(Time(at));
        }
        info!(step = ?name, ?state, message = %result.message, "step finished");
        if state == StepState::Failed {
            trace::attempt_failed(span, &result.message);
        }
        write_progress(self.rec, self.api, status).await?;
        step_event(self.ctx, self.rec, name, &status.steps[i]).await;
        if let Some(span) = trace::step_span(self.rec, status, i) {
            recovery_trace::emit(span);
        }
        Ok(())
    }

    /// This process no longer carries out the attempt.
    fn forget(&self, attempt: &Attempt) {
        self.ctx
            .running_steps
            .lock()
            .unwrap()
            .remove(&attempt.active_key);
    }

    /// Every step is done: write the end, give the writer Lease back, emit the root span and
    /// tell how the run ended.
    async fn finish(&self, status: &mut WorkerRecoveryStatus) -> Result<Action, Error> {
        let rec = self.rec;
        let paths = &self.admission.paths;
        let (cored, _) = cores::look(self.ctx, rec, paths, status).await?;
        write_progress(rec, self.api, status).await?;
        if cored {
            postmortem::rewrite_for_run(&self.ctx.client, self.worker).await;
        }
        if acts(rec) && !debug_copy_stands(rec, status) {
            let me = writer::Holder::Run(rec.name_any());
            let ns = rec.namespace().unwrap_or_default();
            writer::release(&self.ctx.client, &ns, &rec.spec.worker_ref.name, &me).await?;
        }
        if let Some(span) = trace::root_span(rec, status) {
            recovery_trace::emit(span);
        }
        let (key, outcome, took) = run_outcome(rec, status);
        if let Some(fds) = status.diagnosis.as_ref().and_then(descriptors) {
            self.ctx.metrics.workers.record_fds(&key, fds);
        }
        self.ctx.metrics.record_run(key, outcome, took);
        let completed = plan::completed_condition(&status.steps, rec.spec.dry_run);
        let (type_, reason) = match status.phase {
            Some(RecoveryPhase::Succeeded) => (EventType::Normal, "RecoveryComplete"),
            _ => (EventType::Warning, "RecoveryFailed"),
        };
        self.ctx
            .publish(rec, type_, reason, "Recover", completed.message)
            .await;
        Ok(Action::await_change())
    }
}

/// A finished `Debug` run whose copy may still dump a core: look for new cores while the copy
/// runs, and once more when it has stopped.
async fn follow_cores(
    rec: &WorkerRecovery,
    ctx: &Context,
    api: &Api<WorkerRecovery>,
    mut status: WorkerRecoveryStatus,
) -> Result<Action, Error> {
    if cores::recorded_dir(&status).is_none() || status.core_dumps.len() >= crash::MAX_CORES {
        return Ok(Action::await_change());
    }
    let workers: Api<Worker> =
        Api::namespaced(ctx.client.clone(), &rec.namespace().unwrap_or_default());
    let Some(worker) = workers.get_opt(&rec.spec.worker_ref.name).await? else {
        return Ok(Action::await_change());
    };
    // Only the run's own directory is read, and only below the root the Worker is admitted to.
    let Ok(admission) = ctx.admit(&worker).await else {
        return Ok(Action::requeue(cores::CORE_POLL));
    };
    let (cored, running) = cores::look(ctx, rec, &admission.paths, &mut status).await?;
    if cored {
        apply_status(api, rec, &status).await?;
        postmortem::rewrite_for_run(&ctx.client, &worker).await;
    }
    Ok(if running {
        Action::requeue(cores::CORE_POLL)
    } else {
        Action::await_change()
    })
}

/// A finished run as the per-worker metrics count it: its Worker, mode, outcome, root cause
/// (`None` when the diagnosis found none or did not run) and how long it took.
fn run_outcome(
    rec: &WorkerRecovery,
    status: &WorkerRecoveryStatus,
) -> (WorkerKey, RunOutcome, Duration) {
    let key = WorkerKey::new(
        rec.namespace().unwrap_or_default(),
        rec.spec.worker_ref.name.clone(),
    );
    let cause = status
        .diagnosis
        .as_ref()
        .and_then(|d| d.verdict.top_cause)
        .map_or_else(|| "None".to_string(), |c| c.to_string());
    let phase = status
        .phase
        .map_or_else(|| "Unknown".to_string(), |p| format!("{p:?}"));
    let took = match (&status.start_time, &status.completion_time) {
        (Some(start), Some(end)) => end.0.duration_since(start.0).unsigned_abs(),
        _ => Duration::ZERO,
    };
    let outcome = RunOutcome {
        mode: format!("{:?}", rec.spec.mode),
        outcome: phase,
        root_cause: cause,
    };
    (key, outcome, took)
}

/// The worker's open descriptors and their soft limit, as the diagnosis counted them.
fn descriptors(diagnosis: &Diagnosis) -> Option<Usage> {
    let finding = diagnosis
        .findings
        .iter()
        .find(|f| f.check == CheckName::FileDescriptors && f.evidence.contains_key("openFds"))?;
    let number = |key: &str| finding.evidence.get(key)?.parse::<f64>().ok();
    Some(Usage {
        used: number("openFds")?,
        limit: number("softLimit"),
    })
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
    let [ready, reconciling, stalled] =
        plan::health(status.phase.unwrap_or(RecoveryPhase::Pending), &waiting).conditions();
    status.conditions = merge(
        &status.conditions,
        &[
            diagnosed_condition(&status),
            plan::completed_condition(&status.steps, rec.spec.dry_run),
            waiting,
            ready,
            reconciling,
            stalled,
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
    reason: &'static str,
    message: String,
) -> Result<(), Error> {
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
    Ok(())
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
    let completed = plan::completed_condition(&status.steps, rec.spec.dry_run);
    let [ready, reconciling, stalled] = plan::health(phase, &completed).conditions();
    status.conditions = merge(
        previous,
        &[
            diagnosed_condition(status),
            completed,
            not_waiting,
            ready,
            reconciling,
            stalled,
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
    let completed = ConditionState {
        type_: COMPLETED,
        status: ConditionStatus::False,
        reason,
        message: message.clone(),
    };
    let [ready, reconciling, stalled] = plan::health(phase, &completed).conditions();
    WorkerRecoveryStatus {
        phase: Some(phase),
        conditions: merge(
            &previous.conditions,
            &[
                ConditionState {
                    type_: DIAGNOSED,
                    status: ConditionStatus::False,
                    reason,
                    message,
                },
                completed,
                ready,
                reconciling,
                stalled,
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

/// A deleted run: remove the debug container it created and its core directory, then let the
/// object go.
async fn clean_up(
    rec: &WorkerRecovery,
    ctx: &Context,
    api: &Api<WorkerRecovery>,
) -> Result<Action, Error> {
    if !finalizer::holds(rec, FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = rec.namespace().unwrap_or_default();
    // The container name is taken from the Worker when it still exists, else from the step.
    let workers: Api<Worker> =
        Api::namespaced(ctx.client.clone(), &rec.namespace().unwrap_or_default());
    let worker = workers.get_opt(&rec.spec.worker_ref.name).await?;
    let container = match &worker {
        Some(w) => Some(w.target().to_string()),
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
    if let Some(removed) = cores::remove(ctx, rec, worker.as_ref()).await {
        info!(removed, "removed the run's core directory");
    }
    // The debug copy stood in for the worker: the Worker is free for the next writer.
    let me = writer::Holder::Run(rec.name_any());
    writer::release(&ctx.client, &ns, &rec.spec.worker_ref.name, &me).await?;
    finalizer::remove(api, rec, FINALIZER).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use http::Method;
    use serde_json::{json, Value};

    use super::*;
    use crate::{
        runtime::fake::FakeRuntime,
        testing::{
            self, fresh_heartbeat,
            mock_api::{self, Recorded},
        },
    };

    const RECOVERY_STATUS: &str =
        "/apis/workerrecovery.io/v1alpha1/namespaces/default/workerrecoveries/marie-1/status";
    const WORKER: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workers/marie";
    const RUNS: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workerrecoveries";

    fn recovery() -> WorkerRecovery {
        recovery_with(json!({"workerRef": {"name": "marie"}}))
    }

    #[test]
    fn a_finished_run_is_counted_with_its_worker_mode_outcome_cause_and_duration() {
        let rec = recovery_with(json!({"workerRef": {"name": "marie"}, "mode": "Clean"}));
        let status: WorkerRecoveryStatus = serde_json::from_value(json!({
            "phase": "Failed",
            "startTime": "2026-11-30T10:00:00Z",
            "completionTime": "2026-11-30T10:00:42Z",
            "diagnosis": {
                "worker": "marie", "container": "marie",
                "startedAt": "2026-11-30T10:00:00Z", "completedAt": "2026-11-30T10:00:01Z",
                "findings": [{
                    "check": "fileDescriptors", "kind": "FdExhausted", "severity": "Critical",
                    "summary": "exhausted", "observedAt": "2026-11-30T10:00:01Z",
                    "evidence": {"openFds": "63", "softLimit": "64", "hardLimit": "64"}
                }],
                "verdict": {"topCause": "FileDescriptorExhaustion", "causes": []}
            }
        }))
        .unwrap();
        let (key, outcome, took) = run_outcome(&rec, &status);
        assert_eq!(key, WorkerKey::new("default", "marie"));
        assert_eq!(
            outcome,
            RunOutcome {
                mode: "Clean".into(),
                outcome: "Failed".into(),
                root_cause: "FileDescriptorExhaustion".into(),
            }
        );
        assert_eq!(took, Duration::from_secs(42));
        let fds = descriptors(status.diagnosis.as_ref().unwrap()).unwrap();
        assert_eq!((fds.used, fds.limit), (63.0, Some(64.0)));
        // No diagnosis: no cause, no descriptors.
        let bare = WorkerRecoveryStatus::default();
        assert_eq!(run_outcome(&rec, &bare).1.root_cause, "None");
    }

    fn recovery_with(spec: Value) -> WorkerRecovery {
        serde_json::from_value(json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
            "metadata": {"name": "marie-1", "namespace": "default", "generation": 1, "uid": "0b5e4a4c-run"},
            "spec": spec
        }))
        .unwrap()
    }

    /// Other runs the API server knows, by name.
    type Runs = Arc<std::sync::Mutex<std::collections::HashMap<String, Value>>>;

    /// Worker `marie` (UID `worker-uid`) with its shared root in a tempdir, its container
    /// exited in a fake engine; an API server that knows the Worker (when it exists), the
    /// runs put into `runs` and Leases, and what it saw.
    struct Scene {
        dir: tempfile::TempDir,
        worker: Worker,
        ctx: Context,
        requests: mock_api::Requests,
        fake: Arc<FakeRuntime>,
        runs: Runs,
    }

    /// A scene whose Worker exists and whose operator allows its shared root.
    fn setup() -> Scene {
        scene(true, None)
    }

    /// A scene whose API server knows the Worker when `worker_exists`, and whose operator
    /// allows the shared roots under `allowed` (the Worker's own when `None`).
    fn scene(worker_exists: bool, allowed: Option<&Path>) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let mut worker = testing::worker();
        worker.spec.shared_root = dir.path().display().to_string();
        worker.metadata.uid = Some("worker-uid".into());
        let runs = Runs::default();
        let others = runs.clone();
        let known = worker.clone();
        let answer = move |method: &Method, path: &str, body: &Value| match (method, path) {
            (&Method::GET, WORKER) if worker_exists => (200, serde_json::to_value(&known).unwrap()),
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
        };
        let fake = Arc::new(FakeRuntime::with_container(testing::exited(3)));
        let allowed = allowed.unwrap_or(dir.path());
        let (ctx, requests) = testing::api_context(answer, fake.clone(), allowed);
        Scene {
            dir,
            worker,
            ctx,
            requests,
            fake,
            runs,
        }
    }

    impl Scene {
        async fn run(&self, rec: &WorkerRecovery) -> Action {
            run_steps(rec, &self.ctx).await.unwrap()
        }

        fn recorded(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }

        fn last_status(&self) -> Value {
            mock_api::last_status(&self.requests, RECOVERY_STATUS)
        }

        fn starts(&self) -> u32 {
            *self.fake.starts.lock().unwrap()
        }

        /// The condition `type_` of the last status written.
        fn condition(&self, type_: &str) -> Value {
            let status = self.last_status();
            let conditions = status["conditions"].as_array().unwrap();
            let found = conditions.iter().find(|c| c["type"] == type_);
            found
                .unwrap_or_else(|| panic!("no {type_} in {status}"))
                .clone()
        }
    }

    #[tokio::test]
    async fn a_missing_worker_is_waited_for() {
        let s = scene(false, None);
        assert_eq!(s.run(&recovery()).await, Action::requeue(WORKER_WAIT));
        let status = s.last_status();
        assert_eq!(status["phase"], "Pending");
        assert_eq!(status["conditions"][0]["reason"], "WorkerNotFound");
    }

    #[tokio::test]
    async fn a_diagnosis_is_written_once() {
        let s = setup();
        let diagnose_only =
            recovery_with(json!({"workerRef": {"name": "marie"}, "mode": "Diagnose"}));
        s.run(&diagnose_only).await;
        let status = s.last_status();
        assert_eq!(status["phase"], "Succeeded");
        assert_eq!(status["conditions"][0]["type"], DIAGNOSED);
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(
            status["diagnosis"]["verdict"]["topCause"],
            "ApplicationCrash"
        );
        assert!(status["completionTime"].is_string());
        let recorded = s.recorded();
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
        let before = s.recorded().len();
        assert_eq!(s.run(&done).await, Action::await_change());
        assert_eq!(s.recorded().len(), before, "no request for a finished run");
    }

    #[tokio::test]
    async fn a_refused_worker_fails_the_run_without_a_diagnosis() {
        let allowed = tempfile::tempdir().unwrap();
        let s = scene(true, Some(allowed.path()));
        assert_eq!(s.run(&recovery()).await, Action::await_change());
        let status = s.last_status();
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["conditions"][0]["reason"], "SharedRootNotAllowed");
        assert!(status.get("diagnosis").is_none(), "{status}");
        assert!(s
            .recorded()
            .iter()
            .any(|r| r.body["reason"] == "SharedRootNotAllowed" && r.body["type"] == "Warning"));
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
        let s = setup();
        fresh_heartbeat(s.dir.path());
        assert_eq!(s.run(&recovery()).await, Action::await_change());
        assert_eq!(s.starts(), 1, "started once");
        let status = s.last_status();
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
        assert_eq!(s.condition(COMPLETED)["status"], "True");
        // Each step was written Running before it ran, and no write shows the run finished
        // without its completion time.
        let recorded = s.recorded();
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
        let s = setup();
        let dry =
            recovery_with(json!({"workerRef": {"name": "marie"}, "mode": "Quick", "dryRun": true}));
        s.run(&dry).await;
        assert_eq!(s.starts(), 0, "nothing started");
        assert!(s.fake.actions.lock().unwrap().is_empty());
        let status = s.last_status();
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
        let s = setup();
        let rec = recovery_with(json!({"workerRef": {"name": "marie"}, "verifyTimeoutSeconds": 1}));
        // No heartbeat file: the verify step waits ...
        assert_eq!(s.run(&rec).await, Action::requeue(Duration::from_secs(1)));
        let status = s.last_status();
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
        s.run(&again).await;
        let status = s.last_status();
        assert_eq!(status["phase"], "Failed", "{status:#}");
        let verify = step(&status, "VerifyHealth");
        assert_eq!(verify["state"], "Failed");
        assert_eq!(verify["attempt"], 1, "polling is one attempt");
        assert!(s
            .recorded()
            .iter()
            .any(|r| r.body["reason"] == "StepFailed" && r.body["type"] == "Warning"));
    }

    /// One writer per Worker: a run applied while another is changing the Worker waits in
    /// `Pending` with `Waiting=True` (AnotherRunActive) and touches nothing, then starts when
    /// the other one has finished. A diagnosis never waits.
    #[tokio::test]
    async fn a_second_acting_run_waits_for_the_first_to_finish() {
        let s = setup();
        fresh_heartbeat(s.dir.path());
        let first = json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
            "metadata": {"name": "clean-1", "namespace": "default", "uid": "uid-clean-1"},
            "spec": {"workerRef": {"name": "marie"}, "mode": "Clean"},
            "status": {"phase": "Running", "currentStep": "CleanState"},
        });
        s.runs
            .lock()
            .unwrap()
            .insert("clean-1".into(), first.clone());
        let held = writer::acquire(
            &s.ctx.client,
            &s.worker,
            &writer::Holder::Run("clean-1".into()),
            Some("uid-clean-1"),
        )
        .await
        .unwrap();
        assert_eq!(held, writer::Acquired::Yes);

        let quick = recovery();
        assert_eq!(s.run(&quick).await, Action::requeue(WAIT_POLL));
        assert!(s.fake.actions.lock().unwrap().is_empty() && s.starts() == 0);
        let status = s.last_status();
        assert_eq!(status["phase"], "Pending", "{status:#}");
        let waiting = s.condition(WAITING);
        assert_eq!(waiting["status"], "True");
        assert_eq!(waiting["reason"], "AnotherRunActive");
        assert!(waiting["message"]
            .as_str()
            .unwrap()
            .contains("WorkerRecovery clean-1"));

        let diagnose = recovery_with(json!({"workerRef": {"name": "marie"}, "mode": "Diagnose"}));
        s.run(&diagnose).await;
        assert_eq!(
            s.last_status()["phase"],
            "Succeeded",
            "a diagnosis never waits"
        );

        // The first run finishes: the second one starts and restarts the worker.
        let mut done = first;
        done["status"]["phase"] = json!("Succeeded");
        s.runs.lock().unwrap().insert("clean-1".into(), done);
        s.run(&quick).await;
        assert_eq!(s.starts(), 1);
        assert_eq!(s.last_status()["phase"], "Succeeded");
    }

    /// No writes while blind: with the engine not answering, a run waits (ContainerStateUnknown)
    /// and nothing moves; when it answers, the run goes on.
    #[tokio::test]
    async fn a_run_waits_while_the_engine_cannot_vouch_for_the_container() {
        let s = setup();
        fresh_heartbeat(s.dir.path());
        let active = s.dir.path().join("tasks/marie/active");
        std::fs::create_dir_all(&active).unwrap();
        std::fs::write(active.join("t1.json"), r#"{"id":"t1"}"#).unwrap();
        s.fake
            .engine_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let clean = recovery_with(json!({"workerRef": {"name": "marie"}, "mode": "Clean"}));
        assert_eq!(s.run(&clean).await, Action::requeue(WAIT_POLL));
        let status = s.last_status();
        assert_eq!(status["phase"], "Pending");
        assert!(status.get("diagnosis").is_none());
        assert!(active.join("t1.json").exists(), "nothing moved");
        assert_eq!(s.condition(WAITING)["reason"], "ContainerStateUnknown");
    }
}
