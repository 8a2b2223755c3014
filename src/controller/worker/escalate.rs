//! The runbook's escalation path as pure functions: once automatic recovery gives up, the
//! worker climbs the declared levels (Automated, L1, L2, L3 by default) as time passes since
//! the incident began.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::crd::{
    diagnosis::RootCause,
    worker::{EscalationLevel, EscalationSpec, EscalationStatus},
};

/// The levels in force, in order of `afterSeconds`: the spec's, or the runbook's when the
/// Worker declares none.
pub fn levels(spec: Option<&EscalationSpec>) -> Vec<EscalationLevel> {
    match spec {
        Some(s) if !s.levels.is_empty() => {
            let mut levels = s.levels.clone();
            levels.sort_by_key(|l| l.after_seconds);
            levels
        }
        _ => [("Automated", 0), ("L1", 300), ("L2", 900), ("L3", 1800)]
            .into_iter()
            .map(|(name, after_seconds)| EscalationLevel {
                name: name.into(),
                after_seconds,
            })
            .collect(),
    }
}

/// The index of the level reached `now` for an incident that began at `since`.
pub fn level_at(levels: &[EscalationLevel], since: Timestamp, now: Timestamp) -> usize {
    let elapsed = now.duration_since(since).unsigned_abs();
    levels
        .iter()
        .rposition(|l| elapsed >= Duration::from_secs(u64::from(l.after_seconds)))
        .unwrap_or(0)
}

/// A new escalation at the level reached now.
pub fn begin(
    levels: &[EscalationLevel],
    reason: String,
    root_cause: Option<RootCause>,
    run: Option<String>,
    now: Timestamp,
) -> EscalationStatus {
    let i = level_at(levels, now, now);
    EscalationStatus {
        level: levels[i].name.clone(),
        level_index: i as u32,
        since: Some(Time(now)),
        level_time: Some(Time(now)),
        reason,
        root_cause,
        run,
        notification: None,
        failover: None,
    }
}

/// Move the escalation to the level reached `now`; returns the previous level's name when it
/// changed.
pub fn advance(
    status: &mut EscalationStatus,
    levels: &[EscalationLevel],
    now: Timestamp,
) -> Option<String> {
    let since = status.since.as_ref().map_or(now, |t| t.0);
    let i = level_at(levels, since, now);
    if i as u32 <= status.level_index || i >= levels.len() {
        return None;
    }
    let previous = std::mem::replace(&mut status.level, levels[i].name.clone());
    status.level_index = i as u32;
    status.level_time = Some(Time(now));
    Some(previous)
}

/// When the next level is reached, if there is one.
pub fn next_level_time(status: &EscalationStatus, levels: &[EscalationLevel]) -> Option<Timestamp> {
    let since = status.since.as_ref()?.0;
    let next = levels.get(status.level_index as usize + 1)?;
    Some(since + Duration::from_secs(u64::from(next.after_seconds)))
}

/// Whether the escalation is at the last level.
pub fn at_last_level(status: &EscalationStatus, levels: &[EscalationLevel]) -> bool {
    status.level_index as usize + 1 >= levels.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn the_runbook_ladder_is_climbed_as_time_passes() {
        let l = levels(None);
        let names: Vec<_> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["Automated", "L1", "L2", "L3"]);
        let mut e = begin(
            &l,
            "restarts exhausted".into(),
            None,
            Some("w-auto-3".into()),
            at(0),
        );
        assert_eq!(e.level, "Automated");
        assert_eq!(next_level_time(&e, &l), Some(at(300)));
        assert_eq!(advance(&mut e, &l, at(299)), None);
        assert_eq!(advance(&mut e, &l, at(300)).as_deref(), Some("Automated"));
        assert_eq!(e.level, "L1");
        // Far later, straight to the level reached (skipping none in the record).
        assert_eq!(advance(&mut e, &l, at(5000)).as_deref(), Some("L1"));
        assert_eq!(e.level, "L3");
        assert!(at_last_level(&e, &l));
        assert_eq!(next_level_time(&e, &l), None);
        assert_eq!(advance(&mut e, &l, at(9000)), None);
    }

    #[test]
    fn declared_levels_replace_the_runbook_s() {
        let spec = EscalationSpec {
            levels: vec![
                EscalationLevel {
                    name: "page".into(),
                    after_seconds: 0,
                },
                EscalationLevel {
                    name: "wake-the-cto".into(),
                    after_seconds: 4,
                },
            ],
            webhook: None,
            backup_workers: vec![],
        };
        let l = levels(Some(&spec));
        assert_eq!(level_at(&l, at(0), at(3)), 0);
        assert_eq!(level_at(&l, at(0), at(4)), 1);
    }
}
