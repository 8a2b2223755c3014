//! The steps of a recovery run. Each is idempotent: run again after an operator restart, it
//! finds what it already did and finishes the rest. A dry run computes and records what each
//! step would do and changes nothing.

use crate::runtime::ContainerState;
use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    api::{Api, PostParams},
    Resource, ResourceExt,
};

use super::{cores, Error};
use crate::{
    blocking,
    confined::{self, EntryKind},
    controller::{resume_plan, Context},
    crd::{
        diagnosis::Diagnosis,
        resume_plan::{ResumePhase, ResumePlan, ResumePlanSpec},
        worker::Worker,
        worker_recovery::{StepState, StepStatus, TraceRef, WorkerRecovery},
    },
    diagnose::{self, CheckContext},
    http::MESSAGE_BODY_BYTES,
    observe::heartbeat::{self, HeartbeatObservation},
    recover::clean_state::{self, CleanStateInput, CleanStateReport},
    runtime::{CloneSpec, ContainerInfo, ContainerObservation, RuntimeError},
    telemetry::recovery_trace,
    trust::Admission,
};

/// Label on a debug container naming the run that created it (`<namespace>/<run>`): only a
/// container carrying it is ever removed by the run.
pub const RUN_LABEL: &str = "workerrecovery.io/recovery";
/// How often the verify step looks again.
const VERIFY_POLL: Duration = Duration::from_secs(1);
/// How often the resume step looks at its plan.
const RESUME_POLL: Duration = Duration::from_secs(2);
/// How long one probe of the metrics endpoint may take.
const METRICS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a step may use.
pub struct Run<'a> {
    pub ctx: &'a Context,
    pub rec: &'a WorkerRecovery,
    pub worker: &'a Worker,
    pub admission: &'a Admission,
    /// The run's start time: `last_failure` of requeued tasks, the same on every attempt.
    pub started: Timestamp,
    /// From the diagnosis: `oom`, `deadlock`, ..., `worker_crash`.
    pub failure_reason: String,
    /// When the run started the worker (restart or debug start).
    pub container_started_at: Option<Timestamp>,
}

/// What running a step gave.
pub enum Outcome {
    Done(StepResult),
    /// Not finished: look again after this long (the verify step polls).
    Wait {
        after: Duration,
        message: String,
    },
}

/// A finished step, and what it adds to the run's status.
#[derive(Default)]
pub struct StepResult {
    pub succeeded: bool,
    pub skipped: bool,
    pub message: String,
    pub figures: BTreeMap<String, i64>,
    pub details: BTreeMap<String, Vec<String>>,
    pub diagnosis: Option<Diagnosis>,
    pub container_started_at: Option<Timestamp>,
}

/// Longest step message kept: one may quote a worker's file names and error texts.
const MAX_MESSAGE_CHARS: usize = 1024;

fn message_of(message: impl Into<String>) -> String {
    let message = message.into();
    if message.len() <= MAX_MESSAGE_CHARS {
        return message;
    }
    crate::bounded::clip(&message, MAX_MESSAGE_CHARS)
}

impl StepResult {
    fn ok(message: impl Into<String>) -> Self {
        Self {
            succeeded: true,
            message: message_of(message),
            ..Default::default()
        }
    }

    fn failed(message: impl Into<String>) -> Self {
        Self {
            message: message_of(message),
            ..Default::default()
        }
    }

    fn skipped(message: impl Into<String>) -> Self {
        Self {
            succeeded: true,
            skipped: true,
            message: message_of(message),
            ..Default::default()
        }
    }

    pub fn state(&self) -> StepState {
        match (self.succeeded, self.skipped) {
            (true, true) => StepState::Skipped,
            (true, false) => StepState::Succeeded,
            _ => StepState::Failed,
        }
    }
}

impl Run<'_> {
    fn dry_run(&self) -> bool {
        self.rec.spec.dry_run
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(u64::from(self.rec.spec.stop_grace_period_seconds))
    }

    /// The consenting container as admitted (`None` when it does not exist).
    fn admitted_container(&self) -> Option<&ContainerInfo> {
        match &self.admission.container {
            ContainerObservation::Found(c) => Some(c),
            _ => None,
        }
    }

    /// The container as it is now, by the ID it had when it consented.
    async fn current(&self, id: &str) -> Result<Option<ContainerInfo>, Error> {
        Ok(self.runtime()?.inspect(id).await?)
    }

    /// What runs the worker: Docker, or systemd.
    fn runtime(&self) -> Result<std::sync::Arc<dyn crate::runtime::WorkerRuntime>, Error> {
        Ok(self.ctx.runtime(self.worker)?)
    }

    fn debug_name(&self) -> String {
        format!("{}-debug", self.worker.spec.container)
    }

    fn run_key(&self) -> String {
        format!(
            "{}/{}",
            self.rec.namespace().unwrap_or_default(),
            self.rec.name_any()
        )
    }
}

