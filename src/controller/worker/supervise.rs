//! Automatic recovery, acted out: the policy's decision (`policy`) becomes a recovery run owned
//! by the Worker, the escalation path (`escalate`) becomes Events, a webhook and a failover.
//!
//! A `Quick` attempt starts (or, for a hang, restarts) the container at once, before anything
//! else, so that a crash costs as little downtime as the engine allows; the run it creates
//! records that start, diagnoses the failure with what was seen before the start (exit code,
//! OOM kill) and verifies the worker. A `Clean` attempt leaves everything to its run, which
//! cleans the state before it starts the container.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::{Api, DeleteParams, ListParams, PostParams},
    runtime::{events::EventType, reflector::ObjectRef},
    Resource, ResourceExt,
};
use tracing::{info, warn};

use super::{
    decide::{self, FailureKind, Observation, RestartRecord},
    escalate,
    policy::{self, Decision, Failure},
    Error,
};
use crate::{
    blocking,
    controller::{writer, Context},
    crd::{
        diagnosis::RootCause,
        worker::{
            ApplyPolicy, AutoRecoveryMode, AutoRecoveryStatus, DriftItem, EscalationLevel,
            EscalationStatus, FailoverState, FailoverStatus, NotificationState, NotificationStatus,
            RemediationSpec, WebhookSpec, Worker, WorkerPhase, WorkerStatus,
        },
        worker_recovery::{
            RecoveryMode, RecoveryPhase, RecoveryTrigger, WorkerRecovery, WorkerRecoverySpec,
            WorkerReference,
        },
    },
    escalation::{
        notifier::{self, Progress},
        webhook::{self, EscalationPayload},
    },
    recover::{failover, poison},
    runtime::{resources, ContainerInfo, ContainerObservation, Limits, StartOutcome},
    trust::{self, Admission},
};

/// Label on the runs of automatic recovery: the Worker they belong to.
pub const AUTO_RUN_LABEL: &str = "workerrecovery.io/auto-recovery-of";
/// Tasks moved to a backup Worker per batch.
const FAILOVER_BATCH: usize = 100;
/// Grace period of a restart of a hung worker.
const HANG_RESTART_GRACE: Duration = Duration::from_secs(10);

/// What supervision decided and did, for the status and the next look.
pub struct Supervision {
    pub record: AutoRecoveryStatus,
    pub escalation: Option<EscalationStatus>,
    /// The container was started (or restarted) now.
    pub restart: Option<RestartRecord>,
    /// Look again no later than this (a held-back attempt, the next escalation level).
    pub next_look: Option<Duration>,
    /// How the container differs from `spec.resources`.
    pub drift: Vec<DriftItem>,
}

/// Supervise one Worker: decide about what failed, act, climb the escalation path.
/// `admission` is `None` when the Worker's files may not be reached (its container is gone, or
/// the engine cannot say): then nothing is attempted and no task moves, while the escalation
/// path still advances.
pub async fn supervise(
    ctx: &Context,
    worker: &Worker,
    admission: Option<&Admission>,
    obs: &Observation,
    previous: Option<&WorkerStatus>,
    timeout: Duration,
    paused: bool,
) -> Result<Supervision, Error> {
    let spec = &worker.spec.auto_recovery;
    let look = Look {
        ctx,
        worker,
        obs,
        levels: escalate::levels(worker.spec.escalation.as_ref()),
        restarts_before: previous.map_or(0, |s| s.restart_count),
    };
    let mut supervision = Supervision::carried_over(previous);
    supervision.drift = drift(worker, obs);
    let healthy = decide::assess(obs, timeout).phase == WorkerPhase::Healthy;
    policy::observe_health(spec, &mut supervision.record, healthy, obs.now);
    policy::prune(spec, &mut supervision.record, obs.now);
    if healthy {
        close_if_healthy(&look, &mut supervision).await;
    }
    // Automatic recovery acts only while it is on and not paused, before any escalation, and
    // with the Worker's files in reach.
    if let (true, false, None, Some(admission)) =
        (spec.enabled, paused, &supervision.escalation, admission)
    {
        if let Some(failure) = decide::failure(obs, timeout) {
            decide_and_act(&look, admission, &failure, &mut supervision).await?;
        }
    }
    climb_ladder(&look, admission, &mut supervision).await?;
    Ok(supervision)
}

/// What one look at a Worker gives every part of its supervision.
struct Look<'a> {
    ctx: &'a Context,
    worker: &'a Worker,
    obs: &'a Observation,
    /// The Worker's escalation path, in order.
    levels: Vec<EscalationLevel>,
    /// The restarts counted in the last status.
    restarts_before: i32,
}

impl Supervision {
    /// The record and the escalation as the last status left them; nothing done yet.
    fn carried_over(previous: Option<&WorkerStatus>) -> Self {
        Self {
            record: previous
                .and_then(|s| s.auto_recovery.clone())
                .unwrap_or_default(),
            escalation: previous.and_then(|s| s.escalation.clone()),
            restart: None,
            next_look: None,
            drift: Vec::new(),
        }
    }
}

