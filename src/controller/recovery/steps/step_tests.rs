//! The steps of a run against a fake engine, a shared root in a tempdir and an API server in
//! memory: what each does to the container, the files and the API, and what it records; run
//! again (an operator restart mid-step), nothing is done twice; a dry run changes nothing.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};

use super::*;
use crate::crd::worker_recovery::AnalysisState;
use crate::{
    crd::worker_recovery::StepName, runtime::fake::FakeRuntime, testing, testing::mock_api,
};

const PLANS: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/resumeplans";

/// Run `marie-1` (UID `uid-run`) of Worker `marie`, its shared root in a tempdir, its container
/// in a fake engine; the API server keeps the ResumePlans created in `plans`.
struct Fixture {
    dir: tempfile::TempDir,
    worker: Worker,
    rec: WorkerRecovery,
    admission: Admission,
    ctx: Context,
    fake: Arc<FakeRuntime>,
    requests: mock_api::Requests,
    plans: Arc<Mutex<HashMap<String, Value>>>,
}

/// A fixture whose run has `spec` (its `workerRef` added) and whose engine has `container`.
async fn fixture(container: ContainerInfo, spec: Value) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "tasks/marie/active",
        "tasks/marie/pending",
        "locks",
        "workers/marie",
    ] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let mut worker = testing::worker();
    worker.metadata.uid = Some("uid-marie".into());
    worker.spec.shared_root = dir.path().display().to_string();
    let mut spec = spec;
    spec["workerRef"] = json!({"name": "marie"});
    let rec: WorkerRecovery = serde_json::from_value(json!({
        "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
        "metadata": {"name": "marie-1", "namespace": "default", "uid": "uid-run"},
        "spec": spec
    }))
    .unwrap();
    let plans: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let kept = plans.clone();
    let answer = move |method: &Method, path: &str, body: &Value| {
        let mut plans = kept.lock().unwrap();
        let name = path.strip_prefix(PLANS).map(|n| n.trim_start_matches('/'));
        match (method, name) {
            (&Method::GET, Some(name)) => match plans.get(name) {
                Some(plan) => (200, plan.clone()),
                None => mock_api::not_found(path),
            },
            (&Method::POST, Some("")) => {
                let name = body["metadata"]["name"].as_str().unwrap().to_string();
                plans.insert(name, body.clone());
                (201, body.clone())
            }
            _ => mock_api::not_found(path),
        }
    };
    let fake = Arc::new(FakeRuntime::with_container(container));
    let (ctx, requests) = testing::api_context(answer, fake.clone(), dir.path());
    let admission = ctx.admit(&worker).await.expect("admitted");
    Fixture {
        dir,
        worker,
        rec,
        admission,
        ctx,
        fake,
        requests,
        plans,
    }
}

/// The run's start time, as recorded: `last_failure` of the tasks it requeues.
fn started() -> Timestamp {
    "2026-11-27T10:06:00Z".parse().unwrap()
}

