//! The runbook's `WorkerSupervisor` as a pure policy: given the Worker's automatic recovery
//! settings, its record (in status) and what failed now, decide whether to attempt a recovery
//! now, wait, or give up and escalate.
//!
//! * The first attempt after a healthy spell is immediate.
//! * Later attempts wait `max(cooldownSeconds, backoff)`, where the backoff starts at
//!   `initialSeconds` and grows by `factor` per further failure up to `maxSeconds` (kubelet's
//!   crash-loop backoff); `resetAfterSeconds` of health forgets the failures.
//! * At most `maxRestarts` attempts within `windowSeconds`; then the policy gives up.
//! * One failure gets one attempt: an attempt is made only while no recovery run owns the
//!   container, and the runs of automatic attempts have deterministic names.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::crd::worker::{AttemptRecord, AutoRecoverySpec, AutoRecoveryStatus, BackoffSpec};

/// Most attempts kept in status.
pub const MAX_ATTEMPT_RECORDS: usize = 100;

/// What failed, as the Worker controller saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// For the record and the run: `exit code 3`, `OOM-killed (exit code 137)`, `heartbeat
    /// missed for 31s`.
    pub trigger: String,
}

/// What the policy decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to do.
    Nothing,
    /// Attempt a recovery now.
    Attempt,
    /// The next attempt may start at this time.
    Wait { until: Timestamp, reason: String },
    /// Stop trying: escalate.
    GiveUp { reason: String },
}

/// The wait after `failures` consecutive failures (1 for the first failure after a healthy
/// spell, which waits nothing).
pub fn backoff_delay(backoff: &BackoffSpec, failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let exp = backoff
        .factor
        .powi(i32::try_from(failures - 2).unwrap_or(i32::MAX));
    let secs = (f64::from(backoff.initial_seconds) * exp).min(f64::from(backoff.max_seconds));
    Duration::from_secs_f64(secs.max(0.0))
}

/// Update the record's view of health: when the worker became healthy, and forget past
/// failures once it stayed healthy for `resetAfterSeconds`.
pub fn observe_health(
    spec: &AutoRecoverySpec,
    record: &mut AutoRecoveryStatus,
    healthy: bool,
    now: Timestamp,
) {
    if !healthy {
        record.healthy_since = None;
        return;
    }
    let since = record.healthy_since.get_or_insert(Time(now)).0;
    let reset = Duration::from_secs(u64::from(spec.backoff.reset_after_seconds));
    if now.duration_since(since).unsigned_abs() >= reset {
        record.consecutive_failures = 0;
        record.backoff_seconds = 0;
    }
    record.next_attempt_time = None;
    record.waiting_reason = None;
}

/// Decide about `failure` (None: nothing failed). `run_in_progress`: a recovery run owns the
/// container now, so it handles the failure.
pub fn decide(
    spec: &AutoRecoverySpec,
    record: &AutoRecoveryStatus,
    failure: Option<&Failure>,
    run_in_progress: bool,
    now: Timestamp,
) -> Decision {
    let Some(failure) = failure else {
        return Decision::Nothing;
    };
    if run_in_progress {
        return Decision::Nothing;
    }
    let window = Duration::from_secs(u64::from(spec.window_seconds));
    let recent = record
        .attempts
        .iter()
        .filter(|a| now.duration_since(a.time.0).unsigned_abs() < window)
        .count();
    if recent >= spec.max_restarts as usize {
        return Decision::GiveUp {
            reason: format!(
                "{} ({}); {recent} automatic attempts within {}s used up maxRestarts {}",
                failure.trigger, "restarts exhausted", spec.window_seconds, spec.max_restarts
            ),
        };
    }
    let failures = record.consecutive_failures + 1;
    if failures <= 1 {
        return Decision::Attempt;
    }
    let wait = backoff_delay(&spec.backoff, failures)
        .max(Duration::from_secs(u64::from(spec.cooldown_seconds)));
    match record.attempts.last() {
        Some(last) if now < last.time.0 + wait => Decision::Wait {
            until: last.time.0 + wait,
            reason: format!(
                "{}; failure {failures} in a row: waiting {}s after the last attempt (cooldown {}s, backoff {}s)",
                failure.trigger,
                wait.as_secs(),
                spec.cooldown_seconds,
                backoff_delay(&spec.backoff, failures).as_secs()
            ),
        },
        _ => Decision::Attempt,
    }
}

/// Record an attempt made now through run `run`.
pub fn record_attempt(
    spec: &AutoRecoverySpec,
    record: &mut AutoRecoveryStatus,
    run: &str,
    trigger: &str,
    remediation: Option<String>,
    now: Timestamp,
) {
    record.attempts_total += 1;
    record.consecutive_failures += 1;
    record.backoff_seconds = backoff_delay(&spec.backoff, record.consecutive_failures + 1)
        .max(Duration::from_secs(u64::from(spec.cooldown_seconds)))
        .as_secs() as u32;
    record.attempts.push(AttemptRecord {
        time: Time(now),
        run: run.to_string(),
        trigger: trigger.to_string(),
        remediation,
    });
    record.next_attempt_time = None;
    record.waiting_reason = None;
    record.healthy_since = None;
    prune(spec, record, now);
}