/// How the container differs from `spec.resources` (nothing when either is missing).
fn drift(worker: &Worker, obs: &Observation) -> Vec<DriftItem> {
    let (Some(spec), ContainerObservation::Found(c)) = (&worker.spec.resources, &obs.container)
    else {
        return Vec::new();
    };
    match resources::declared(spec) {
        Ok(declared) => resources::drift(&declared, c),
        Err(e) => {
            warn!(error = %e, "spec.resources cannot be read");
            Vec::new()
        }
    }
}

/// A healthy worker closes its escalation: someone fixed it, so automatic recovery starts
/// afresh.
async fn close_if_healthy(look: &Look<'_>, supervision: &mut Supervision) {
    let Some(e) = supervision.escalation.take() else {
        return;
    };
    supervision.record.attempts.clear();
    supervision.record.consecutive_failures = 0;
    supervision.record.backoff_seconds = 0;
    let note = format!(
        "the worker is healthy again; the escalation (level {}) is closed",
        e.level
    );
    info!("{note}");
    look.ctx
        .publish(
            look.worker,
            EventType::Normal,
            "Recovered",
            "Escalate",
            note,
        )
        .await;
}

/// Decide about `failure` with the policy, and act on the decision: attempt, back off, or
/// give up and escalate.
async fn decide_and_act(
    look: &Look<'_>,
    admission: &Admission,
    failure: &FailureKind,
    supervision: &mut Supervision,
) -> Result<(), Error> {
    let runs = list_runs(look.ctx, look.worker).await?;
    // A run, plan or failover that is the Worker's writer now holds automatic recovery back
    // (the same Lease every writer takes).
    let in_progress = writer::current_holder(&look.ctx.client, look.worker)
        .await?
        .is_some();
    let last_run = supervision
        .record
        .attempts
        .last()
        .and_then(|a| runs.iter().find(|r| r.name_any() == a.run));
    if in_progress {
        // Its end is seen through the watch of owned runs; look again soon anyway (a run
        // applied by hand is not owned by the Worker).
        supervision.next_look = Some(Duration::from_secs(2));
    }
    match decision(look, &supervision.record, failure, last_run, in_progress) {
        Decision::Nothing => {}
        Decision::Attempt => {
            // A failure is only ever found in a container that was found.
            if let ContainerObservation::Found(container) = &look.obs.container {
                attempt(look, admission, failure, container, supervision).await?;
            }
        }
        Decision::Wait { until, reason } => back_off(look, until, reason, supervision).await,
        Decision::GiveUp { reason } => give_up(look, reason, last_run, supervision).await,
    }
    Ok(())
}

/// The policy's decision; a missing dependency, which no restart fixes, gives up at once
/// (when the Worker asks for that and no writer is at work).
fn decision(
    look: &Look<'_>,
    record: &AutoRecoveryStatus,
    failure: &FailureKind,
    last_run: Option<&WorkerRecovery>,
    in_progress: bool,
) -> Decision {
    let spec = &look.worker.spec.auto_recovery;
    let cannot_fix = spec
        .remediation
        .escalate_missing_dependency
        .then(|| missing_dependency(failure, last_run))
        .flatten();
    match cannot_fix {
        Some(reason) if !in_progress => Decision::GiveUp { reason },
        _ => policy::decide(
            spec,
            record,
            Some(&Failure {
                trigger: failure.trigger(),
            }),
            in_progress,
            look.obs.now,
        ),
    }
}

/// Hold the next attempt back until `until`. The Event is published once per wait, not at
/// every look during it.
async fn back_off(
    look: &Look<'_>,
    until: Timestamp,
    reason: String,
    supervision: &mut Supervision,
) {
    if supervision.record.next_attempt_time.as_ref().map(|t| t.0) != Some(until) {
        info!(%reason, "automatic recovery backs off");
        look.ctx
            .publish(
                look.worker,
                EventType::Warning,
                "BackOff",
                "AutoRecover",
                reason.clone(),
            )
            .await;
    }
    supervision.record.next_attempt_time = Some(Time(until));
    supervision.record.waiting_reason = Some(reason);
    supervision.next_look = Some(look.obs.now.duration_until(until).unsigned_abs());
}

/// Automatic recovery gave up: the escalation begins, with the last run's root cause.
async fn give_up(
    look: &Look<'_>,
    reason: String,
    last_run: Option<&WorkerRecovery>,
    supervision: &mut Supervision,
) {
    let root_cause = last_run.and_then(root_cause_of);
    let run = supervision.record.attempts.last().map(|a| a.run.clone());
    let e = escalate::begin(&look.levels, reason.clone(), root_cause, run, look.obs.now);
    warn!(level = %e.level, %reason, "automatic recovery gave up: escalated");
    look.ctx
        .publish(
            look.worker,
            EventType::Warning,
            "Escalated",
            "Escalate",
            format!("escalated to level {}: {reason}", e.level),
        )
        .await;
    supervision.escalation = Some(e);
}

