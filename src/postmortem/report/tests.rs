use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use super::*;
use crate::crd::worker::{AttemptRecord, AutoRecoveryStatus, EscalationStatus, TimelineEntry};

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_795_000_000 + s).unwrap()
}

fn worker() -> Worker {
    serde_json::from_value(json!({
        "apiVersion": "workerrecovery.io/v1alpha1", "kind": "Worker",
        "metadata": {"name": "marie", "namespace": "team-a", "uid": "u-1"},
        "spec": {"container": "marie"}
    }))
    .unwrap()
}

/// An OOM-killed run: diagnosis, clean state with figures, restart.
fn run() -> WorkerRecovery {
    serde_json::from_value(json!({
        "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
        "metadata": {"name": "marie-auto-1", "namespace": "team-a"},
        "spec": {"workerRef": {"name": "marie"}, "mode": "Clean"},
        "status": {
            "phase": "Succeeded",
            "startTime": "2026-11-18T08:26:41Z",
            "completionTime": "2026-11-18T08:26:50Z",
            "steps": [
                {"name": "Diagnose", "state": "Succeeded", "attempt": 1,
                 "startTime": "2026-11-18T08:26:41Z", "finishTime": "2026-11-18T08:26:42Z",
                 "message": "OutOfMemory"},
                {"name": "CleanState", "state": "Succeeded", "attempt": 1,
                 "startTime": "2026-11-18T08:26:42Z", "finishTime": "2026-11-18T08:26:44Z",
                 "figures": {"requeued": 7, "deadLettered": 1, "quarantined": 2}}
            ],
            "diagnosis": {
                "worker": "marie", "container": "marie",
                "startedAt": "2026-11-18T08:26:41Z", "completedAt": "2026-11-18T08:26:42Z",
                "findings": [
                    {"check": "memory", "kind": "OomKilled", "severity": "Critical",
                     "summary": "the container was OOM-killed", "observedAt": "2026-11-18T08:26:42Z",
                     "evidence": {"limitBytes": "67108864"}},
                    {"check": "container", "kind": "ContainerRunning", "severity": "Info",
                     "summary": "fine", "observedAt": "2026-11-18T08:26:42Z", "evidence": {}}
                ],
                "verdict": {"topCause": "OutOfMemory", "causes": []}
            }
        }
    }))
    .unwrap()
}

fn incident(outcome: Option<IncidentOutcome>) -> IncidentStatus {
    IncidentStatus {
        number: 3,
        started: Some(Time(t(0))),
        ended: outcome.map(|_| Time(t(252))),
        outcome,
        timeline: vec![
            TimelineEntry {
                time: Some(Time(t(0))),
                kind: "detected".into(),
                message: "phase Down: OOM-killed".into(),
            },
            TimelineEntry {
                time: Some(Time(t(1))),
                kind: "attempt".into(),
                message: "automatic attempt 1 (OOM-killed): run marie-auto-1; memory limit 64Mi -> 128Mi after an OOM kill".into(),
            },
            TimelineEntry {
                time: Some(Time(t(252))),
                kind: "recovered".into(),
                message: "Healthy again after 4m 12s".into(),
            },
        ],
        runs: vec!["marie-auto-1".into()],
        reported: 0,
    }
}

fn status(incident: &IncidentStatus) -> WorkerStatus {
    WorkerStatus {
        auto_recovery: Some(AutoRecoveryStatus {
            attempts: vec![AttemptRecord {
                time: Time(t(1)),
                run: "marie-auto-1".into(),
                trigger: "OOM-killed".into(),
                remediation: Some("memory limit 64Mi -> 128Mi after an OOM kill".into()),
            }],
            attempts_total: 1,
            poisoned_tasks: vec![],
            ..Default::default()
        }),
        incident: Some(incident.clone()),
        ..Default::default()
    }
}

