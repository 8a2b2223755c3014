use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::*;
use crate::crd::worker::{
    AttemptRecord, AutoRecoveryStatus, EscalationStatus, NotificationState, NotificationStatus,
};

fn t(s: u64) -> Timestamp {
    Timestamp::from_second(1_795_000_000 + s as i64).unwrap()
}

fn status(phase: WorkerPhase, ready: &str) -> WorkerStatus {
    WorkerStatus {
        phase: Some(phase),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: if phase == WorkerPhase::Healthy {
                "True"
            } else {
                "False"
            }
            .into(),
            reason: "Test".into(),
            message: ready.into(),
            last_transition_time: Time(t(0)),
            observed_generation: None,
        }],
        ..Default::default()
    }
}

fn with_attempts(mut s: WorkerStatus, times: &[u64]) -> WorkerStatus {
    s.auto_recovery = Some(AutoRecoveryStatus {
        attempts: times
            .iter()
            .enumerate()
            .map(|(i, at)| AttemptRecord {
                time: Time(t(*at)),
                run: format!("w-auto-{}", i + 1),
                trigger: "exit code 3".into(),
                remediation: None,
            })
            .collect(),
        attempts_total: times.len() as u64,
        ..Default::default()
    });
    s
}

fn escalated(mut s: WorkerStatus, index: u32, level: &str) -> WorkerStatus {
    s.escalation = Some(EscalationStatus {
        level: level.into(),
        level_index: index,
        level_time: Some(Time(t(100 + u64::from(index)))),
        reason: "3 restarts in 600 s".into(),
        ..Default::default()
    });
    s
}

/// Carry the incident of `from` into `to`, as the status builder does.
fn carry(
    to: WorkerStatus,
    from: &WorkerStatus,
    advanced: (Option<IncidentStatus>, u32),
) -> WorkerStatus {
    let _ = from;
    WorkerStatus {
        incident: advanced.0,
        incidents_total: advanced.1,
        ..to
    }
}

#[test]
fn a_failure_opens_an_incident_and_healthy_closes_it_with_every_attempt_between() {
    let healthy = status(WorkerPhase::Healthy, "ok");
    let down = status(WorkerPhase::Down, "container exited with code 3");
    let (incident, total) = advance(Some(&healthy), &down, 3, t(10));
    let incident = incident.unwrap();
    assert_eq!((incident.number, total), (1, 1));
    assert_eq!(incident.timeline[0].kind, "detected");
    assert!(incident.timeline[0]
        .message
        .contains("phase Down: container exited"));
    let s1 = carry(down.clone(), &healthy, (Some(incident), total));

    // Two attempts, one look apart.
    let s2 = with_attempts(carry(down.clone(), &s1, (s1.incident.clone(), 1)), &[11]);
    let (i2, _) = advance(Some(&s1), &s2, 3, t(12));
    let s2 = carry(s2, &s1, (i2, 1));
    let s3 = with_attempts(
        carry(down.clone(), &s2, (s2.incident.clone(), 1)),
        &[11, 20],
    );
    let (i3, _) = advance(Some(&s2), &s3, 3, t(21));
    let s3 = carry(s3, &s2, (i3, 1));
    let attempts: Vec<_> = s3
        .incident
        .as_ref()
        .unwrap()
        .timeline
        .iter()
        .filter(|e| e.kind == "attempt")
        .collect();
    assert_eq!(attempts.len(), 2, "{:#?}", s3.incident);
    assert!(attempts[0]
        .message
        .starts_with("automatic attempt 1 (exit code 3): run w-auto-1"));
    assert!(attempts[1].message.starts_with("automatic attempt 2"));
    assert_eq!(attempts[1].time, Some(Time(t(20))));
    assert_eq!(s3.incident.as_ref().unwrap().runs, ["w-auto-1", "w-auto-2"]);

    let back = carry(
        with_attempts(status(WorkerPhase::Healthy, "ok"), &[11, 20]),
        &s3,
        (s3.incident.clone(), 1),
    );
    let (closed, total) = advance(Some(&s3), &back, 3, t(70));
    let closed = closed.unwrap();
    assert_eq!(closed.outcome, Some(IncidentOutcome::Recovered));
    assert_eq!(closed.ended, Some(Time(t(70))));
    assert_eq!(
        closed.timeline.last().unwrap().message,
        "Healthy again after 1m 0s"
    );
    assert_eq!(total, 1);
    // The next healthy look drops the closed incident; the count stays.
    let later = carry(status(WorkerPhase::Healthy, "ok"), &back, (Some(closed), 1));
    assert_eq!(advance(Some(&later), &later, 3, t(80)), (None, 1));
}