/// An open escalation climbs its path with time: a new level is published and notified, the
/// last one fails over (when the files are in reach), and the next level is looked at on time.
async fn climb_ladder(
    look: &Look<'_>,
    admission: Option<&Admission>,
    supervision: &mut Supervision,
) -> Result<(), Error> {
    let Some(e) = supervision.escalation.as_mut() else {
        return Ok(());
    };
    let (ctx, worker, levels) = (look.ctx, look.worker, &look.levels);
    let previous_level = escalate::advance(e, levels, look.obs.now);
    if let Some(previous_level) = &previous_level {
        let note = format!(
            "escalation level {} (was {previous_level}): {}",
            e.level, e.reason
        );
        warn!("{note}");
        ctx.publish(
            worker,
            EventType::Warning,
            "EscalationLevel",
            "Escalate",
            note,
        )
        .await;
    }
    notify(ctx, worker, e, previous_level);
    if let (true, Some(admission)) = (escalate::at_last_level(e, levels), admission) {
        if fail_over(ctx, worker, admission, e).await? {
            supervision.next_look = Some(Duration::from_secs(2));
        } else if e
            .failover
            .as_ref()
            .is_some_and(|f| f.state == FailoverState::Moving)
        {
            // The batch just recorded moves on the next look, once the record is written.
            supervision.next_look = Some(Duration::from_millis(100));
        }
    }
    if let Some(at) = escalate::next_level_time(e, levels) {
        let left = look.obs.now.duration_until(at).unsigned_abs() + Duration::from_millis(20);
        supervision.next_look = Some(supervision.next_look.map_or(left, |n| n.min(left)));
    }
    Ok(())
}

/// One automatic attempt as it goes: its run, the container it acts on (the ID changes with a
/// recreate), when it started the container, and the remediation done.
struct Attempt {
    run: String,
    container: ContainerInfo,
    restarted_at: Option<Timestamp>,
    remediation: Vec<String>,
}

/// One automatic attempt: the writer Lease for its run, remediation, the fast start (`Quick`),
/// the run, the record.
async fn attempt(
    look: &Look<'_>,
    admission: &Admission,
    failure: &FailureKind,
    container: &ContainerInfo,
    supervision: &mut Supervision,
) -> Result<(), Error> {
    let Some(mut attempt) = begin_attempt(look, container, supervision).await? else {
        return Ok(());
    };
    remediate(
        look,
        admission,
        failure,
        &mut attempt,
        &mut supervision.record,
    )
    .await?;
    if look.worker.spec.auto_recovery.mode == AutoRecoveryMode::Quick
        && attempt.restarted_at.is_none()
    {
        attempt.restarted_at = dispatch(look.ctx, look.worker, &attempt.container, failure).await?;
    }
    create_run(
        look.ctx,
        look.worker,
        &attempt.run,
        failure,
        &attempt.container,
        attempt.restarted_at,
    )
    .await?;
    record_outcome(look, failure, &attempt, supervision).await;
    info!(run = %attempt.run, trigger = %failure.trigger(), "automatic recovery attempt");
    prune_runs(look.ctx, look.worker).await
}

/// The Worker's writer Lease first, for the run the attempt creates: no manual run or plan
/// changes the worker while the attempt acts on it. `None` when another writer has it.
async fn begin_attempt(
    look: &Look<'_>,
    container: &ContainerInfo,
    supervision: &mut Supervision,
) -> Result<Option<Attempt>, Error> {
    let n = supervision.record.attempts_total + 1;
    let run = policy::run_name(&look.worker.name_any(), n);
    let me = writer::Holder::Run(run.clone());
    if let writer::Acquired::HeldBy(holder) =
        writer::acquire(&look.ctx.client, look.worker, &me, None).await?
    {
        info!(%holder, "automatic recovery waits: another writer has the Worker");
        supervision.next_look = Some(Duration::from_secs(2));
        return Ok(None);
    }
    Ok(Some(Attempt {
        run,
        container: container.clone(),
        restarted_at: None,
        remediation: Vec::new(),
    }))
}

/// Before the start: after a crash, poison tasks out and memory raised after an OOM kill;
/// then the declared settings put in place (a recreate starts the container).
async fn remediate(
    look: &Look<'_>,
    admission: &Admission,
    failure: &FailureKind,
    attempt: &mut Attempt,
    record: &mut AutoRecoveryStatus,
) -> Result<(), Error> {
    let (ctx, worker) = (look.ctx, look.worker);
    if let FailureKind::Stopped { .. } = failure {
        remove_poison_tasks(ctx, worker, admission, record, look.obs.now).await?;
        if let Some(change) = raise_memory(ctx, worker, &attempt.container).await? {
            attempt.remediation.push(change);
        }
    }
    attempt.restarted_at = put_declared_in_place(
        ctx,
        worker,
        &mut attempt.container,
        record,
        &mut attempt.remediation,
    )
    .await?;
    Ok(())
}