impl Fixture {
    fn run(&self) -> Run<'_> {
        Run {
            ctx: &self.ctx,
            rec: &self.rec,
            worker: &self.worker,
            admission: &self.admission,
            started: started(),
            failure_reason: "worker_crash".into(),
            container_started_at: None,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn task(&self, dir: &str, name: &str, retry_count: u32) {
        let body = json!({"id": name, "retry_count": retry_count});
        std::fs::write(
            self.path(&format!("tasks/marie/{dir}/{name}.json")),
            body.to_string(),
        )
        .unwrap();
    }

    /// The restart step, begun a second ago.
    async fn restart(&self) -> StepResult {
        let step = step_started(StepName::Restart, 1);
        done(restart(&self.run(), &step).await.unwrap())
    }

    fn container(&self, name: &str) -> ContainerInfo {
        self.fake.containers.lock().unwrap()[name].clone()
    }

    fn actions(&self) -> Vec<String> {
        self.fake.actions.lock().unwrap().clone()
    }

    fn starts(&self) -> u32 {
        *self.fake.starts.lock().unwrap()
    }

    /// The ResumePlans created.
    fn plans_created(&self) -> Vec<Value> {
        let recorded = self.requests.lock().unwrap();
        let created = recorded.iter().filter(|r| r.method == Method::POST);
        created.map(|r| r.body.clone()).collect()
    }
}

/// A step that started `ago` seconds ago.
fn step_started(name: StepName, ago: u64) -> StepStatus {
    StepStatus {
        start_time: Some(Time(Timestamp::now() - Duration::from_secs(ago))),
        ..StepStatus::pending(name)
    }
}

fn done(outcome: Outcome) -> StepResult {
    match outcome {
        Outcome::Done(result) => result,
        Outcome::Wait { message, .. } => panic!("still waiting: {message}"),
    }
}

fn waiting(outcome: Outcome) -> String {
    match outcome {
        Outcome::Wait { message, .. } => message,
        Outcome::Done(result) => panic!("done: {}", result.message),
    }
}

/// Every file under `root` with its bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[tokio::test]
async fn restart_starts_a_stopped_container_and_records_its_start() {
    let f = fixture(testing::exited(3), json!({})).await;

    let result = f.restart().await;

    assert_eq!(result.state(), StepState::Succeeded, "{}", result.message);
    assert_eq!(f.starts(), 1);
    let now = f.container("marie");
    assert!(now.running);
    assert!(
        f.actions().is_empty(),
        "started, not stopped: {:?}",
        f.actions()
    );
    // The start time is the engine's, as it tells it after the start.
    assert_eq!(result.container_started_at, now.started_at);
    assert_eq!(
        result.message,
        "container marie started at 2026-11-27T10:00:00Z"
    );
    assert!(f
        .ctx
        .metrics
        .render()
        .contains("workerrecovery_container_restarts_total{controller=\"workerrecovery\"} 1"));
}

#[tokio::test]
async fn restart_stops_a_running_container_first() {
    // Started long before the step began: the worker as it failed.
    let f = fixture(testing::running(), json!({})).await;

    let result = f.restart().await;

    assert_eq!(result.state(), StepState::Succeeded);
    assert_eq!(f.actions(), ["stop marie", "restart marie"]);
    assert!(f.container("marie").running);
}

#[tokio::test]
async fn a_restart_resumed_after_its_start_only_records_it() {
    // The operator restarted after the step started the container: it runs since then.
    let mut running = testing::running();
    running.started_at = Some(Timestamp::now() - Duration::from_secs(2));
    let f = fixture(running.clone(), json!({})).await;

    let result = done(
        restart(&f.run(), &step_started(StepName::Restart, 10))
            .await
            .unwrap(),
    );

    assert_eq!(result.state(), StepState::Succeeded);
    assert_eq!((f.starts(), f.actions()), (0, vec![]), "nothing done twice");
    assert_eq!(result.container_started_at, running.started_at);
}

#[tokio::test]
async fn a_restart_after_automatic_recoverys_start_only_records_it() {
    let spec = json!({"trigger": {"reason": "exit code 3", "exitCode": 3,
                                  "restartedAt": "2026-11-27T10:05:01Z"}});
    let f = fixture(testing::running(), spec.clone()).await;
    let result = f.restart().await;
    assert_eq!(result.state(), StepState::Succeeded);
    assert_eq!(
        result.message,
        "container marie was started by automatic recovery at 2026-11-27T10:05:01Z"
    );
    assert_eq!((f.starts(), f.actions()), (0, vec![]));

    // It crashed again since: the policy's to handle, not started here.
    let f = fixture(testing::exited(3), spec).await;
    let result = f.restart().await;
    assert_eq!(result.state(), StepState::Failed);
    assert!(
        result.message.ends_with("is exited again (exit code 3)"),
        "{}",
        result.message
    );
    assert_eq!(f.starts(), 0);
}

#[tokio::test]
async fn a_debug_start_run_again_reuses_its_copy() {
    let f = fixture(testing::exited(3), json!({"mode": "Debug"})).await;

    for _ in 0..2 {
        let result = done(debug_start(&f.run()).await.unwrap());
        assert_eq!(result.state(), StepState::Succeeded, "{}", result.message);
        assert_eq!(result.details["container"], ["marie-debug"]);
    }

    assert_eq!(f.actions(), ["clone marie marie-debug"], "one copy");
    assert_eq!(f.starts(), 1, "started once");
    let copy = f.container("marie-debug");
    assert!(copy.running);
    assert_eq!(copy.labels[RUN_LABEL], "default/marie-1");
    assert!(copy.env.contains(&"LOG_LEVEL=DEBUG".to_string()));
    assert!(!f.container("marie").running, "the original stays stopped");
}

#[tokio::test]
async fn a_debug_start_leaves_a_container_of_that_name_it_did_not_create() {
    let f = fixture(testing::exited(3), json!({"mode": "Debug"})).await;
    let mut stranger = testing::exited(0);
    stranger.id = "0ther".into();
    stranger.name = "marie-debug".into();
    stranger.labels.clear();
    f.fake
        .containers
        .lock()
        .unwrap()
        .insert("marie-debug".into(), stranger);

    let result = done(debug_start(&f.run()).await.unwrap());

    assert_eq!(result.state(), StepState::Failed);
    assert!(result.message.contains("was not created by this run"));
    assert_eq!((f.starts(), f.actions()), (0, vec![]));
}

#[tokio::test]
async fn clean_state_stops_the_worker_and_requeues_its_active_tasks() {
    let f = fixture(testing::running(), json!({"mode": "Clean"})).await;
    f.task("active", "a", 0);
    f.task("active", "b", 3); // at maxRetries (3)

    let result = done(clean_state(&f.run()).await.unwrap());

    assert_eq!(result.state(), StepState::Succeeded, "{}", result.message);
    assert_eq!(f.actions(), ["stop marie"], "stopped before any task moves");
    let requeued: Value =
        serde_json::from_slice(&std::fs::read(f.path("tasks/marie/pending/a.json")).unwrap())
            .unwrap();
    assert_eq!(requeued["id"], "a");
    assert_eq!(requeued["retry_count"], 1);
    assert_eq!(requeued["failure_reason"], "worker_crash");
    assert_eq!(
        requeued["last_failure"].as_f64(),
        Some(started().as_second() as f64),
        "the run's start time"
    );
    assert!(tree(&f.path("tasks/marie/active")).is_empty());
    let failed = tree(&f.path("tasks/marie/failed"));
    let dead: Vec<Value> = failed
        .values()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .filter(|v: &Value| v["id"] == "b")
        .collect();
    assert_eq!(dead.len(), 1, "{failed:?}");
    assert_eq!(dead[0]["retry_count"], 4);
    let figures = &result.figures;
    assert_eq!(
        (
            figures["containerStopped"],
            figures["requeued"],
            figures["deadLettered"]
        ),
        (1, 1, 1)
    );
    assert_eq!(result.details["requeuedTasks"].len(), 1);
    assert!(
        result
            .message
            .starts_with("requeued 1 task(s), dead-lettered 1"),
        "{}",
        result.message
    );

    // Run again (an operator restart after it): nothing moves twice, the counts stay.
    let again = done(clean_state(&f.run()).await.unwrap());
    assert_eq!(
        (again.figures["requeued"], again.figures["deadLettered"]),
        (1, 1)
    );
    let pending = tree(&f.path("tasks/marie/pending"));
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(f.actions(), ["stop marie"], "stopped already");
}

#[tokio::test]
async fn a_resume_step_creates_its_plan_once_and_follows_it() {
    let f = fixture(testing::running(), json!({"mode": "Clean"})).await;
    let step = step_started(StepName::Resume, 1);

    let first = waiting(resume(&f.run(), &step, Some(1), None).await.unwrap());
    assert!(
        first.starts_with("ResumePlan marie-1-resume: 0 of 0"),
        "{first}"
    );
    // Resumed after an operator restart: the plan is found, not created again.
    waiting(resume(&f.run(), &step, Some(1), None).await.unwrap());
    let created = f.plans_created();
    assert_eq!(created.len(), 1, "{created:#?}");
    let plan = &created[0];
    assert_eq!(plan["metadata"]["name"], "marie-1-resume");
    assert_eq!(plan["metadata"]["ownerReferences"][0]["uid"], "uid-run");
    assert_eq!(plan["metadata"]["labels"][RUN_LABEL], "marie-1");
    assert_eq!(plan["spec"]["workerRef"]["name"], "marie");
    assert_eq!(plan["spec"]["markWorkerState"], true);

    // The plan completes: so does the step, with its figures.
    f.plans.lock().unwrap().get_mut("marie-1-resume").unwrap()["status"] = json!({
        "phase": "Completed", "tasksTotal": 3, "tasksStaged": 3, "batchesDone": 1});
    let result = done(resume(&f.run(), &step, Some(1), None).await.unwrap());
    assert_eq!(result.state(), StepState::Succeeded);
    assert_eq!(
        (result.figures["tasksStaged"], result.figures["requeued"]),
        (3, 1)
    );
    assert_eq!(f.plans_created().len(), 1);
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_says_what_it_would_do() {
    let f = fixture(testing::running(), json!({"mode": "Clean", "dryRun": true})).await;
    f.task("active", "a", 0);
    f.task("pending", "p1", 0);
    f.task("pending", "p2", 1);
    let before = tree(f.dir.path());
    let run = f.run();

    let clean = done(clean_state(&run).await.unwrap());
    let restarted = done(
        restart(&run, &step_started(StepName::Restart, 1))
            .await
            .unwrap(),
    );
    let debug = done(debug_start(&run).await.unwrap());
    let resumed = done(
        resume(&run, &step_started(StepName::Resume, 1), Some(1), None)
            .await
            .unwrap(),
    );

    assert_eq!(tree(f.dir.path()), before, "no file changed");
    assert_eq!(
        (f.starts(), f.actions()),
        (0, vec![]),
        "the engine untouched"
    );
    assert!(f.container("marie").running, "not stopped");
    assert!(
        f.requests.lock().unwrap().is_empty(),
        "no API request: {:?}",
        f.requests.lock().unwrap()
    );
    assert!(
        clean
            .message
            .starts_with("dry run: would requeue 1 task(s)"),
        "{}",
        clean.message
    );
    assert_eq!(clean.figures["requeued"], 1);
    assert!(!clean.figures.contains_key("containerStopped"));
    assert!(
        restarted
            .message
            .starts_with("dry run: would restart container marie"),
        "{}",
        restarted.message
    );
    assert!(debug
        .message
        .starts_with("dry run: would create and start marie-debug"));
    assert!(
        resumed
            .message
            .starts_with("dry run: would create ResumePlan marie-1-resume to release 2 pending task(s) (1 of them requeued by this run)"),
        "{}",
        resumed.message
    );
    assert_eq!(resumed.figures["pending"], 2);
}

impl Fixture {
    /// The verify step, begun `ago` seconds ago.
    async fn verify(&self, ago: u64) -> Outcome {
        let step = step_started(StepName::VerifyHealth, ago);
        verify_health(&self.run(), &step).await.unwrap()
    }

    /// The debug copy has stopped (crashed, its core written).
    fn debug_copy_stopped(&self) {
        let mut containers = self.fake.containers.lock().unwrap();
        containers.get_mut("marie-debug").unwrap().running = false;
    }
}

#[tokio::test]
async fn verify_health_wants_a_heartbeat_newer_than_the_start() {
    let mut running = testing::running();
    let start = Timestamp::now() - Duration::from_secs(5);
    running.started_at = Some(start);
    let f = fixture(running, json!({"verifyTimeoutSeconds": 60})).await;

    // The last heartbeat is from before the start: not yet, within the deadline.
    testing::heartbeat_at(f.dir.path(), start - Duration::from_secs(30));
    let message = waiting(f.verify(1).await);
    assert!(
        message.contains("no heartbeat since the start"),
        "{message}"
    );
    // Past the deadline: failed, saying what is missing.
    let result = done(f.verify(61).await);
    assert_eq!(result.state(), StepState::Failed);
    assert!(
        result
            .message
            .starts_with("not healthy within 60s: no heartbeat since the start"),
        "{}",
        result.message
    );

    // A heartbeat since the start: healthy.
    testing::heartbeat_at(f.dir.path(), Timestamp::now());
    let result = done(f.verify(1).await);
    assert_eq!(result.state(), StepState::Succeeded, "{}", result.message);
    assert!(
        result
            .message
            .starts_with("healthy: container running, heartbeat"),
        "{}",
        result.message
    );
    assert!(result.figures["heartbeatAgeMs"] < 5_000);
    assert_eq!((f.starts(), f.actions()), (0, vec![]), "only looked at");
}

#[tokio::test]
async fn verify_health_fails_at_once_when_the_worker_exited_again_after_its_start() {
    // Started at 10:00, exited at 10:05.
    let f = fixture(testing::exited(3), json!({})).await;
    let result = done(f.verify(1).await);
    assert_eq!(result.state(), StepState::Failed);
    assert!(
        result
            .message
            .starts_with("the worker exited again after its start: ")
            && result.message.contains("exit code 3"),
        "{}",
        result.message
    );
}

/// A Debug run of a Worker that declares `diagnostics.coreDumpDir: cores/{worker}`, with an
/// analyzer configured when `analyzer`.
async fn core_fixture(analyzer: bool) -> Fixture {
    let mut f = fixture(testing::exited(134), json!({"mode": "Debug"})).await;
    f.worker.spec.diagnostics.core_dump_dir = Some("cores/{worker}".into());
    f.admission = f.ctx.admit(&f.worker).await.expect("admitted");
    if analyzer {
        f.ctx.core_analyzer = Some(crate::crash::Analyzer {
            image: "wro-core-analyzer:dev".into(),
            timeout: std::time::Duration::from_secs(30),
            memory_bytes: 256 << 20,
        });
    }
    f
}

/// The run's status after its DebugStart step gave `result`.
fn status_after(result: &StepResult) -> crate::crd::worker_recovery::WorkerRecoveryStatus {
    serde_json::from_value(json!({
        "steps": [{"name": "DebugStart", "state": "Succeeded", "details": result.details}]
    }))
    .unwrap()
}

#[tokio::test]
async fn the_debug_copy_dumps_its_cores_into_the_run_directory() {
    use std::os::unix::fs::PermissionsExt;
    let f = core_fixture(false).await;

    let result = done(debug_start(&f.run()).await.unwrap());

    assert_eq!(result.state(), StepState::Succeeded, "{}", result.message);
    let run_dir = f.path("cores/marie/marie-1-uid-run");
    assert_eq!(
        result.details[cores::CORE_DIR_DETAIL],
        [run_dir.display().to_string()]
    );
    assert!(result
        .message
        .contains(&format!("cores go to {}", run_dir.display())));
    let mode = std::fs::metadata(&run_dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, crate::crash::RUN_DIR_MODE);
    // The host's pattern is `core` (the fake host's): the copy starts in the mounted directory.
    let clone = f.fake.clones.lock().unwrap()[0].clone();
    let target = crate::crash::placement::WORKING_DIR_MOUNT;
    assert_eq!(
        clone.core_dir,
        Some(crate::runtime::BindMount {
            host: run_dir,
            target: target.into(),
            read_only: false
        })
    );
    assert_eq!(clone.working_dir.as_deref(), Some(target));
    assert!(clone.core_unlimited);
}

#[tokio::test]
async fn a_core_is_recorded_once_with_its_backtrace_when_the_copy_has_stopped() {
    let f = core_fixture(true).await;
    let result = done(debug_start(&f.run()).await.unwrap());
    let mut status = status_after(&result);
    let root = f.admission.paths.clone();
    let run_dir = f.path("cores/marie/marie-1-uid-run");

    // While the copy runs, nothing is read.
    let looked = cores::look(&f.ctx, &f.rec, &root, &mut status)
        .await
        .unwrap();
    assert_eq!(looked, (false, true));

    let exe = "/usr/local/bin/sample-worker";
    std::fs::write(
        run_dir.join("core"),
        crate::crash::core_file::tests::synthetic_core(6, "sample-worker", exe, &[exe]),
    )
    .unwrap();
    let copy_id = f.container("marie-debug").id;
    f.fake
        .files
        .lock()
        .unwrap()
        .insert(format!("{copy_id}:{exe}"), b"\x7fELF exe".to_vec());
    *f.fake.job_output.lock().unwrap() = Some(crate::runtime::JobOutput {
        exit_code: Some(0),
        output: "Thread 1 (LWP 7):\n#0  sample_worker::fault::abort_now ()".into(),
        truncated: false,
    });
    f.debug_copy_stopped();

    let looked = cores::look(&f.ctx, &f.rec, &root, &mut status)
        .await
        .unwrap();

    assert_eq!(looked, (true, false));
    let [dump] = status.core_dumps.as_slice() else {
        panic!("one core: {:?}", status.core_dumps)
    };
    assert_eq!(dump.file, run_dir.join("core").display().to_string());
    assert_eq!(dump.signal.as_deref(), Some("SIGABRT"));
    assert_eq!(dump.executable.as_deref(), Some(exe));
    assert_eq!(dump.analysis.state, AnalysisState::Analyzed);
    assert!(dump
        .analysis
        .backtrace
        .as_deref()
        .unwrap()
        .contains("abort_now"));
    let kept = run_dir.join(".core.executable");
    assert_eq!(std::fs::read(&kept).unwrap(), b"\x7fELF exe");
    let jobs = f.fake.jobs.lock().unwrap().clone();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].image, "wro-core-analyzer:dev");
    assert_eq!(jobs[0].labels[RUN_LABEL], "default/marie-1");
    let mounts: Vec<_> = jobs[0]
        .mounts
        .iter()
        .map(|m| (m.host.clone(), m.target.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            (run_dir.join("core"), crate::crash::CORE_MOUNT, true),
            (kept, "/analyze/bin/sample-worker", true)
        ]
    );

