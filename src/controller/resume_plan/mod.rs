//! The ResumePlan controller: the runbook's `gradual_resume`.
//!
//! Pending tasks of the Worker, oldest first, are moved to `staged/` in batches of `batchSize`;
//! each batch is given `batchDelaySeconds`, then judged by the failures of that batch, and the
//! plan halts when they exceed `maxFailureRatio` of it.
//!
//! The plan's status is the record of what was moved. A batch's task names are written into
//! `status.currentBatch` before the first of them moves; an operator killed mid-batch finds
//! the batch unreleased and releases it again, which moves each task still in `pending/` once
//! and counts those already gone, so no task moves twice and none is lost (a move is one
//! atomic `rename` that never replaces). The next batch is chosen only once this one is
//! recorded as judged.

pub mod decide;
mod error;

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::Api,
    runtime::{controller::Action, events::EventType},
    ResourceExt,
};
use opentelemetry::KeyValue;
use tracing::{info, warn};

pub use super::conditions::WAITING;
pub use decide::{COMPLETED, HALTED};

use self::decide::Blocked;
pub use error::Error;

use super::{
    apply_status,
    conditions::{merge, Waiting},
    finalizer,
    watch::RecordsItsWork,
    writer, Admitted, Context, Held,
};
use crate::{
    blocking,
    crd::{
        monitoring::MetricsWatch,
        resume_plan::{BatchResult, CurrentBatch, ResumePhase, ResumePlan, ResumePlanStatus},
        worker::{ResolvedPaths, Worker},
    },
    metrics::WorkerKey,
    observe::monitor,
    recover::batches::{self, StateWrite},
    telemetry::recovery_trace::{self, SpanRecord},
    trust::AdmitError,
};

pub const CONTROLLER: &str = "resumeplan";
/// Finalizer of a plan that marked the worker `recovering`: deleting the plan before it
/// completed gives the worker its queue back (`running`).
pub const FINALIZER: &str = "workerrecovery.io/worker-state";
/// Annotation with the W3C `traceparent` under which the plan's batch spans go (set on the
/// plans that recovery runs create).
pub const TRACEPARENT_ANNOTATION: &str = "workerrecovery.io/traceparent";
/// How long to wait for a Worker that does not exist (yet).
const WORKER_WAIT: Duration = Duration::from_secs(15);

impl RecordsItsWork for ResumePlan {
    const CONTROLLER: &'static str = CONTROLLER;
    type Error = Error;

    fn worker_name(&self) -> &str {
        &self.spec.worker_ref.name
    }

    async fn advance(&self, ctx: &Context) -> Result<Action, Error> {
        advance_plan(self, ctx).await
    }
}

/// Writes the plan's status: phase, completion time and conditions with it.
struct StatusWriter<'a> {
    plan: &'a ResumePlan,
    api: Api<ResumePlan>,
}

impl StatusWriter<'_> {
    async fn write(
        &self,
        status: &mut ResumePlanStatus,
        phase: ResumePhase,
        blocked: Option<Blocked>,
    ) -> Result<(), Error> {
        status.phase = Some(phase);
        if !phase.is_final() {
            status.completion_time = None;
        } else if status.completion_time.is_none() {
            status.completion_time = Some(Time(Timestamp::now()));
        }
        status.observed_generation = self.plan.metadata.generation;
        let previous = self
            .plan
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        status.conditions = merge(
            previous,
            &decide::conditions(phase, status, &self.plan.spec, blocked.as_ref()),
            self.plan.metadata.generation,
            Timestamp::now(),
        );
        apply_status(&self.api, self.plan, status).await?;
        Ok(())
    }
}

