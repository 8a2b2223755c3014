//! An incident's timeline, advanced at each look at a Worker by comparing the status before
//! and after: the failure detected, each automatic attempt, each escalation level and its
//! notification, the failover, poison tasks, the prediction, and the recovery. Pure: the
//! statuses are the whole input, so a restarted operator goes on where the last one stopped.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::crd::worker::{
    IncidentOutcome, IncidentStatus, TimelineEntry, WorkerPhase, WorkerStatus,
};

/// Entries kept per incident; later ones are dropped (the first hours matter most).
pub const MAX_ENTRIES: usize = 100;

/// The incident in `next` given `previous`: opened by a failure (a failing phase, or an
/// automatic attempt: a restart may make the Worker healthy within the look that saw it fail)
/// when none is open, advanced by what changed, and closed at the last escalation level
/// (`last_level` is its index) or once recovered: Healthy, with the auto-recovery policy's
/// streak of failures over (`consecutiveFailures` back to 0 after `resetAfterSeconds` of
/// health), so that a crash loop is one incident. A closed incident is dropped at the next
/// healthy look; returns the incident and the count of incidents.
pub fn advance(
    previous: Option<&WorkerStatus>,
    next: &WorkerStatus,
    last_level: u32,
    now: Timestamp,
) -> (Option<IncidentStatus>, u32) {
    let total = next.incidents_total;
    let healthy = next.phase == Some(WorkerPhase::Healthy);
    let mut entries = changes(previous, next);
    let attempted = entries.iter().any(|e| e.kind == "attempt");
    let mut incident = match next.incident.clone() {
        Some(i) if i.ended.is_none() => i,
        Some(i) if i.outcome == Some(IncidentOutcome::LastLevel) && !healthy => {
            return (Some(i), total)
        }
        _ if failing(next.phase) || attempted => {
            // The detection says what the phase entry would.
            entries.retain(|e| e.kind != "phase");
            open(next, &entries, total + 1, now)
        }
        _ => return (None, total),
    };
    let number = incident.number.max(total);
    let streak_over = next
        .auto_recovery
        .as_ref()
        .is_none_or(|a| a.consecutive_failures == 0);
    if healthy && !attempted && streak_over {
        let since = next
            .auto_recovery
            .as_ref()
            .and_then(|a| a.healthy_since.clone())
            .unwrap_or(Time(now));
        let down = incident
            .started
            .as_ref()
            .map(|s| since.0.duration_since(s.0).unsigned_abs());
        let after = down.map_or(String::new(), |d| format!(" after {}", human(d)));
        entries.push(at(
            entry("recovered", format!("Healthy again{after}")),
            Some(&since),
        ));
        incident.ended = Some(since);
        incident.outcome = Some(IncidentOutcome::Recovered);
    } else if next
        .escalation
        .as_ref()
        .is_some_and(|e| e.level_index >= last_level)
    {
        incident.ended = Some(Time(now));
        incident.outcome = Some(IncidentOutcome::LastLevel);
    }
    for mut e in entries {
        if incident.timeline.len() >= MAX_ENTRIES {
            break;
        }
        e.time.get_or_insert(Time(now));
        incident.timeline.push(e);
    }
    for run in next
        .auto_recovery
        .iter()
        .flat_map(|a| a.attempts.iter())
        .map(|a| &a.run)
    {
        if incident_run(&incident, next, run) && !incident.runs.contains(run) {
            incident.runs.push(run.clone());
        }
    }
    (Some(incident), number)
}

/// A phase that is a failure: the container is down, the heartbeat stale, or recovery gave up.
fn failing(phase: Option<WorkerPhase>) -> bool {
    matches!(
        phase,
        Some(WorkerPhase::Down | WorkerPhase::Degraded | WorkerPhase::Escalated)
    )
}

fn open(
    next: &WorkerStatus,
    entries: &[TimelineEntry],
    number: u32,
    now: Timestamp,
) -> IncidentStatus {
    // Detected at the first attempt's time when one was made in this look.
    let first_attempt = entries.iter().find(|e| e.kind == "attempt");
    let (time, message) = match (failing(next.phase), first_attempt) {
        (false, Some(a)) => (
            a.time.clone().unwrap_or(Time(now)),
            "the worker failed and was restarted at once".to_string(),
        ),
        _ => {
            let why = ready_message(next).unwrap_or_default();
            let phase = next.phase.map_or("?".into(), |p| p.to_string());
            (Time(now), format!("phase {phase}: {why}"))
        }
    };
    IncidentStatus {
        number,
        // A few ms before an attempt made in the same look: the incident's runs are those
        // made since it began.
        started: Some(Time(time.0.min(now))),
        timeline: vec![TimelineEntry {
            time: Some(time),
            kind: "detected".into(),
            message,
        }],
        ..Default::default()
    }
}