/// Diagnose: the runbook's checks, the ranked root cause feeding the steps after it.
pub async fn diagnose(run: &Run<'_>) -> Result<Outcome, Error> {
    let mut check_ctx = CheckContext::new(
        run.worker,
        run.admission.clone(),
        run.runtime()?,
        run.ctx.host.clone(),
        run.ctx.http.clone(),
    );
    if let Some(t) = run
        .rec
        .spec
        .trigger
        .as_ref()
        // Only an end (an exit, an OOM kill) is evidence of how it ended; a hung worker that
        // automatic recovery restarted did not exit on its own.
        .filter(|t| {
            t.restarted_at.is_some()
                && (t.exit_code.is_some() || t.oom_killed || t.finished_at.is_some())
        })
    {
        check_ctx.crash = Some(diagnose::CrashEvidence {
            exit_code: t.exit_code,
            oom_killed: t.oom_killed,
            finished_at: t.finished_at.as_ref().map(|f| f.0),
        });
    }
    let diagnosis = diagnose::diagnose(&check_ctx).await;
    let mut result = StepResult::ok(super::verdict_summary(&diagnosis));
    result
        .figures
        .insert("findings".into(), diagnosis.findings.len() as i64);
    result.diagnosis = Some(diagnosis);
    Ok(Outcome::Done(result))
}

/// Clean state (runbook `clean_recovery`), with the container stopped so that the worker and
/// the operator never move the same task at once.
pub async fn clean_state(run: &Run<'_>) -> Result<Outcome, Error> {
    let mut figures = BTreeMap::new();
    // A file-only Worker has no container to stop: whether its worker still runs is not
    // known, so only locks stale by age are taken as abandoned.
    let mut running = run.admitted_container().is_none();
    if let Some(c) = run.admitted_container() {
        running = false;
        if let Some(now) = run.current(&c.id).await? {
            running = now.running
                || now.status == ContainerState::Restarting
                || now.status == ContainerState::Paused;
        }
        if running && !run.dry_run() {
            run.runtime()?.stop(&c.id, run.grace()).await?;
            figures.insert("containerStopped".into(), 1);
            running = false;
        }
    }
    let input = CleanStateInput {
        paths: run.admission.paths.clone(),
        run_id: run.rec.uid().unwrap_or_else(|| run.run_key()),
        failure_time: run.started,
        failure_reason: run.failure_reason.clone(),
        max_retries: run.worker.spec.max_retries,
        stale_lock_seconds: u64::from(run.worker.spec.diagnostics.stale_lock_seconds),
        // Stopped (or removed since), the worker holds no lock any more.
        holder_gone: !running,
        dry_run: run.dry_run(),
        now: Timestamp::now(),
    };
    let report = blocking::run(move || clean_state::clean_state(&input)).await??;
    let mut result = StepResult::ok(clean_summary(&report, run.dry_run()));
    result.figures = figures;
    add_report(&mut result, &report);
    Ok(Outcome::Done(result))
}

fn clean_summary(r: &CleanStateReport, dry_run: bool) -> String {
    let verb = if dry_run { "would requeue" } else { "requeued" };
    format!(
        "{}{verb} {} task(s), dead-lettered {}, quarantined {}; {} lock(s) and {} tmp entr(ies) removed",
        if dry_run { "dry run: " } else { "" },
        r.requeued,
        r.dead_lettered,
        r.quarantined,
        r.locks_removed,
        r.tmp_entries_removed
    )
}

/// Most names of each clean-state detail list kept in the run's status, and their most bytes
/// (as JSON): the counts in `figures` stay exact.
const DETAIL_SAMPLE: usize = 20;
const DETAIL_SAMPLE_BYTES: usize = 8 * 1024;