/// Move the plan on as far as it can go now: release the recorded batch, judge it once its
/// delay is over, choose the next one or complete. Each decision is written before what it
/// decided is done.
async fn advance_plan(plan: &ResumePlan, ctx: &Context) -> Result<Action, Error> {
    let api: Api<ResumePlan> =
        Api::namespaced(ctx.client.clone(), &plan.namespace().unwrap_or_default());
    if plan.metadata.deletion_timestamp.is_some() {
        return clean_up(plan, ctx, &api).await;
    }
    let record = StatusWriter {
        plan,
        api: api.clone(),
    };
    let mut status = plan.status.clone().unwrap_or_default();
    if let Some(action) = settle_finished(&record, &mut status).await? {
        return Ok(action);
    }
    let (worker, admission) = match admit(ctx, &record, &mut status).await? {
        Admitted::Yes(admitted) => *admitted,
        Admitted::No(action) => return Ok(action),
    };
    start(ctx, plan, &api, &mut status, &admission.paths).await?;
    let batches = Batches {
        ctx,
        plan,
        record: &record,
        paths: admission.paths,
        metrics_url: worker.spec.metrics.as_ref().map(|m| m.url.clone()),
        traceparent: plan
            .annotations()
            .get(TRACEPARENT_ANNOTATION)
            .and_then(|v| recovery_trace::parse_traceparent(v)),
    };
    loop {
        let now = Timestamp::now();
        batches.watch_metrics(&mut status, now).await;
        let next = match status.current_batch.clone() {
            Some(batch) if batch.released_time.is_none() => {
                batches.release_batch(&mut status, batch, now).await?
            }
            Some(batch) => batches.judge_batch(&mut status, batch, now).await?,
            None => batches.start_or_complete(&mut status).await?,
        };
        if let Some(action) = next {
            return Ok(action);
        }
    }
}

