//! Supervision against an API server in memory (`mock_api`) and a fake engine: what it asks
//! the server for, what it does to the container, and what it hands back for the status.

use std::sync::Arc;

use http::Method;
use serde_json::{json, Value};

use super::*;
use crate::{
    crd::worker::AttemptRecord,
    observe::heartbeat::{Heartbeat, HeartbeatObservation, TimeSource},
    runtime::fake::FakeRuntime,
    testing,
    testing::mock_api::{self, Leases, Recorded},
};

const RUNS: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workerrecoveries";
const WORKERS: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workers";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
const LEASE: &str = "wro-writer.marie";
const TIMEOUT: Duration = Duration::from_secs(30);

/// Worker `marie` (UID `uid-marie`, automatic recovery on) with its shared root in a tempdir,
/// its container in a fake engine, and an API server that keeps Leases, creates Events and
/// runs, and serves the runs and Workers in `objects`.
struct Fixture {
    dir: tempfile::TempDir,
    worker: Worker,
    ctx: Context,
    fake: Arc<FakeRuntime>,
    requests: mock_api::Requests,
    leases: Leases,
}

fn fixture(container: ContainerInfo, objects: Vec<Value>) -> Fixture {
    fixture_at(tempfile::tempdir().unwrap(), container, objects)
}

/// [`fixture`] with its shared root at `dir`.
fn fixture_at(dir: tempfile::TempDir, container: ContainerInfo, objects: Vec<Value>) -> Fixture {
    let mut worker = testing::worker();
    worker.metadata.uid = Some("uid-marie".into());
    worker.spec.shared_root = dir.path().display().to_string();
    worker.spec.auto_recovery.enabled = true;
    let (client, requests, leases) =
        mock_api::client_and_leases(move |method, path, body| answer(&objects, method, path, body));
    let fake = Arc::new(FakeRuntime::with_container(container));
    let ctx = testing::context(client, fake.clone(), dir.path());
    Fixture {
        dir,
        worker,
        ctx,
        fake,
        requests,
        leases,
    }
}

/// The API server: the runs and Workers in `objects` are listed and read; runs and Events
/// are created.
fn answer(objects: &[Value], method: &Method, path: &str, body: &Value) -> (u16, Value) {
    let (kind, rest) = match (path.strip_prefix(RUNS), path.strip_prefix(WORKERS)) {
        (Some(rest), _) => ("WorkerRecovery", rest),
        (None, Some(rest)) => ("Worker", rest),
        _ if method == Method::POST && path == EVENTS => return (201, body.clone()),
        _ => return mock_api::not_found(path),
    };
    let mut of_kind = objects.iter().filter(|o| o["kind"] == kind).cloned();
    match (method, rest.trim_start_matches('/')) {
        (&Method::GET, "") => (
            200,
            json!({"apiVersion": "workerrecovery.io/v1alpha1", "kind": format!("{kind}List"),
                   "metadata": {}, "items": of_kind.collect::<Vec<_>>()}),
        ),
        (&Method::GET, name) => match of_kind.find(|o| o["metadata"]["name"] == name) {
            Some(object) => (200, object),
            None => mock_api::not_found(path),
        },
        (&Method::POST, "") => (201, body.clone()),
        _ => mock_api::not_found(path),
    }
}

/// A run of Worker `marie` in `phase`, whose diagnosis (when `cause` is set) found `cause`.
fn run(name: &str, phase: &str, cause: Option<&str>) -> Value {
    let mut run = json!({
        "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"workerRef": {"name": "marie"}},
        "status": {"phase": phase}
    });
    if let Some(cause) = cause {
        run["status"]["diagnosis"] = json!({
            "worker": "marie", "container": "marie",
            "startedAt": "2026-11-27T10:00:00Z", "completedAt": "2026-11-27T10:00:01Z",
            "findings": [],
            "verdict": {"topCause": cause, "causes": [{
                "cause": cause, "score": 30, "summary": "it crashed", "supporting": []}]}});
    }
    run
}

impl Fixture {
    /// What the engine shows of the container now, with a heartbeat written now.
    fn observation(&self) -> Observation {
        let container = self.fake.containers.lock().unwrap()["marie"].clone();
        let now = Timestamp::now();
        let heartbeat = Heartbeat {
            at: now,
            source: TimeSource::FileModified,
            status: None,
            current_task: None,
            progress: None,
            issue: None,
        };
        Observation {
            container: ContainerObservation::Found(Box::new(container)),
            heartbeat: Some(HeartbeatObservation::Present(heartbeat)),
            now,
        }
    }