/// The fast start of a `Quick` attempt: a stopped container is started, a hung one restarted.
/// Returns when it started (`None`: it was already running).
async fn dispatch(
    ctx: &Context,
    worker: &Worker,
    container: &ContainerInfo,
    failure: &FailureKind,
) -> Result<Option<Timestamp>, Error> {
    let runtime = ctx.runtime(worker)?;
    match failure {
        FailureKind::Stopped { .. } => {
            let started = runtime.start(&container.id).await? == StartOutcome::Started;
            Ok(started.then(Timestamp::now))
        }
        FailureKind::Hung { .. } => {
            runtime.restart(&container.id, HANG_RESTART_GRACE).await?;
            Ok(Some(Timestamp::now()))
        }
    }
}

/// The attempt goes into the policy's record, and an Event says what was done: `Restarted`
/// when the container was started, else `AutoRecovery` (the run does the rest).
async fn record_outcome(
    look: &Look<'_>,
    failure: &FailureKind,
    attempt: &Attempt,
    supervision: &mut Supervision,
) {
    let (spec, run, container) = (
        &look.worker.spec.auto_recovery,
        &attempt.run,
        &attempt.container,
    );
    let remediation = (!attempt.remediation.is_empty()).then(|| attempt.remediation.join("; "));
    let trigger = failure.trigger();
    let now = look.obs.now;
    policy::record_attempt(
        spec,
        &mut supervision.record,
        run,
        &trigger,
        remediation.clone(),
        now,
    );
    let Some(at) = attempt.restarted_at else {
        let note = format!(
            "{}; recovery run {run} started",
            describe(failure, container)
        );
        look.ctx
            .publish(
                look.worker,
                EventType::Normal,
                "AutoRecovery",
                "Recover",
                note,
            )
            .await;
        return;
    };
    look.ctx.metrics.record_restart(super::CONTROLLER);
    supervision.restart = Some(RestartRecord { at });
    let count = look.restarts_before + 1;
    let note = format!(
        "{}; auto-recovery started it again (restart {count}, run {run}){}",
        describe(failure, container),
        remediation.map_or(String::new(), |r| format!("; {r}"))
    );
    look.ctx
        .publish(
            look.worker,
            EventType::Normal,
            "Restarted",
            "RestartContainer",
            note,
        )
        .await;
}

/// Declared settings (and a raised nofile limit after fd exhaustion) go in place at this
/// restart: in place when Docker can change them, else by a recreate, which also starts the
/// container (its new ID is put into `container`; the start time is returned).
async fn put_declared_in_place(
    ctx: &Context,
    worker: &Worker,
    container: &mut ContainerInfo,
    record: &AutoRecoveryStatus,
    remediation: &mut Vec<String>,
) -> Result<Option<Timestamp>, Error> {
    let Some((declared, change)) = apply_declared(ctx, worker, container, record).await? else {
        return Ok(None);
    };
    let mut restarted_at = None;
    let runtime = ctx.runtime(worker)?;
    if resources::needs_recreate(&resources::drift(&declared, container)) {
        if !runtime.capabilities().recreate {
            // systemd changes only cgroup settings (MemoryMax) of a loaded unit at runtime.
            remediation.push(format!(
                "not applied ({change}): systemd cannot change it for a loaded unit; declare it in the unit file"
            ));
            return Ok(None);
        }
        let grace = Duration::from_secs(10);
        container.id = runtime.recreate(&container.id, &declared, grace).await?;
        restarted_at = Some(Timestamp::now());
        remediation.push(format!("recreated with {change}"));
    } else {
        runtime
            .update_resources(
                &container.id,
                Limits {
                    memory: declared.memory,
                    memory_swap: declared.memory_swap,
                    cpu_quota: declared.cpu_quota,
                },
            )
            .await?;
        remediation.push(format!("updated in place: {change}"));
    }
    let note = remediation.last().cloned().unwrap_or_default();
    ctx.publish(
        worker,
        EventType::Normal,
        "DeclaredSettingsApplied",
        "Remediate",
        note,
    )
    .await;
    Ok(restarted_at)
}

fn describe(failure: &FailureKind, container: &ContainerInfo) -> String {
    match failure {
        FailureKind::Stopped { .. } => decide::exit_description(container),
        FailureKind::Hung { .. } => {
            format!(
                "container {} is hung: {}",
                container.name,
                failure.trigger()
            )
        }
    }
}

