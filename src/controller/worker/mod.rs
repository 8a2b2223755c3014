//! The Worker controller: observe the container and heartbeat, decide, act, write status.

pub mod decide;
pub mod engine_events;
mod error;
pub mod escalate;
pub mod health;
pub mod policy;
mod risk;
mod series;
mod supervise;

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::Api,
    runtime::{
        controller::{self, Action, Controller},
        events::EventType,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
    ResourceExt,
};
use tracing::{instrument, warn};

pub use error::Error;

use self::decide::Observation;
use super::{
    apply_status, object_key,
    watch::{self, Trigger},
    Context,
};
use crate::{
    crd::{
        worker::{PathClaim, Worker, WorkerPhase, WorkerStatus},
        worker_recovery::WorkerRecovery,
    },
    observe::heartbeat,
    postmortem,
    runtime::ContainerObservation,
    trust::{claims, Admission, AdmitError, Refusal, RefusalReason},
};

pub const CONTROLLER: &str = "worker";
/// Workers reconciled at the same time.
const WORKER_CONCURRENCY: u16 = 32;

/// Run the Worker controller until a shutdown signal. `cache` is the store the context checks
/// path claims against: this controller fills it.
pub async fn run(
    ctx: Arc<Context>,
    workers: Api<Worker>,
    runs: Api<WorkerRecovery>,
    cache: (Store<Worker>, reflector::store::Writer<Worker>),
) {
    let (reader, writer) = cache;
    let trigger = watch::changes(workers, ctx.scope.worker_watch(), writer, Trigger::Spec);
    let (container_events, resync) =
        engine_events::follow(ctx.docker.clone(), ctx.metrics.clone(), reader.clone());
    let (unit_events, unit_resync) = unit_events(&ctx, &reader);
    // Only the runs this controller created (automatic attempts) point back to a Worker; a
    // change of one (it finished) is when the policy decides about the next attempt.
    let auto_runs = watcher::Config::default()
        .labels(supervise::AUTO_RUN_LABEL)
        .any_semantic();
    let pruner = tokio::spawn(forget_deleted(ctx.clone(), reader.clone()));
    let reader_of_owners = reader.clone();
    let controller = Controller::for_stream(trigger, reader)
        // A thousand Workers looked at all at once (at start, after the engine came back)
        // would each hold a Docker connection and buffers; a bounded number at a time keeps
        // the memory high-water mark low at no cost in latency for a single crash.
        .with_config(controller::Config::default().concurrency(WORKER_CONCURRENCY))
        .watches(runs, auto_runs, owner_in(reader_of_owners))
        .reconcile_on(container_events)
        .reconcile_on(unit_events)
        // A webhook delivery ended: write how it went.
        .reconcile_on(ctx.notifier.wakeups())
        .reconcile_all_on(futures::stream::select(resync, unit_resync));
    watch::serve(controller, CONTROLLER, reconcile, ctx).await;
    pruner.abort();
}

/// The node's systemd units' changes, followed as the engine's events are (nothing without a
/// systemd).
fn unit_events(
    ctx: &Context,
    reader: &Store<Worker>,
) -> (
    futures::stream::BoxStream<'static, ObjectRef<Worker>>,
    futures::stream::BoxStream<'static, ()>,
) {
    use futures::StreamExt;
    match &ctx.systemd {
        Some(systemd) => {
            let (events, resync) =
                engine_events::follow(systemd.clone(), ctx.metrics.clone(), reader.clone());
            (events.boxed(), resync.boxed())
        }
        None => (
            futures::stream::pending().boxed(),
            futures::stream::pending().boxed(),
        ),
    }
}

/// The Worker that owns an automatic run, when it is one this controller watches (in
/// `workers`): a per-node agent sees every node's runs, but reconciles its own Workers only.
fn owner_in(
    workers: Store<Worker>,
) -> impl Fn(WorkerRecovery) -> Option<ObjectRef<Worker>> + Send + Sync + 'static {
    move |run| {
        let owner = run
            .owner_references()
            .iter()
            .find(|o| o.kind == "Worker" && o.controller == Some(true))?;
        let worker = ObjectRef::new(&owner.name).within(&run.namespace()?);
        workers.get(&worker).is_some().then_some(worker)
    }
}

/// How often the memory of deleted Workers is dropped.
const FORGET_EVERY: Duration = Duration::from_secs(30);

/// Drop what this process remembers of Workers that are gone (their last written status, a
/// notification in flight), so that memory does not grow with every Worker ever seen.
async fn forget_deleted(ctx: Arc<Context>, workers: Store<Worker>) {
    let mut every = tokio::time::interval(FORGET_EVERY);
    loop {
        every.tick().await;
        if workers.wait_until_ready().await.is_err() {
            return;
        }
        let state = workers.state();
        let live: std::collections::HashSet<String> = state.iter().map(|w| memory_key(w)).collect();
        let named: std::collections::HashSet<String> = state
            .iter()
            .map(|w| format!("{}/{}", w.namespace().unwrap_or_default(), w.name_any()))
            .collect();
        ctx.metrics.forget_workers_but(&named);
        ctx.worker_status
            .lock()
            .unwrap()
            .retain(|key, _| live.contains(key));
        ctx.notifier.forget_all_but(&live);
    }
}

#[instrument(skip_all, fields(worker = %worker.name_any(), namespace = worker.namespace().unwrap_or_default()))]
async fn reconcile(worker: Arc<Worker>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.measured(CONTROLLER, worker.as_ref(), reconcile_worker(&worker, &ctx))
        .await
}