    async fn supervise(&self, previous: Option<&WorkerStatus>) -> Supervision {
        let admission = self.ctx.admit(&self.worker).await.expect("admitted");
        let obs = self.observation();
        supervise(
            &self.ctx,
            &self.worker,
            Some(&admission),
            &obs,
            previous,
            TIMEOUT,
            false,
        )
        .await
        .unwrap()
    }

    fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The runs created, in order.
    fn runs_created(&self) -> Vec<Value> {
        let created = self.recorded().into_iter();
        let runs = created.filter(|r| r.method == Method::POST && r.path == RUNS);
        runs.map(|r| r.body).collect()
    }

    /// The Events published with `reason`: their notes. (The recorder publishes an Event seen
    /// again as a patch of the first one, with the same reason.)
    fn events(&self, reason: &str) -> Vec<String> {
        self.recorded()
            .into_iter()
            .filter(|r| r.path.starts_with(EVENTS) && r.body["reason"] == reason)
            .map(|r| r.body["note"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The holder of the Worker's writer Lease.
    fn writer(&self) -> Option<String> {
        self.leases.holder(LEASE)
    }

    fn starts(&self) -> u32 {
        *self.fake.starts.lock().unwrap()
    }
}

/// A status whose record holds attempts made `ago` seconds ago, oldest first, through runs
/// `marie-auto-1`, ...
fn status_with_attempts(ago: &[i64], restart_count: i32) -> WorkerStatus {
    let attempts: Vec<AttemptRecord> = ago
        .iter()
        .enumerate()
        .map(|(i, s)| AttemptRecord {
            time: Time(Timestamp::now() - Duration::from_secs(*s as u64)),
            run: format!("marie-auto-{}", i + 1),
            trigger: "exit code 3".into(),
            remediation: None,
        })
        .collect();
    let n = attempts.len();
    WorkerStatus {
        restart_count,
        auto_recovery: Some(AutoRecoveryStatus {
            attempts,
            attempts_total: n as u64,
            consecutive_failures: n as u32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_crashed_container_gets_an_attempt_under_the_lease_and_a_quick_start() {
    let f = fixture(testing::exited(3), vec![]);
    let previous = WorkerStatus {
        restart_count: 4,
        ..Default::default()
    };

    let out = f.supervise(Some(&previous)).await;

    // Started at once, before the run exists.
    assert_eq!(f.starts(), 1);
    assert!(f.fake.containers.lock().unwrap()["marie"].running);
    assert!(out.restart.is_some());
    // The Lease is the run's, taken before the start and the run.
    assert_eq!(f.writer().as_deref(), Some("WorkerRecovery/marie-auto-1"));
    let recorded = f.recorded();
    let position = |what: &dyn Fn(&Recorded) -> bool| recorded.iter().position(what).unwrap();
    let lease_taken = position(&|r| r.method == Method::POST && r.path == LEASES);
    let run_created = position(&|r| r.method == Method::POST && r.path == RUNS);
    assert!(lease_taken < run_created, "{recorded:#?}");
    // The run: owned by the Worker, labelled as its automatic run, with the crash it saw.
    let runs = f.runs_created();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["metadata"]["name"], "marie-auto-1");
    assert_eq!(run["metadata"]["labels"][AUTO_RUN_LABEL], "marie");
    let owner = &run["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["uid"], &owner["controller"]),
        (&json!("Worker"), &json!("uid-marie"), &json!(true))
    );
    assert_eq!(run["spec"]["workerRef"]["name"], "marie");
    assert_eq!(run["spec"]["mode"], "Quick");
    let trigger = &run["spec"]["trigger"];
    assert_eq!(trigger["reason"], "exit code 3");
    assert_eq!(trigger["exitCode"], 3);
    assert_eq!(trigger["finishedAt"], "2026-11-27T10:05:00Z");
    assert!(trigger["restartedAt"].is_string(), "{trigger}");
    // The record: one attempt through that run.
    assert_eq!(out.record.attempts_total, 1);
    assert_eq!(out.record.consecutive_failures, 1);
    assert_eq!(out.record.attempts.len(), 1);
    assert_eq!(out.record.attempts[0].run, "marie-auto-1");
    assert_eq!(out.record.attempts[0].trigger, "exit code 3");
    assert!(out.escalation.is_none());
    // Told, counting on from the last status's restarts, and counted in the metrics.
    let notes = f.events("Restarted");
    assert_eq!(notes.len(), 1, "{recorded:#?}");
    assert!(
        notes[0].contains("exit code 3") && notes[0].contains("restart 5, run marie-auto-1"),
        "{}",
        notes[0]
    );
    assert!(f
        .ctx
        .metrics
        .render()
        .contains("workerrecovery_container_restarts_total{controller=\"worker\"} 1"));
}

#[tokio::test]
async fn a_clean_attempt_leaves_the_start_to_its_run() {
    let mut f = fixture(testing::exited(3), vec![]);
    f.worker.spec.auto_recovery.mode = AutoRecoveryMode::Clean;

    let out = f.supervise(None).await;

    assert_eq!(f.starts(), 0, "the run cleans the state before it starts");
    assert!(out.restart.is_none());
    let runs = f.runs_created();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["spec"]["mode"], "Clean");
    assert!(runs[0]["spec"]["trigger"].get("restartedAt").is_none());
    assert_eq!(f.writer().as_deref(), Some("WorkerRecovery/marie-auto-1"));
    let notes = f.events("AutoRecovery");
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].ends_with("; recovery run marie-auto-1 started"),
        "{}",
        notes[0]
    );
    assert!(f.events("Restarted").is_empty());
}

#[tokio::test]
async fn at_max_restarts_within_the_window_it_escalates_instead_of_starting() {
    // Three attempts (maxRestarts) within the last 600 s (windowSeconds); the last run found
    // the worker's own crash.
    let last = run("marie-auto-3", "Succeeded", Some("ApplicationCrash"));
    let f = fixture(testing::exited(3), vec![last]);
    let previous = status_with_attempts(&[300, 200, 100], 3);

    let out = f.supervise(Some(&previous)).await;

    assert_eq!(f.starts(), 0);
    assert!(f.runs_created().is_empty());
    assert_eq!(f.writer(), None, "no writer Lease taken");
    assert_eq!(out.record.attempts_total, 3, "no attempt recorded");
    let e = out.escalation.expect("escalated");
    assert_eq!((e.level.as_str(), e.level_index), ("Automated", 0));
    assert!(e.reason.contains("used up maxRestarts 3"), "{}", e.reason);
    assert_eq!(e.run.as_deref(), Some("marie-auto-3"));
    assert_eq!(e.root_cause, Some(RootCause::ApplicationCrash));
    let notes = f.events("Escalated");
    assert_eq!(notes.len(), 1);
    assert!(notes[0].starts_with("escalated to level Automated: exit code 3"));
    // Looked at again when the next level (L1, at 300 s) is due.
    let next = out.next_look.expect("a next look");
    assert!(
        next > Duration::from_secs(299) && next <= Duration::from_secs(301),
        "{next:?}"
    );
}

#[tokio::test]
async fn a_healthy_worker_closes_its_escalation_and_starts_afresh() {
    let f = fixture(testing::running(), vec![]);
    let mut previous = status_with_attempts(&[300, 200, 100], 3);
    if let Some(r) = previous.auto_recovery.as_mut() {
        r.backoff_seconds = 40;
    }
    previous.escalation = Some(EscalationStatus {
        level: "L1".into(),
        level_index: 1,
        since: Some(Time(Timestamp::now() - Duration::from_secs(400))),
        reason: "restarts exhausted".into(),
        ..Default::default()
    });

    let out = f.supervise(Some(&previous)).await;

    assert!(out.escalation.is_none(), "closed");
    assert!(out.record.attempts.is_empty());
    assert_eq!(
        (out.record.consecutive_failures, out.record.backoff_seconds),
        (0, 0)
    );
    assert_eq!(out.record.attempts_total, 3, "the total still counts them");
    assert_eq!(
        f.events("Recovered"),
        ["the worker is healthy again; the escalation (level L1) is closed"]
    );
    assert!(f.events("EscalationLevel").is_empty());
    assert_eq!(f.starts(), 0);
    assert!(f.runs_created().is_empty());
}

/// A look at the crashed `marie` after a run applied by hand, `marie-manual`, in `phase`, took
/// the Worker's writer Lease.
async fn look_after_manual_run(phase: &str) -> (Fixture, Supervision) {
    let f = fixture(testing::exited(3), vec![run("marie-manual", phase, None)]);
    let manual = writer::Holder::Run("marie-manual".into());
    let got = writer::acquire(&f.ctx.client, &f.worker, &manual, None).await;
    assert_eq!(got.unwrap(), writer::Acquired::Yes);
    let out = f.supervise(None).await;
    (f, out)
}

#[tokio::test]
async fn a_live_writer_holds_the_attempt_back() {
    let (f, out) = look_after_manual_run("Running").await;
    assert_eq!(f.starts(), 0);
    assert!(f.runs_created().is_empty());
    assert_eq!(f.writer().as_deref(), Some("WorkerRecovery/marie-manual"));
    assert_eq!(out.record.attempts_total, 0);
    assert!(out.escalation.is_none());
    assert_eq!(
        out.next_look,
        Some(Duration::from_secs(2)),
        "looks again soon"
    );

    // Once that run finished, the look attempts, and takes the Lease over for its run.
    let (f, out) = look_after_manual_run("Succeeded").await;
    assert_eq!(f.starts(), 1);
    assert_eq!(out.record.attempts_total, 1);
    assert_eq!(f.writer().as_deref(), Some("WorkerRecovery/marie-auto-1"));
}

#[tokio::test]
async fn a_writer_that_wins_the_lease_first_makes_the_attempt_wait() {
    let f = fixture(
        testing::exited(3),
        vec![run("marie-manual", "Running", None)],
    );
    // No writer when the policy decides; one takes the Lease just before the attempt does.
    *f.leases.race.lock().unwrap() = Some(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": "default",
                     "annotations": {"workerrecovery.io/worker-uid": "uid-marie"}},
        "spec": {"holderIdentity": "WorkerRecovery/marie-manual"}
    }));

