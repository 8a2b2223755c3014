//! End-to-end tests of auto-healing: the Worker's recovery policy (backoff, maxRestarts,
//! escalation with a webhook), remediation chosen by the failure, poison tasks, hangs and
//! failover, against the real kube-apiserver, etcd, Docker engine and sample worker.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};
use support::*;

/// A webhook receiver on loopback: every POST body it got.
struct Hook {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                if let Ok(v) = serde_json::from_slice(&body) {
                    seen.lock().unwrap().push(v);
                }
                let mut stream = reader.into_inner();
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Self { url, bodies }
    }

    fn levels(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| b["level"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

#[test]
fn a_crash_loop_backs_off_stops_at_max_restarts_and_climbs_the_escalation_path() {
    let stack = stack();
    let ns = stack.namespace("loop");
    let hook = Hook::start();
    let wc = WorkerContainer::crash_looping(&ns, "loopy");
    stack.apply_ok(wc.worker("loopy", &ns).auto_recovery().spec(json!({
        "autoRecovery": {
            "maxRestarts": 3,
            "cooldownSeconds": 0,
            "backoff": {"initialSeconds": 2, "factor": 2, "maxSeconds": 30},
        },
        "escalation": {
            "levels": [
                {"name": "Automated", "afterSeconds": 0},
                {"name": "L1", "afterSeconds": 3},
                {"name": "L2", "afterSeconds": 6},
            ],
            "webhook": {"url": hook.url, "maxAttempts": 3, "timeoutSeconds": 2},
        },
    })));
    let _op = Operator::start(stack, &ns, wc.dir.path());

    let escalated = wait_worker(
        stack,
        &ns,
        "loopy",
        "Escalated",
        Duration::from_secs(90),
        |w| w["status"]["phase"] == "Escalated",
    );
    let st = &escalated["status"];
    let cond = condition(&escalated, "Escalated");
    assert_eq!(cond["status"], "True", "{cond}");
    assert!(
        cond["message"].as_str().unwrap().contains("maxRestarts 3"),
        "{cond}"
    );
    let times = attempt_times(&escalated);
    assert_eq!(times.len(), 3, "three attempts: {st:#}");
    // The first attempt is immediate; then the wait grows: 2 s, then 4 s.
    assert!(times[1] - times[0] >= 2.0, "{times:?}");
    assert!(times[2] - times[1] >= 4.0, "{times:?}");
    assert!(
        st["escalation"]["reason"]
            .as_str()
            .unwrap()
            .contains("maxRestarts 3"),
        "{st:#}"
    );
    // The runs of the attempts are the history.
    let runs = stack.kubectl_ok(&[
        "get",
        "wrec",
        "-n",
        &ns,
        "-l",
        "workerrecovery.io/auto-recovery-of=loopy",
        "-o",
        "name",
    ]);
    assert_eq!(runs.lines().count(), 3, "{runs}");
    // Left stopped: no start after the escalation.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(wc.inspect("{{.State.Status}}"), "exited");

    // The path is climbed, each level told to the webhook (recorded once delivered).
    let top = wait_worker(
        stack,
        &ns,
        "loopy",
        "level L2 delivered",
        Duration::from_secs(30),
        |w| {
            let e = &w["status"]["escalation"];
            e["level"] == "L2" && e["notification"]["state"] == "Delivered"
        },
    );
    assert_eq!(
        top["status"]["escalation"]["notification"]["previousLevel"], "L1",
        "{:#}",
        top["status"]
    );
    wait_for("three webhook calls", Duration::from_secs(10), || {
        let levels = hook.levels();
        (levels == ["Automated", "L1", "L2"])
            .then_some(())
            .ok_or(format!("{levels:?}"))
    });
    let body = hook.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["worker"], "loopy");
    assert_eq!(body["namespace"], ns.as_str());
    assert!(
        body["run"].as_str().unwrap().starts_with("loopy-auto-"),
        "{body}"
    );
    assert_events(
        stack,
        &ns,
        "loopy",
        &["Restarted", "BackOff", "Escalated", "EscalationLevel"],
    );
}

#[test]
fn an_oom_kill_is_recovered_with_a_raised_memory_limit() {
    let stack = stack();
    let ns = stack.namespace("oomfix");
    let wc = WorkerContainer::start(&ns, "oomy", &["-m", "64m", "--memory-swap", "64m"], &[]);
    stack.apply_ok(wc.worker("oomy", &ns).auto_recovery().spec(json!({
        "autoRecovery": {"remediation": {"memoryFactor": 2, "memoryCeiling": "256m"}},
    })));
    let _op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "oomy", "Healthy");
    wc.inject_fault("oom");
    let back = wait_restarted(stack, &ns, "oomy", 1, Duration::from_secs(60));
    assert_eq!(
        wc.inspect("{{.HostConfig.Memory}}"),
        (128u64 << 20).to_string()
    );
    let attempt = &back["status"]["autoRecovery"]["attempts"][0];
    assert!(
        attempt["trigger"]
            .as_str()
            .unwrap()
            .starts_with("OOM-killed"),
        "{attempt}"
    );
    assert!(
        attempt["remediation"]
            .as_str()
            .unwrap()
            .contains("64Mi -> 128Mi"),
        "{attempt}"
    );
    assert_events(stack, &ns, "oomy", &["MemoryRaised"]);
    // The run diagnosed the OOM from what was seen before the restart.
    let run = attempt["run"].as_str().unwrap().to_string();
    let run = wait_run_finished(stack, &ns, &run);
    assert_eq!(
        run["status"]["diagnosis"]["verdict"]["topCause"], "OutOfMemory",
        "{:#}",
        run["status"]
    );
}

