//! End-to-end tests of gradual resume (ResumePlan), monitoring during recovery and the trace of
//! a recovery run, against the real kube-apiserver, etcd, Docker engine, sample worker and
//! Jaeger.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use serde_json::{json, Value};
use support::*;

/// Write `n` pending tasks `t00..` with modification times one second apart (t00 oldest), some
/// failing (`"fail": true`) when the worker runs them.
fn pending_tasks(wc: &WorkerContainer, n: usize, failing: &[usize]) -> Vec<String> {
    let base = std::time::SystemTime::now() - Duration::from_secs(3600);
    (0..n)
        .map(|i| {
            let id = format!("t{i:02}");
            let fail = if failing.contains(&i) {
                r#","fail":true"#
            } else {
                ""
            };
            let path = wc.tasks_dir("pending").join(format!("{id}.json"));
            std::fs::write(&path, format!(r#"{{"id":"{id}","n":{i}{fail}}}"#)).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(base + Duration::from_secs(i as u64))
                .unwrap();
            format!("{id}.json")
        })
        .collect()
}

/// A sample worker that is gated by the plan (it starts with state `recovering`) and runs
/// each task for 100 ms.
fn gated_worker(ns: &str, name: &str) -> WorkerContainer {
    let wc = WorkerContainer::start(ns, name, &[], &[("TASK_DURATION_MS", "100")]);
    let state = wc.shared_root().join("workers").join(name);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("state.json"),
        r#"{"status":"recovering","recovery_count":1}"#,
    )
    .unwrap();
    wc
}

fn wait_plan(stack: &Stack, ns: &str, name: &str, phases: &[&str]) -> Value {
    let object = format!("resumeplan/{name}");
    let what = format!("in {phases:?}");
    wait_object(stack, ns, &object, &what, Duration::from_secs(120), |p| {
        p["status"]["phase"]
            .as_str()
            .is_some_and(|phase| phases.contains(&phase))
    })
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect()
}

fn state_status(wc: &WorkerContainer) -> String {
    let path = wc
        .shared_root()
        .join("workers")
        .join(&wc.worker_name)
        .join("state.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["status"].as_str().unwrap_or_default().to_string()
}

fn batch_tasks(plan: &Value) -> Vec<Vec<String>> {
    plan["status"]["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// How many times an Event with `reason` was reported about `name` (repeats are one Event
/// with a count).
fn event_count(stack: &Stack, ns: &str, name: &str, reason: &str) -> u64 {
    stack
        .events_for(ns, name)
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| {
            e["series"]["count"]
                .as_u64()
                .or(e["count"].as_u64())
                .unwrap_or(1)
        })
        .sum()
}

#[test]
fn a_plan_releases_pending_tasks_oldest_first_in_batches_and_completes() {
    let stack = stack();
    let ns = stack.namespace("resume");
    let wc = gated_worker(&ns, "resy");
    let tasks = pending_tasks(&wc, 12, &[]);
    apply_worker(stack, &wc, "resy", &ns);
    let _op = Operator::start(stack, &ns, wc.dir.path());
    // The worker is recovering: it leaves pending/ alone until the plan stages tasks.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names_in(&wc.tasks_dir("pending")).len(), 12);

    stack.apply_ok(
        plan("resy-plan", &ns, "resy").spec(json!({"batchSize": 5, "batchDelaySeconds": 2})),
    );
    wait_plan(stack, &ns, "resy-plan", &["Running", "Completed"]);
    // A task that arrives after the plan started is not part of it: it waits for the plan.
    std::thread::sleep(Duration::from_millis(1500));
    wc.add_task("late", r#"{"id":"late"}"#);
    let plan = wait_plan(stack, &ns, "resy-plan", &["Completed"]);
    let st = &plan["status"];
    assert_eq!(st["tasksTotal"], 12, "{st:#}");
    assert_eq!(st["tasksStaged"], 12, "{st:#}");
    assert_eq!(st["batchesDone"], 3, "{st:#}");
    assert_eq!(st["tasksFailed"], 0, "{st:#}");
    assert_eq!(
        batch_tasks(&plan),
        vec![
            tasks[0..5].to_vec(),
            tasks[5..10].to_vec(),
            tasks[10..12].to_vec()
        ],
        "oldest first, in batches of 5"
    );
    let completed = condition(&plan, "Completed");
    assert_eq!(completed["status"], "True");
    assert!(st["completionTime"].is_string());
    // Monitoring: the worker's metrics were scraped while the plan ran.
    assert!(st["monitoring"]["scrapes"].as_u64().unwrap() >= 2, "{st:#}");
    assert!(st["monitoring"]["activeTasks"].is_i64(), "{st:#}");
    assert_eq!(st["monitoring"]["taskFailedIncrease"], 0);
    // The worker got its queue back, and finished everything, the late task too.
    assert_eq!(state_status(&wc), "running");
    wait_for("every task done", Duration::from_secs(30), || {
        let done = names_in(&wc.tasks_dir("done"));
        (done.len() == 13).then_some(()).ok_or(format!("{done:?}"))
    });
    assert_eq!(
        event_count(stack, &ns, "resy-plan", "BatchReleased"),
        3,
        "{:?}",
        event_reasons(stack, &ns, "resy-plan")
    );
    assert_events(stack, &ns, "resy-plan", &["ResumeCompleted"]);
    let rows = stack.kubectl_ok(&["get", "rplan", "-n", &ns]);
    assert!(
        rows.contains("BATCHES") && rows.contains("STAGED") && rows.contains("Completed"),
        "{rows}"
    );
}

#[test]
fn a_plan_halts_when_a_batch_fails_too_much_and_continues_after_a_spec_change() {
    let stack = stack();
    let ns = stack.namespace("halt");
    let wc = gated_worker(&ns, "halty");
    // Batch 1 (t00-t03) is healthy; batch 2 (t04-t07) fails 3 of 4.
    let tasks = pending_tasks(&wc, 12, &[4, 5, 7]);
    // A failed task from long ago, not part of any batch, is not counted.
    std::fs::write(wc.tasks_dir("failed").join("old.json"), r#"{"id":"old"}"#).unwrap();
    apply_worker(stack, &wc, "halty", &ns);
    let _op = Operator::start(stack, &ns, wc.dir.path());

    let halty_plan = |ratio: f64| {
        plan("halty-plan", &ns, "halty").spec(json!({
            "batchSize": 4,
            "batchDelaySeconds": 3,
            "maxFailureRatio": ratio,
        }))
    };
    stack.apply_ok(halty_plan(0.5));
    let plan = wait_plan(stack, &ns, "halty-plan", &["Halted"]);
    let st = &plan["status"];
    assert_eq!(st["batchesDone"], 2, "{st:#}");
    let batches = st["batches"].as_array().unwrap();
    assert_eq!(batches[0]["failed"], 0, "{st:#}");
    assert_eq!(batches[1]["failedFiles"], 3, "{st:#}");
    assert_eq!(batches[1]["failed"], 3, "{st:#}");
    assert_eq!(
        batches[1]["metricFailures"], 3,
        "task_failed_total rose by 3: {st:#}"
    );
    let failed: BTreeSet<_> = batches[1]["failedTasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        failed,
        [&tasks[4], &tasks[5], &tasks[7]]
            .into_iter()
            .cloned()
            .collect()
    );
    assert!(
        st["haltReason"]
            .as_str()
            .unwrap()
            .contains("batch 2 failed 3 of 4"),
        "{st:#}"
    );
    assert_eq!(condition(&plan, "Halted")["status"], "True");
    assert_events(stack, &ns, "halty-plan", &["ResumeHalted"]);
    // Halted means halted: the rest stays in pending/, the worker stays gated.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        names_in(&wc.tasks_dir("pending")),
        tasks[8..].iter().cloned().collect(),
        "no batch after the halt"
    );
    assert_eq!(state_status(&wc), "recovering");

    // A human looked and accepts the failures: a spec change lets the plan continue.
    stack.apply_ok(halty_plan(1.0));
    let plan = wait_plan(stack, &ns, "halty-plan", &["Completed"]);
    assert_eq!(plan["status"]["batchesDone"], 3);
    assert_eq!(plan["status"]["tasksStaged"], 12);
    assert!(plan["status"].get("haltReason").is_none());
    assert_eq!(state_status(&wc), "running");
}

#[test]
fn a_paused_plan_stops_between_batches_and_continues_where_it_stood() {
    let stack = stack();
    let ns = stack.namespace("pause");
    let wc = gated_worker(&ns, "pausy");
    pending_tasks(&wc, 8, &[]);
    apply_worker(stack, &wc, "pausy", &ns);
    let _op = Operator::start(stack, &ns, wc.dir.path());
    let pausy_plan = |paused: bool| {
        plan("pausy-plan", &ns, "pausy").spec(json!({
            "batchSize": 2,
            "batchDelaySeconds": 2,
            "paused": paused,
        }))
    };
    stack.apply_ok(pausy_plan(false));
    let object = "resumeplan/pausy-plan";
    wait_object(
        stack,
        &ns,
        object,
        "the first batch",
        Duration::from_secs(30),
        |p| p["status"]["tasksStaged"].as_u64() >= Some(2),
    );
    stack.apply_ok(pausy_plan(true));
    let paused = wait_plan(stack, &ns, "pausy-plan", &["Paused"]);
    let staged = paused["status"]["tasksStaged"].as_u64().unwrap();
    assert!(staged < 8, "{:#}", paused["status"]);
    assert!(
        paused["status"].get("currentBatch").is_none(),
        "between batches"
    );
    let pending = names_in(&wc.tasks_dir("pending"));
    std::thread::sleep(Duration::from_secs(5));
    let still = stack.get_json(&ns, "resumeplan/pausy-plan");
    assert_eq!(still["status"]["phase"], "Paused");
    assert_eq!(still["status"]["tasksStaged"].as_u64().unwrap(), staged);
    assert_eq!(
        names_in(&wc.tasks_dir("pending")),
        pending,
        "nothing moved while paused"
    );
    assert_eq!(pending.len() as u64, 8 - staged);

    stack.apply_ok(pausy_plan(false));
    let done = wait_plan(stack, &ns, "pausy-plan", &["Completed"]);
    assert_eq!(done["status"]["tasksStaged"], 8);
    assert_eq!(done["status"]["batchesDone"], 4);
}

#[test]
fn an_operator_killed_mid_plan_moves_no_task_twice_and_loses_none() {
    const TASKS: usize = 60;
    let stack = stack();
    let ns = stack.namespace("rkill");
    let wc = gated_worker(&ns, "rkilly");
    let tasks = pending_tasks(&wc, TASKS, &[]);
    apply_worker(stack, &wc, "rkilly", &ns);
    stack.apply_ok(
        plan("rkilly-plan", &ns, "rkilly").spec(json!({"batchSize": 6, "batchDelaySeconds": 1})),
    );
    let operator = Operator::builder(stack, &ns, wc.dir.path());
    let mut rng = Lcg::seeded();
    for _ in 0..8 {
        let op = operator.clone().wait_ready(false).start();
        std::thread::sleep(Duration::from_millis(900 + rng.next(1200)));
        op.kill();
    }
    let _op = operator.start();
    let plan = wait_plan(stack, &ns, "rkilly-plan", &["Completed"]);
    let st = &plan["status"];
    assert_eq!(
        st["tasksStaged"], TASKS as u64,
        "each task counted once: {st:#}"
    );
    assert_eq!(st["batchesDone"], (TASKS / 6) as u64, "{st:#}");
    // Status keeps a sample of each batch's names (its first five): each batch holds the six
    // next oldest tasks, so batch i's sample is tasks 6i.. 6i+5.
    let batches = batch_tasks(&plan);
    assert_eq!(batches.len(), TASKS / 6, "{st:#}");
    for (i, sample) in batches.iter().enumerate() {
        assert_eq!(
            sample[..],
            tasks[6 * i..6 * i + 5],
            "batch {}, oldest first",
            i + 1
        );
    }
    let sizes: Vec<_> = plan["status"]["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![6; TASKS / 6], "every task in exactly one batch");
    wait_for("every task done", Duration::from_secs(60), || {
        let done = names_in(&wc.tasks_dir("done"));
        (done.len() == TASKS)
            .then_some(())
            .ok_or(format!("{} done", done.len()))
    });
    for dir in ["pending", "staged", "active", "failed"] {
        assert!(names_in(&wc.tasks_dir(dir)).is_empty(), "{dir} is empty");
    }
    let metrics = http_get(
        wc.metrics_url
            .trim_start_matches("http://")
            .trim_end_matches("/metrics"),
        "/metrics",
    )
    .unwrap()
    .1;
    assert!(
        metrics.contains(&format!("task_completed_total {TASKS}")),
        "each task was run once: {metrics}"
    );
}

// ------------------------------------------------------------------ the run's resume and trace

fn jaeger_otlp() -> String {
    std::env::var("WRO_JAEGER_OTLP_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4318".into())
}

fn jaeger_query() -> String {
    std::env::var("WRO_JAEGER_QUERY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:16686".into())
        .trim_start_matches("http://")
        .to_string()
}

/// The trace `id` from Jaeger's query API once it holds a span of each name in `names`.
fn jaeger_trace(id: &str, names: &[&str]) -> Value {
    wait_for(
        &format!("trace {id} in Jaeger with spans {names:?}"),
        Duration::from_secs(30),
        || {
            let (code, body) = http_get(&jaeger_query(), &format!("/api/traces/{id}"))
                .ok_or("Jaeger does not answer")?;
            if code != 200 {
                return Err(format!("{code}: {body}"));
            }
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let seen: BTreeSet<&str> = v["data"][0]["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["operationName"].as_str())
                .collect();
            if names.iter().all(|n| seen.contains(n)) {
                Ok(v["data"][0].clone())
            } else {
                Err(format!("spans so far: {seen:?}"))
            }
        },
    )
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

fn parent_of(span: &Value) -> Option<String> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")
        .map(|r| r["spanID"].as_str().unwrap().to_string())
}

#[test]
fn a_clean_run_resumes_through_its_plan_and_leaves_one_trace_across_an_operator_restart() {
    let stack = stack();
    let ns = stack.namespace("trace");
    let service = format!("wro-e2e-{}", unique_suffix());

    // A worker crashed with one task active and six waiting.
    let wc = WorkerContainer::start(&ns, "tracy", &[], &[("TASK_DURATION_MS", "100")]);
    wc.inject_fault("crash");
    assert_eq!(wait_exited(&wc), 3);
    let tasks = pending_tasks(&wc, 6, &[]);
    std::fs::write(
        wc.tasks_dir("active").join("stuck.json"),
        r#"{"id":"stuck"}"#,
    )
    .unwrap();
    apply_worker(stack, &wc, "tracy", &ns);

    let operator = Operator::builder(stack, &ns, wc.dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &jaeger_otlp())
        .env("OTEL_SERVICE_NAME", &service)
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let op = operator.start();
    stack.apply_ok(
        bare_recovery("tracy-1", &ns, "tracy")
            .mode("Clean")
            .spec(json!({
                "stopGracePeriodSeconds": 2,
                "monitorIntervalSeconds": 1,
                "resume": {"batchSize": 2, "batchDelaySeconds": 2},
            })),
    );
    // Kill the operator while the run waits for its plan; a new one finishes the run.
    wait_step(stack, &ns, "tracy-1", Duration::from_secs(90), |step| {
        step == "Resume"
    });
    std::thread::sleep(Duration::from_millis(1500));
    op.kill();
    let _op = operator.start();
    let run = wait_run_finished(stack, &ns, "tracy-1");
    let st = &run["status"];
    assert_eq!(st["phase"], "Succeeded", "{st:#}");

    // The run's plan: owned by the run, every pending task (the requeued one too) released.
    assert_eq!(st["resumePlan"], "tracy-1-resume");
    let plan = stack.get_json(&ns, "resumeplan/tracy-1-resume");
    let owner = &plan["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "WorkerRecovery");
    assert_eq!(owner["uid"], run["metadata"]["uid"]);
    assert_eq!(plan["status"]["phase"], "Completed");
    assert_eq!(plan["status"]["tasksStaged"], 7, "{:#}", plan["status"]);
    let resume = run_step(&run, "Resume");
    assert_eq!(resume["figures"]["tasksStaged"], 7, "{resume}");
    assert_eq!(resume["figures"]["requeued"], 1, "{resume}");
    assert!(
        resume["attempt"].as_u64().unwrap() >= 2,
        "resumed after the kill: {resume}"
    );
    wait_for("every task done", Duration::from_secs(30), || {
        let done = names_in(&wc.tasks_dir("done"));
        (done.len() == 7).then_some(()).ok_or(format!("{done:?}"))
    });
    assert!(names_in(&wc.tasks_dir("done")).is_superset(&tasks.iter().cloned().collect()));
    // Monitoring during the run.
    assert!(st["monitoring"]["scrapes"].as_u64().unwrap() >= 1, "{st:#}");

    // One trace: the root span and one span per step, as the runbook draws it.
    let trace_id = st["trace"]["traceId"].as_str().unwrap().to_string();
    let root_id = st["trace"]["spanId"].as_str().unwrap().to_string();
    let trace = jaeger_trace(
        &trace_id,
        &[
            "worker_recovery",
            "check_crash_reason",
            "clean_state",
            "restart_worker",
            "verify_health",
            "resume",
            "resume_batch",
        ],
    );
    let spans = trace["spans"].as_array().unwrap();
    let by_name: BTreeMap<&str, Vec<&Value>> = spans.iter().fold(BTreeMap::new(), |mut m, s| {
        m.entry(s["operationName"].as_str().unwrap())
            .or_default()
            .push(s);
        m
    });
    let root = by_name["worker_recovery"][0];
    assert_eq!(root["spanID"], root_id.as_str());
    assert_eq!(parent_of(root), None, "the root has no parent");
    assert_eq!(tag(root, "worker.name").unwrap(), "tracy");
    assert_eq!(tag(root, "recovery.name").unwrap(), "tracy-1");
    assert_eq!(tag(root, "k8s.namespace.name").unwrap(), ns.as_str());
    assert_eq!(tag(root, "recovery.mode").unwrap(), "Clean");
    assert_eq!(
        tag(root, "recovery.root_cause").unwrap(),
        "ApplicationCrash"
    );
    assert_eq!(tag(root, "otel.status_code").unwrap(), "OK");
    assert!(
        root["logs"].to_string().contains("recovery_completed"),
        "{root}"
    );
    let process = &trace["processes"][root["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], service.as_str());
    for (name, step) in [
        ("check_crash_reason", "Diagnose"),
        ("clean_state", "CleanState"),
        ("restart_worker", "Restart"),
        ("verify_health", "VerifyHealth"),
        ("resume", "Resume"),
    ] {
        let spans = by_name
            .get(name)
            .unwrap_or_else(|| panic!("no span {name}: {by_name:#?}"));
        assert_eq!(spans.len(), 1, "one {name} span");
        let span = spans[0];
        assert_eq!(
            parent_of(span),
            Some(root_id.clone()),
            "{name} is a child of the root"
        );
        assert_eq!(tag(span, "worker.name").unwrap(), "tracy", "{name}");
        assert_eq!(tag(span, "otel.status_code").unwrap(), "OK", "{name}");
        let recorded = run_step(&run, step);
        assert_eq!(span["spanID"], recorded["spanId"], "{name}");
    }
    assert_eq!(
        tag(by_name["clean_state"][0], "step.requeued").unwrap(),
        1,
        "the step's figures are attributes"
    );
    // The plan's batches sit under the resume span.
    let resume_id = by_name["resume"][0]["spanID"].as_str().unwrap().to_string();
    // 7 tasks in batches of 2: four batch spans, less one a killed operator emitted but had
    // not exported yet (the batch exporter holds spans for OTEL_BSP_SCHEDULE_DELAY).
    let batches = &by_name["resume_batch"];
    assert!(
        (3..=4).contains(&batches.len()),
        "{} batch spans",
        batches.len()
    );
    assert!(batches
        .iter()
        .all(|b| parent_of(b) == Some(resume_id.clone())));
    // Work inside steps is traced under its step.
    let clean_id = by_name["clean_state"][0]["spanID"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        spans
            .iter()
            .any(|s| s["operationName"] == "clean_state attempt 1"
                && parent_of(s) == Some(clean_id.clone())),
        "{by_name:#?}"
    );
}