    let out = f.supervise(None).await;

    assert_eq!(f.starts(), 0, "not started");
    assert!(f.runs_created().is_empty(), "no run");
    assert_eq!(f.writer().as_deref(), Some("WorkerRecovery/marie-manual"));
    assert_eq!(out.record.attempts_total, 0, "no attempt recorded");
    assert_eq!(out.next_look, Some(Duration::from_secs(2)));
    assert!(f.events("Restarted").is_empty() && f.events("AutoRecovery").is_empty());
}

#[tokio::test]
async fn a_second_failure_backs_off_with_one_event() {
    let f = fixture(testing::exited(3), vec![]);
    // One attempt 5 s ago: the next waits the 60 s cooldown.
    let previous = status_with_attempts(&[5], 1);

    let out = f.supervise(Some(&previous)).await;

    assert_eq!(f.starts(), 0);
    assert!(f.runs_created().is_empty());
    let until = out
        .record
        .next_attempt_time
        .clone()
        .expect("a next attempt time")
        .0;
    let last = previous.auto_recovery.as_ref().unwrap().attempts[0].time.0;
    assert_eq!(until, last + Duration::from_secs(60));
    let reason = out.record.waiting_reason.clone().unwrap();
    assert!(reason.contains("failure 2 in a row"), "{reason}");
    let next = out.next_look.unwrap();
    assert!(
        next > Duration::from_secs(50) && next <= Duration::from_secs(55),
        "{next:?}"
    );
    assert_eq!(f.events("BackOff"), [reason]);

    // The same wait at the next look: no second Event.
    let mut waiting = previous.clone();
    waiting.auto_recovery = Some(out.record);
    f.supervise(Some(&waiting)).await;
    assert_eq!(f.events("BackOff").len(), 1);
}