/// Whether the attempt's run belongs to this incident: made after it began.
fn incident_run(incident: &IncidentStatus, next: &WorkerStatus, run: &str) -> bool {
    let Some(started) = incident.started.as_ref() else {
        return false;
    };
    next.auto_recovery
        .iter()
        .flat_map(|a| a.attempts.iter())
        .any(|a| a.run == run && a.time.0 >= started.0)
}

fn ready_message(s: &WorkerStatus) -> Option<String> {
    s.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
}

/// `e` at `time`, when known (else the look's time).
fn at(mut e: TimelineEntry, time: Option<&Time>) -> TimelineEntry {
    e.time = time.cloned();
    e
}

fn entry(kind: &str, message: String) -> TimelineEntry {
    TimelineEntry {
        time: None,
        kind: kind.into(),
        message,
    }
}

/// What changed from `previous` to `next` that the timeline records.
fn changes(previous: Option<&WorkerStatus>, next: &WorkerStatus) -> Vec<TimelineEntry> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if previous.phase != next.phase && failing(next.phase) {
        let phase = next.phase.map_or("?".into(), |p| p.to_string());
        let why = ready_message(next).unwrap_or_default();
        out.push(entry("phase", format!("phase {phase}: {why}")));
    }
    out.extend(attempts(previous, next));
    out.extend(escalation(previous, next));
    let poisoned_before = previous
        .auto_recovery
        .as_ref()
        .map_or(&[][..], |a| a.poisoned_tasks.as_slice());
    for task in next.auto_recovery.iter().flat_map(|a| &a.poisoned_tasks) {
        if !poisoned_before.contains(task) {
            let note = format!("task {task} moved to failed/ as poison");
            out.push(entry("poison", note));
        }
    }
    if previous.at_risk.is_none() {
        if let Some(message) = next
            .conditions
            .iter()
            .find(|c| c.type_ == "AtRisk" && c.status == "True")
            .map(|c| c.message.clone())
        {
            out.push(entry("atRisk", message));
        }
    }
    out
}

/// New automatic attempts: those newer than every attempt `previous` had.
fn attempts(previous: &WorkerStatus, next: &WorkerStatus) -> Vec<TimelineEntry> {
    let last_before = previous
        .auto_recovery
        .as_ref()
        .and_then(|a| a.attempts.iter().map(|a| a.time.0).max());
    let total = next.auto_recovery.as_ref().map_or(0, |a| a.attempts_total);
    let new: Vec<_> = next
        .auto_recovery
        .iter()
        .flat_map(|a| a.attempts.iter())
        .filter(|a| last_before.is_none_or(|t| a.time.0 > t))
        .collect();
    let first_number = total.saturating_sub(new.len() as u64) + 1;
    new.iter()
        .enumerate()
        .map(|(i, a)| {
            let remediation = a
                .remediation
                .as_ref()
                .map_or(String::new(), |r| format!("; {r}"));
            let n = first_number + i as u64;
            let note = format!(
                "automatic attempt {n} ({}): run {}{remediation}",
                a.trigger, a.run
            );
            at(entry("attempt", note), Some(&a.time))
        })
        .collect()
}

/// A new escalation level, a notification that settled, a failover that moved on.
fn escalation(previous: &WorkerStatus, next: &WorkerStatus) -> Vec<TimelineEntry> {
    let Some(e) = &next.escalation else {
        return Vec::new();
    };
    let before = previous.escalation.as_ref();
    let mut out = Vec::new();
    if before.is_none_or(|b| b.level_index != e.level_index) {
        let cause = e
            .root_cause
            .map_or(String::new(), |c| format!("; root cause {c}"));
        let note = format!(
            "escalated to {} (level {}): {}{cause}",
            e.level, e.level_index, e.reason
        );
        out.push(at(entry("escalated", note), e.level_time.as_ref()));
    }
    let state = |s: Option<&crate::crd::worker::EscalationStatus>| {
        s.and_then(|s| s.notification.as_ref())
            .map(|n| (n.level.clone(), format!("{:?}", n.state)))
    };
    if let (Some(n), true) = (&e.notification, state(before) != state(Some(e))) {
        let error = n
            .last_error
            .as_ref()
            .map_or(String::new(), |err| format!(": {err}"));
        let note = format!(
            "webhook for {}: {:?} after {} attempt(s){error}",
            n.level, n.state, n.attempts
        );
        out.push(at(entry("notified", note), n.time.as_ref()));
    }
    let failover = |s: Option<&crate::crd::worker::EscalationStatus>| {
        s.and_then(|s| s.failover.as_ref())
            .map(|f| (format!("{:?}", f.state), f.moved))
    };
    if let (Some(f), true) = (&e.failover, failover(before) != failover(Some(e))) {
        let note = format!(
            "failover of pending tasks to {}: {:?}, {} moved",
            f.to, f.state, f.moved
        );
        out.push(entry("failover", note));
    }
    out
}

/// `4m 12s`, `1h 3m`, `12s`.
pub fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod tests;