/// What the operator may look at for a Worker.
enum Access {
    /// Admitted: its files and its consenting container.
    Admitted(Box<Admission>),
    /// Its container does not exist, or the engine cannot say: nothing of its files is read
    /// or changed, only the container's absence (or the engine's silence) is reported.
    Blind(ContainerObservation),
}

async fn reconcile_worker(worker: &Worker, ctx: &Context) -> Result<Action, Error> {
    let api: Api<Worker> =
        Api::namespaced(ctx.client.clone(), &worker.namespace().unwrap_or_default());
    // The status this process wrote last may be newer than the cached object's: a reconcile
    // triggered by a Docker event can start before the watch brought our own write back, and
    // the policy's record (attempts, backoff) must not go back in time. Keyed by UID: a new
    // Worker of an old name starts with nothing of the old one's.
    let key = memory_key(worker);
    let remembered = ctx.worker_status.lock().unwrap().get(&key).cloned();
    let previous = decide::newest_status(worker.status.as_ref(), remembered.as_ref());
    let timeout = Duration::from_secs(u64::from(worker.spec.heartbeat_timeout_seconds));

    // Admit: nothing is read or touched for a Worker the operator may not manage.
    let access = match grant_access(ctx, &api, worker, previous, timeout).await? {
        Ok(access) => access,
        Err(done) => return Ok(done),
    };
    let admission = match &access {
        Access::Admitted(a) => Some(&**a),
        Access::Blind(_) => None,
    };
    let mut obs = observe(&access).await;

    // Decide and act. Only a consenting container is ever found here, and it is addressed by
    // its ID, so a container that took its name since cannot be started in its place.
    let pause = decide::active_pause(worker.spec.auto_recovery.pause.as_ref(), obs.now);
    let supervision = supervise::supervise(
        ctx,
        worker,
        admission,
        &obs,
        previous,
        timeout,
        pause.is_some(),
    )
    .await?;
    if supervision.restart.is_some() {
        reobserve(ctx, worker, &mut obs).await;
    }
    let prediction = predict(ctx, worker, &key, admission, &obs, pause.is_some()).await?;
    let mut assessment = decide::assess(&obs, timeout);
    if let Some(e) = &supervision.escalation {
        decide::escalated(&mut assessment, e);
    }
    let mut status = next_status(
        worker,
        previous,
        &access,
        &obs,
        &assessment,
        &supervision,
        pause,
    );
    let generation = worker.metadata.generation;
    risk::add(
        &mut status,
        previous,
        prediction.as_ref(),
        generation,
        obs.now,
    );
    advance_incident(ctx, worker, previous, &mut status, obs.now).await;

    // Write status when it changed (or is due for a refresh), then tell humans about changes
    // of health.
    if decide::worth_writing(previous, &status, ctx.status_refresh) {
        apply_status(&api, worker, &status).await?;
        ctx.worker_status
            .lock()
            .unwrap()
            .insert(key, status.clone());
    }
    let look = series::Look {
        paths: admission.map(|a| &a.paths),
        prediction: prediction.as_ref(),
        now: obs.now,
    };
    series::record(ctx, worker, previous, &status, look).await;
    if let Some(note) = risk::turned_at_risk(previous, &status) {
        warn!(%note, "worker at risk");
        let (kind, reason) = (EventType::Warning, risk::AT_RISK);
        ctx.publish(worker, kind, reason, "Predict", note).await;
    }
    phase_event(ctx, worker, previous.and_then(|s| s.phase), &assessment).await;
    pause_events(ctx, worker, previous.and_then(|s| s.paused.as_ref()), pause).await;
    let mut next = when_to_look(&obs, timeout, &supervision, pause);
    if let Some(sample) = prediction.as_ref().and_then(|p| p.next_sample) {
        next = next.min(sample);
    }
    if let ContainerObservation::Unavailable(e) = obs.container {
        return Err(e.into());
    }
    Ok(Action::requeue(next))
}

/// Report the container as it is now, after a start, not as it was before.
async fn reobserve(ctx: &Context, worker: &Worker, obs: &mut Observation) {
    if let ContainerObservation::Found(found) = &obs.container {
        let id = found.id.clone();
        obs.container = match ctx.runtime(worker) {
            Ok(runtime) => ContainerObservation::of(runtime.as_ref(), &id).await,
            Err(e) => ContainerObservation::Unavailable(e),
        };
    }
}

/// What the operator may look at for `worker`; `Err` ends the reconcile with that action (a
/// refused Worker, one whose container was just recreated). An invalid spec is written and
/// returned as the error that waits for a spec change.
async fn grant_access(
    ctx: &Context,
    api: &Api<Worker>,
    worker: &Worker,
    previous: Option<&WorkerStatus>,
    timeout: Duration,
) -> Result<Result<Access, Action>, Error> {
    Ok(Ok(match ctx.admit(worker).await {
        Ok(admission) => Access::Admitted(Box::new(admission)),
        Err(AdmitError::InvalidSpec(e)) => {
            write_invalid_spec(api, worker, ctx, &e.to_string()).await?;
            return Err(e.into());
        }
        Err(AdmitError::Refused(r)) if r.reason == RefusalReason::ContainerNotFound => {
            if supervise::adopt_recreated(ctx, worker).await? {
                return Ok(Err(Action::requeue(Duration::from_millis(100))));
            }
            Access::Blind(ContainerObservation::NotFound)
        }
        Err(AdmitError::Refused(refusal)) => {
            return refuse(ctx, api, worker, previous, &refusal, timeout)
                .await
                .map(Err)
        }
        Err(AdmitError::ContainerStateUnknown(e)) => {
            Access::Blind(ContainerObservation::Unavailable(e))
        }
    }))
}