/// The WorkerRecovery of an attempt, owned by the Worker. A run of that name already there
/// (created before an operator restart) is the attempt's.
async fn create_run(
    ctx: &Context,
    worker: &Worker,
    name: &str,
    failure: &FailureKind,
    container: &ContainerInfo,
    restarted_at: Option<Timestamp>,
) -> Result<(), Error> {
    let ns = worker.namespace().unwrap_or_default();
    let mode = match worker.spec.auto_recovery.mode {
        AutoRecoveryMode::Quick => RecoveryMode::Quick,
        AutoRecoveryMode::Clean => RecoveryMode::Clean,
    };
    let stopped = matches!(failure, FailureKind::Stopped { .. });
    let spec: WorkerRecoverySpec = serde_json::from_value(serde_json::json!({
        "workerRef": {"name": worker.name_any()},
        "mode": mode,
    }))?;
    let mut run = WorkerRecovery::new(
        name,
        WorkerRecoverySpec {
            worker_ref: WorkerReference {
                name: worker.name_any(),
            },
            trigger: Some(RecoveryTrigger {
                reason: failure.trigger(),
                exit_code: stopped.then_some(container.exit_code).flatten(),
                oom_killed: stopped && container.oom_killed,
                finished_at: stopped.then_some(container.finished_at).flatten().map(Time),
                restarted_at: restarted_at.map(Time),
            }),
            ..spec
        },
    );
    run.metadata.namespace = Some(ns.clone());
    run.metadata.labels = Some(BTreeMap::from([(
        AUTO_RUN_LABEL.to_string(),
        worker.name_any(),
    )]));
    // Owned by the Worker: deleted with it (a Worker read from the API always has a UID).
    run.metadata.owner_references = worker.controller_owner_ref(&()).map(|o| vec![o]);
    let api: Api<WorkerRecovery> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &run).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn list_runs(ctx: &Context, worker: &Worker) -> Result<Vec<WorkerRecovery>, Error> {
    let api: Api<WorkerRecovery> =
        Api::namespaced(ctx.client.clone(), &worker.namespace().unwrap_or_default());
    Ok(api.list(&ListParams::default()).await?.items)
}