/// A final plan stays as it is, unless its spec changed: a completed plan only records that
/// the change was seen, a halted or failed one goes on. `Some` ends the reconcile.
async fn settle_finished(
    record: &StatusWriter<'_>,
    status: &mut ResumePlanStatus,
) -> Result<Option<Action>, Error> {
    let spec_changed = status.observed_generation != record.plan.metadata.generation;
    match status.phase {
        Some(ResumePhase::Completed) if spec_changed => {
            record.write(status, ResumePhase::Completed, None).await?;
            Ok(Some(Action::await_change()))
        }
        Some(p) if p.is_final() && !spec_changed => Ok(Some(Action::await_change())),
        Some(ResumePhase::Halted | ResumePhase::Failed) => {
            info!("the spec changed: the plan continues");
            status.halt_reason = None;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Find the plan's Worker, admit it, and make sure nobody else is changing it.
async fn admit(
    ctx: &Context,
    record: &StatusWriter<'_>,
    status: &mut ResumePlanStatus,
) -> Result<Admitted, Error> {
    let plan = record.plan;
    let ns = plan.namespace().unwrap_or_default();
    let workers: Api<Worker> = Api::namespaced(ctx.client.clone(), &ns);
    let worker_name = &plan.spec.worker_ref.name;
    let Some(worker) = workers.get_opt(worker_name).await? else {
        let message =
            format!("Worker {worker_name:?} does not exist in namespace {ns}; waiting for it");
        let blocked = Blocked {
            reason: "WorkerNotFound",
            message,
            waits: true,
        };
        record
            .write(status, ResumePhase::Pending, Some(blocked))
            .await?;
        return Ok(Admitted::No(Action::requeue(WORKER_WAIT)));
    };
    let admission = match ctx.admit(&worker).await.map_err(|e| Held::of(e, &worker)) {
        Ok(a) => a,
        Err(held @ Held::Waits { .. }) => {
            return Ok(Admitted::No(wait(record, status, held.into()).await?))
        }
        Err(held @ Held::Refused { .. }) => {
            return Ok(Admitted::No(
                refuse(ctx, record, status, held.into()).await?,
            ))
        }
    };
    if let Some(holder) = writer_elsewhere(ctx, &worker, plan).await? {
        let held = Held::Waits {
            why: Waiting::AnotherRunActive,
            message: format!(
                "{holder} is changing Worker {worker_name}; this plan goes on when it finishes"
            ),
        };
        return Ok(Admitted::No(wait(record, status, held.into()).await?));
    }
    Ok(Admitted::Yes(Box::new((worker, admission))))
}

/// The first look at a plan: mark the worker `recovering` (when asked to) and fix the start
/// and the cutoff, once.
async fn start(
    ctx: &Context,
    plan: &ResumePlan,
    api: &Api<ResumePlan>,
    status: &mut ResumePlanStatus,
    paths: &ResolvedPaths,
) -> Result<(), Error> {
    if status.start_time.is_some() {
        return Ok(());
    }
    let now = Timestamp::now();
    if plan.spec.mark_worker_state {
        // The finalizer first: a plan deleted from here on gives the queue back.
        finalizer::add(api, plan, FINALIZER).await?;
        let p = paths.clone();
        let wrote = blocking::run(move || batches::set_worker_status(&p, "recovering")).await??;
        note_state_write(ctx, plan, "recovering", &wrote).await;
    }
    status.start_time = Some(Time(now));
    status.cutoff_time = Some(Time(decide::cutoff(now)));
    Ok(())
}

/// The batches of one admitted plan.
struct Batches<'a> {
    ctx: &'a Context,
    plan: &'a ResumePlan,
    record: &'a StatusWriter<'a>,
    paths: ResolvedPaths,
    metrics_url: Option<String>,
    /// Where the batch spans go: the run's `resume` span.
    traceparent: Option<(String, String)>,
}

impl Batches<'_> {
    fn monitor_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.plan.spec.monitor_interval_seconds))
    }

    /// Scrape the worker's metrics endpoint when it declares one and a look is due.
    async fn watch_metrics(&self, status: &mut ResumePlanStatus, now: Timestamp) {
        let Some(url) = &self.metrics_url else {
            return;
        };
        if monitor::due(status.monitoring.as_ref(), self.monitor_interval(), now) {
            let scraped = monitor::scrape(&self.ctx.http, url).await;
            monitor::record(
                status.monitoring.get_or_insert_with(MetricsWatch::default),
                scraped,
                now,
            );
        }
    }

    /// The increase of the worker's failed-task counter seen so far.
    fn failed_increase(status: &ResumePlanStatus) -> i64 {
        status
            .monitoring
            .as_ref()
            .map_or(0, |m| m.task_failed_increase)
    }

    /// Move the recorded batch's tasks still in `pending/` to `staged/` (again after a crash:
    /// a task already gone is counted, not moved twice) and record the release.
    async fn release_batch(
        &self,
        status: &mut ResumePlanStatus,
        mut batch: CurrentBatch,
        now: Timestamp,
    ) -> Result<Option<Action>, Error> {
        let (p, names) = (self.paths.clone(), batch.tasks.clone());
        let released = blocking::run(move || batches::release(&p, &names)).await??;
        batch.moved = (released.moved.len() + released.gone.len()) as u32;
        for name in &released.collided {
            note_left_out(
                status,
                format!("{name}: staged/ has a file of that name; left in pending/"),
            );
        }
        batch.released_time = Some(Time(now));
        batch.failed_increase_at_release = Self::failed_increase(status);
        status.tasks_staged += u64::from(batch.moved);
        status.tasks_remaining = status
            .tasks_remaining
            .saturating_sub(u64::from(batch.moved));
        let delay = u64::from(self.plan.spec.batch_delay_seconds);
        status.next_batch_time = Some(Time(now + Duration::from_secs(delay)));
        let taken = if released.gone.is_empty() {
            String::new()
        } else {
            format!(", {} already taken by the worker", released.gone.len())
        };
        let message = format!(
            "batch {}: {} task(s) moved to staged/{taken}",
            batch.number,
            released.moved.len(),
        );
        status.current_batch = Some(batch);
        self.record
            .write(status, ResumePhase::Running, None)
            .await?;
        info!("{message}");
        self.ctx
            .publish(
                self.plan,
                EventType::Normal,
                "BatchReleased",
                "Resume",
                message,
            )
            .await;
        Ok(None)
    }

    /// Once the batch's delay is over, judge it by its failures; halt the plan when they
    /// exceed the ratio. Until then, look again when the delay ends (or the next scrape).
    async fn judge_batch(
        &self,
        status: &mut ResumePlanStatus,
        batch: CurrentBatch,
        now: Timestamp,
    ) -> Result<Option<Action>, Error> {
        let spec = &self.plan.spec;
        if let Some(left) = decide::wait_left(&batch, spec.batch_delay_seconds, now) {
            self.record
                .write(status, ResumePhase::Running, None)
                .await?;
            let next = match self.metrics_url {
                Some(_) => left.min(self.monitor_interval()),
                None => left,
            };
            return Ok(Some(Action::requeue(next.max(Duration::from_millis(200)))));
        }
        let (p, names) = (self.paths.clone(), batch.tasks.clone());
        let failed_now = blocking::run(move || batches::present_in_failed(&p, &names)).await??;
        let result = decide::judge(&batch, &failed_now, Self::failed_increase(status), now);
        let halt = decide::exceeds(&result, spec.max_failure_ratio);
        if let Some((trace_id, parent)) = &self.traceparent {
            let span = batch_span(trace_id, parent, &result, halt, spec.max_failure_ratio);
            recovery_trace::emit(span);
        }
        let reason = halt.then(|| decide::halt_reason(&result, spec.max_failure_ratio));
        decide::record(status, result);
        status.current_batch = None;
        let Some(reason) = reason else {
            return Ok(None);
        };
        status.halt_reason = Some(reason.clone());
        status.next_batch_time = None;
        self.record.write(status, ResumePhase::Halted, None).await?;
        release_writer(self.ctx, self.plan).await?;
        warn!(%reason, "gradual resume halted");
        self.ctx.metrics.workers.record_halt(WorkerKey::new(
            self.plan.namespace().unwrap_or_default(),
            self.plan.spec.worker_ref.name.clone(),
        ));
        self.ctx
            .publish(
                self.plan,
                EventType::Warning,
                "ResumeHalted",
                "Resume",
                reason,
            )
            .await;
        Ok(Some(Action::await_change()))
    }

    /// With no batch recorded: pause, complete when no eligible task is left, or record the
    /// next batch (the oldest tasks) before any of it moves.
    async fn start_or_complete(
        &self,
        status: &mut ResumePlanStatus,
    ) -> Result<Option<Action>, Error> {
        let spec = &self.plan.spec;
        if spec.paused {
            status.next_batch_time = None;
            self.record.write(status, ResumePhase::Paused, None).await?;
            return Ok(Some(Action::await_change()));
        }
        let (p, limit) = (self.paths.clone(), spec.batch_size as usize);
        let cutoff = status.cutoff_time.as_ref().expect("set at the start").0;
        let scan = blocking::run(move || batches::scan_pending(&p, cutoff.into(), limit)).await??;
        if status.batches_done == 0 && status.tasks_staged == 0 {
            status.tasks_total = scan.eligible;
        }
        status.tasks_remaining = scan.eligible;
        for why in scan.left_out.iter().take(decide::NAME_SAMPLE) {
            note_left_out(status, why.clone());
        }
        if scan.oldest.is_empty() {
            return self.complete(status).await.map(Some);
        }
        let (p, names) = (self.paths.clone(), scan.oldest.clone());
        let failed_before = blocking::run(move || batches::present_in_failed(&p, &names)).await??;
        status.current_batch = Some(CurrentBatch {
            number: status.batches_done + 1,
            tasks: scan.oldest,
            failed_before,
            ..Default::default()
        });
        // The intent is durable before the first task moves.
        self.record
            .write(status, ResumePhase::Running, None)
            .await?;
        Ok(None)
    }

    /// Every eligible task is released: give the worker its queue back (when the plan marked
    /// it), record the end and the writer Lease.
    async fn complete(&self, status: &mut ResumePlanStatus) -> Result<Action, Error> {
        status.next_batch_time = None;
        if self.plan.spec.mark_worker_state {
            let p = self.paths.clone();
            let wrote = blocking::run(move || batches::set_worker_status(&p, "running")).await??;
            note_state_write(self.ctx, self.plan, "running", &wrote).await;
        }
        self.record
            .write(status, ResumePhase::Completed, None)
            .await?;
        release_writer(self.ctx, self.plan).await?;
        let message = format!(
            "{} task(s) released in {} batch(es), {} failure(s)",
            status.tasks_staged, status.batches_done, status.tasks_failed
        );
        info!("gradual resume completed: {message}");
        self.ctx
            .publish(
                self.plan,
                EventType::Normal,
                "ResumeCompleted",
                "Resume",
                message,
            )
            .await;
        Ok(Action::await_change())
    }
}