fn add_report(result: &mut StepResult, r: &CleanStateReport) {
    let figures = [
        ("requeued", r.requeued),
        ("deadLettered", r.dead_lettered),
        ("quarantined", r.quarantined),
        ("locksRemoved", r.locks_removed),
        ("tmpEntriesRemoved", r.tmp_entries_removed),
    ];
    for (k, v) in figures {
        result
            .figures
            .insert(k.into(), i64::try_from(v).unwrap_or(i64::MAX));
    }
    if let Some(count) = r.recovery_count {
        result.figures.insert(
            "recoveryCount".into(),
            i64::try_from(count).unwrap_or(i64::MAX),
        );
    }
    let details = [
        ("requeuedTasks", &r.requeued_tasks),
        ("deadLetteredTasks", &r.dead_lettered_tasks),
        ("quarantinedTasks", &r.quarantined_tasks),
        ("removedLocks", &r.removed_locks),
        ("removedTmpEntries", &r.removed_tmp_entries),
        ("skipped", &r.skipped),
    ];
    for (k, v) in details {
        if !v.is_empty() {
            // A sample sized for the run's status: names may be 255 bytes, escaped six-fold.
            let kept = crate::bounded::sample(v, DETAIL_SAMPLE, DETAIL_SAMPLE_BYTES);
            result.details.insert(k.into(), kept);
        }
    }
}

/// Restart: start the container (stopping it first when it runs, with the spec's grace period)
/// and record its new start time. Resumed after the start, it only records it.
pub async fn restart(run: &Run<'_>, step: &StepStatus) -> Result<Outcome, Error> {
    let Some(c) = run.admitted_container() else {
        return Ok(Outcome::Done(StepResult::failed(format!(
            "{:?} does not exist: nothing to restart",
            run.worker.target()
        ))));
    };
    if run.dry_run() {
        let mut result = StepResult::ok(format!(
            "dry run: would {} container {} ({})",
            if c.running { "restart" } else { "start" },
            c.name,
            c.short_id()
        ));
        result
            .details
            .insert("container".into(), vec![c.name.clone()]);
        return Ok(Outcome::Done(result));
    }
    let step_start = step.start_time.as_ref().map(|t| t.0);
    let now = run
        .current(&c.id)
        .await?
        .ok_or_else(|| RuntimeError::NotFound(c.id.clone()))?;
    if let Some(at) = run
        .rec
        .spec
        .trigger
        .as_ref()
        .and_then(|t| t.restarted_at.as_ref())
    {
        // Automatic recovery started the container before it created this run: record that
        // start. A crash since is the policy's to handle (with its backoff), not this step's.
        let mut result = if now.running {
            StepResult::ok(format!(
                "container {} was started by automatic recovery at {}",
                now.name, at.0
            ))
        } else {
            StepResult::failed(format!(
                "container {} was started by automatic recovery at {} and is {} again{}",
                now.name,
                at.0,
                now.status,
                now.exit_code
                    .map_or(String::new(), |c| format!(" (exit code {c})"))
            ))
        };
        result.container_started_at = now.started_at;
        return Ok(Outcome::Done(result));
    }
    let already =
        now.running && matches!((now.started_at, step_start), (Some(s), Some(t)) if s >= t);
    if !already {
        let runtime = run.runtime()?;
        if now.running {
            runtime.restart(&c.id, run.grace()).await?;
        } else {
            runtime.start(&c.id).await?;
        }
        run.ctx.metrics.record_restart(super::CONTROLLER);
    }
    let after = run
        .current(&c.id)
        .await?
        .ok_or_else(|| RuntimeError::NotFound(c.id.clone()))?;
    let mut result = StepResult::ok(format!(
        "container {} started at {}",
        after.name,
        after
            .started_at
            .map_or("an unknown time".to_string(), |t| t.to_string())
    ));
    result.container_started_at = after.started_at;
    Ok(Outcome::Done(result))
}