#[test]
fn a_hung_worker_is_restarted_after_its_heartbeat_deadline() {
    let stack = stack();
    let ns = stack.namespace("hang");
    let wc = WorkerContainer::start(&ns, "hangy", &[], &[]);
    stack.apply_ok(wc.worker("hangy", &ns).heartbeat_timeout(5).auto_recovery());
    let _op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "hangy", "Healthy");
    let started = wc.inspect("{{.State.StartedAt}}");
    wc.inject_fault("hang");
    let back = wait_restarted(stack, &ns, "hangy", 1, Duration::from_secs(60));
    assert_ne!(wc.inspect("{{.State.StartedAt}}"), started, "restarted");
    let attempt = &back["status"]["autoRecovery"]["attempts"][0];
    assert!(
        attempt["trigger"]
            .as_str()
            .unwrap()
            .starts_with("heartbeat missed"),
        "{attempt}"
    );
}

#[test]
fn a_poison_task_goes_to_failed_and_the_worker_carries_on() {
    let stack = stack();
    let ns = stack.namespace("poison");
    // The worker picks its active tasks up again after a restart; one of them kills it.
    let wc = WorkerContainer::start_with_tasks(
        &ns,
        "poisy",
        &[],
        &[("RESUME_ACTIVE", "1"), ("TASK_DURATION_MS", "100")],
        &[("bad", r#"{"id":"bad","crash":true}"#)],
    );
    stack.apply_ok(wc.worker("poisy", &ns).auto_recovery().spec(json!({
        "autoRecovery": {
            "cooldownSeconds": 0,
            "maxRestarts": 5,
            "poisonAfterCrashes": 3,
            "backoff": {"initialSeconds": 1, "maxSeconds": 2},
        },
    })));
    let _op = Operator::start(stack, &ns, wc.dir.path());
    let what = "the poison task out and the worker healthy";
    let w = wait_worker(stack, &ns, "poisy", what, Duration::from_secs(90), |w| {
        let out = w["status"]["autoRecovery"]["poisonedTasks"]
            .as_array()
            .is_some_and(|p| p.iter().any(|t| t == "bad.json"));
        out && w["status"]["phase"] == "Healthy"
    });
    assert!(wc.tasks_dir("failed").join("bad.json").exists());
    let reason: Value = serde_json::from_slice(
        &std::fs::read(wc.tasks_dir("failed").join("bad.json.reason")).unwrap(),
    )
    .unwrap();
    assert_eq!(reason["reason"], "poison", "{reason}");
    assert!(!wc.tasks_dir("active").join("bad.json").exists());
    assert_eq!(
        w["status"]["autoRecovery"]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_events(stack, &ns, "poisy", &["PoisonTask"]);
    // A good task after that is done.
    wc.add_task("good", r#"{"id":"good"}"#);
    let good = wc.tasks_dir("done").join("good.json");
    wait_file("the good task done", &good, Duration::from_secs(30));
}

#[test]
fn at_the_last_level_pending_tasks_fail_over_to_a_healthy_backup() {
    let stack = stack();
    let ns = stack.namespace("failover");
    // Both workers under one allowed root (the backup's dir is inside the primary's).
    let backup = WorkerContainer::start(&ns, "backy", &[], &[("TASK_DURATION_MS", "50")]);
    let primary =
        WorkerContainer::start(&ns, "primy", &[], &[("FAULT_MODE", "missing-dependency")]);
    let tasks: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
    wait_exited(&primary);
    for t in &tasks {
        primary.add_task(t, &format!(r#"{{"id":"{t}"}}"#));
    }
    stack.apply_ok(backup.worker("backy", &ns).auto_recovery());
    stack.apply_ok(primary.worker("primy", &ns).auto_recovery().spec(json!({
        "escalation": {
            "levels": [
                {"name": "Automated", "afterSeconds": 0},
                {"name": "L3", "afterSeconds": 2},
            ],
            "backupWorkers": ["backy"],
        },
    })));
    let common = tempfile::tempdir().unwrap();
    let allowed = [primary.dir.path(), backup.dir.path()];
    let _op = Operator::builder(stack, &ns, common.path())
        .allowed_roots(&allowed)
        .start();

    let w = wait_worker(
        stack,
        &ns,
        "primy",
        "failed over",
        Duration::from_secs(90),
        |w| w["status"]["escalation"]["failover"]["state"] == "Done",
    );
    let st = &w["status"];
    assert_eq!(st["phase"], "Escalated");
    assert!(
        st["escalation"]["reason"]
            .as_str()
            .unwrap()
            .contains("missing dependency"),
        "escalated at once, not restarted in a loop: {st:#}"
    );
    assert_eq!(st["escalation"]["failover"]["to"], "backy");
    assert_eq!(st["escalation"]["failover"]["moved"], 20);
    // Every task exactly once, done by the backup; none left behind.
    wait_for("the backup did them all", Duration::from_secs(60), || {
        let done = std::fs::read_dir(backup.tasks_dir("done"))
            .map(|d| d.flatten().count())
            .unwrap_or(0);
        (done == 20).then_some(()).ok_or(format!("{done} done"))
    });
    assert_eq!(
        std::fs::read_dir(primary.tasks_dir("pending"))
            .unwrap()
            .count(),
        0
    );
    assert_events(stack, &ns, "primy", &["FailedOver"]);
}

#[test]
fn declared_limits_are_reported_as_drift_and_put_in_place_at_the_next_restart() {
    let stack = stack();
    let ns = stack.namespace("drift");
    let wc = WorkerContainer::start(
        &ns,
        "drifty",
        &["--ulimit", "nofile=64:64", "-m", "128m"],
        &[],
    );
    stack.apply_ok(wc.worker("drifty", &ns).auto_recovery().spec(json!({
        "resources": {
            "memory": "256m",
            "nofile": {"soft": 1024, "hard": 2048},
            "apply": "OnRestart",
        },
    })));
    let _op = Operator::start(stack, &ns, wc.dir.path());
    let w = wait_worker(
        stack,
        &ns,
        "drifty",
        "the drift reported",
        Duration::from_secs(60),
        |w| w["status"]["drift"].as_array().map_or(0, Vec::len) == 2,
    );
    let drift = w["status"]["drift"].to_string();
    assert!(
        drift.contains(r#""declared":"1024:2048""#) && drift.contains(r#""actual":"64:64""#),
        "{drift}"
    );
    assert!(
        drift.contains(r#""declared":"256Mi""#) && drift.contains(r#""actual":"128Mi""#),
        "{drift}"
    );
    let id_before = wc.inspect("{{.Id}}");
    let mounts_before = wc.inspect("{{json .HostConfig.Binds}}");
    let labels_before = wc.inspect("{{json .Config.Labels}}");

    // The next crash is the restart that puts the declaration in place.
    wc.inject_fault("crash");
    let what = "recreated and healthy";
    let w = wait_worker(stack, &ns, "drifty", what, Duration::from_secs(60), |w| {
        let no_drift = w["status"].get("drift").is_none();
        no_drift && w["status"]["phase"] == "Healthy" && w["status"]["restartCount"] == 1
    });
    assert_ne!(wc.inspect("{{.Id}}"), id_before, "a new container");
    assert_eq!(
        wc.inspect("{{.HostConfig.Memory}}"),
        (256u64 << 20).to_string()
    );
    let ulimits = wc.inspect("{{json .HostConfig.Ulimits}}");
    assert!(
        ulimits.contains(r#""Name":"nofile","Hard":2048,"Soft":1024"#),
        "{ulimits}"
    );
    assert_eq!(
        wc.inspect("{{json .HostConfig.Binds}}"),
        mounts_before,
        "same mounts"
    );
    assert_eq!(
        wc.inspect("{{json .Config.Labels}}"),
        labels_before,
        "same labels"
    );
    let env = wc.inspect("{{json .Config.Env}}");
    assert!(
        env.contains("WORKER_NAME=drifty"),
        "same environment: {env}"
    );
    let attempt = &w["status"]["autoRecovery"]["attempts"][0];
    assert!(
        attempt["remediation"]
            .as_str()
            .unwrap()
            .starts_with("recreated with"),
        "{attempt}"
    );
    assert_events(stack, &ns, "drifty", &["DeclaredSettingsApplied"]);
}

/// A webhook receiver that accepts connections and never answers.
struct BlackHole {
    url: String,
}

impl BlackHole {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        Self { url }
    }
}

/// Notifications off the reconcile path: Workers whose webhook never answers are escalated
/// and written at once (their notification Pending), and another Worker that crashes
/// meanwhile is healed on time.
#[test]
fn a_webhook_that_never_answers_holds_up_no_worker() {
    let stack = stack();
    let ns = stack.namespace("blackhole");
    let hole = BlackHole::start();
    let crashing: Vec<WorkerContainer> = (0..3)
        .map(|i| WorkerContainer::crash_looping(&ns, &format!("holed{i}")))
        .collect();
    let extra = json!({
        "autoRecovery": {"maxRestarts": 1, "cooldownSeconds": 0},
        "escalation": {
            "webhook": {"url": hole.url, "maxAttempts": 20, "timeoutSeconds": 60},
        },
    });
    for (i, wc) in crashing.iter().enumerate() {
        let name = format!("holed{i}");
        stack.apply_ok(wc.worker(&name, &ns).auto_recovery().spec(extra.clone()));
    }
    let healthy = WorkerContainer::start(&ns, "fine", &[], &[]);
    stack.apply_ok(healthy.worker("fine", &ns).auto_recovery());
    let dirs: Vec<&std::path::Path> = crashing
        .iter()
        .map(|w| w.dir.path())
        .chain([healthy.dir.path()])
        .collect();
    let _op = Operator::builder(stack, &ns, healthy.dir.path())
        .allowed_roots(&dirs)
        .start();

    for i in 0..3 {
        let name = format!("holed{i}");
        let what = "escalated, its notification pending";
        let w = wait_worker(stack, &ns, &name, what, Duration::from_secs(90), |w| {
            w["status"]["phase"] == "Escalated"
                && w["status"]["escalation"]["notification"]["state"] == "Pending"
        });
        // Written while the delivery still waits for its first answer (a 60 s timeout).
        let since = seconds(&w["status"]["escalation"]["since"]);
        assert!(
            unix_now() as i64 - since < 30,
            "escalated {since}, seen now"
        );
    }
    wait_phase(stack, &ns, "fine", "Healthy");
    let crashed_at = std::time::Instant::now();
    healthy.inject_fault("crash");
    let w = wait_restarted(stack, &ns, "fine", 1, Duration::from_secs(30));
    eprintln!(
        "crash to healthy while 3 webhooks hang: {:?}",
        crashed_at.elapsed()
    );
    assert!(
        crashed_at.elapsed() < Duration::from_secs(20),
        "healed on time: {:?}, {:#}",
        crashed_at.elapsed(),
        w["status"]
    );
}

/// After a file-descriptor exhaustion, the next automatic attempt recreates the container with
/// `nofile` raised by `nofileFactor`, held at `nofileCeiling`.
#[test]
fn fd_exhaustion_then_an_automatic_attempt_raises_nofile_within_the_ceiling() {
    let stack = stack();
    let ns = stack.namespace("nofile");
    let wc = WorkerContainer::start(&ns, "leaky", &["--ulimit", "nofile=64:64"], &[]);
    stack.apply_ok(
        wc.worker("leaky", &ns)
            .heartbeat_timeout(5)
            .auto_recovery()
            .spec(json!({
                "autoRecovery": {
                    "cooldownSeconds": 0,
                    "maxRestarts": 10,
                    "backoff": {"initialSeconds": 0},
                    "remediation": {"nofileFactor": 2, "nofileCeiling": 100},
                },
                "resources": {"nofile": {"soft": 64, "hard": 64}, "apply": "OnRestart"},
            })),
    );
    let _op = Operator::start(stack, &ns, wc.dir.path());
    wait_phase(stack, &ns, "leaky", "Healthy");

    // First exhaustion: restarted, and its run finds the root cause.
    wc.inject_fault("fd-leak");
    wait_for("the first attempt's run", Duration::from_secs(60), || {
        let out = stack.kubectl(&["get", "-n", &ns, "workerrecovery/leaky-auto-1"], None);
        out.status
            .success()
            .then_some(())
            .ok_or("not yet".to_string())
    });
    let run = wait_run_finished(stack, &ns, "leaky-auto-1");
    assert_eq!(
        run["status"]["diagnosis"]["verdict"]["topCause"], "FileDescriptorExhaustion",
        "{:#}",
        run["status"]["diagnosis"]["verdict"]
    );
    wait_phase(stack, &ns, "leaky", "Healthy");
    let id_before = wc.inspect("{{.Id}}");

    // The next one: recreated with nofile 64 x 2 = 128, held at the ceiling of 100.
    wc.inject_fault("fd-leak");
    let w = wait_worker(
        stack,
        &ns,
        "leaky",
        "the second attempt",
        Duration::from_secs(90),
        |w| {
            let attempts = w["status"]["autoRecovery"]["attempts"]
                .as_array()
                .map_or(0, Vec::len);
            attempts == 2 && w["status"]["phase"] == "Healthy"
        },
    );
    let remediation = w["status"]["autoRecovery"]["attempts"][1]["remediation"].to_string();
    assert!(
        remediation.contains("nofile 64:64 -> 100:100"),
        "{remediation}"
    );
    assert_ne!(wc.inspect("{{.Id}}"), id_before, "a new container");
    let ulimits = wc.inspect("{{json .HostConfig.Ulimits}}");
    assert!(
        ulimits.contains(r#""Name":"nofile","Hard":100,"Soft":100"#),
        "{ulimits}"
    );
}