/// How often a waiting plan looks again.
const WAIT_POLL: Duration = Duration::from_secs(2);

/// Write that the plan waits (phase `Pending` until it has begun) and look again soon.
async fn wait(
    record: &StatusWriter<'_>,
    status: &mut ResumePlanStatus,
    blocked: Blocked,
) -> Result<Action, Error> {
    let phase = match status.phase {
        Some(p) if status.start_time.is_some() && !p.is_final() => p,
        _ => ResumePhase::Pending,
    };
    record.write(status, phase, Some(blocked)).await?;
    Ok(Action::requeue(WAIT_POLL))
}

/// A Worker that is not admitted fails the plan, which says why.
async fn refuse(
    ctx: &Context,
    record: &StatusWriter<'_>,
    status: &mut ResumePlanStatus,
    blocked: Blocked,
) -> Result<Action, Error> {
    let (reason, message) = (blocked.reason, blocked.message.clone());
    record
        .write(status, ResumePhase::Failed, Some(blocked))
        .await?;
    ctx.publish(record.plan, EventType::Warning, reason, "Resume", message)
        .await;
    Ok(Action::await_change())
}

/// Who else changes the Worker now, if anyone: a plan created by the run that holds the
/// Worker's writer lease acts under it; any other plan takes the lease itself.
async fn writer_elsewhere(
    ctx: &Context,
    worker: &Worker,
    plan: &ResumePlan,
) -> Result<Option<writer::Holder>, Error> {
    if writer::held_by_owner_run(&ctx.client, worker, plan).await? {
        return Ok(None);
    }
    let me = writer::Holder::Plan(plan.name_any());
    let uid = plan.uid();
    Ok(
        match writer::acquire(&ctx.client, worker, &me, uid.as_deref()).await? {
            writer::Acquired::Yes => None,
            writer::Acquired::HeldBy(holder) => Some(holder),
        },
    )
}