/// Keep the last `historyLimit` finished automatic runs of the Worker.
async fn prune_runs(ctx: &Context, worker: &Worker) -> Result<(), Error> {
    let api: Api<WorkerRecovery> =
        Api::namespaced(ctx.client.clone(), &worker.namespace().unwrap_or_default());
    let selector = format!("{AUTO_RUN_LABEL}={}", worker.name_any());
    let mut runs = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let limit = worker.spec.auto_recovery.history_limit as usize;
    if runs.len() <= limit {
        return Ok(());
    }
    runs.sort_by_key(|r| r.metadata.creation_timestamp.clone().map(|t| t.0));
    let excess = runs.len() - limit;
    for run in runs.iter().take(excess) {
        let finished = run
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(RecoveryPhase::is_terminal);
        if finished {
            match api.delete(&run.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// A restart cannot install a missing binary: say so when the last attempt's run found one
/// missing, or the worker exited with 127 (command not found).
fn missing_dependency(failure: &FailureKind, last_run: Option<&WorkerRecovery>) -> Option<String> {
    let diagnosed = last_run.and_then(root_cause_of) == Some(RootCause::MissingDependency);
    (diagnosed || failure.command_not_found()).then(|| {
        format!(
            "{}: a missing dependency, which a restart cannot fix",
            failure.trigger()
        )
    })
}

fn root_cause_of(run: &WorkerRecovery) -> Option<RootCause> {
    let diagnosis = run.status.as_ref()?.diagnosis.as_ref()?;
    Some(diagnosis.verdict.causes.first()?.cause)
}

/// Tasks found in `active/` at `poisonAfterCrashes` consecutive crashes go to `failed/`.
async fn remove_poison_tasks(
    ctx: &Context,
    worker: &Worker,
    admission: &Admission,
    record: &mut AutoRecoveryStatus,
    now: Timestamp,
) -> Result<(), Error> {
    let threshold = worker.spec.auto_recovery.poison_after_crashes;
    if threshold == 0 {
        return Ok(());
    }
    let paths = admission.paths.clone();
    let active = blocking::run(move || poison::active_tasks(&paths)).await??;
    let (counts, poisoned) = poison::count_crash(&record.task_crash_counts, &active, threshold);
    record.task_crash_counts = counts;
    for name in poisoned {
        let crashes = record
            .task_crash_counts
            .get(&name)
            .copied()
            .unwrap_or(threshold);
        let (paths, task) = (admission.paths.clone(), name.clone());
        let moved =
            blocking::run(move || poison::quarantine_poison(&paths, &task, crashes, now)).await??;
        record.task_crash_counts.remove(&name);
        if let poison::PoisonMove::Moved { to } = moved {
            let note = format!(
                "task {name} was in active/ at {crashes} crashes in a row: moved to failed/{to} as poison"
            );
            warn!("{note}");
            ctx.publish(
                worker,
                EventType::Warning,
                "PoisonTask",
                "AutoRecover",
                note,
            )
            .await;
            record.poisoned_tasks.push(name);
            let excess = record.poisoned_tasks.len().saturating_sub(50);
            record.poisoned_tasks.drain(..excess);
        }
    }
    Ok(())
}

/// What `remediation` allows for a memory limit of `limit` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MemoryRaise {
    /// Raise it to this many bytes.
    To(i64),
    /// It is at the ceiling already.
    AtCeiling,
    /// No `memoryFactor`, or a `memoryCeiling` that is not a size.
    Off,
}

/// `limit` times `memoryFactor`, up to `memoryCeiling`.
pub(super) fn memory_raise(r: &RemediationSpec, limit: i64) -> MemoryRaise {
    let Some(factor) = r.memory_factor else {
        return MemoryRaise::Off;
    };
    let ceiling = match r.memory_ceiling.as_deref().map(resources::parse_size) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            warn!(error = %e, "memoryCeiling is not a size; memory not raised");
            return MemoryRaise::Off;
        }
        None => i64::MAX,
    };
    let new = (((limit as f64) * factor).round() as i64).min(ceiling);
    if new <= limit {
        MemoryRaise::AtCeiling
    } else {
        MemoryRaise::To(new)
    }
}

/// After an OOM kill: raise the memory limit by `memoryFactor` up to `memoryCeiling`, in place.
async fn raise_memory(
    ctx: &Context,
    worker: &Worker,
    container: &ContainerInfo,
) -> Result<Option<String>, Error> {
    let r = &worker.spec.auto_recovery.remediation;
    let (true, Some(limit)) = (container.oom_killed, container.memory_limit) else {
        return Ok(None);
    };
    match memory_raise(r, limit) {
        MemoryRaise::Off => Ok(None),
        MemoryRaise::AtCeiling => {
            let note = format!(
                "OOM-killed at the memory ceiling {}: limit not raised",
                resources::format_size(limit)
            );
            ctx.publish(
                worker,
                EventType::Warning,
                "MemoryAtCeiling",
                "Remediate",
                note,
            )
            .await;
            Ok(None)
        }
        MemoryRaise::To(new) => set_memory_limit(ctx, worker, container, new, "after an OOM kill")
            .await
            .map(Some),
    }
}

/// `remediation.proactive`: the memory trend reaches the limit within the horizon, so raise it
/// now, before the OOM kill (while automatic recovery is on and not paused). Returns what
/// changed.
pub(super) async fn raise_memory_ahead(
    ctx: &Context,
    worker: &Worker,
    container: &ContainerInfo,
    risk: &super::risk::Risk,
    paused: bool,
) -> Result<Option<String>, Error> {
    let auto = &worker.spec.auto_recovery;
    if !auto.enabled || paused || !auto.remediation.proactive {
        return Ok(None);
    }
    match memory_raise(&auto.remediation, risk.limit) {
        MemoryRaise::To(new) => {
            let why = format!(
                "ahead of an OOM kill predicted in {:.0} s",
                risk.seconds_to_limit
            );
            set_memory_limit(ctx, worker, container, new, &why)
                .await
                .map(Some)
        }
        MemoryRaise::AtCeiling | MemoryRaise::Off => Ok(None),
    }
}

/// Set the container's memory limit to `new` bytes in place (`why` ends the Event's note);
/// returns what changed.
pub(super) async fn set_memory_limit(
    ctx: &Context,
    worker: &Worker,
    container: &ContainerInfo,
    new: i64,
    why: &str,
) -> Result<String, Error> {
    let limit = container.memory_limit.unwrap_or_default();
    // Docker refuses a memory limit above the memory+swap limit: raise that one with it.
    let swap = container.memory_swap.filter(|s| *s > 0).map(|s| s.max(new));
    ctx.runtime(worker)?
        .update_resources(
            &container.id,
            Limits {
                memory: Some(new),
                memory_swap: swap,
                cpu_quota: None,
            },
        )
        .await?;
    let change = format!(
        "memory limit {} -> {} {why}",
        resources::format_size(limit),
        resources::format_size(new)
    );
    info!("{change}");
    ctx.publish(
        worker,
        EventType::Normal,
        "MemoryRaised",
        "Remediate",
        change.clone(),
    )
    .await;
    Ok(change)
}

/// The declared settings to put in place at this restart, with what changes, when the Worker
/// allows it (`resources.apply: OnRestart`) and the container differs from them. After a
/// file-descriptor exhaustion (the last run's root cause), the `nofile` limit is raised by
/// `remediation.nofileFactor` up to `nofileCeiling` too.
async fn apply_declared(
    ctx: &Context,
    worker: &Worker,
    container: &ContainerInfo,
    record: &AutoRecoveryStatus,
) -> Result<Option<(resources::Declared, String)>, Error> {
    let Some(spec) = worker.spec.resources.as_ref() else {
        return Ok(None);
    };
    if spec.apply != ApplyPolicy::OnRestart {
        return Ok(None);
    }
    let mut declared = match resources::declared(spec) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "spec.resources cannot be applied");
            return Ok(None);
        }
    };
    let r = &worker.spec.auto_recovery.remediation;
    if let (Some(factor), Some(last)) = (r.nofile_factor, record.attempts.last()) {
        let runs: Api<WorkerRecovery> =
            Api::namespaced(ctx.client.clone(), &worker.namespace().unwrap_or_default());
        let exhausted = runs
            .get_opt(&last.run)
            .await?
            .and_then(|run| root_cause_of(&run))
            == Some(RootCause::FileDescriptorExhaustion);
        if exhausted {
            let (soft, hard) = container
                .nofile_limit
                .or(declared.nofile)
                .unwrap_or((1024, 1024));
            let ceiling = r.nofile_ceiling.unwrap_or(1 << 20);
            let raise = |v: i64| ((v as f64 * factor).round() as i64).min(ceiling).max(v);
            declared.nofile = Some((raise(soft), raise(hard).max(raise(soft))));
        }
    }
    let drift = resources::drift(&declared, container);
    if drift.is_empty() {
        return Ok(None);
    }
    let change = drift
        .iter()
        .map(|d| format!("{} {} -> {}", d.field, d.actual, d.declared))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Some((declared, change)))
}