#[test]
fn escalation_levels_and_notifications_are_recorded_and_the_last_level_closes_it() {
    let down = status(WorkerPhase::Down, "exited");
    let (i, total) = advance(None, &down, 2, t(0));
    let s0 = carry(down.clone(), &down, (i, total));
    let mut s1 = escalated(
        carry(
            status(WorkerPhase::Escalated, "gave up"),
            &s0,
            (s0.incident.clone(), 1),
        ),
        1,
        "L1",
    );
    s1.escalation.as_mut().unwrap().notification = Some(NotificationStatus {
        level: "L1".into(),
        state: NotificationState::Delivered,
        attempts: 1,
        time: Some(Time(t(102))),
        ..Default::default()
    });
    let (i1, _) = advance(Some(&s0), &s1, 2, t(103));
    let s1 = carry(s1, &s0, (i1, 1));
    let kinds: Vec<_> = s1
        .incident
        .as_ref()
        .unwrap()
        .timeline
        .iter()
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(kinds, ["detected", "phase", "escalated", "notified"]);
    assert!(s1.incident.as_ref().unwrap().ended.is_none());
    let s2 = escalated(
        carry(
            status(WorkerPhase::Escalated, "gave up"),
            &s1,
            (s1.incident.clone(), 1),
        ),
        2,
        "L2",
    );
    let (i2, _) = advance(Some(&s1), &s2, 2, t(200));
    let i2 = i2.unwrap();
    assert_eq!(i2.outcome, Some(IncidentOutcome::LastLevel));
    let last = i2.timeline.last().unwrap();
    assert!(
        last.message.starts_with("escalated to L2 (level 2)"),
        "{last:?}"
    );
    assert_eq!(last.time, Some(Time(t(102))));
    // Closed at the last level: still there while the Worker is down, nothing added.
    let s3 = carry(s2.clone(), &s2, (Some(i2.clone()), 1));
    assert_eq!(advance(Some(&s3), &s3, 2, t(300)), (Some(i2), 1));
}

#[test]
fn a_second_failure_after_recovery_is_incident_two() {
    let mut healthy = status(WorkerPhase::Healthy, "ok");
    healthy.incidents_total = 1;
    let mut down = status(WorkerPhase::Degraded, "heartbeat stale");
    down.incidents_total = 1;
    let (i, total) = advance(Some(&healthy), &down, 3, t(5));
    assert_eq!((i.unwrap().number, total), (2, 2));
}

#[test]
fn the_timeline_is_capped() {
    let down = status(WorkerPhase::Down, "exited");
    let (i, _) = advance(None, &down, 3, t(0));
    let mut prev = carry(down.clone(), &down, (i, 1));
    let mut times = Vec::new();
    for k in 1..=(MAX_ENTRIES as u64 + 20) {
        times.push(k);
        let next = with_attempts(
            carry(down.clone(), &prev, (prev.incident.clone(), 1)),
            &times,
        );
        let (i, _) = advance(Some(&prev), &next, 3, t(k));
        prev = carry(next, &prev, (i, 1));
    }
    assert_eq!(prev.incident.unwrap().timeline.len(), MAX_ENTRIES);
    assert_eq!(human(Duration::from_secs(3725)), "1h 2m");
}

#[test]
fn a_crash_loop_healed_within_each_look_is_one_incident_until_the_streak_is_over() {
    let healthy = status(WorkerPhase::Healthy, "ok");
    let with_streak = |times: &[u64], failures: u32, since: Option<u64>| {
        let mut s = with_attempts(status(WorkerPhase::Healthy, "ok"), times);
        let a = s.auto_recovery.as_mut().unwrap();
        a.consecutive_failures = failures;
        a.healthy_since = since.map(|x| Time(t(x)));
        s
    };
    // Crashed and restarted within one look: Healthy, with a new attempt.
    let s1 = with_streak(&[10], 1, None);
    let (i1, total) = advance(Some(&healthy), &s1, 3, t(10));
    let i1 = i1.unwrap();
    assert_eq!(total, 1);
    assert_eq!(
        i1.timeline[0].message,
        "the worker failed and was restarted at once"
    );
    assert_eq!(i1.timeline[1].kind, "attempt");
    assert!(i1.ended.is_none(), "the streak goes on: {i1:?}");
    let s1 = carry(s1, &healthy, (Some(i1), total));
    // Again.
    let s2 = carry(
        with_streak(&[10, 20], 2, None),
        &s1,
        (s1.incident.clone(), 1),
    );
    let (i2, total) = advance(Some(&s1), &s2, 3, t(20));
    assert_eq!(total, 1, "the same incident");
    let s2 = carry(s2, &s1, (i2, total));
    assert_eq!(s2.incident.as_ref().unwrap().timeline.len(), 3);
    // Healthy since 21 s, the policy forgets the failures at 621 s: recovered since 21 s.
    let s3 = carry(
        with_streak(&[10, 20], 0, Some(21)),
        &s2,
        (s2.incident.clone(), 1),
    );
    let (i3, _) = advance(Some(&s2), &s3, 3, t(621));
    let i3 = i3.unwrap();
    assert_eq!(i3.outcome, Some(IncidentOutcome::Recovered));
    assert_eq!(i3.ended, Some(Time(t(21))));
    assert_eq!(
        i3.timeline.last().unwrap().message,
        "Healthy again after 11s"
    );
}