#[test]
fn an_oom_incident_has_its_timeline_cause_impact_actions_and_follow_ups() {
    let w = worker();
    let i = incident(Some(IncidentOutcome::Recovered));
    let st = status(&i);
    let runs = [run()];
    let r = build(&Sources {
        worker: &w,
        status: &st,
        incident: &i,
        runs: &runs,
        plans: &[],
        now: t(300),
    });
    assert_eq!(
        (r.namespace.as_str(), r.worker.as_str(), r.incident),
        ("team-a", "marie", 3)
    );
    assert_eq!(r.state, "recovered");
    assert_eq!(r.impact.downtime_seconds, 252);
    assert_eq!(
        (
            r.impact.tasks_requeued,
            r.impact.tasks_dead_lettered,
            r.impact.tasks_quarantined
        ),
        (7, 1, 2)
    );
    let cause = r.root_cause.as_ref().unwrap();
    assert_eq!(cause.cause, RootCause::OutOfMemory);
    assert_eq!(
        cause.evidence.len(),
        1,
        "only Critical and Warning findings: {cause:?}"
    );
    assert!(cause.evidence[0].contains("limitBytes=67108864"));
    // The run's start and steps are in the timeline, in time order.
    let kinds: Vec<_> = r.timeline.iter().map(|l| l.kind.as_str()).collect();
    assert_eq!(
        kinds.first(),
        Some(&"run"),
        "the run (2026-11-18) is older: {kinds:?}"
    );
    assert!(r.timeline.iter().any(|l| l
        .event
        .starts_with("run marie-auto-1: CleanState Succeeded in 2.0 s")));
    assert!(r
        .actions
        .contains(&"1 automatic restart(s) of the container".to_string()));
    assert!(r
        .actions
        .contains(&"memory limit 64Mi -> 128Mi after an OOM kill".to_string()));
    assert!(
        r.follow_ups[0].contains("spec.resources.memory"),
        "{:?}",
        r.follow_ups
    );
    assert!(r.follow_ups[0].contains("64Mi -> 128Mi"));

    let md = markdown(&r);
    for needle in [
        "# Post-mortem: Worker team-a/marie, incident 3",
        "- State: closed: Healthy again",
        "- Downtime: 4m 12s",
        "## Timeline",
        "| detected: phase Down: OOM-killed |",
        "## Root cause",
        "OutOfMemory, found by the diagnosis of run marie-auto-1.",
        "## Impact",
        "- Tasks requeued: 7",
        "## Actions taken",
        "## Follow-up items",
        "- [ ] Declare the memory limit",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in\n{md}");
    }
    // The JSON form reads back.
    let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn an_escalated_open_incident_without_a_cause_says_so() {
    let w = worker();
    let i = incident(None);
    let mut st = status(&i);
    st.escalation = Some(EscalationStatus {
        level: "L2".into(),
        level_index: 2,
        reason: "maxRestarts 3 reached".into(),
        ..Default::default()
    });
    let r = build(&Sources {
        worker: &w,
        status: &st,
        incident: &i,
        runs: &[],
        plans: &[],
        now: t(100),
    });
    assert_eq!(r.state, "open");
    assert_eq!(r.impact.downtime_seconds, 100);
    assert_eq!(r.root_cause, None);
    assert!(r
        .follow_ups
        .iter()
        .any(|f| f.starts_with("No root cause was found")));
    assert!(r
        .follow_ups
        .iter()
        .any(|f| f.contains("maxRestarts 3 reached")));
    assert!(markdown(&r).contains("No diagnosis of the incident found a cause."));
}

/// A Debug run whose copy dumped two cores: one analyzed, one not.
fn debug_run(backtrace: &str) -> WorkerRecovery {
    serde_json::from_value(json!({
        "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
        "metadata": {"name": "marie-debug", "namespace": "team-a"},
        "spec": {"workerRef": {"name": "marie"}, "mode": "Debug"},
        "status": {
            "phase": "Failed",
            "startTime": "2026-11-18T08:27:00Z",
            "coreDumps": [
                {"file": "/shared/cores/marie/marie-debug-1/core", "sizeBytes": 4096,
                 "time": "2026-11-18T08:27:02Z", "signal": "SIGABRT",
                 "executable": "/usr/local/bin/w", "command": "/usr/local/bin/w",
                 "analysis": {"state": "Analyzed", "message": "exited with 0",
                              "backtrace": backtrace}},
                {"file": "/shared/cores/marie/marie-debug-1/core.2", "sizeBytes": 10,
                 "analysis": {"state": "NotConfigured"}}
            ]
        }
    }))
    .unwrap()
}

#[test]
fn crash_dumps_are_in_the_timeline_the_report_and_its_follow_ups() {
    let w = worker();
    let i = incident(None);
    let st = status(&i);
    // A backtrace quoting a Markdown fence cannot end the report's own block.
    let runs = [run(), debug_run("#0  w::abort_now ()\n```\n#1  w::main ()")];
    let r = build(&Sources {
        worker: &w,
        status: &st,
        incident: &i,
        runs: &runs,
        plans: &[],
        now: t(300),
    });

    assert_eq!(r.crash_dumps.len(), 2);
    assert_eq!(r.crash_dumps[0].run, "marie-debug");
    let cores: Vec<(Option<Timestamp>, &str)> = r
        .timeline
        .iter()
        .filter(|l| l.kind == "core")
        .map(|l| (l.time, l.event.as_str()))
        .collect();
    assert_eq!(
        cores,
        [
            (None, "the debug copy dumped core /shared/cores/marie/marie-debug-1/core.2 on an unknown signal (run marie-debug)"),
            (
                Some("2026-11-18T08:27:02Z".parse().unwrap()),
                "/usr/local/bin/w dumped core /shared/cores/marie/marie-debug-1/core on SIGABRT (run marie-debug)"
            ),
        ]
    );
    assert!(r.follow_ups.iter().any(|f| f.starts_with(
        "Find where /usr/local/bin/w died on SIGABRT in the backtrace of /shared/cores/marie/marie-debug-1/core"
    )));
    assert!(r
        .follow_ups
        .iter()
        .any(|f| f.starts_with("Analyze the core /shared/cores/marie/marie-debug-1/core.2")));
    let md = markdown(&r);
    assert!(
        md.contains("## Crash dumps\n\n### /shared/cores/marie/marie-debug-1/core\n"),
        "{md}"
    );
    assert!(
        md.contains("- Signal: SIGABRT\n- Executable: /usr/local/bin/w\n"),
        "{md}"
    );
    assert!(
        md.contains("\n````text\n#0  w::abort_now ()\n```\n#1  w::main ()\n````\n"),
        "{md}"
    );
    let json: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(json, r, "the JSON form reads back");
}

#[test]
fn long_backtraces_share_one_budget_in_the_report() {
    let w = worker();
    let i = incident(None);
    let st = status(&i);
    let long = "x".repeat(crate::crash::MAX_BACKTRACE_BYTES);
    let runs = [debug_run(&long), {
        let mut r = debug_run(&long);
        r.metadata.name = Some("marie-debug-2".into());
        r
    }];
    let r = build(&Sources {
        worker: &w,
        status: &st,
        incident: &i,
        runs: &runs,
        plans: &[],
        now: t(300),
    });
    let kept: usize = r
        .crash_dumps
        .iter()
        .filter_map(|d| d.core.analysis.backtrace.as_ref())
        .map(String::len)
        .sum();
    assert!(kept <= MAX_REPORT_BACKTRACE_BYTES + 200, "{kept}");
    assert!(r.crash_dumps[2]
        .core
        .analysis
        .backtrace
        .as_deref()
        .unwrap()
        .ends_with("[cut here: the whole backtrace is in the run's status]"));
    let (md, json) = crate::postmortem::store::fit(r).unwrap();
    assert!(md.len() <= 64 * 1024 && json.len() <= 64 * 1024);
}