/// A recreate interrupted after the old container went: its new container still has the
/// temporary name. Give it the Worker's container name; true when one was adopted.
pub async fn adopt_recreated(ctx: &Context, worker: &Worker) -> Result<bool, Error> {
    let temp = format!("{}{}", worker.spec.container, resources::NEW_SUFFIX);
    let Some(found) = ctx.docker.inspect(&temp).await? else {
        return Ok(false);
    };
    let ours = found.labels.get(trust::CONSENT_LABEL)
        == Some(&trust::consent_value(
            &worker.namespace().unwrap_or_default(),
            &worker.name_any(),
        ));
    if !ours {
        return Ok(false);
    }
    ctx.docker.rename(&found.id, &worker.spec.container).await?;
    if !found.running {
        ctx.docker.start(&found.id).await?;
    }
    let note = format!(
        "an interrupted recreate left {temp}: renamed to {} and started",
        worker.spec.container
    );
    info!("{note}");
    ctx.publish(
        worker,
        EventType::Normal,
        "RecreateCompleted",
        "Remediate",
        note,
    )
    .await;
    Ok(true)
}

/// Tell the webhook of the level reached, once per level, without waiting for it: a new level
/// becomes a `Pending` notification handed to the notifier, and a later reconcile, woken when
/// the delivery ends, writes how it went. `previous_level` is the level just left, if any.
fn notify(
    ctx: &Context,
    worker: &Worker,
    e: &mut EscalationStatus,
    previous_level: Option<String>,
) {
    let Some(hook) = worker
        .spec
        .escalation
        .as_ref()
        .and_then(|s| s.webhook.as_ref())
    else {
        return;
    };
    // A Worker read from the API always has a UID.
    let Some(uid) = worker.uid() else {
        return;
    };
    if let Some(queued) = to_hand_over(ctx, &uid, e, previous_level) {
        ctx.notifier
            .notify(&uid, notification_request(worker, hook, e, queued));
    }
}

/// When the current level's notification was queued, if it is to be handed to the notifier
/// now: a new level is queued now (a `Pending` notification), one queued before this process
/// started keeps its time. `None`: delivered, failed, or on its way (its end is recorded).
fn to_hand_over(
    ctx: &Context,
    uid: &str,
    e: &mut EscalationStatus,
    previous_level: Option<String>,
) -> Option<Timestamp> {
    let current = e.notification.as_ref().filter(|n| n.level == e.level);
    match current.map(|n| (n.state, n.queued_time.as_ref().map(|t| t.0))) {
        Some((NotificationState::Delivered | NotificationState::Failed, _)) => None,
        Some((NotificationState::Pending, Some(queued))) => {
            match ctx.notifier.progress(uid, &e.level, queued) {
                Progress::Pending => None,
                Progress::Done(outcome) => {
                    record_delivery(e, outcome);
                    None
                }
                // Queued before this process started: hand it over again, with the time left.
                Progress::Unknown => Some(queued),
            }
        }
        _ => {
            let queued = notifier::whole_seconds(Timestamp::now());
            let previous_level = previous_level.or_else(|| match &e.notification {
                Some(n) if n.level != e.level => Some(n.level.clone()),
                Some(n) => n.previous_level.clone(),
                None => None,
            });
            e.notification = Some(NotificationStatus {
                level: e.level.clone(),
                previous_level,
                state: NotificationState::Pending,
                attempts: 0,
                last_error: None,
                queued_time: Some(Time(queued)),
                time: None,
            });
            Some(queued)
        }
    }
}

/// What the notifier delivers: the level reached and the incident, to the Worker's webhook.
fn notification_request(
    worker: &Worker,
    hook: &WebhookSpec,
    e: &EscalationStatus,
    queued: Timestamp,
) -> notifier::Request {
    let now = Timestamp::now();
    let previous_level = e
        .notification
        .as_ref()
        .and_then(|n| n.previous_level.clone());
    notifier::Request {
        worker: ObjectRef::from_obj(worker),
        hook: webhook::Hook {
            url: hook.url.clone(),
            timeout: Duration::from_secs(u64::from(hook.timeout_seconds)),
            max_attempts: hook.max_attempts,
        },
        payload: EscalationPayload {
            worker: worker.name_any(),
            namespace: worker.namespace().unwrap_or_default(),
            level: e.level.clone(),
            level_index: e.level_index,
            previous_level,
            reason: e.reason.clone(),
            root_cause: e.root_cause.map(|c| c.to_string()),
            run: e.run.clone(),
            since: e.since.as_ref().map_or(now, |t| t.0).to_string(),
            time: now.to_string(),
        },
        queued,
        deliver_within: Duration::from_secs(u64::from(hook.deliver_within_seconds)),
    }
}

/// Write how the delivery of the current level's notification went.
fn record_delivery(e: &mut EscalationStatus, outcome: notifier::Outcome) {
    let Some(n) = e.notification.as_mut() else {
        return;
    };
    n.state = match outcome.delivery.result {
        Ok(_) => NotificationState::Delivered,
        Err(_) => NotificationState::Failed,
    };
    n.attempts = outcome.delivery.attempts;
    n.last_error = outcome.delivery.result.err().map(|e| e.to_string());
    n.time = Some(Time(outcome.time));
}