/// Debug start (runbook "Start with Debugging"): `<container>-debug`, a copy with debug
/// logging, tracing and core dumps; the original stays stopped.
pub async fn debug_start(run: &Run<'_>) -> Result<Outcome, Error> {
    if !run.runtime()?.capabilities().debug_copy {
        return Ok(Outcome::Done(StepResult::failed(format!(
            "{} is a systemd unit: a debug copy needs the Docker runtime (use a Quick or Clean run)",
            run.worker.target()
        ))));
    }
    let Some(c) = run.admitted_container() else {
        return Ok(Outcome::Done(StepResult::failed(format!(
            "container {:?} does not exist: nothing to copy",
            run.worker.spec.container
        ))));
    };
    let name = run.debug_name();
    let endpoint = run.rec.spec.debug.otlp_endpoint.clone();
    let cores = cores::setup(run.ctx, run.rec, &run.admission.paths, run.dry_run()).await;
    let mut details = BTreeMap::from([("container".to_string(), vec![name.clone()])]);
    if let Some(dir) = &cores.dir {
        details.insert(
            cores::CORE_DIR_DETAIL.into(),
            vec![dir.display().to_string()],
        );
    }
    if run.dry_run() {
        let mut result = StepResult::ok(format!(
            "dry run: would create and start {name} from {} with LOG_LEVEL=DEBUG, OTLP traces to {endpoint} and unlimited core dumps; {}",
            c.name, cores.note
        ));
        result.details = details;
        return Ok(Outcome::Done(result));
    }
    let id = match run.ctx.docker.inspect(&name).await? {
        Some(existing) if existing.labels.get(RUN_LABEL) == Some(&run.run_key()) => existing.id,
        Some(_) => {
            return Ok(Outcome::Done(StepResult::failed(format!(
            "a container named {name} exists and was not created by this run; remove or rename it"
        ))))
        }
        None => {
            let spec = CloneSpec {
                name: name.clone(),
                env: vec![
                    ("LOG_LEVEL".into(), "DEBUG".into()),
                    ("OTEL_TRACES_EXPORTER".into(), "otlp".into()),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint),
                ],
                labels: [(RUN_LABEL.to_string(), run.run_key())].into(),
                core_unlimited: true,
                core_dir: cores.mount.clone(),
                working_dir: cores.working_dir.clone(),
            };
            run.ctx.docker.create_clone(&c.id, &spec).await?
        }
    };
    run.ctx.docker.start(&id).await?;
    let started = run
        .current(&id)
        .await?
        .ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
    let mut result = StepResult::ok(format!(
        "debug container {name} ({}) started; {} stays stopped; {}",
        started.short_id(),
        c.name,
        cores.note
    ));
    result.details = details;
    result.container_started_at = started.started_at;
    Ok(Outcome::Done(result))
}

/// Verify health: running, a heartbeat newer than the start, the metrics endpoint answering
/// when declared; waits up to the spec's deadline.
pub async fn verify_health(run: &Run<'_>, step: &StepStatus) -> Result<Outcome, Error> {
    if run.dry_run() {
        return Ok(Outcome::Done(StepResult::skipped(
            "dry run: nothing was started, so nothing to verify",
        )));
    }
    let debug = run.rec.spec.mode == crate::crd::worker_recovery::RecoveryMode::Debug;
    let target = if debug {
        run.debug_name()
    } else {
        match run.admitted_container() {
            Some(c) => c.id.clone(),
            None => {
                return Ok(Outcome::Done(StepResult::failed(
                    "the container does not exist",
                )))
            }
        }
    };
    let mut missing = Vec::new();
    // The debug copy is found by name: only the one this run labelled counts.
    let container = run
        .current(&target)
        .await?
        .filter(|c| !debug || c.labels.get(RUN_LABEL) == Some(&run.run_key()));
    let started_at = container
        .as_ref()
        .and_then(|c| c.started_at)
        .or(run.container_started_at);
    match &container {
        Some(c) if c.running => {}
        // It ran and stopped again since the run started it: waiting longer cannot help.
        Some(c)
            if c.status == ContainerState::Exited
                && matches!((c.finished_at, started_at), (Some(f), Some(s)) if f >= s) =>
        {
            return Ok(Outcome::Done(StepResult::failed(format!(
                "the worker exited again after its start: {}",
                crate::controller::worker::decide::exit_description(c)
            ))));
        }
        Some(c) => missing.push(format!("container {} is {}", c.name, c.status)),
        None => missing.push(format!("container {target} does not exist")),
    }
    let heartbeat_age = heartbeat_and_metrics(run, started_at, &mut missing).await;
    if missing.is_empty() {
        let mut result = StepResult::ok(format!(
            "healthy: container running, heartbeat {}{}",
            heartbeat_age.map_or("fresh".into(), |a| format!(
                "{:.1}s old",
                a.as_secs_f64().max(0.0)
            )),
            if run.worker.spec.metrics.is_some() {
                ", metrics endpoint answering"
            } else {
                ""
            }
        ));
        if let Some(age) = heartbeat_age {
            result
                .figures
                .insert("heartbeatAgeMs".into(), age.as_millis().max(0) as i64);
        }
        return Ok(Outcome::Done(result));
    }
    let since = step.start_time.as_ref().map_or(Timestamp::now(), |t| t.0);
    let deadline = since
        .checked_add(SignedDuration::from_secs(i64::from(
            run.rec.spec.verify_timeout_seconds,
        )))
        .unwrap_or(since);
    let message = missing.join("; ");
    if Timestamp::now() < deadline {
        return Ok(Outcome::Wait {
            after: VERIFY_POLL,
            message: format!("waiting until {deadline}: {message}"),
        });
    }
    Ok(Outcome::Done(StepResult::failed(format!(
        "not healthy within {}s: {message}",
        run.rec.spec.verify_timeout_seconds
    ))))
}

