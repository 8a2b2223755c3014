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

mod decide;
mod error;

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
use opentelemetry::KeyValue;
use serde_json::json;
use tracing::{info, instrument, warn};

pub use super::conditions::WAITING;
pub use decide::{COMPLETED, HALTED};

use self::decide::Blocked;
pub use error::Error;

use super::{
    apply_status,
    conditions::{merge, Waiting},
    log_failure, object_key, writer, Context,
};
use crate::{
    crd::{
        monitoring::MetricsWatch,
        resume_plan::{CurrentBatch, ResumePhase, ResumePlan, ResumePlanStatus},
        worker::{ResolvedPaths, Worker},
    },
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

/// Run the ResumePlan controller until a shutdown signal.
pub async fn run(ctx: Arc<Context>, plans: Api<ResumePlan>) {
    let (reader, writer) = reflector::store();
    // Spec changes (pause, continue) and deletions trigger a reconcile; status writes do not.
    let trigger = watcher(plans, watcher::Config::default().any_semantic())
        .default_backoff()
        // Nobody reads who wrote which field: not keeping it shrinks the cache by half.
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            |p: &ResumePlan| {
                Some(
                    (p.metadata.generation.unwrap_or_default() as u64) << 1
                        | u64::from(p.metadata.deletion_timestamp.is_some()),
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

#[instrument(skip_all, fields(plan = %plan.name_any(), namespace = plan.namespace().unwrap_or_default()))]
async fn reconcile(plan: Arc<ResumePlan>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The plan's status is the record of what moved: read it as it is now, not as the cache
    // had it (a requeued reconcile can start before the watch brought the last write back).
    let api: Api<ResumePlan> =
        Api::namespaced(ctx.client.clone(), &plan.namespace().unwrap_or_default());
    let Some(fresh) = api.get_opt(&plan.name_any()).await? else {
        return Ok(Action::await_change());
    };
    ctx.measured(CONTROLLER, &fresh, drive(&fresh, &ctx)).await
}

/// What is writing the status needs besides the status itself.
struct Writer<'a> {
    plan: &'a ResumePlan,
    api: Api<ResumePlan>,
}

impl Writer<'_> {
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, batches::BatchError> + Send + 'static,
) -> Result<T, Error> {
    crate::blocking::run(f)
        .await
        .map_err(|e| Error::Blocking(e.to_string()))?
        .map_err(|e| Error::Files(e.to_string()))
}

async fn drive(plan: &ResumePlan, ctx: &Context) -> Result<Action, Error> {
    let ns = plan.namespace().unwrap_or_default();
    let api: Api<ResumePlan> = Api::namespaced(ctx.client.clone(), &ns);
    if plan.metadata.deletion_timestamp.is_some() {
        return clean_up(plan, ctx, &api).await;
    }
    let out = Writer {
        plan,
        api: api.clone(),
    };
    let mut status = plan.status.clone().unwrap_or_default();
    let spec_changed = status.observed_generation != plan.metadata.generation;
    match status.phase {
        Some(ResumePhase::Completed) if spec_changed => {
            // A completed plan has nothing left to do; only record that the change was seen.
            out.write(&mut status, ResumePhase::Completed, None).await?;
            return Ok(Action::await_change());
        }
        Some(p) if p.is_final() && !spec_changed => return Ok(Action::await_change()),
        Some(ResumePhase::Halted | ResumePhase::Failed) => {
            info!("the spec changed: the plan continues");
            status.halt_reason = None;
        }
        _ => {}
    }

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
        out.write(&mut status, ResumePhase::Pending, Some(blocked))
            .await?;
        return Ok(Action::requeue(WORKER_WAIT));
    };
    let admission = match ctx.admit(&worker).await {
        Ok(a) => a,
        Err(AdmitError::ContainerStateUnknown(e)) => {
            let blocked = Blocked {
                reason: Waiting::ContainerStateUnknown.reason(),
                message: format!(
                    "the Docker engine cannot say whether the Worker's container exists and consents ({e}); nothing moves until it can"
                ),
                waits: true,
            };
            return wait(&out, &mut status, blocked).await;
        }
        Err(e) => return refuse(ctx, &out, &mut status, worker_name, e).await,
    };
    if let Some(holder) = writer_elsewhere(ctx, &worker, plan).await? {
        let blocked = Blocked {
            reason: Waiting::AnotherRunActive.reason(),
            message: format!(
                "{holder} is changing Worker {worker_name}; this plan goes on when it finishes"
            ),
            waits: true,
        };
        return wait(&out, &mut status, blocked).await;
    }
    let paths = admission.paths.clone();
    let spec = &plan.spec;
    let delay = spec.batch_delay_seconds;

    if status.start_time.is_none() {
        let now = Timestamp::now();
        if spec.mark_worker_state {
            // The finalizer first: a plan deleted from here on gives the queue back.
            ensure_finalizer(plan, &api).await?;
            let p = paths.clone();
            let wrote = blocking(move || batches::set_worker_status(&p, "recovering")).await?;
            note_state_write(ctx, plan, "recovering", &wrote).await;
        }
        status.start_time = Some(Time(now));
        status.cutoff_time = Some(Time(decide::cutoff(now)));
    }
    let cutoff = status.cutoff_time.as_ref().expect("set above").0;

    let metrics_url = worker.spec.metrics.as_ref().map(|m| m.url.clone());
    let interval = Duration::from_secs(u64::from(spec.monitor_interval_seconds));
    let traceparent = plan
        .annotations()
        .get(TRACEPARENT_ANNOTATION)
        .and_then(|v| recovery_trace::parse_traceparent(v));

    loop {
        let now = Timestamp::now();
        if let Some(url) = &metrics_url {
            if monitor::due(status.monitoring.as_ref(), interval, now) {
                let scraped = monitor::scrape(&ctx.http, url).await;
                monitor::record(
                    status.monitoring.get_or_insert_with(MetricsWatch::default),
                    scraped,
                    now,
                );
            }
        }
        let increase = status
            .monitoring
            .as_ref()
            .map_or(0, |m| m.task_failed_increase);
        match status.current_batch.clone() {
            Some(mut batch) if batch.released_time.is_none() => {
                let (p, names) = (paths.clone(), batch.tasks.clone());
                let released = blocking(move || batches::release(&p, &names)).await?;
                batch.moved = (released.moved.len() + released.gone.len()) as u32;
                for name in &released.collided {
                    note_left_out(
                        &mut status,
                        format!("{name}: staged/ has a file of that name; left in pending/"),
                    );
                }
                batch.released_time = Some(Time(now));
                batch.failed_increase_at_release = increase;
                status.tasks_staged += u64::from(batch.moved);
                status.tasks_remaining = status
                    .tasks_remaining
                    .saturating_sub(u64::from(batch.moved));
                status.next_batch_time = Some(Time(now + Duration::from_secs(u64::from(delay))));
                let message = format!(
                    "batch {}: {} task(s) moved to staged/{}",
                    batch.number,
                    released.moved.len(),
                    if released.gone.is_empty() {
                        String::new()
                    } else {
                        format!(", {} already taken by the worker", released.gone.len())
                    }
                );
                status.current_batch = Some(batch);
                out.write(&mut status, ResumePhase::Running, None).await?;
                info!("{message}");
                ctx.publish(plan, EventType::Normal, "BatchReleased", "Resume", message)
                    .await;
            }
            Some(batch) => {
                if let Some(left) = decide::wait_left(&batch, delay, now) {
                    out.write(&mut status, ResumePhase::Running, None).await?;
                    let next = if metrics_url.is_some() {
                        left.min(interval)
                    } else {
                        left
                    };
                    return Ok(Action::requeue(next.max(Duration::from_millis(200))));
                }
                let (p, names) = (paths.clone(), batch.tasks.clone());
                let failed_now = blocking(move || batches::present_in_failed(&p, &names)).await?;
                let result = decide::judge(&batch, &failed_now, increase, now);
                let halt = decide::exceeds(&result, spec.max_failure_ratio);
                if let Some((trace_id, parent)) = &traceparent {
                    recovery_trace::emit(batch_span(
                        trace_id,
                        parent,
                        &result,
                        halt,
                        spec.max_failure_ratio,
                    ));
                }
                let reason = halt.then(|| decide::halt_reason(&result, spec.max_failure_ratio));
                decide::record(&mut status, result);
                status.current_batch = None;
                if let Some(reason) = reason {
                    status.halt_reason = Some(reason.clone());
                    status.next_batch_time = None;
                    out.write(&mut status, ResumePhase::Halted, None).await?;
                    release_writer(ctx, plan).await?;
                    warn!(%reason, "gradual resume halted");
                    ctx.publish(plan, EventType::Warning, "ResumeHalted", "Resume", reason)
                        .await;
                    return Ok(Action::await_change());
                }
            }
            None => {
                if spec.paused {
                    status.next_batch_time = None;
                    out.write(&mut status, ResumePhase::Paused, None).await?;
                    return Ok(Action::await_change());
                }
                let p = paths.clone();
                let limit = spec.batch_size as usize;
                let scan =
                    blocking(move || batches::scan_pending(&p, cutoff.into(), limit)).await?;
                if status.batches_done == 0 && status.tasks_staged == 0 {
                    status.tasks_total = scan.eligible;
                }
                status.tasks_remaining = scan.eligible;
                for why in scan.left_out.iter().take(decide::NAME_SAMPLE) {
                    note_left_out(&mut status, why.clone());
                }
                if scan.oldest.is_empty() {
                    status.next_batch_time = None;
                    if spec.mark_worker_state {
                        let p = paths.clone();
                        let wrote =
                            blocking(move || batches::set_worker_status(&p, "running")).await?;
                        note_state_write(ctx, plan, "running", &wrote).await;
                    }
                    out.write(&mut status, ResumePhase::Completed, None).await?;
                    release_writer(ctx, plan).await?;
                    let message = format!(
                        "{} task(s) released in {} batch(es), {} failure(s)",
                        status.tasks_staged, status.batches_done, status.tasks_failed
                    );
                    info!("gradual resume completed: {message}");
                    ctx.publish(
                        plan,
                        EventType::Normal,
                        "ResumeCompleted",
                        "Resume",
                        message,
                    )
                    .await;
                    return Ok(Action::await_change());
                }
                let (p, names) = (paths.clone(), scan.oldest.clone());
                let failed_before =
                    blocking(move || batches::present_in_failed(&p, &names)).await?;
                status.current_batch = Some(CurrentBatch {
                    number: status.batches_done + 1,
                    tasks: scan.oldest,
                    failed_before,
                    ..Default::default()
                });
                // The intent is durable before the first task moves.
                out.write(&mut status, ResumePhase::Running, None).await?;
            }
        }
    }
}

/// How often a waiting plan looks again.
const WAIT_POLL: Duration = Duration::from_secs(2);

/// Write that the plan waits (phase `Pending` until it has begun) and look again soon.
async fn wait(
    out: &Writer<'_>,
    status: &mut ResumePlanStatus,
    blocked: Blocked,
) -> Result<Action, Error> {
    let phase = match status.phase {
        Some(p) if status.start_time.is_some() && !p.is_final() => p,
        _ => ResumePhase::Pending,
    };
    out.write(status, phase, Some(blocked)).await?;
    Ok(Action::requeue(WAIT_POLL))
}

/// A Worker that is not admitted fails the plan, which says why.
async fn refuse(
    ctx: &Context,
    out: &Writer<'_>,
    status: &mut ResumePlanStatus,
    worker_name: &str,
    error: AdmitError,
) -> Result<Action, Error> {
    let (reason, message) = error.reason_and_message(worker_name);
    let blocked = Blocked {
        reason,
        message: message.clone(),
        waits: false,
    };
    out.write(status, ResumePhase::Failed, Some(blocked))
        .await?;
    ctx.publish(out.plan, EventType::Warning, reason, "Resume", message)
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
    result: &crate::crd::resume_plan::BatchResult,
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

async fn ensure_finalizer(plan: &ResumePlan, api: &Api<ResumePlan>) -> Result<(), Error> {
    let fresh = api.get(&plan.name_any()).await?;
    if fresh.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let mut finalizers = fresh.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    set_finalizers(api, &fresh, finalizers).await
}

/// Replace the finalizer list, compare-and-swap on the resourceVersion.
async fn set_finalizers(
    api: &Api<ResumePlan>,
    obj: &ResumePlan,
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

/// A deleted plan that marked the worker `recovering` and did not complete gives the worker
/// its queue back, then lets the object go.
async fn clean_up(
    plan: &ResumePlan,
    ctx: &Context,
    api: &Api<ResumePlan>,
) -> Result<Action, Error> {
    if !plan.finalizers().iter().any(|f| f == FINALIZER) {
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
    let fresh = api.get(&plan.name_any()).await?;
    let finalizers = fresh
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(api, &fresh, finalizers).await?;
    Ok(Action::await_change())
}

/// A deleted plan that did not complete sets the worker's state back to `running`, unless the
/// Worker is refused now (its files are not ours to touch) or another run or plan is its
/// writer now (which sets the state itself). An engine that cannot vouch for the container is
/// waited for.
async fn give_queue_back(ctx: &Context, plan: &ResumePlan, worker: &Worker) -> Result<(), Error> {
    let admission = match ctx.admit(worker).await {
        Ok(a) => a,
        Err(AdmitError::ContainerStateUnknown(e)) => {
            return Err(crate::docker::DockerError::Unavailable(e).into())
        }
        Err(_) => return Ok(()),
    };
    if let Some(holder) = writer_elsewhere(ctx, worker, plan).await? {
        info!(%holder, "state.json left as it is: another writer has the Worker");
        return Ok(());
    }
    let p: ResolvedPaths = admission.paths;
    let wrote = blocking(move || batches::set_worker_status(&p, "running")).await?;
    note_state_write(ctx, plan, "running", &wrote).await;
    release_writer(ctx, plan).await
}

fn error_policy(plan: Arc<ResumePlan>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_failure(CONTROLLER, error.metric_label());
    let delay = ctx.backoff.next_delay(&object_key(plan.as_ref()));
    warn!(plan = %plan.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::Method;
    use serde_json::{json, Value};

    use super::*;
    use crate::{
        controller::mock_api,
        diagnose::host::{testing, FakeHost},
        docker::fake::FakeRuntime,
        metrics::Metrics,
        trust::AllowedRoots,
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
        let (client, _) =
            mock_api::client(move |method, path, body: &Value| match (method, path) {
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
            });
        let ctx = Context::new(
            client,
            Arc::new(FakeRuntime::with_container(testing::running())),
            Arc::new(FakeHost(Ok(String::new()))),
            Arc::new(Metrics::default()),
            AllowedRoots::new(&[root.to_path_buf()]).unwrap(),
            crate::http::testing::client(),
        );
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
        let action = drive(&plan(spec), &ctx).await.unwrap();
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
        let action = drive(&p, &ctx).await.unwrap();
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
