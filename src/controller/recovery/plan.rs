//! Pure decisions of the WorkerRecovery controller: which steps a run has, which one runs next,
//! and how the steps sum up into the run's phase and conditions.

use crate::{
    controller::conditions::{ConditionState, ConditionStatus, Health, Judged},
    crd::{
        diagnosis::{RootCause, Verdict},
        worker_recovery::{RecoveryMode, RecoveryPhase, StepName, StepState, StepStatus},
    },
};

/// Condition: the diagnosis step finished.
pub const DIAGNOSED: &str = "Diagnosed";
/// Condition: every step finished (True), one failed (False, `StepFailed`), or steps remain.
pub const COMPLETED: &str = "Completed";

/// The steps of a new run: every step of its mode, pending.
pub fn initial_steps(mode: RecoveryMode) -> Vec<StepStatus> {
    mode.steps()
        .iter()
        .copied()
        .map(StepStatus::pending)
        .collect()
}

/// Steps as recorded, completed with those of the mode that status does not have yet (a run
/// whose status was written by an older operator).
pub fn reconcile_steps(mode: RecoveryMode, recorded: &[StepStatus]) -> Vec<StepStatus> {
    initial_steps(mode)
        .into_iter()
        .map(|fresh| {
            recorded
                .iter()
                .find(|s| s.name == fresh.name)
                .cloned()
                .unwrap_or(fresh)
        })
        .collect()
}

/// The index of the step to run now: the first that is not done, unless one failed.
pub fn next_step(steps: &[StepStatus]) -> Option<usize> {
    if steps.iter().any(|s| s.state == StepState::Failed) {
        return None;
    }
    steps.iter().position(|s| !s.state.is_done())
}

/// The run's phase from its steps.
pub fn phase(steps: &[StepStatus]) -> RecoveryPhase {
    if steps.iter().any(|s| s.state == StepState::Failed) {
        RecoveryPhase::Failed
    } else if steps.iter().all(|s| s.state.is_done()) {
        RecoveryPhase::Succeeded
    } else if steps.iter().all(|s| s.state == StepState::Pending) {
        RecoveryPhase::Pending
    } else {
        RecoveryPhase::Running
    }
}

/// The step shown as current: the running one, else the last one that ran.
pub fn current_step(steps: &[StepStatus]) -> Option<StepName> {
    steps
        .iter()
        .find(|s| s.state == StepState::Running)
        .or_else(|| steps.iter().rev().find(|s| s.state != StepState::Pending))
        .map(|s| s.name)
}

/// The `Completed` condition from the steps.
pub fn completed_condition(steps: &[StepStatus], dry_run: bool) -> ConditionState {
    let (status, reason, message) =
        if let Some(failed) = steps.iter().find(|s| s.state == StepState::Failed) {
            (
                ConditionStatus::False,
                "StepFailed",
                format!(
                    "step {:?} failed: {}",
                    failed.name,
                    failed.message.as_deref().unwrap_or("no reason recorded")
                ),
            )
        } else if steps.iter().all(|s| s.state.is_done()) {
            let done = steps
                .iter()
                .filter(|s| s.state == StepState::Succeeded)
                .count();
            let what = if dry_run {
                "dry run: every step computed what it would do; nothing was changed"
            } else {
                "every step finished"
            };
            (
                ConditionStatus::True,
                if dry_run {
                    "DryRunComplete"
                } else {
                    "RecoveryComplete"
                },
                format!("{what} ({done} of {} succeeded)", steps.len()),
            )
        } else {
            let at = current_step(steps).map_or("none".to_string(), |s| format!("{s:?}"));
            (
                ConditionStatus::False,
                "InProgress",
                format!("steps are running; current step: {at}"),
            )
        };
    ConditionState {
        type_: COMPLETED,
        status,
        reason,
        message,
    }
}

/// Where the run stands for GitOps tools (`Ready`, `Reconciling`, `Stalled`), in the words of
/// `why` (the `Completed` condition, or `Waiting` while the run waits): `Succeeded` is current,
/// `Pending` and `Running` in progress, `Failed` stalled (a run is never retried).
pub fn health(phase: RecoveryPhase, why: &ConditionState) -> Judged {
    let health = match phase {
        RecoveryPhase::Succeeded => Health::Current,
        RecoveryPhase::Pending | RecoveryPhase::Running => Health::InProgress,
        RecoveryPhase::Failed => Health::Failed,
    };
    Judged::new(health, why.reason, why.message.clone())
}