/// The status of this look: what was observed and assessed, what supervision decided, the
/// health conditions and (for an admitted Worker) its path claim.
fn next_status(
    worker: &Worker,
    previous: Option<&WorkerStatus>,
    access: &Access,
    obs: &Observation,
    assessment: &decide::Assessment,
    supervision: &supervise::Supervision,
    pause: Option<&crate::crd::worker::PauseSpec>,
) -> WorkerStatus {
    let mut status = decide::next_status(
        previous,
        worker.metadata.generation,
        obs,
        assessment,
        supervision.restart.as_ref(),
    );
    add_decisions(&mut status, supervision, pause);
    add_health(&mut status, worker, previous, obs, assessment, supervision);
    if let Access::Admitted(a) = access {
        status.claim = Some(record_claim(worker, a, previous, obs.now));
    }
    status
}

/// When to look again: the next look the observation asks for, sooner when supervision or the
/// end of a pause asks.
fn when_to_look(
    obs: &Observation,
    timeout: Duration,
    supervision: &supervise::Supervision,
    pause: Option<&crate::crd::worker::PauseSpec>,
) -> Duration {
    let mut next = decide::next_look(obs, timeout);
    if let Some(due) = supervision.next_look {
        next = next.min(due);
    }
    if let Some(until) = pause.and_then(|p| p.until.as_ref()) {
        // Look again when the pause ends, to act on what it held back.
        let left = obs.now.duration_until(until.0).unsigned_abs();
        next = next.min(left + Duration::from_millis(20));
    }
    next
}

/// What supervision decided goes into status: the pause, the policy's record, drift, the
/// escalation.
fn add_decisions(
    status: &mut WorkerStatus,
    supervision: &supervise::Supervision,
    pause: Option<&crate::crd::worker::PauseSpec>,
) {
    status.paused = pause.cloned();
    status.auto_recovery = Some(supervision.record.clone());
    status.drift = supervision.drift.clone();
    status.escalation = supervision.escalation.clone();
}

/// Where the Worker stands for GitOps tools: `Reconciling` and `Stalled` (`health`).
fn add_health(
    status: &mut WorkerStatus,
    worker: &Worker,
    previous: Option<&WorkerStatus>,
    obs: &Observation,
    assessment: &decide::Assessment,
    supervision: &supervise::Supervision,
) {
    let pause = decide::active_pause(worker.spec.auto_recovery.pause.as_ref(), obs.now);
    let judged = health::judge(
        obs,
        assessment,
        supervision.escalation.as_ref().map(|e| health::Escalation {
            status: e,
            levels: escalate::levels(worker.spec.escalation.as_ref()).len(),
        }),
        match (worker.spec.auto_recovery.enabled, pause) {
            (false, _) => health::AutoRecovery::Off,
            (true, Some(_)) => health::AutoRecovery::Paused,
            (true, None) => health::AutoRecovery::On,
        },
        Duration::from_secs(u64::from(worker.spec.heartbeat_timeout_seconds)),
    );
    health::add(
        status,
        previous.map_or(&[], |s| s.conditions.as_slice()),
        &judged,
        worker.metadata.generation,
        obs.now,
    );
}

/// The paths an admitted Worker holds, since when it was first admitted with them.
fn record_claim(
    worker: &Worker,
    admission: &Admission,
    previous: Option<&WorkerStatus>,
    now: Timestamp,
) -> PathClaim {
    let claim = claims::Claim::of(worker, &admission.paths);
    let kept = previous
        .and_then(|s| s.claim.clone())
        .filter(|p| claim.record(p.since.clone()) == *p);
    kept.unwrap_or_else(|| claim.record(Some(Time(now))))
}

/// The key of a Worker in the operator's memory: its UID.
fn memory_key(worker: &Worker) -> String {
    worker.uid().unwrap_or_else(|| object_key(worker))
}

/// The incident's timeline, advanced by this look, and its post-mortem written when it lags.
async fn advance_incident(
    ctx: &Context,
    worker: &Worker,
    previous: Option<&WorkerStatus>,
    status: &mut WorkerStatus,
    now: Timestamp,
) {
    let levels = escalate::levels(worker.spec.escalation.as_ref()).len();
    let last = levels.saturating_sub(1) as u32;
    let (incident, total) = postmortem::timeline::advance(previous, status, last, now);
    status.incident = incident;
    status.incidents_total = total;
    postmortem::report_if_behind(&ctx.client, worker, status).await;
}

/// The failure prediction of an admitted Worker (sampled when due), and the proactive memory
/// raise it may call for.
async fn predict(
    ctx: &Context,
    worker: &Worker,
    key: &str,
    admission: Option<&Admission>,
    obs: &Observation,
    paused: bool,
) -> Result<Option<risk::RiskLook>, Error> {
    if admission.is_none() {
        return Ok(None);
    }
    let found = match &obs.container {
        ContainerObservation::Found(c) => Some(c.as_ref()),
        _ => None,
    };
    let look = risk::look(ctx, worker, key, found, obs.now).await;
    if let (Some(r), Some(c)) = (look.as_ref().and_then(|l| l.risk.as_ref()), found) {
        supervise::raise_memory_ahead(ctx, worker, c, r, paused).await?;
    }
    Ok(look)
}