#[tokio::test]
async fn a_crash_moves_a_task_found_active_at_the_poison_threshold_to_failed() {
    let mut f = fixture(testing::exited(3), vec![]);
    f.worker.spec.auto_recovery.poison_after_crashes = 2;
    let active = f.dir.path().join("tasks/marie/active");
    std::fs::create_dir_all(&active).unwrap();
    std::fs::write(active.join("t1.json"), br#"{"id":"t1","retry_count":0}"#).unwrap();
    // t1 was active at the last crash already.
    let mut previous = status_with_attempts(&[700], 1);
    if let Some(r) = previous.auto_recovery.as_mut() {
        r.task_crash_counts = [("t1.json".to_string(), 1)].into();
    }

    let out = f.supervise(Some(&previous)).await;

    assert!(!active.join("t1.json").exists(), "out of active/");
    let failed: Vec<_> = std::fs::read_dir(f.dir.path().join("tasks/marie/failed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(failed.iter().any(|n| n.starts_with("t1")), "{failed:?}");
    assert_eq!(out.record.poisoned_tasks, ["t1.json"]);
    assert!(out.record.task_crash_counts.is_empty());
    assert_eq!(f.events("PoisonTask").len(), 1);
    assert_eq!(f.starts(), 1, "and the worker is started without it");
}

/// Pending tasks in `tasks/<worker>/pending/`.
fn pending(f: &Fixture, worker: &str) -> Vec<String> {
    let dir = f.dir.path().join(format!("tasks/{worker}/pending"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn at_the_last_level_pending_tasks_fail_over_in_batches_recorded_first() {
    // Backup Worker `anga`, healthy, its container consenting, on the same shared root.
    let mut anga = testing::running();
    anga.id = "anga-id".into();
    anga.name = "anga".into();
    anga.labels = [(
        crate::trust::CONSENT_LABEL.to_string(),
        crate::trust::consent_value("default", "anga"),
    )]
    .into();
    let dir = tempfile::tempdir().unwrap();
    let backup = json!({
        "apiVersion": "workerrecovery.io/v1alpha1", "kind": "Worker",
        "metadata": {"name": "anga", "namespace": "default", "uid": "uid-anga"},
        "spec": {"container": "anga", "sharedRoot": dir.path().display().to_string()},
        "status": {"phase": "Healthy"}
    });
    let mut f = fixture_at(dir, testing::exited(3), vec![backup]);
    f.fake
        .containers
        .lock()
        .unwrap()
        .insert("anga".into(), anga);
    f.worker.spec.escalation =
        Some(serde_json::from_value(json!({"backupWorkers": ["anga"]})).unwrap());
    let marie_pending = f.dir.path().join("tasks/marie/pending");
    std::fs::create_dir_all(&marie_pending).unwrap();
    for name in ["p1.json", "p2.json"] {
        std::fs::write(marie_pending.join(name), br#"{"retry_count":0}"#).unwrap();
    }
    // At the last level (L3, from 1800 s) for a while.
    let mut previous = WorkerStatus {
        escalation: Some(EscalationStatus {
            level: "L3".into(),
            level_index: 3,
            since: Some(Time(Timestamp::now() - Duration::from_secs(2000))),
            reason: "restarts exhausted".into(),
            ..Default::default()
        }),
        ..Default::default()
    };

    // First look: the batch is chosen and handed back to be recorded; nothing moves yet.
    let out = f.supervise(Some(&previous)).await;
    let e = out.escalation.clone().unwrap();
    let failover = e.failover.clone().expect("a failover");
    assert_eq!(
        (failover.to.as_str(), failover.state, failover.moved),
        ("anga", FailoverState::Moving, 0)
    );
    assert_eq!(failover.batch, ["p1.json", "p2.json"]);
    assert_eq!(pending(&f, "marie"), ["p1.json", "p2.json"]);
    assert_eq!(out.next_look, Some(Duration::from_millis(100)));
    for lease in ["wro-writer.marie", "wro-writer.anga"] {
        assert_eq!(f.leases.holder(lease).as_deref(), Some("Worker/marie"));
    }

    // Next look, with the batch recorded: it moves, nothing is left, the failover is done.
    previous.escalation = Some(e);
    let out = f.supervise(Some(&previous)).await;
    let failover = out.escalation.unwrap().failover.unwrap();
    assert_eq!((failover.state, failover.moved), (FailoverState::Done, 2));
    assert!(failover.batch.is_empty());
    assert_eq!(
        failover.message.as_deref(),
        Some("2 pending task(s) moved to anga")
    );
    assert!(pending(&f, "marie").is_empty());
    assert_eq!(pending(&f, "anga"), ["p1.json", "p2.json"]);
    assert_eq!(
        f.events("FailedOver"),
        ["2 pending task(s) moved to backup Worker anga"]
    );
    for lease in ["wro-writer.marie", "wro-writer.anga"] {
        assert_eq!(f.leases.holder(lease), None, "{lease} given back");
    }
    assert_eq!(f.starts(), 0, "an escalated Worker is not started");
}
