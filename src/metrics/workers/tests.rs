use std::time::Duration;

use super::*;
use crate::metrics::Metrics;

fn key(worker: &str) -> WorkerKey {
    WorkerKey::new("team-a", worker)
}

fn healthy(now: Timestamp) -> WorkerSnapshot {
    WorkerSnapshot {
        phase: Some(WorkerPhase::Healthy),
        up: true,
        last_heartbeat: Some(now - Duration::from_secs(4)),
        heartbeat_timeout_seconds: 30,
        restarts: 2,
        escalation: None,
        tasks: Some(TaskCounts {
            pending: 7,
            active: 1,
            staged: 0,
            failed: 2,
            quarantine: 1,
            capped: false,
        }),
        memory: Some(Usage {
            used: 1024.0,
            limit: Some(4096.0),
        }),
        fds: Some(Usage {
            used: 12.0,
            limit: None,
        }),
        risk: Some(RiskReading {
            resource: "Memory".into(),
            at_risk: true,
            seconds_to_limit: Some(42.0),
        }),
        tasks_counted_at: None,
    }
}

#[test]
fn a_snapshot_renders_every_family_with_the_worker_labels() {
    let m = Metrics::default();
    m.workers.observe(key("marie"), healthy(Timestamp::now()));
    let text = m.render();
    for line in [
        r#"workerrecovery_worker_phase{namespace="team-a",worker="marie",phase="Healthy"} 1"#,
        r#"workerrecovery_worker_phase{namespace="team-a",worker="marie",phase="Down"} 0"#,
        r#"workerrecovery_worker_up{namespace="team-a",worker="marie"} 1"#,
        r#"workerrecovery_worker_heartbeat_timeout_seconds{namespace="team-a",worker="marie"} 30"#,
        r#"workerrecovery_worker_restarts_total{namespace="team-a",worker="marie"} 2"#,
        r#"workerrecovery_worker_escalation_level{namespace="team-a",worker="marie",level=""} -1"#,
        r#"workerrecovery_worker_tasks{namespace="team-a",worker="marie",state="pending",capped="false"} 7"#,
        r#"workerrecovery_worker_tasks{namespace="team-a",worker="marie",state="quarantine",capped="false"} 1"#,
        r#"workerrecovery_worker_memory_bytes{namespace="team-a",worker="marie"} 1024"#,
        r#"workerrecovery_worker_memory_limit_bytes{namespace="team-a",worker="marie"} 4096"#,
        r#"workerrecovery_worker_open_fds{namespace="team-a",worker="marie"} 12"#,
        "# TYPE workerrecovery_worker_restarts_total counter",
        "# TYPE workerrecovery_worker_phase gauge",
        "workerrecovery_workers 1",
        r#"workerrecovery_worker_at_risk{namespace="team-a",worker="marie",resource="Memory"} 1"#,
        r#"workerrecovery_worker_seconds_to_limit{namespace="team-a",worker="marie",resource="Memory"} 42"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // No limit read: no limit series.
    assert!(!text.contains("workerrecovery_worker_fd_limit{"), "{text}");
    // The age is computed when scraped, from the heartbeat's time.
    let age = crate::observe::prometheus_text::parse(&text)
        .sum("workerrecovery_worker_heartbeat_age_seconds")
        .unwrap();
    assert!((4.0..10.0).contains(&age), "{age}");
}

#[test]
fn an_escalated_worker_reports_its_level() {
    let m = Metrics::default();
    let mut s = healthy(Timestamp::now());
    s.phase = Some(WorkerPhase::Escalated);
    s.up = false;
    s.escalation = Some((2, "L2".into()));
    m.workers.observe(key("ivan"), s);
    let text = m.render();
    assert!(text.contains(
        r#"workerrecovery_worker_escalation_level{namespace="team-a",worker="ivan",level="L2"} 2"#
    ));
    assert!(text.contains(r#"workerrecovery_worker_up{namespace="team-a",worker="ivan"} 0"#));
}

#[test]
fn runs_are_counted_by_mode_outcome_and_cause() {
    let m = Metrics::default();
    let oom = RunOutcome {
        mode: "Quick".into(),
        outcome: "Succeeded".into(),
        root_cause: "OutOfMemory".into(),
    };
    m.record_run(key("marie"), oom.clone(), Duration::from_secs(3));
    m.record_run(key("marie"), oom, Duration::from_secs(5));
    let text = m.render();
    assert!(text.contains(
        r#"workerrecovery_worker_recovery_runs_total{namespace="team-a",worker="marie",mode="Quick",outcome="Succeeded",root_cause="OutOfMemory"} 2"#
    ), "{text}");
    assert!(text.contains(
        r#"workerrecovery_worker_recovery_duration_seconds_count{namespace="team-a",worker="marie"} 2"#
    ));
}

#[test]
fn the_series_of_a_deleted_worker_go() {
    let m = Metrics::default();
    let now = Timestamp::now();
    m.workers.observe(key("marie"), healthy(now));
    m.workers.observe(key("ivan"), healthy(now));
    m.record_run(
        key("ivan"),
        RunOutcome {
            mode: "Clean".into(),
            outcome: "Failed".into(),
            root_cause: "None".into(),
        },
        Duration::from_secs(1),
    );
    m.record_healthy_after(&key("ivan"), Duration::from_secs(9));
    let live = HashSet::from(["team-a/marie".to_string()]);
    m.forget_workers_but(&live);
    let text = m.render();
    assert!(text.contains(r#"worker="marie""#));
    assert!(!text.contains(r#"worker="ivan""#), "{text}");
    assert!(text.contains("workerrecovery_workers 1"));
}

#[test]
fn time_to_healthy_is_a_histogram_per_worker() {
    let m = Metrics::default();
    m.record_healthy_after(&key("marie"), Duration::from_secs(42));
    let text = m.render();
    assert!(text.contains(
        r#"workerrecovery_worker_time_to_healthy_seconds_bucket{namespace="team-a",worker="marie",le="60"} 1"#
    ), "{text}");
    assert!(text.contains(
        r#"workerrecovery_worker_time_to_healthy_seconds_bucket{namespace="team-a",worker="marie",le="30"} 0"#
    ));
}

#[test]
fn failure_and_halt_counters_start_at_zero_with_the_first_look() {
    let m = Metrics::default();
    m.workers.observe(key("marie"), healthy(Timestamp::now()));
    let text = m.render();
    assert!(text.contains(
        r#"workerrecovery_worker_recovery_failures_total{namespace="team-a",worker="marie"} 0"#
    ));
    assert!(text.contains(
        r#"workerrecovery_worker_resume_halts_total{namespace="team-a",worker="marie"} 0"#
    ));
    let failed = RunOutcome {
        mode: "Clean".into(),
        outcome: FAILED.into(),
        root_cause: "Deadlock".into(),
    };
    m.record_run(key("marie"), failed, Duration::from_secs(1));
    m.workers.record_halt(key("marie"));
    let text = m.render();
    assert!(text.contains(
        r#"workerrecovery_worker_recovery_failures_total{namespace="team-a",worker="marie"} 1"#
    ));
    assert!(text.contains(
        r#"workerrecovery_worker_resume_halts_total{namespace="team-a",worker="marie"} 1"#
    ));
}

#[test]
fn a_tracked_worker_has_empty_histograms_from_the_start() {
    let m = Metrics::default();
    m.track(&key("marie"));
    let text = m.render();
    assert!(text.contains(
        r#"workerrecovery_worker_time_to_healthy_seconds_count{namespace="team-a",worker="marie"} 0"#
    ), "{text}");
    assert!(text.contains(
        r#"workerrecovery_worker_recovery_duration_seconds_count{namespace="team-a",worker="marie"} 0"#
    ));
}