/// The heartbeat since `started_at`, and the metrics endpoint when declared: what is missing
/// goes into `missing`; returns the heartbeat's age when there is one since the start.
async fn heartbeat_and_metrics(
    run: &Run<'_>,
    started_at: Option<Timestamp>,
    missing: &mut Vec<String>,
) -> Option<SignedDuration> {
    let paths = &run.admission.paths;
    let mut heartbeat_age = None;
    match heartbeat::read(&paths.trusted_root, &paths.heartbeat_file).await {
        HeartbeatObservation::Present(hb) if started_at.is_none_or(|s| hb.at > s) => {
            heartbeat_age = Some(Timestamp::now().duration_since(hb.at));
        }
        HeartbeatObservation::Present(hb) => {
            missing.push(format!("no heartbeat since the start (last {})", hb.at))
        }
        HeartbeatObservation::Missing => missing.push("no heartbeat file".into()),
        HeartbeatObservation::Unreadable(e) | HeartbeatObservation::Invalid(e) => {
            missing.push(format!("heartbeat unreadable: {e}"))
        }
    }
    if let Some(metrics) = &run.worker.spec.metrics {
        let probe = run
            .ctx
            .http
            .get(&metrics.url, METRICS_PROBE_TIMEOUT, MESSAGE_BODY_BYTES)
            .await;
        match probe {
            Ok(r) if (200..300).contains(&r.status) => {}
            Ok(r) => missing.push(format!(
                "metrics endpoint answered with status {}",
                r.status
            )),
            Err(e) => missing.push(format!("metrics endpoint: {e}")),
        }
    }
    heartbeat_age
}

/// Name of the ResumePlan a run creates: `<run>-resume`, cut to the 253 characters a name may
/// have.
pub fn resume_plan_name(rec: &WorkerRecovery) -> String {
    let run = rec.name_any();
    let keep = run.len().min(253 - "-resume".len());
    let mut cut = run[..keep].trim_end_matches(['-', '.']).to_string();
    cut.push_str("-resume");
    cut
}