/// The `failure_reason` written into requeued tasks, from the diagnosis's top cause.
pub fn failure_reason(verdict: &Verdict) -> &'static str {
    match verdict.top_cause {
        Some(RootCause::OutOfMemory) => "oom",
        Some(RootCause::FileDescriptorExhaustion) => "fd_exhaustion",
        Some(RootCause::Deadlock) => "deadlock",
        Some(RootCause::MissingDependency) => "missing_dependency",
        Some(RootCause::ApplicationCrash)
        | Some(RootCause::ContainerMissing)
        | Some(RootCause::MetricsEndpointDown)
        | None => "worker_crash",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_states(mode: RecoveryMode, states: &[StepState]) -> Vec<StepStatus> {
        let mut steps = initial_steps(mode);
        for (s, st) in steps.iter_mut().zip(states) {
            s.state = *st;
        }
        steps
    }

    #[test]
    fn each_mode_has_the_runbooks_steps() {
        use StepName::*;
        let names = |m| initial_steps(m).iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names(RecoveryMode::Diagnose), [Diagnose]);
        assert_eq!(
            names(RecoveryMode::Quick),
            [Diagnose, Restart, VerifyHealth]
        );
        assert_eq!(
            names(RecoveryMode::Clean),
            [Diagnose, CleanState, Restart, VerifyHealth, Resume]
        );
        assert_eq!(
            names(RecoveryMode::Debug),
            [Diagnose, CleanState, DebugStart, VerifyHealth, Resume]
        );
        assert!(initial_steps(RecoveryMode::Clean)
            .iter()
            .all(|s| s.state == StepState::Pending && s.attempt == 0));
    }

    #[test]
    fn the_next_step_is_the_first_not_done_and_a_failure_stops_the_run() {
        use StepState::*;
        let steps = with_states(RecoveryMode::Clean, &[Succeeded, Running, Pending]);
        assert_eq!(
            next_step(&steps),
            Some(1),
            "a step interrupted mid-way runs again"
        );
        assert_eq!(phase(&steps), RecoveryPhase::Running);
        assert_eq!(current_step(&steps), Some(StepName::CleanState));

        let steps = with_states(RecoveryMode::Quick, &[Succeeded, Failed, Pending]);
        assert_eq!(next_step(&steps), None);
        assert_eq!(phase(&steps), RecoveryPhase::Failed);
        let c = completed_condition(&steps, false);
        assert_eq!((c.status, c.reason), (ConditionStatus::False, "StepFailed"));

        let steps = with_states(RecoveryMode::Quick, &[Succeeded, Succeeded, Skipped]);
        assert_eq!(next_step(&steps), None);
        assert_eq!(phase(&steps), RecoveryPhase::Succeeded);
        assert_eq!(current_step(&steps), Some(StepName::VerifyHealth));
        assert_eq!(completed_condition(&steps, true).reason, "DryRunComplete");

        assert_eq!(
            phase(&initial_steps(RecoveryMode::Quick)),
            RecoveryPhase::Pending
        );
        assert_eq!(current_step(&initial_steps(RecoveryMode::Quick)), None);
    }

    #[test]
    fn the_health_follows_the_phase() {
        use crate::controller::conditions::{READY, RECONCILING, STALLED};
        use StepState::*;
        let judge = |states: &[StepState]| {
            let steps = with_states(RecoveryMode::Quick, states);
            health(phase(&steps), &completed_condition(&steps, false))
        };
        let succeeded = judge(&[Succeeded, Succeeded, Succeeded]);
        assert_eq!(
            (succeeded.health, succeeded.reason),
            (Health::Current, "RecoveryComplete")
        );
        assert_eq!(succeeded.ready().status, ConditionStatus::True);
        for states in [
            &[Pending, Pending, Pending][..],
            &[Succeeded, Running, Pending],
        ] {
            let running = judge(states);
            assert_eq!(
                (running.health, running.reason),
                (Health::InProgress, "InProgress")
            );
            let [ready, reconciling, stalled] = running.conditions();
            assert_eq!(
                [ready.type_, reconciling.type_, stalled.type_],
                [READY, RECONCILING, STALLED]
            );
            assert_eq!(reconciling.status, ConditionStatus::True);
        }
        let failed = judge(&[Succeeded, Failed, Pending]);
        assert_eq!(
            (failed.health, failed.reason),
            (Health::Failed, "StepFailed")
        );
        assert_eq!(failed.conditions()[2].status, ConditionStatus::True);
        assert!(failed.message.contains("Restart"), "{}", failed.message);
    }

    #[test]
    fn recorded_steps_are_kept_and_missing_ones_added() {
        let mut recorded = vec![StepStatus::pending(StepName::Diagnose)];
        recorded[0].state = StepState::Succeeded;
        recorded[0].attempt = 2;
        let steps = reconcile_steps(RecoveryMode::Quick, &recorded);
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0].attempt, 2);
        assert_eq!(steps[1].state, StepState::Pending);
    }

    #[test]
    fn the_failure_reason_follows_the_verdict() {
        let v = |c| Verdict {
            top_cause: c,
            causes: vec![],
        };
        assert_eq!(failure_reason(&v(Some(RootCause::OutOfMemory))), "oom");
        assert_eq!(failure_reason(&v(Some(RootCause::Deadlock))), "deadlock");
        assert_eq!(failure_reason(&v(None)), "worker_crash");
        assert_eq!(
            failure_reason(&v(Some(RootCause::ApplicationCrash))),
            "worker_crash"
        );
    }
}