/// Drop attempts older than the window (keeping the last one, the cooldown's reference).
pub fn prune(spec: &AutoRecoverySpec, record: &mut AutoRecoveryStatus, now: Timestamp) {
    let window = Duration::from_secs(u64::from(spec.window_seconds));
    let keep_from = record
        .attempts
        .iter()
        .position(|a| now.duration_since(a.time.0).unsigned_abs() < window)
        .unwrap_or(record.attempts.len())
        .min(record.attempts.len().saturating_sub(1))
        .max(record.attempts.len().saturating_sub(MAX_ATTEMPT_RECORDS));
    record.attempts.drain(..keep_from);
}

/// The name of the run of attempt `n` of `worker`.
pub fn run_name(worker: &str, n: u64) -> String {
    let suffix = format!("-auto-{n}");
    let keep = worker.len().min(253 - suffix.len());
    format!("{}{suffix}", &worker[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn spec() -> AutoRecoverySpec {
        AutoRecoverySpec {
            enabled: true,
            max_restarts: 3,
            window_seconds: 600,
            cooldown_seconds: 0,
            backoff: BackoffSpec {
                initial_seconds: 10,
                factor: 2.0,
                max_seconds: 300,
                reset_after_seconds: 600,
            },
            ..Default::default()
        }
    }

    fn crash() -> Failure {
        Failure {
            trigger: "exit code 3".into(),
        }
    }

    #[test]
    fn backoff_doubles_from_the_second_failure_up_to_its_maximum() {
        let b = spec().backoff;
        let secs: Vec<u64> = (1..=8).map(|n| backoff_delay(&b, n).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn the_first_attempt_is_immediate_then_backoff_then_give_up() {
        let s = spec();
        let mut r = AutoRecoveryStatus::default();
        assert_eq!(decide(&s, &r, None, false, at(0)), Decision::Nothing);
        assert_eq!(
            decide(&s, &r, Some(&crash()), false, at(0)),
            Decision::Attempt
        );
        record_attempt(&s, &mut r, "w-auto-1", "exit code 3", None, at(0));
        assert_eq!(r.backoff_seconds, 10);
        // It crashed again 2 s later: wait until 10 s after the first attempt.
        match decide(&s, &r, Some(&crash()), false, at(2)) {
            Decision::Wait { until, reason } => {
                assert_eq!(until, at(10));
                assert!(reason.contains("waiting 10s"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&s, &r, Some(&crash()), false, at(10)),
            Decision::Attempt
        );
        record_attempt(&s, &mut r, "w-auto-2", "exit code 3", None, at(10));
        assert!(matches!(
            decide(&s, &r, Some(&crash()), false, at(20)),
            Decision::Wait { until, .. } if until == at(30)
        ));
        record_attempt(&s, &mut r, "w-auto-3", "exit code 3", None, at(30));
        // Three attempts within the window: give up.
        match decide(&s, &r, Some(&crash()), false, at(200)) {
            Decision::GiveUp { reason } => assert!(reason.contains("maxRestarts 3"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A run in progress handles the failure itself.
        assert_eq!(
            decide(&s, &r, Some(&crash()), true, at(200)),
            Decision::Nothing
        );
    }

    #[test]
    fn the_cooldown_is_the_least_wait() {
        let s = AutoRecoverySpec {
            cooldown_seconds: 60,
            ..spec()
        };
        let mut r = AutoRecoveryStatus::default();
        record_attempt(&s, &mut r, "w-auto-1", "exit code 3", None, at(0));
        assert!(matches!(
            decide(&s, &r, Some(&crash()), false, at(5)),
            Decision::Wait { until, .. } if until == at(60)
        ));
    }

    #[test]
    fn a_healthy_spell_forgets_the_failures_and_the_window_forgets_attempts() {
        let s = spec();
        let mut r = AutoRecoveryStatus::default();
        record_attempt(&s, &mut r, "w-auto-1", "x", None, at(0));
        record_attempt(&s, &mut r, "w-auto-2", "x", None, at(10));
        observe_health(&s, &mut r, true, at(20));
        assert_eq!(r.consecutive_failures, 2, "not healthy long enough yet");
        observe_health(&s, &mut r, true, at(620));
        assert_eq!(r.consecutive_failures, 0);
        assert_eq!(r.backoff_seconds, 0);
        assert_eq!(
            decide(&s, &r, Some(&crash()), false, at(621)),
            Decision::Attempt
        );
        // The old attempts left the window: only the last is kept, as the cooldown's reference.
        prune(&s, &mut r, at(700));
        assert_eq!(r.attempts.len(), 1);
        assert_eq!(r.attempts[0].run, "w-auto-2");
        assert_eq!(r.attempts_total, 2);
        observe_health(&s, &mut r, false, at(701));
        assert_eq!(r.healthy_since, None);
    }

    #[test]
    fn run_names_are_deterministic_and_bounded() {
        assert_eq!(run_name("marie", 7), "marie-auto-7");
        let long = "w".repeat(300);
        assert_eq!(run_name(&long, 12).len(), 253);
    }
}