/// The backup Worker to move tasks to, with its admission: the one chosen when the move began
/// (it stays the backup while the move goes on), else the first healthy and admitted one.
async fn pick_backup(
    ctx: &Context,
    worker: &Worker,
    e: &EscalationStatus,
    backups: Vec<String>,
) -> Result<Option<(String, Worker, Admission)>, Error> {
    let workers: Api<Worker> =
        Api::namespaced(ctx.client.clone(), &worker.namespace().unwrap_or_default());
    let candidates = match &e.failover {
        Some(f) => vec![f.to.clone()],
        None => backups,
    };
    for name in candidates {
        let Some(backup) = workers.get_opt(&name).await? else {
            continue;
        };
        let healthy = backup
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p == WorkerPhase::Healthy);
        if !healthy && e.failover.is_none() {
            continue;
        }
        if let Ok(a) = ctx.admit(&backup).await {
            return Ok(Some((name, backup, a)));
        }
    }
    Ok(None)
}

/// At the last level: move the pending tasks to the first healthy backup Worker, in batches
/// whose names are recorded before they move. `Ok(true)`: it waits for another writer.
async fn fail_over(
    ctx: &Context,
    worker: &Worker,
    admission: &Admission,
    e: &mut EscalationStatus,
) -> Result<bool, Error> {
    let backups = match &worker.spec.escalation {
        Some(s) if !s.backup_workers.is_empty() => s.backup_workers.clone(),
        _ => return Ok(false),
    };
    if e.failover
        .as_ref()
        .is_some_and(|f| f.state != FailoverState::Moving)
    {
        return Ok(false);
    }
    let Some((to, backup_worker, backup)) = pick_backup(ctx, worker, e, backups).await? else {
        if e.failover.is_none() {
            e.failover = Some(FailoverStatus {
                to: String::new(),
                state: FailoverState::Failed,
                message: Some("no backup Worker is healthy and admitted".into()),
                ..Default::default()
            });
        }
        return Ok(false);
    };
    if !writer_of_both(ctx, worker, &backup_worker, &to).await? {
        return Ok(true);
    }
    let f = e.failover.take().unwrap_or(FailoverStatus {
        to: to.clone(),
        state: FailoverState::Moving,
        ..Default::default()
    });
    e.failover = Some(move_batch(ctx, worker, admission, &backup, &to, f).await?);
    Ok(false)
}

/// Both Workers' files change: the failover becomes the writer of both, or waits (`false`).
async fn writer_of_both(
    ctx: &Context,
    worker: &Worker,
    backup_worker: &Worker,
    to: &str,
) -> Result<bool, Error> {
    let me = writer::Holder::Failover(worker.name_any());
    for w in [worker, backup_worker] {
        let uid = worker.uid();
        if let writer::Acquired::HeldBy(holder) =
            writer::acquire(&ctx.client, w, &me, uid.as_deref()).await?
        {
            info!(%holder, backup = %to, "the failover waits: another writer has a Worker");
            return Ok(false);
        }
    }
    Ok(true)
}

/// One step of the move: the batch recorded at the last look moves, then the next batch is
/// chosen and handed back to be recorded (by the caller's status write) before it moves.
/// When no pending task is left, the failover is done.
async fn move_batch(
    ctx: &Context,
    worker: &Worker,
    admission: &Admission,
    backup: &Admission,
    to: &str,
    mut f: FailoverStatus,
) -> Result<FailoverStatus, Error> {
    if !f.batch.is_empty() {
        let (from, to_paths, names) = (
            admission.paths.clone(),
            backup.paths.clone(),
            f.batch.clone(),
        );
        let moved = blocking::run(move || failover::move_tasks(&from, &to_paths, &names)).await??;
        f.moved += (moved.moved.len() + moved.renamed.len()) as u64;
        f.batch.clear();
    }
    let from = admission.paths.clone();
    let scan = blocking::run(move || failover::scan(&from, FAILOVER_BATCH)).await??;
    if scan.oldest.is_empty() {
        finish_failover(ctx, worker, to, &mut f).await?;
    } else {
        f.batch = scan.oldest;
    }
    Ok(f)
}

/// Every pending task moved: the failover is done, said so, and gives both Leases back.
async fn finish_failover(
    ctx: &Context,
    worker: &Worker,
    to: &str,
    f: &mut FailoverStatus,
) -> Result<(), Error> {
    f.state = FailoverState::Done;
    f.message = Some(format!("{} pending task(s) moved to {to}", f.moved));
    ctx.publish(
        worker,
        EventType::Warning,
        "FailedOver",
        "Escalate",
        format!("{} pending task(s) moved to backup Worker {to}", f.moved),
    )
    .await;
    let me = writer::Holder::Failover(worker.name_any());
    let ns = worker.namespace().unwrap_or_default();
    for name in [worker.name_any(), to.to_string()] {
        writer::release(&ctx.client, &ns, &name, &me).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
