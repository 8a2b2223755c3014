//! Standard `metav1.Condition` handling shared by the controllers.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// A condition as a controller decides it, before timestamps are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionState {
    pub type_: &'static str,
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// The condition of a run or plan that waits before it acts.
pub const WAITING: &str = "Waiting";

/// Why a run or plan waits before it changes anything of its Worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Another run, plan or failover is the Worker's writer now.
    AnotherRunActive,
    /// The engine cannot say whether the Worker's container exists and consents.
    ContainerStateUnknown,
}

impl Waiting {
    /// The condition's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::AnotherRunActive => "AnotherRunActive",
            Self::ContainerStateUnknown => "ContainerStateUnknown",
        }
    }
}

/// Condition: the object is what its spec asks (kstatus, `kubectl wait --for=condition=Ready`).
pub const READY: &str = "Ready";
/// Condition (kstatus): the controller is working towards what the spec asks.
pub const RECONCILING: &str = "Reconciling";
/// Condition (kstatus): the controller cannot get there without a human.
pub const STALLED: &str = "Stalled";

/// Where an object stands for GitOps tools: kstatus (Flux, `kubectl wait`) reads `Ready`,
/// `Reconciling` and `Stalled` (with `status.observedGeneration`); the Argo CD health checks in
/// `charts/worker-recovery-operator/health/` read the same conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Done: `Ready=True` (kstatus `Current`, Argo `Healthy`).
    Current,
    /// The operator is working on it: `Reconciling=True` (kstatus `InProgress`, Argo
    /// `Progressing`).
    InProgress,
    /// Held on purpose (paused): `Ready=False`, neither reconciling nor stalled (kstatus
    /// `InProgress`, as it has no suspended status; Argo `Suspended`).
    Held,
    /// It will not get there without a human: `Stalled=True` (kstatus `Failed`, Argo
    /// `Degraded`).
    Failed,
}

/// A [`Health`] with the reason and message its conditions carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub health: Health,
    pub reason: &'static str,
    pub message: String,
}

impl Judged {
    pub fn new(health: Health, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            health,
            reason,
            message: message.into(),
        }
    }

    /// `Ready`: True only when current.
    pub fn ready(&self) -> ConditionState {
        let status = match self.health {
            Health::Current => ConditionStatus::True,
            _ => ConditionStatus::False,
        };
        self.condition(READY, status)
    }

    /// `Reconciling` and `Stalled`.
    pub fn progress(&self) -> [ConditionState; 2] {
        let (reconciling, stalled) = match self.health {
            Health::InProgress => (ConditionStatus::True, ConditionStatus::False),
            Health::Failed => (ConditionStatus::False, ConditionStatus::True),
            Health::Current | Health::Held => (ConditionStatus::False, ConditionStatus::False),
        };
        [
            self.condition(RECONCILING, reconciling),
            self.condition(STALLED, stalled),
        ]
    }

    /// `Ready`, `Reconciling` and `Stalled`.
    pub fn conditions(&self) -> [ConditionState; 3] {
        let [reconciling, stalled] = self.progress();
        [self.ready(), reconciling, stalled]
    }

    fn condition(&self, type_: &'static str, status: ConditionStatus) -> ConditionState {
        ConditionState {
            type_,
            status,
            reason: self.reason,
            message: self.message.clone(),
        }
    }
}

/// Build the new condition list: a condition keeps its `lastTransitionTime` while its status
/// stays the same, as the API conventions ask.
pub fn merge(
    previous: &[Condition],
    states: &[ConditionState],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    states
        .iter()
        .map(|state| {
            let transition = previous
                .iter()
                .find(|c| c.type_ == state.type_ && c.status == state.status.as_str())
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: state.type_.to_string(),
                status: state.status.as_str().to_string(),
                reason: state.reason.to_string(),
                message: state.message.clone(),
                observed_generation: generation,
                last_transition_time: transition,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: ConditionStatus, reason: &'static str) -> ConditionState {
        ConditionState {
            type_: "Ready",
            status,
            reason,
            message: String::new(),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = merge(&[], &[state(ConditionStatus::True, "A")], Some(1), t0);
        assert_eq!(first[0].last_transition_time, Time(t0));

        let same = merge(&first, &[state(ConditionStatus::True, "B")], Some(2), t1);
        assert_eq!(
            same[0].last_transition_time,
            Time(t0),
            "same status keeps its time"
        );
        assert_eq!(same[0].reason, "B");
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge(&same, &[state(ConditionStatus::False, "C")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn each_health_sets_the_conditions_kstatus_reads() {
        let status = |h| {
            Judged::new(h, "R", "m")
                .conditions()
                .map(|c| (c.type_, c.status))
        };
        use ConditionStatus::{False, True};
        for (health, ready, reconciling, stalled) in [
            (Health::Current, True, False, False),
            (Health::InProgress, False, True, False),
            (Health::Held, False, False, False),
            (Health::Failed, False, False, True),
        ] {
            assert_eq!(
                status(health),
                [
                    (READY, ready),
                    (RECONCILING, reconciling),
                    (STALLED, stalled)
                ],
                "{health:?}"
            );
        }
        let stalled = &Judged::new(Health::Failed, "Why", "because").conditions()[2];
        assert_eq!(
            (stalled.reason, stalled.message.as_str()),
            ("Why", "because")
        );
    }
}
