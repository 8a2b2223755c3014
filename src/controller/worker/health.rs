//! Where a Worker stands for GitOps tools (pure): kstatus (Flux, `kubectl wait`) and the Argo CD
//! health checks read `Ready`, `Reconciling` and `Stalled`.
//!
//! * healthy: `Ready=True` (Current);
//! * recovering or starting (automatic recovery acting, Docker's restart policy at work, a
//!   container started within its heartbeat timeout, the engine not answering):
//!   `Reconciling=True` (InProgress);
//! * automatic recovery paused: neither (`Ready=False`: InProgress for kstatus, Suspended for
//!   Argo CD);
//! * refused (`Accepted=False`), an invalid spec, escalated past the path's first level (the
//!   runbook's `Automated`; a one-level path needs a human at once), or down or hung with
//!   automatic recovery off: `Stalled=True` with the reason (Failed).

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};

use super::decide::{self, Assessment, Observation};
use crate::{
    controller::conditions::{self, ConditionStatus, Health, Judged},
    crd::worker::{EscalationStatus, WorkerPhase, WorkerStatus},
};

/// What automatic recovery does for the Worker now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoRecovery {
    /// `spec.autoRecovery.enabled: false`.
    Off,
    /// Enabled, but `spec.autoRecovery.pause` is in force.
    Paused,
    On,
}

/// The Worker's escalation, with the number of levels its path has.
#[derive(Clone, Copy, Debug)]
pub struct Escalation<'a> {
    pub status: &'a EscalationStatus,
    pub levels: usize,
}

impl Escalation<'_> {
    /// Past the first level (the runbook's `Automated`), or on a one-level path, a human is
    /// needed.
    pub fn needs_a_human(&self) -> bool {
        self.status.level_index > 0 || self.levels <= 1
    }
}

/// Judge an admitted (or blind) Worker from what was observed and decided.
pub fn judge(
    obs: &Observation,
    assessment: &Assessment,
    escalation: Option<Escalation<'_>>,
    auto: AutoRecovery,
    heartbeat_timeout: Duration,
) -> Judged {
    let accepted = decide::accepted_condition(&obs.container, obs.heartbeat.is_some());
    if accepted.status == ConditionStatus::False {
        return Judged::new(Health::Failed, accepted.reason, accepted.message);
    }
    let ready = &assessment.ready;
    match (assessment.phase, escalation) {
        (WorkerPhase::Healthy, _) => Judged::new(Health::Current, ready.reason, &ready.message),
        (WorkerPhase::Escalated, Some(e)) if e.needs_a_human() => {
            Judged::new(Health::Failed, "Escalated", &ready.message)
        }
        (WorkerPhase::Escalated, _) => Judged::new(Health::InProgress, "Escalated", &ready.message),
        (WorkerPhase::Unknown, _) => Judged::new(Health::InProgress, ready.reason, &ready.message),
        _ if assessment.container_running.reason == "Restarting" => {
            Judged::new(Health::InProgress, "Restarting", &ready.message)
        }
        _ => match auto {
            AutoRecovery::On => Judged::new(
                Health::InProgress,
                "AutoRecovery",
                format!("automatic recovery is acting: {}", ready.message),
            ),
            AutoRecovery::Paused => Judged::new(
                Health::Held,
                "AutoRecoveryPaused",
                format!("automatic recovery is paused: {}", ready.message),
            ),
            AutoRecovery::Off if decide::failure(obs, heartbeat_timeout).is_some() => Judged::new(
                Health::Failed,
                "AutoRecoveryOff",
                format!(
                    "{}; automatic recovery is off: a human must act",
                    ready.message
                ),
            ),
            AutoRecovery::Off if assessment.container_running.reason == "Paused" => {
                Judged::new(Health::Held, "ContainerPaused", &ready.message)
            }
            AutoRecovery::Off => Judged::new(Health::InProgress, ready.reason, &ready.message),
        },
    }
}