/// Give the writer lease back once the plan has stopped moving tasks (completed, halted,
/// failed). A plan acting under its run's hold has none to give.
async fn release_writer(ctx: &Context, plan: &ResumePlan) -> Result<(), Error> {
    let ns = plan.namespace().unwrap_or_default();
    let me = writer::Holder::Plan(plan.name_any());
    writer::release(&ctx.client, &ns, &plan.spec.worker_ref.name, &me).await?;
    Ok(())
}

/// Remember a task left in pending/ (bounded; the first reasons are kept).
fn note_left_out(status: &mut ResumePlanStatus, why: String) {
    if status.left_out.len() < decide::NAME_SAMPLE && !status.left_out.contains(&why) {
        status.left_out.push(why);
    }
}

async fn note_state_write(ctx: &Context, plan: &ResumePlan, value: &str, wrote: &StateWrite) {
    match wrote {
        StateWrite::Written => info!(status = value, "worker state.json marked"),
        StateWrite::Unchanged => {}
        StateWrite::NoDirectory => {
            info!(
                status = value,
                "the worker has no state directory; state.json not written"
            )
        }
        StateWrite::LeftAlone(why) => {
            let message = format!("state.json not marked {value}: {why}");
            warn!("{message}");
            ctx.publish(
                plan,
                EventType::Warning,
                "WorkerStateLeftAlone",
                "Resume",
                message,
            )
            .await;
        }
    }
}

/// The span of one judged batch, under the run's `resume` span.
fn batch_span(
    trace_id: &str,
    parent: &str,
    result: &BatchResult,
    halt: bool,
    ratio: f64,
) -> SpanRecord {
    let end = result
        .judged_time
        .as_ref()
        .map_or_else(Timestamp::now, |t| t.0);
    let start = result.released_time.as_ref().map_or(end, |t| t.0);
    SpanRecord {
        name: "resume_batch".into(),
        trace_id: trace_id.into(),
        span_id: recovery_trace::new_span_id(),
        parent_span_id: Some(parent.into()),
        start: start.into(),
        end: end.into(),
        attributes: vec![
            KeyValue::new("batch.number", i64::from(result.number)),
            KeyValue::new("batch.size", i64::from(result.size)),
            KeyValue::new("batch.moved", i64::from(result.moved)),
            KeyValue::new("batch.failed", i64::from(result.failed)),
            KeyValue::new("batch.failed_files", i64::from(result.failed_files)),
            KeyValue::new("batch.metric_failures", i64::from(result.metric_failures)),
        ],
        error: halt.then(|| decide::halt_reason(result, ratio)),
        events: vec![],
    }
}