/// Resume: hand the pending tasks (the ones this run requeued among them) to a ResumePlan owned
/// by the run, and wait for it to complete. The plan is created once; after an operator restart
/// the step finds it and goes on waiting. A dry run only counts what the plan would release.
pub async fn resume(
    run: &Run<'_>,
    step: &StepStatus,
    requeued: Option<i64>,
    trace: Option<&TraceRef>,
) -> Result<Outcome, Error> {
    if run.dry_run() {
        return dry_resume(run, requeued).await;
    }
    let ns = run.rec.namespace().unwrap_or_default();
    let api: Api<ResumePlan> = Api::namespaced(run.ctx.client.clone(), &ns);
    let name = resume_plan_name(run.rec);
    let plan = match api.get_opt(&name).await? {
        Some(plan) => plan,
        None => {
            let plan = new_plan(run, &name, step, trace);
            match api.create(&PostParams::default(), &plan).await {
                Ok(created) => created,
                // Created meanwhile (a retry after a lost answer): use it.
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let owned = plan
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == run.rec.metadata.uid.as_ref());
    if !owned {
        return Ok(Outcome::Done(StepResult::failed(format!(
            "a ResumePlan named {name} exists and does not belong to this run; not used"
        ))));
    }
    let status = plan.status.clone().unwrap_or_default();
    let progress = format!(
        "ResumePlan {name}: {} of {} task(s) released in {} batch(es), {} failure(s)",
        status.tasks_staged, status.tasks_total, status.batches_done, status.tasks_failed
    );
    let figures = |result: &mut StepResult| {
        for (k, v) in [
            ("tasksTotal", status.tasks_total),
            ("tasksStaged", status.tasks_staged),
            ("tasksFailed", status.tasks_failed),
            ("batches", u64::from(status.batches_done)),
        ] {
            result.figures.insert(k.into(), v as i64);
        }
        if let Some(n) = requeued {
            result.figures.insert("requeued".into(), n);
        }
    };
    match status.phase {
        Some(ResumePhase::Completed) => {
            let mut result = StepResult::ok(progress);
            figures(&mut result);
            Ok(Outcome::Done(result))
        }
        Some(ResumePhase::Halted) => {
            let mut result = StepResult::failed(format!(
                "ResumePlan {name} halted: {}",
                status.halt_reason.unwrap_or_default()
            ));
            figures(&mut result);
            Ok(Outcome::Done(result))
        }
        Some(ResumePhase::Failed) => {
            let why = status
                .conditions
                .iter()
                .find(|c| c.type_ == crate::controller::resume_plan::COMPLETED)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            Ok(Outcome::Done(StepResult::failed(format!(
                "ResumePlan {name} failed: {why}"
            ))))
        }
        Some(ResumePhase::Paused) => Ok(Outcome::Wait {
            after: RESUME_POLL,
            message: format!("{progress}; paused"),
        }),
        _ => Ok(Outcome::Wait {
            after: RESUME_POLL,
            message: progress,
        }),
    }
}

/// The plan of a run: the run's resume settings, owned by the run (deleted with it), its
/// batch spans under the step's span.
fn new_plan(run: &Run<'_>, name: &str, step: &StepStatus, trace: Option<&TraceRef>) -> ResumePlan {
    let settings = &run.rec.spec.resume;
    let mut plan = ResumePlan::new(
        name,
        ResumePlanSpec {
            worker_ref: run.rec.spec.worker_ref.clone(),
            batch_size: settings.batch_size,
            batch_delay_seconds: settings.batch_delay_seconds,
            max_failure_ratio: settings.max_failure_ratio,
            paused: false,
            mark_worker_state: true,
            monitor_interval_seconds: run.rec.spec.monitor_interval_seconds,
        },
    );
    plan.metadata.namespace = run.rec.namespace();
    plan.metadata.owner_references = run.rec.controller_owner_ref(&()).map(|o| vec![o]);
    plan.metadata.labels = Some(
        [(RUN_LABEL.to_string(), run.rec.name_any())]
            .into_iter()
            .collect(),
    );
    if let (Some(t), Some(span)) = (trace, &step.span_id) {
        plan.metadata.annotations = Some(
            [(
                resume_plan::TRACEPARENT_ANNOTATION.to_string(),
                recovery_trace::traceparent(&t.trace_id, span),
            )]
            .into_iter()
            .collect(),
        );
    }
    plan
}

async fn dry_resume(run: &Run<'_>, requeued: Option<i64>) -> Result<Outcome, Error> {
    let paths = run.admission.paths.clone();
    let pending = paths.tasks_dir.join("pending");
    // Counted streaming: exact for a pending/ of any size, nothing kept.
    let waiting = blocking::run(move || {
        let mut count = 0usize;
        confined::visit_dir(&paths.trusted_root, &pending, |e| {
            count += usize::from(e.kind == EntryKind::File && e.name.ends_with(".json"));
        })
        .map(|_| count)
    })
    .await??;
    let settings = &run.rec.spec.resume;
    let mut result = StepResult::ok(format!(
        "dry run: would create ResumePlan {} to release {waiting} pending task(s){} in batches of {} every {}s",
        resume_plan_name(run.rec),
        requeued.map_or(String::new(), |n| format!(" ({n} of them requeued by this run)")),
        settings.batch_size,
        settings.batch_delay_seconds,
    ));
    result.figures.insert("pending".into(), waiting as i64);
    if let Some(n) = requeued {
        result.figures.insert("requeued".into(), n);
    }
    Ok(Outcome::Done(result))
}

/// Remove the run's debug container, only when it carries this run's label.
pub async fn remove_debug_container(
    ctx: &Context,
    rec: &WorkerRecovery,
    container: &str,
) -> Result<bool, Error> {
    let name = format!("{container}-debug");
    let key = format!("{}/{}", rec.namespace().unwrap_or_default(), rec.name_any());
    match ctx.docker.inspect(&name).await? {
        Some(c) if c.labels.get(RUN_LABEL) == Some(&key) => Ok(ctx.docker.remove(&c.id).await?),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        diagnosis::{CheckName, Finding, FindingKind, RankedCause, RootCause, Severity, Verdict},
        worker_recovery::{StepName, WorkerRecoveryStatus},
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn the_worst_run_status_stays_far_below_the_object_size_limit() {
        let now = Timestamp::from_second(1_795_823_941).unwrap();
        // Names JSON escapes six-fold, as long as clean state lets them be (220 bytes).
        let esc = |n: usize| "\u{1}".repeat(n);
        let list = |f: &dyn Fn(usize) -> String| -> Vec<String> {
            (0..clean_state::SAMPLE_LIMIT).map(f).collect()
        };
        let name = |i: usize| format!("{i:04}{}.json", esc(211));
        let report = CleanStateReport {
            requeued: u64::MAX,
            requeued_tasks: list(&|i| format!("{} -> {}", name(i), name(i))),
            dead_lettered_tasks: list(&|i| format!("{} -> {}", name(i), name(i))),
            quarantined_tasks: list(&|i| format!("{}: {} (as {})", name(i), esc(300), name(i))),
            removed_locks: list(&|i| format!("marie_{}.lock", name(i))),
            removed_tmp_entries: list(&|_| esc(255)),
            skipped: list(&|i| format!("tasks/marie/active/{}: {}", name(i), esc(300))),
            ..Default::default()
        };
        let mut clean = StepResult::ok("clean");
        add_report(&mut clean, &report);
        let k = esc(4096);
        // Every step with the longest message it keeps; the clean-state step with its details.
        let message = StepResult::failed(k.clone()).message;
        let step = |name: StepName| StepStatus {
            message: Some(message.clone()),
            details: match name {
                StepName::CleanState => clean.details.clone(),
                _ => [("container".to_string(), vec!["c".repeat(255)])].into(),
            },
            figures: clean.figures.clone(),
            ..StepStatus::pending(name)
        };
        // Every check at its worst: many findings, long summaries, evidence at its cap.
        let findings: Vec<Finding> = (0..400)
            .map(|i| {
                let mut f = Finding {
                    check: CheckName::Deadlock,
                    kind: FindingKind::StuckTask,
                    severity: [Severity::Info, Severity::Warning, Severity::Critical][i % 3],
                    summary: esc(64 * 1024),
                    evidence: Default::default(),
                    observed_at: Time(now),
                };
                // One finding alone past the budget is left out; these fit a few at a time.
                let len = if i == 0 { 4096 } else { 256 };
                for e in 0..8 {
                    f = f.with(&format!("key{e}"), esc(len));
                }
                f
            })
            .collect();
        let status = WorkerRecoveryStatus {
            steps: [
                StepName::Diagnose,
                StepName::CleanState,
                StepName::Restart,
                StepName::VerifyHealth,
                StepName::Resume,
            ]
            .map(step)
            .into(),
            failure_reason: Some(k.clone()),
            diagnosis: Some(Diagnosis {
                worker: "w".repeat(253),
                container: "c".repeat(255),
                started_at: Time(now),
                completed_at: Time(now),
                findings: diagnose::bounded_findings(findings, now),
                verdict: Verdict {
                    top_cause: Some(RootCause::Deadlock),
                    causes: (0..7)
                        .map(|_| RankedCause {
                            cause: RootCause::Deadlock,
                            score: u32::MAX,
                            summary: "s".repeat(1024),
                            supporting: vec![FindingKind::StuckTask; 40],
                        })
                        .collect(),
                },
            }),
            ..Default::default()
        };
        let len = serde_json::to_vec(&status).unwrap().len();
        eprintln!("worst WorkerRecovery status: {len} bytes");
        assert!(len < 256 * 1024, "{len}");
        let kept = &status.diagnosis.as_ref().unwrap().findings;
        assert!(kept.len() > 2, "{}", kept.len());
        assert!(kept.last().unwrap().evidence.contains_key("notKept"));
        assert!(kept[..kept.len() - 1]
            .iter()
            .all(|f| f.severity == Severity::Critical));
    }
}

#[cfg(test)]
mod step_tests;