/// Add `Reconciling` and `Stalled` to a Worker's status (its `Ready` says the same in its own
/// words), each keeping its transition time while its status stays.
pub fn add(
    status: &mut WorkerStatus,
    previous: &[Condition],
    judged: &Judged,
    generation: Option<i64>,
    now: Timestamp,
) {
    let progress = conditions::merge(previous, &judged.progress(), generation, now);
    status
        .conditions
        .retain(|c| !progress.iter().any(|p| p.type_ == c.type_));
    status.conditions.extend(progress);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        observe::heartbeat::{Heartbeat, HeartbeatObservation, TimeSource},
        runtime::{ContainerInfo, ContainerObservation, ContainerState},
        trust::{Refusal, RefusalReason},
    };

    const NOW: i64 = 1_795_823_941;
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(NOW + s).unwrap()
    }

    /// A container in `state`, started `started` seconds ago.
    fn container(state: &str, started: i64) -> ContainerObservation {
        let running = state == "running";
        ContainerObservation::Found(Box::new(ContainerInfo {
            id: "0123456789abcdef0123".into(),
            name: "marie".into(),
            status: ContainerState::from_word(state),
            running,
            exit_code: Some(if running { 0 } else { 3 }),
            started_at: Some(at(-started)),
            finished_at: (!running).then(|| at(-10)),
            ..Default::default()
        }))
    }

    fn beat(age: i64) -> Option<HeartbeatObservation> {
        Some(HeartbeatObservation::Present(Heartbeat {
            at: at(-age),
            source: TimeSource::Content { field: "timestamp" },
            status: Some("working".into()),
            current_task: None,
            progress: Some(1),
            issue: None,
        }))
    }

    /// The states a Worker is driven into, each with the status the operator writes for it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum State {
        Healthy,
        /// Crashed, automatic recovery on.
        Recovering,
        /// Just (re)started, no heartbeat yet.
        Starting,
        /// Crashed, automatic recovery paused.
        Paused,
        /// Crashed, automatic recovery off.
        DownUnattended,
        /// Escalated at the runbook's first level (`Automated`).
        EscalatedAutomated,
        /// Escalated at L1: a human is needed.
        EscalatedL1,
        /// Its shared root is outside the allowed roots.
        Refused,
        /// Its container is gone.
        ContainerGone,
    }

    pub(crate) const STATES: [State; 9] = [
        State::Healthy,
        State::Recovering,
        State::Starting,
        State::Paused,
        State::DownUnattended,
        State::EscalatedAutomated,
        State::EscalatedL1,
        State::Refused,
        State::ContainerGone,
    ];

    fn escalation(level_index: u32) -> EscalationStatus {
        EscalationStatus {
            level: ["Automated", "L1"][level_index as usize].into(),
            level_index,
            since: None,
            level_time: None,
            reason: "3 attempts in 600s".into(),
            root_cause: None,
            run: None,
            notification: None,
            failover: None,
        }
    }

    /// The Worker status the operator's pure functions write in `state`, and its verdict.
    pub(crate) fn status_in(state: State) -> (WorkerStatus, Judged) {
        if state == State::Refused {
            let refusal = Refusal {
                reason: RefusalReason::SharedRootNotAllowed,
                message: "shared root /elsewhere is outside the allowed roots".into(),
            };
            let status = decide::refused_status(None, Some(1), &refusal, at(0));
            let judged = Judged::new(Health::Failed, refusal.reason.as_str(), refusal.message);
            return (status, judged);
        }
        let (container, heartbeat, auto) = match state {
            State::Healthy => (container("running", 100), beat(1), AutoRecovery::On),
            State::Starting => (container("running", 2), None, AutoRecovery::Off),
            State::ContainerGone => (ContainerObservation::NotFound, None, AutoRecovery::On),
            State::Paused => (container("exited", 100), beat(60), AutoRecovery::Paused),
            State::DownUnattended => (container("exited", 100), beat(60), AutoRecovery::Off),
            _ => (container("exited", 100), beat(60), AutoRecovery::On),
        };
        let heartbeat = match (state, heartbeat) {
            (State::Starting, _) => Some(HeartbeatObservation::Missing),
            (_, hb) => hb,
        };
        let obs = Observation {
            container,
            heartbeat,
            now: at(0),
        };
        let mut assessment = decide::assess(&obs, TIMEOUT);
        let escalated = match state {
            State::EscalatedAutomated => Some(escalation(0)),
            State::EscalatedL1 => Some(escalation(1)),
            _ => None,
        };
        if let Some(e) = &escalated {
            decide::escalated(&mut assessment, e);
        }
        let judged = judge(
            &obs,
            &assessment,
            escalated
                .as_ref()
                .map(|status| Escalation { status, levels: 4 }),
            auto,
            TIMEOUT,
        );
        let mut status = decide::next_status(None, Some(1), &obs, &assessment, None);
        add(&mut status, &[], &judged, Some(1), at(0));
        (status, judged)
    }

    /// What kstatus and Argo CD should say of a Worker in `state`.
    pub(crate) fn expected(state: State) -> Health {
        match state {
            State::Healthy => Health::Current,
            State::Recovering | State::Starting | State::EscalatedAutomated => Health::InProgress,
            State::Paused => Health::Held,
            State::DownUnattended | State::EscalatedL1 | State::Refused | State::ContainerGone => {
                Health::Failed
            }
        }
    }

    fn condition<'a>(status: &'a WorkerStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} in {:?}", status.conditions))
    }

    #[test]
    fn each_state_gets_its_health_and_conditions() {
        use crate::controller::conditions::{READY, RECONCILING, STALLED};
        for state in STATES {
            let (status, judged) = status_in(state);
            assert_eq!(judged.health, expected(state), "{state:?}: {judged:?}");
            let of = |t| condition(&status, t).status.as_str();
            let want = match judged.health {
                Health::Current => ["True", "False", "False"],
                Health::InProgress => ["False", "True", "False"],
                Health::Held => ["False", "False", "False"],
                Health::Failed => ["False", "False", "True"],
            };
            assert_eq!([of(READY), of(RECONCILING), of(STALLED)], want, "{state:?}");
            // Every condition of before is still there, once.
            for t in [decide::ACCEPTED, READY] {
                assert_eq!(
                    status.conditions.iter().filter(|c| c.type_ == t).count(),
                    1,
                    "{state:?} {t}"
                );
            }
            assert!(status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(1)));
        }
    }

    #[test]
    fn the_reasons_say_why() {
        let reason = |s| status_in(s).1.reason;
        assert_eq!(reason(State::Refused), "SharedRootNotAllowed");
        assert_eq!(reason(State::ContainerGone), "ContainerNotFound");
        assert_eq!(reason(State::Recovering), "AutoRecovery");
        assert_eq!(reason(State::Paused), "AutoRecoveryPaused");
        assert_eq!(reason(State::DownUnattended), "AutoRecoveryOff");
        assert_eq!(reason(State::EscalatedL1), "Escalated");
        let one_level = Escalation {
            status: &escalation(0),
            levels: 1,
        };
        assert!(
            one_level.needs_a_human(),
            "a one-level path needs a human at once"
        );
    }

    #[test]
    fn adding_twice_keeps_one_of_each_and_its_transition_time() {
        let (mut status, judged) = status_in(State::Recovering);
        let before = status.conditions.clone();
        add(&mut status, &before, &judged, Some(1), at(50));
        assert_eq!(status.conditions.len(), before.len());
        let stalled = condition(&status, "Stalled");
        assert_eq!(stalled.last_transition_time.0, at(0));
    }
}