    // Looked at again (an operator restart, the next poll): nothing is recorded twice.
    let again = cores::look(&f.ctx, &f.rec, &root, &mut status)
        .await
        .unwrap();
    assert_eq!(again, (false, false));
    assert_eq!(
        (status.core_dumps.len(), f.fake.jobs.lock().unwrap().len()),
        (1, 1)
    );
}

#[tokio::test]
async fn without_an_analyzer_a_core_is_recorded_and_says_why_it_has_no_backtrace() {
    let f = core_fixture(false).await;
    let result = done(debug_start(&f.run()).await.unwrap());
    let mut status = status_after(&result);
    let run_dir = f.path("cores/marie/marie-1-uid-run");
    std::fs::write(run_dir.join("core.12"), b"garbage, not a core").unwrap();
    f.fake.containers.lock().unwrap().remove("marie-debug");

    let root = f.admission.paths.clone();
    let looked = cores::look(&f.ctx, &f.rec, &root, &mut status)
        .await
        .unwrap();

    assert_eq!(looked, (true, false));
    let dump = &status.core_dumps[0];
    assert_eq!(dump.analysis.state, AnalysisState::NotConfigured);
    assert!(dump
        .analysis
        .message
        .as_deref()
        .unwrap()
        .contains("--core-analyzer-image"));
    assert_eq!((dump.signal.as_ref(), dump.size_bytes), (None, 19));
    assert!(f.fake.jobs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn cores_are_not_collected_where_the_host_pipes_them_or_nothing_is_declared() {
    let f = fixture(testing::exited(134), json!({"mode": "Debug"})).await;
    let result = done(debug_start(&f.run()).await.unwrap());
    assert!(result
        .message
        .contains("core dumps are not collected (no spec.diagnostics.coreDumpDir)"));
    assert!(!result.details.contains_key(cores::CORE_DIR_DETAIL));
    assert_eq!(f.fake.clones.lock().unwrap()[0].core_dir, None);
}

#[tokio::test]
async fn a_debug_run_of_a_systemd_worker_fails_with_the_reason() {
    let mut f = fixture(testing::exited(3), json!({"mode": "Debug"})).await;
    f.worker.spec.runtime = Some(crate::crd::worker::RuntimeSpec {
        systemd: crate::crd::worker::SystemdRuntimeSpec {
            unit: "agent-worker-marie.service".into(),
        },
    });
    let mut units = FakeRuntime::with_container(testing::exited(3));
    units.capabilities = Some(crate::runtime::Capabilities::SYSTEMD);
    f.ctx.systemd = Some(Arc::new(units));

    let result = done(debug_start(&f.run()).await.unwrap());

    assert_eq!(result.state(), StepState::Failed);
    assert_eq!(
        result.message,
        "agent-worker-marie.service is a systemd unit: a debug copy needs the Docker runtime (use a Quick or Clean run)"
    );
    assert_eq!(f.actions(), Vec::<String>::new(), "nothing was copied");
}

#[tokio::test]
async fn a_core_directory_named_by_status_alone_is_not_read() {
    let f = core_fixture(true).await;
    done(debug_start(&f.run()).await.unwrap());
    f.task("active", "a", 0);
    f.debug_copy_stopped();
    // A status whose DebugStart names another directory (the worker's tasks) than the run's.
    let mut status: crate::crd::worker_recovery::WorkerRecoveryStatus = serde_json::from_value(
        json!({"steps": [{"name": "DebugStart", "state": "Succeeded",
            "details": {"container": ["marie-debug"],
                        "coreDumpDir": [f.path("tasks/marie/active").display().to_string()]}}]}),
    )
    .unwrap();

    let looked = cores::look(&f.ctx, &f.rec, &f.admission.paths, &mut status)
        .await
        .unwrap();

    assert_eq!(looked, (false, false));
    assert!(status.core_dumps.is_empty());
    assert!(f.fake.jobs.lock().unwrap().is_empty());
    assert!(f.path("tasks/marie/active/a.json").exists());
}