/// A deleted plan that marked the worker `recovering` and did not complete gives the worker
/// its queue back, then lets the object go.
async fn clean_up(
    plan: &ResumePlan,
    ctx: &Context,
    api: &Api<ResumePlan>,
) -> Result<Action, Error> {
    if !finalizer::holds(plan, FINALIZER) {
        return Ok(Action::await_change());
    }
    let completed = plan
        .status
        .as_ref()
        .is_some_and(|s| s.phase == Some(ResumePhase::Completed));
    if !completed {
        let workers: Api<Worker> =
            Api::namespaced(ctx.client.clone(), &plan.namespace().unwrap_or_default());
        if let Some(worker) = workers.get_opt(&plan.spec.worker_ref.name).await? {
            give_queue_back(ctx, plan, &worker).await?;
        }
    }
    finalizer::remove(api, plan, FINALIZER).await?;
    Ok(Action::await_change())
}

/// A deleted plan that did not complete sets the worker's state back to `running`, unless the
/// Worker is refused now (its files are not ours to touch) or another run or plan is its
/// writer now (which sets the state itself). An engine that cannot vouch for the container is
/// waited for.
async fn give_queue_back(ctx: &Context, plan: &ResumePlan, worker: &Worker) -> Result<(), Error> {
    let admission = match ctx.admit(worker).await {
        Ok(a) => a,
        Err(AdmitError::ContainerStateUnknown(e)) => return Err(e.into()),
        Err(_) => return Ok(()),
    };
    if let Some(holder) = writer_elsewhere(ctx, worker, plan).await? {
        info!(%holder, "state.json left as it is: another writer has the Worker");
        return Ok(());
    }
    let p: ResolvedPaths = admission.paths;
    let wrote = blocking::run(move || batches::set_worker_status(&p, "running")).await??;
    note_state_write(ctx, plan, "running", &wrote).await;
    release_writer(ctx, plan).await
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::Method;
    use serde_json::{json, Value};

    use super::*;
    use crate::{
        runtime::fake::FakeRuntime,
        testing::{self, mock_api},
    };

    const PLAN: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/resumeplans/p";
    const WORKER: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workers/marie";

    fn plan(spec: Value) -> ResumePlan {
        serde_json::from_value(json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "ResumePlan",
            "metadata": {"name": "p", "namespace": "default", "generation": 1, "uid": "u-1",
                          "resourceVersion": "7"},
            "spec": spec
        }))
        .unwrap()
    }

    /// What each status write showed, and which tasks were in pending/ at that moment.
    type Seen = Arc<Mutex<Vec<(Value, Vec<String>)>>>;

    fn context(root: &std::path::Path, spec: Value) -> (Context, Seen) {
        let mut worker = testing::worker();
        worker.spec.shared_root = root.display().to_string();
        let pending = root.join("tasks/marie/pending");
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let object = serde_json::to_value(plan(spec)).unwrap();
        let answer = move |method: &Method, path: &str, body: &Value| match (method, path) {
            (&Method::GET, WORKER) => (200, serde_json::to_value(&worker).unwrap()),
            (&Method::GET, PLAN) | (&Method::PATCH, PLAN) => (200, object.clone()),
            (&Method::PATCH, p) if p == format!("{PLAN}/status") => {
                let mut names: Vec<String> = std::fs::read_dir(&pending)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                names.sort();
                log.lock().unwrap().push((body["status"].clone(), names));
                (200, object.clone())
            }
            (&Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events") => {
                (201, body.clone())
            }
            _ => mock_api::not_found(path),
        };
        let fake = Arc::new(FakeRuntime::with_container(testing::running()));
        let (ctx, _) = testing::api_context(answer, fake, root);
        (ctx, seen)
    }

    fn tasks(root: &std::path::Path, names: &[&str]) {
        let pending = root.join("tasks/marie/pending");
        std::fs::create_dir_all(&pending).unwrap();
        std::fs::create_dir_all(root.join("workers/marie")).unwrap();
        let base = std::time::SystemTime::now() - Duration::from_secs(600);
        for (i, n) in names.iter().enumerate() {
            let path = pending.join(n);
            std::fs::write(&path, format!(r#"{{"id":"{n}"}}"#)).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(base + Duration::from_secs(i as u64))
                .unwrap();
        }
    }

    #[tokio::test]
    async fn each_batch_is_recorded_before_its_first_task_moves() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        tasks(&root, &["c.json", "a.json", "b.json"]);
        let spec = json!({"workerRef": {"name": "marie"}, "batchSize": 2, "batchDelaySeconds": 0});
        let (ctx, seen) = context(&root, spec.clone());
        let action = advance_plan(&plan(spec), &ctx).await.unwrap();
        assert_eq!(action, Action::await_change());

        let seen = seen.lock().unwrap().clone();
        let intents: Vec<_> = seen
            .iter()
            .filter(|(s, _)| {
                s["currentBatch"].is_object() && s["currentBatch"]["releasedTime"].is_null()
            })
            .collect();
        assert_eq!(intents.len(), 2, "one intent per batch");
        for (status, pending) in intents {
            for task in status["currentBatch"]["tasks"].as_array().unwrap() {
                assert!(
                    pending.contains(&task.as_str().unwrap().to_string()),
                    "{task} had moved before its batch was recorded"
                );
            }
        }
        let (last, pending) = seen.last().unwrap();
        assert!(pending.is_empty());
        assert_eq!(last["phase"], "Completed", "{last:#}");
        assert_eq!(last["tasksTotal"], 3);
        assert_eq!(last["tasksStaged"], 3);
        // Oldest first: c.json was written first.
        assert_eq!(last["batches"][0]["tasks"], json!(["c.json", "a.json"]));
        assert_eq!(last["batches"][1]["tasks"], json!(["b.json"]));
        let staged: Vec<_> = std::fs::read_dir(root.join("tasks/marie/staged"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(staged.len(), 3);
        let state: Value =
            serde_json::from_slice(&std::fs::read(root.join("workers/marie/state.json")).unwrap())
                .unwrap();
        assert_eq!(
            state["status"], "running",
            "the queue is given back at the end"
        );
    }

    #[tokio::test]
    async fn an_unreleased_batch_is_released_again_not_chosen_anew() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        tasks(&root, &["a.json", "b.json", "c.json"]);
        let spec = json!({"workerRef": {"name": "marie"}, "batchSize": 2, "batchDelaySeconds": 60,
                          "markWorkerState": false});
        // The operator died after recording batch 1 and moving a.json only.
        std::fs::create_dir_all(root.join("tasks/marie/staged")).unwrap();
        std::fs::rename(
            root.join("tasks/marie/pending/a.json"),
            root.join("tasks/marie/staged/a.json"),
        )
        .unwrap();
        let mut p = plan(spec.clone());
        p.status = Some(ResumePlanStatus {
            phase: Some(ResumePhase::Running),
            observed_generation: Some(1),
            start_time: Some(Time(Timestamp::now())),
            cutoff_time: Some(Time(Timestamp::now())),
            tasks_total: 3,
            tasks_remaining: 3,
            current_batch: Some(CurrentBatch {
                number: 1,
                tasks: vec!["a.json".into(), "b.json".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        let (ctx, seen) = context(&root, spec);
        let action = advance_plan(&p, &ctx).await.unwrap();
        assert!(
            matches!(action, a if a != Action::await_change()),
            "waits for the delay"
        );
        let seen = seen.lock().unwrap().clone();
        let (last, pending) = seen.last().unwrap();
        assert_eq!(
            pending,
            &vec!["c.json".to_string()],
            "c.json is not in batch 1"
        );
        assert_eq!(last["currentBatch"]["number"], 1);
        assert_eq!(
            last["currentBatch"]["moved"], 2,
            "a.json counted once, b.json moved"
        );
        assert!(last["currentBatch"]["releasedTime"].is_string());
        assert_eq!(last["tasksStaged"], 2);
        assert_eq!(last["tasksRemaining"], 1);
    }
}