/// Read what the access allows: the heartbeat only for an admitted Worker.
async fn observe(access: &Access) -> Observation {
    match access {
        Access::Admitted(a) => {
            let hb = heartbeat::read(&a.paths.trusted_root, &a.paths.heartbeat_file).await;
            Observation {
                container: a.container.clone(),
                heartbeat: Some(hb),
                now: Timestamp::now(),
            }
        }
        Access::Blind(container) => Observation {
            container: container.clone(),
            heartbeat: None,
            now: Timestamp::now(),
        },
    }
}

/// A refused Worker: status says why, one Event per refusal reason; look again later, as a
/// label added to the container is not an API change.
async fn refuse(
    ctx: &Context,
    api: &Api<Worker>,
    worker: &Worker,
    previous: Option<&WorkerStatus>,
    refusal: &Refusal,
    timeout: Duration,
) -> Result<Action, Error> {
    let status = decide::refused_status(
        previous,
        worker.metadata.generation,
        refusal,
        Timestamp::now(),
    );
    apply_status(api, worker, &status).await?;
    let look = series::Look {
        paths: None,
        prediction: None,
        now: Timestamp::now(),
    };
    series::record(ctx, worker, previous, &status, look).await;
    let refused_before = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == decide::ACCEPTED))
        .filter(|c| c.status == "False")
        .map(|c| c.reason.as_str());
    if refused_before != Some(refusal.reason.as_str()) {
        warn!(reason = refusal.reason.as_str(), %refusal, "worker refused");
        ctx.publish(
            worker,
            EventType::Warning,
            refusal.reason.as_str(),
            "AdmitWorker",
            refusal.message.clone(),
        )
        .await;
    }
    Ok(Action::requeue(decide::requeue_interval(timeout)))
}

/// An Event when the phase changes (not for a first look that finds the worker healthy).
async fn phase_event(
    ctx: &Context,
    worker: &Worker,
    previous: Option<WorkerPhase>,
    assessment: &decide::Assessment,
) {
    if previous == Some(assessment.phase)
        || (previous.is_none() && assessment.phase == WorkerPhase::Healthy)
    {
        return;
    }
    let (type_, reason) = match assessment.phase {
        WorkerPhase::Healthy => (EventType::Normal, "WorkerHealthy"),
        WorkerPhase::Degraded => (EventType::Warning, "WorkerDegraded"),
        WorkerPhase::Down => (EventType::Warning, "WorkerDown"),
        WorkerPhase::Unknown => (EventType::Warning, "WorkerUnknown"),
        WorkerPhase::Refused => (EventType::Warning, "WorkerRefused"),
        WorkerPhase::Escalated => (EventType::Warning, "WorkerEscalated"),
    };
    let note = format!(
        "{} -> {}: {}",
        previous.map_or("none".to_string(), |p| p.to_string()),
        assessment.phase,
        assessment.ready.message
    );
    ctx.publish(worker, type_, reason, "ObserveWorker", note)
        .await;
}

/// Tell humans when automatic actions are paused and when they resume.
async fn pause_events(
    ctx: &Context,
    worker: &Worker,
    before: Option<&crate::crd::worker::PauseSpec>,
    now: Option<&crate::crd::worker::PauseSpec>,
) {
    match (before, now) {
        (None, Some(p)) => {
            let until = p
                .until
                .as_ref()
                .map_or("until the pause is removed".to_string(), |t| {
                    format!("until {}", t.0)
                });
            let why = p
                .reason
                .as_deref()
                .map_or(String::new(), |r| format!(": {r}"));
            ctx.publish(
                worker,
                EventType::Normal,
                "AutoRecoveryPaused",
                "Pause",
                format!("automatic actions paused {until}{why}"),
            )
            .await;
        }
        (Some(_), None) => {
            ctx.publish(
                worker,
                EventType::Normal,
                "AutoRecoveryResumed",
                "Pause",
                "the pause ended; automatic actions resume".into(),
            )
            .await;
        }
        _ => {}
    }
}

/// Report a spec the operator cannot act on, in status and as an Event.
async fn write_invalid_spec(
    api: &Api<Worker>,
    worker: &Worker,
    ctx: &Context,
    message: &str,
) -> Result<(), Error> {
    use super::conditions::{merge, Health, Judged};
    let previous = worker.status.clone().unwrap_or_default();
    let status = WorkerStatus {
        phase: Some(WorkerPhase::Unknown),
        conditions: merge(
            &previous.conditions,
            &Judged::new(Health::Failed, "InvalidSpec", message).conditions(),
            worker.metadata.generation,
            Timestamp::now(),
        ),
        observed_generation: worker.metadata.generation,
        // An invalid spec claims no paths.
        claim: None,
        ..previous
    };
    apply_status(api, worker, &status).await?;
    ctx.publish(
        worker,
        EventType::Warning,
        "InvalidSpec",
        "ValidateSpec",
        message.to_string(),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;
    use http::Method;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::reflector::ObjectRef;
    use serde_json::{json, Value};

    use super::*;
    use crate::{
        controller::error::ReconcileError,
        runtime::{fake::FakeRuntime, ContainerInfo},
        testing::{
            self, fresh_heartbeat,
            mock_api::{self, Recorded},
        },
    };

    const STATUS: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workers/marie/status";

    /// The API server's answers: status patches echo the object back, Events are created.
    fn api_server(method: &Method, path: &str, body: &Value) -> (u16, Value) {
        match (method, path) {
            (&Method::PATCH, STATUS) => {
                let mut object = body.clone();
                object["metadata"] =
                    json!({"name": "marie", "namespace": "default", "generation": 1});
                object["spec"] = json!({"container": "marie"});
                (200, object)
            }
            (&Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events") => {
                (201, body.clone())
            }
            (
                &Method::GET,
                "/apis/workerrecovery.io/v1alpha1/namespaces/default/workerrecoveries",
            ) => (
                200,
                json!({"apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecoveryList", "metadata": {}, "items": []}),
            ),
            (
                &Method::POST,
                "/apis/workerrecovery.io/v1alpha1/namespaces/default/workerrecoveries",
            ) => (201, body.clone()),
            _ => mock_api::not_found(path),
        }
    }

    fn worker_at(root: &std::path::Path) -> Worker {
        let mut w = testing::worker();
        w.metadata.generation = Some(1);
        w.spec.shared_root = root.display().to_string();
        w.spec.auto_recovery.enabled = true;
        w
    }

    /// Worker `marie` (automatic recovery on) whose shared root, a tempdir the operator
    /// allows, has a fresh heartbeat; its container in a fake engine; the API server, and
    /// what it saw.
    struct Scene {
        dir: tempfile::TempDir,
        fake: Arc<FakeRuntime>,
        ctx: Context,
        requests: mock_api::Requests,
        worker: Worker,
    }

    /// A scene whose engine has `container` and whose API server is [`api_server`].
    fn setup(container: ContainerInfo) -> Scene {
        scene(FakeRuntime::with_container(container), api_server)
    }

    /// A scene whose engine is `fake` and whose API server answers with `answer`.
    fn scene(
        fake: FakeRuntime,
        answer: impl Fn(&Method, &str, &Value) -> (u16, Value) + Send + 'static,
    ) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        fresh_heartbeat(dir.path());
        let fake = Arc::new(fake);
        let (ctx, requests) = testing::api_context(answer, fake.clone(), dir.path());
        let worker = worker_at(dir.path());
        Scene {
            dir,
            fake,
            ctx,
            requests,
            worker,
        }
    }

    impl Scene {
        async fn reconcile(&self) -> Result<Action, Error> {
            reconcile_worker(&self.worker, &self.ctx).await
        }

        fn recorded(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }

        /// The status of the first status patch.
        fn first_status(&self) -> Value {
            let recorded = self.recorded();
            let patch = recorded
                .iter()
                .find(|r| r.method == Method::PATCH && r.path == STATUS);
            patch.expect("a status patch").body["status"].clone()
        }

        /// The status of the last status patch.
        fn last_status(&self) -> Value {
            mock_api::last_status(&self.requests, STATUS)
        }

        fn starts(&self) -> u32 {
            *self.fake.starts.lock().unwrap()
        }

        /// Look again, with the status written last.
        async fn again(&mut self) -> Result<Action, Error> {
            self.worker.status = Some(serde_json::from_value(self.last_status()).unwrap());
            self.reconcile().await
        }

        /// Look, wait (10 s at most) for the delivery that look hands over to end and wake
        /// the Worker, and look again: the notifications both looks wrote.
        async fn look_until_delivered(&mut self) -> (Value, Value) {
            let mut woken = self.ctx.notifier.wakeups();
            self.reconcile().await.unwrap();
            let first = self.last_status()["escalation"]["notification"].clone();
            tokio::time::timeout(Duration::from_secs(10), woken.next())
                .await
                .unwrap();
            self.again().await.unwrap();
            let then = self.last_status()["escalation"]["notification"].clone();
            (first, then)
        }
    }

    #[tokio::test]
    async fn an_exited_container_is_started_once_and_reported() {
        let mut s = setup(testing::exited(3));

        s.reconcile().await.unwrap();
        assert_eq!(s.starts(), 1);
        let recorded = s.recorded();
        let patch = recorded
            .iter()
            .find(|r| r.method == Method::PATCH)
            .expect("status was applied");
        let status = &patch.body["status"];
        assert_eq!(status["restartCount"], 1);
        assert_eq!(
            status["phase"], "Healthy",
            "reported as it is after the start: {status}"
        );
        assert_eq!(status["container"]["state"], "running");
        assert_eq!(patch.body["kind"], "Worker");
        let event = recorded
            .iter()
            .find(|r| r.method == Method::POST && r.body["reason"] == "Restarted")
            .expect("a Restarted event");
        let note = event.body["note"].as_str().unwrap();
        assert!(
            note.contains("exit code 3") && note.contains("restart 1"),
            "{note}"
        );
        // The attempt is a recovery run that records the start and the crash it saw.
        let run = recorded
            .iter()
            .find(|r| r.method == Method::POST && r.body["kind"] == "WorkerRecovery")
            .expect("a recovery run");
        assert_eq!(run.body["metadata"]["name"], "marie-auto-1");
        assert_eq!(run.body["spec"]["mode"], "Quick");
        assert_eq!(run.body["spec"]["trigger"]["exitCode"], 3);
        assert!(run.body["spec"]["trigger"]["restartedAt"].is_string());
        assert_eq!(status["autoRecovery"]["attempts"][0]["run"], "marie-auto-1");
        assert_eq!(status["autoRecovery"]["consecutiveFailures"], 1);

        // Next round, with the status written: the running container is left alone.
        s.worker.status = Some(serde_json::from_value(status.clone()).unwrap());
        s.reconcile().await.unwrap();
        assert_eq!(s.starts(), 1, "no second start");
        let last = s
            .recorded()
            .into_iter()
            .rev()
            .find(|r| r.method == Method::PATCH && r.path == STATUS)
            .unwrap();
        assert_eq!(last.body["status"]["restartCount"], 1);
    }

    #[tokio::test]
    async fn without_auto_recovery_an_exited_container_stays_down() {
        let mut s = setup(testing::exited(137));
        s.worker.spec.auto_recovery.enabled = false;

        s.reconcile().await.unwrap();
        assert_eq!(s.starts(), 0);
        let status = s.first_status();
        assert_eq!(status["phase"], "Down");
        assert_eq!(status["restartCount"], 0);
        let recorded = s.recorded();
        assert!(
            recorded.iter().any(|r| r.body["reason"] == "WorkerDown"),
            "{recorded:#?}"
        );
    }

    #[tokio::test]
    async fn an_unsafe_spec_is_reported_and_waits_for_a_change() {
        let mut s = scene(FakeRuntime::default(), api_server);
        s.worker = worker_at(std::path::Path::new("/shared"));
        s.worker.spec.paths.tasks_dir = Some("../../etc".into());

        let err = s.reconcile().await.unwrap_err();
        assert!(matches!(err, Error::InvalidSpec(_)), "{err}");
        assert!(!err.is_transient());
        let ready = &s.first_status()["conditions"][0];
        assert_eq!(ready["reason"], "InvalidSpec");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("spec.paths.tasksDir"),
            "{ready}"
        );
    }

    #[tokio::test]
    async fn a_shared_root_outside_the_allowed_roots_is_refused_untouched() {
        let outside = tempfile::tempdir().unwrap();
        fresh_heartbeat(outside.path());
        for through_link in [false, true] {
            let mut s = setup(testing::exited(3));
            // Through a symlink inside the allowed root, too.
            let link = s.dir.path().join("link");
            std::os::unix::fs::symlink(outside.path(), &link).unwrap();
            let root = if through_link {
                link
            } else {
                outside.path().to_path_buf()
            };
            s.worker = worker_at(&root);

            s.reconcile().await.unwrap();
            assert_eq!(s.starts(), 0, "nothing started");
            let status = &s.first_status();
            assert_eq!(status["phase"], "Refused", "{status}");
            let accepted = condition(status, "Accepted");
            assert_eq!(accepted["status"], "False");
            assert_eq!(accepted["reason"], "SharedRootNotAllowed");
            assert!(status.get("heartbeat").is_none() && status.get("container").is_none());
            let recorded = s.recorded();
            let event = recorded
                .iter()
                .find(|r| r.method == Method::POST)
                .expect("a Warning event");
            assert_eq!(event.body["type"], "Warning");
            assert_eq!(event.body["reason"], "SharedRootNotAllowed");
            let everything =
                serde_json::to_string(&recorded.iter().map(|r| &r.body).collect::<Vec<_>>())
                    .unwrap();
            assert!(
                !everything.contains("progress") && !everything.contains("idle"),
                "nothing of the heartbeat outside leaks: {everything}"
            );
        }
    }

    #[tokio::test]
    async fn a_container_without_consent_is_left_alone() {
        let mut stranger = testing::exited(3);
        stranger.labels.clear();
        let s = setup(stranger.clone());

        s.reconcile().await.unwrap();
        assert_eq!(s.starts(), 0);
        let status = &s.first_status();
        assert_eq!(status["phase"], "Refused");
        assert_eq!(
            status["container"],
            json!({"state": "notManaged", "oomKilled": false, "dockerRestartCount": 0}),
            "only that it exists"
        );
        assert!(status.get("heartbeat").is_none());

        // Looking again with that status: still refused, but no second Event.
        let mut again = s.worker.clone();
        again.status = Some(serde_json::from_value(status.clone()).unwrap());
        reconcile_worker(&again, &s.ctx).await.unwrap();
        let events = s
            .recorded()
            .iter()
            .filter(|r| r.method == Method::POST)
            .count();
        assert_eq!(events, 1, "one Event per refusal reason");

        // A label naming another Worker is no consent either.
        stranger.labels.insert(
            crate::trust::CONSENT_LABEL.into(),
            crate::trust::consent_value("default", "anga"),
        );
        let other = setup(stranger);
        other.reconcile().await.unwrap();
        assert_eq!(other.starts(), 0);
    }

    /// After a run that found file-descriptor exhaustion, the next automatic attempt recreates
    /// the container with `nofile` raised by `nofileFactor`, up to `nofileCeiling`.
    #[tokio::test]
    async fn fd_exhaustion_raises_nofile_within_the_ceiling_at_the_next_attempt() {
        let mut exited = testing::exited(1);
        exited.nofile_limit = Some((64, 64));
        let earlier = serde_json::json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
            "metadata": {"name": "marie-auto-1", "namespace": "default"},
            "spec": {"workerRef": {"name": "marie"}},
            "status": {"phase": "Succeeded", "diagnosis": {
                "worker": "marie", "container": "marie",
                "startedAt": "2026-11-27T10:00:00Z", "completedAt": "2026-11-27T10:00:01Z",
                "findings": [],
                "verdict": {"topCause": "FileDescriptorExhaustion", "causes": [{
                    "cause": "FileDescriptorExhaustion", "score": 30,
                    "summary": "Too many open files", "supporting": []}]}}}
        });
        let answer = move |method: &Method, path: &str, body: &Value| {
            let runs = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workerrecoveries";
            match (method, path) {
                (&Method::GET, p) if p == format!("{runs}/marie-auto-1") => (200, earlier.clone()),
                (&Method::GET, p) if p == runs => (
                    200,
                    json!({"apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecoveryList",
                           "metadata": {}, "items": [earlier.clone()]}),
                ),
                _ => api_server(method, path, body),
            }
        };
        let mut s = scene(FakeRuntime::with_container(exited), answer);
        let worker = &mut s.worker;
        worker.spec.resources = Some(
            serde_json::from_value(json!({
            "nofile": {"soft": 64, "hard": 64}, "apply": "OnRestart"}))
            .unwrap(),
        );
        worker.spec.auto_recovery = serde_json::from_value(json!({
            "enabled": true, "cooldownSeconds": 0, "backoff": {"initialSeconds": 0},
            "remediation": {"nofileFactor": 4.0, "nofileCeiling": 200}}))
        .unwrap();
        let before = Time(Timestamp::now() - Duration::from_secs(5));
        worker.status = Some(WorkerStatus {
            auto_recovery: Some(
                serde_json::from_value(json!({
                "attempts": [{"time": before, "run": "marie-auto-1", "trigger": "exit code 1"}],
                "attemptsTotal": 1, "consecutiveFailures": 1}))
                .unwrap(),
            ),
            last_observed_time: Some(before),
            ..Default::default()
        });

        s.reconcile().await.unwrap();
        let c = s.fake.containers.lock().unwrap()["marie"].clone();
        assert!(c.running, "recreated and started");
        assert_eq!(
            c.nofile_limit,
            Some((200, 200)),
            "64 x 4 = 256, held at 200"
        );
        assert!(s
            .fake
            .actions
            .lock()
            .unwrap()
            .contains(&"recreate marie".to_string()));
        let recorded = s.recorded();
        let status = &recorded
            .iter()
            .rev()
            .find(|r| r.method == Method::PATCH)
            .unwrap()
            .body["status"];
        let attempt = &status["autoRecovery"]["attempts"][1];
        assert_eq!(attempt["run"], "marie-auto-2");
        let remediation = attempt["remediation"].as_str().unwrap();
        assert!(
            remediation.contains("nofile 64:64 -> 200:200"),
            "{remediation}"
        );
    }

    fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap_or_else(|| panic!("no {type_} in {status}"))
    }

    /// Files follow consent: a Worker whose container does not exist reads nothing of its
    /// files (its heartbeat file names a worker someone else runs), unless the administrator
    /// granted it file-only access.
    #[tokio::test]
    async fn without_a_container_no_file_is_read_unless_granted() {
        let mut s = scene(FakeRuntime::default(), api_server);

        s.reconcile().await.unwrap();
        let status = s.last_status();
        assert_eq!(status["phase"], "Down", "{status}");
        assert_eq!(status["container"]["state"], "notFound");
        let accepted = condition(&status, "Accepted");
        assert_eq!(
            (&accepted["status"], &accepted["reason"]),
            (&json!("False"), &json!("ContainerNotFound"))
        );
        assert_eq!(condition(&status, "HeartbeatFresh")["reason"], "NotRead");
        assert!(
            status.get("heartbeat").is_none() && status.get("lastHeartbeatTime").is_none(),
            "nothing of the heartbeat file reaches status: {status}"
        );

        s.ctx.trust.file_only =
            crate::trust::FileOnlyGrants::parse(&["default/marie".into()]).unwrap();
        s.reconcile().await.unwrap();
        let status = s.last_status();
        assert_eq!(condition(&status, "Accepted")["reason"], "FileOnly");
        assert_eq!(status["heartbeat"]["status"], "idle", "{status}");
    }

    /// No reads while blind: an engine that does not answer leaves the Worker Unknown, with
    /// nothing of its files read, and the reconcile is retried.
    #[tokio::test]
    async fn an_engine_that_does_not_answer_reads_nothing_and_retries() {
        let s = setup(testing::exited(3));
        s.fake
            .engine_down
            .store(true, std::sync::atomic::Ordering::Relaxed);

        let err = s.reconcile().await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(s.starts(), 0, "nothing started");
        let status = s.last_status();
        assert_eq!(status["phase"], "Unknown");
        assert_eq!(condition(&status, "Accepted")["status"], "Unknown");
        assert_eq!(
            condition(&status, "Accepted")["reason"],
            "ContainerStateUnknown"
        );
        assert!(status.get("heartbeat").is_none(), "{status}");
        let runs = s
            .recorded()
            .iter()
            .filter(|r| r.method == Method::POST && r.body["kind"] == "WorkerRecovery")
            .count();
        assert_eq!(runs, 0, "no automatic attempt");
    }

    /// A scene whose container has exited and whose Worker is escalated at `escalation`, its
    /// webhook `hook` (at most 20 attempts of 5 s within 30 s).
    fn escalated(hook: &str, escalation: Value) -> Scene {
        let mut s = setup(testing::exited(3));
        let w = &mut s.worker;
        w.metadata.uid = Some("uid-marie".into());
        w.spec.escalation = Some(
            serde_json::from_value(json!({"webhook": {
                "url": hook, "maxAttempts": 20, "timeoutSeconds": 5, "deliverWithinSeconds": 30
            }}))
            .unwrap(),
        );
        w.status = Some(serde_json::from_value(json!({ "escalation": escalation })).unwrap());
        s
    }

    fn ago(seconds: i64) -> String {
        crate::escalation::notifier::whole_seconds(
            Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(seconds),
        )
        .to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_black_holed_webhook_does_not_hold_the_reconcile() {
        let hook = crate::http::testing::black_hole().await;
        let since = ago(0);
        let mut s = escalated(
            &hook,
            json!({"level": "Automated", "levelIndex": 0, "since": since, "reason": "restarts exhausted"}),
        );
        let mut woken = s.ctx.notifier.wakeups();

        let started = tokio::time::Instant::now();
        s.reconcile().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let status = s.last_status();
        let n = &status["escalation"]["notification"];
        assert_eq!(n["level"], "Automated");
        assert_eq!(n["state"], "Pending");
        assert_eq!(n["attempts"], 0);
        assert!(n.get("previousLevel").is_none(), "{n}");
        let queued: Timestamp = n["queuedTime"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            s.ctx.notifier.progress("uid-marie", "Automated", queued),
            crate::escalation::notifier::Progress::Pending,
            "the delivery goes on after the reconcile"
        );

        // The delivery gives up within deliverWithinSeconds and wakes the Worker, whose next
        // reconcile writes how it went.
        assert_eq!(woken.next().await, Some(ObjectRef::from_obj(&s.worker)));
        assert!(
            started.elapsed() <= Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        s.again().await.unwrap();
        let n = &s.last_status()["escalation"]["notification"];
        assert_eq!(n["state"], "Failed", "{n}");
        assert!(n["attempts"].as_u64().unwrap() >= 2, "{n}");
        let error = n["lastError"].as_str().unwrap();
        assert!(
            error.starts_with("gave up at the delivery deadline"),
            "{error}"
        );
        assert!(
            !error.contains("/hook"),
            "only the origin is named: {error}"
        );
        assert!(n["time"].is_string(), "{n}");
    }

    #[tokio::test]
    async fn a_level_change_is_posted_with_the_previous_level_and_recorded() {
        let server =
            crate::http::testing::serve(vec![crate::http::testing::Answer::status(200)]).await;
        // Automated was told 301 s ago; L1 is reached at 300 s.
        let mut s = escalated(
            &format!("{}/hook", server.url),
            json!({"level": "Automated", "levelIndex": 0, "since": ago(301), "reason": "restarts exhausted",
                   "notification": {"level": "Automated", "state": "Delivered", "attempts": 1}}),
        );

        let (first, n) = s.look_until_delivered().await;
        assert_eq!(
            (&first["level"], &first["previousLevel"], &first["state"]),
            (&json!("L1"), &json!("Automated"), &json!("Pending"))
        );
        let posted = server.requests.lock().unwrap()[0].clone();
        let body: Value = serde_json::from_str(posted.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(
            (&body["level"], &body["previousLevel"]),
            (&json!("L1"), &json!("Automated"))
        );

        assert_eq!(
            (&n["state"], &n["attempts"]),
            (&json!("Delivered"), &json!(1)),
            "{n}"
        );
        assert!(n.get("lastError").is_none(), "{n}");
        // Written once: the next look posts nothing more.
        s.again().await.unwrap();
        assert_eq!(server.requests.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_notification_pending_before_a_restart_is_delivered_within_its_time_left() {
        let server =
            crate::http::testing::serve(vec![crate::http::testing::Answer::status(202)]).await;
        let hook = format!("{}/hook", server.url);
        let pending = |queued: &str| {
            json!({"level": "Automated", "levelIndex": 0, "since": ago(20), "reason": "restarts exhausted",
                   "notification": {"level": "Automated", "state": "Pending", "attempts": 0, "queuedTime": queued}})
        };

        // A new process (a new notifier) finds the notification Pending and hands it over again.
        let queued = ago(5);
        let (first, n) = escalated(&hook, pending(&queued))
            .look_until_delivered()
            .await;
        assert_eq!(
            first["queuedTime"],
            queued.as_str(),
            "the time bound still counts from it"
        );
        assert_eq!(
            (&n["state"], &n["attempts"]),
            (&json!("Delivered"), &json!(1)),
            "{n}"
        );
        assert_eq!(server.requests.lock().unwrap().len(), 1);

        // Queued longer ago than deliverWithinSeconds: given up without an attempt.
        let (_, n) = escalated(&hook, pending(&ago(31)))
            .look_until_delivered()
            .await;
        assert_eq!(
            (&n["state"], &n["attempts"]),
            (&json!("Failed"), &json!(0)),
            "{n}"
        );
        assert_eq!(server.requests.lock().unwrap().len(), 1, "no second post");
    }

    /// Skip unchanged status writes: a second look that finds only a newer heartbeat writes
    /// nothing; a change, or a status older than the refresh period, is written.
    #[tokio::test]
    async fn a_look_that_finds_nothing_new_writes_nothing() {
        let mut s = setup(testing::running());
        let patches = |s: &Scene| {
            s.recorded()
                .iter()
                .filter(|r| r.method == Method::PATCH && r.path.ends_with("/status"))
                .count()
        };

        s.reconcile().await.unwrap();
        assert_eq!(patches(&s), 1);
        let written: WorkerStatus = serde_json::from_value(s.last_status()).unwrap();
        s.worker.status = Some(written.clone());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        fresh_heartbeat(s.dir.path());
        s.reconcile().await.unwrap();
        assert_eq!(
            patches(&s),
            1,
            "only the heartbeat's time moved: nothing written"
        );

        // The worker stops: written at once.
        s.fake
            .containers
            .lock()
            .unwrap()
            .insert("marie".into(), testing::exited(3));
        s.worker.spec.auto_recovery.enabled = false;
        s.reconcile().await.unwrap();
        assert_eq!(patches(&s), 2);
        assert_eq!(s.last_status()["phase"], "Down");

        // Nothing new, but the last write is older than the refresh period: written.
        let mut old = written;
        old.last_observed_time = Some(Time(
            Timestamp::now() - decide::STATUS_REFRESH - Duration::from_secs(1),
        ));
        s.fake
            .containers
            .lock()
            .unwrap()
            .insert("marie".into(), testing::running());
        s.worker.status = Some(old);
        s.ctx.worker_status.lock().unwrap().clear();
        s.reconcile().await.unwrap();
        assert_eq!(patches(&s), 3);
    }
}
