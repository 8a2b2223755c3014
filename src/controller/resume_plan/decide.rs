//! Pure decisions of the ResumePlan controller: how a batch is judged, when the next one is
//! due, and how the plan's progress sums up into phase and conditions.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    bounded::sample,
    controller::{
        conditions::{ConditionState, ConditionStatus, Health, Judged, WAITING},
        Held,
    },
    crd::resume_plan::{
        BatchResult, CurrentBatch, ResumePhase, ResumePlanSpec, ResumePlanStatus, MAX_BATCH_HISTORY,
    },
};

/// Condition: every task of the plan was released and judged (True), or why not (False).
pub const COMPLETED: &str = "Completed";
/// Condition: a batch failed beyond `maxFailureRatio` (True) and the plan stopped.
pub const HALTED: &str = "Halted";
/// Most task names kept per list in status.
pub const NAME_SAMPLE: usize = 20;
/// Most task names of a judged batch kept in its history entry, and their most bytes (JSON).
pub const BATCH_NAME_SAMPLE: usize = 5;
pub const BATCH_SAMPLE_BYTES: usize = 2048;

/// The plan covers tasks modified at or before this time: the start, rounded up to the whole
/// second that `metav1.Time` keeps, so a task requeued just before the plan started is in it.
pub fn cutoff(now: Timestamp) -> Timestamp {
    let whole = Timestamp::from_second(now.as_second()).expect("a valid time");
    if whole == now {
        whole
    } else {
        Timestamp::from_second(now.as_second() + 1).expect("a valid time")
    }
}

/// How long the released `batch` still waits before it is judged; `None` when it is due.
pub fn wait_left(batch: &CurrentBatch, delay_seconds: u32, now: Timestamp) -> Option<Duration> {
    let released = batch.released_time.as_ref()?.0;
    let due = released + Duration::from_secs(u64::from(delay_seconds));
    (now < due).then(|| now.duration_until(due).unsigned_abs())
}

/// Judge a batch after its delay. Its failures are the tasks of the batch that reached
/// `failed/` since it was chosen (`failed_now` minus `failed_before`), or the rise of the
/// worker's `task_failed_total` since its release, whichever is larger: the two usually see
/// the same failures, so they are not added.
pub fn judge(
    batch: &CurrentBatch,
    failed_now: &[String],
    failed_increase_now: i64,
    now: Timestamp,
) -> BatchResult {
    let failed_tasks: Vec<String> = failed_now
        .iter()
        .filter(|n| batch.tasks.contains(n) && !batch.failed_before.contains(n))
        .cloned()
        .collect();
    let failed_files = failed_tasks.len() as u32;
    let metric_failures =
        u32::try_from((failed_increase_now - batch.failed_increase_at_release).max(0))
            .unwrap_or(u32::MAX);
    BatchResult {
        number: batch.number,
        size: batch.tasks.len() as u32,
        moved: batch.moved,
        failed: failed_files.max(metric_failures),
        failed_files,
        metric_failures,
        tasks: sample(&batch.tasks, BATCH_NAME_SAMPLE, BATCH_SAMPLE_BYTES),
        failed_tasks: sample(&failed_tasks, BATCH_NAME_SAMPLE, BATCH_SAMPLE_BYTES),
        released_time: batch.released_time.clone(),
        judged_time: Some(Time(now)),
    }
}

/// The runbook's stop rule: more failures than `ratio` of the batch.
pub fn exceeds(result: &BatchResult, ratio: f64) -> bool {
    f64::from(result.failed) > ratio * f64::from(result.size)
}

/// Why the plan halted, for status and the Event.
pub fn halt_reason(result: &BatchResult, ratio: f64) -> String {
    format!(
        "batch {} failed {} of {} tasks ({} in failed/, task_failed_total rose by {}), more than maxFailureRatio {} allows",
        result.number, result.failed, result.size, result.failed_files, result.metric_failures, ratio
    )
}

/// Add a judged batch to the totals and the (bounded) history.
pub fn record(status: &mut ResumePlanStatus, result: BatchResult) {
    status.batches_done = status.batches_done.max(result.number);
    status.tasks_failed += u64::from(result.failed);
    status.batches.push(result);
    let excess = status.batches.len().saturating_sub(MAX_BATCH_HISTORY);
    status.batches.drain(..excess);
}

/// What keeps a plan from going on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub reason: &'static str,
    pub message: String,
    /// It waits (for the Worker, for another writer, for the engine) rather than having
    /// failed.
    pub waits: bool,
}

impl From<Held> for Blocked {
    fn from(held: Held) -> Self {
        match held {
            Held::Waits { why, message } => Self {
                reason: why.reason(),
                message,
                waits: true,
            },
            Held::Refused { reason, message } => Self {
                reason,
                message,
                waits: false,
            },
        }
    }
}

/// The conditions of the plan in `phase`.
pub fn conditions(
    phase: ResumePhase,
    status: &ResumePlanStatus,
    spec: &ResumePlanSpec,
    blocked: Option<&Blocked>,
) -> Vec<ConditionState> {
    let progress = format!(
        "{} of {} tasks released in {} batches, {} failures",
        status.tasks_staged, status.tasks_total, status.batches_done, status.tasks_failed
    );
    let waiting = match blocked {
        Some(b) if b.waits => ConditionState {
            type_: WAITING,
            status: ConditionStatus::True,
            reason: b.reason,
            message: b.message.clone(),
        },
        _ => ConditionState {
            type_: WAITING,
            status: ConditionStatus::False,
            reason: "NotWaiting",
            message: "nothing keeps the plan waiting".into(),
        },
    };
    let (completed, reason, message) = match (phase, blocked) {
        (_, Some(b)) => (ConditionStatus::False, b.reason, b.message.clone()),
        (ResumePhase::Completed, _) => (ConditionStatus::True, "AllTasksReleased", progress),
        (ResumePhase::Halted, _) => (
            ConditionStatus::False,
            "Halted",
            status.halt_reason.clone().unwrap_or_default(),
        ),
        (ResumePhase::Paused, _) => (
            ConditionStatus::False,
            "Paused",
            format!("paused by spec.paused; {progress}"),
        ),
        _ => (
            ConditionStatus::False,
            "InProgress",
            format!("{progress}; batches of {}", spec.batch_size),
        ),
    };
    let halted = match phase {
        ResumePhase::Halted => ConditionState {
            type_: HALTED,
            status: ConditionStatus::True,
            reason: "HighFailureRate",
            message: status.halt_reason.clone().unwrap_or_default(),
        },
        _ => ConditionState {
            type_: HALTED,
            status: ConditionStatus::False,
            reason: "WithinFailureRatio",
            message: format!(
                "no batch failed more than maxFailureRatio {}",
                spec.max_failure_ratio
            ),
        },
    };
    let [ready, reconciling, stalled] = health(phase, reason, &message).conditions();
    vec![
        ConditionState {
            type_: COMPLETED,
            status: completed,
            reason,
            message,
        },
        halted,
        waiting,
        ready,
        reconciling,
        stalled,
    ]
}

/// Where the plan stands for GitOps tools (`Ready`, `Reconciling`, `Stalled`), in the words of
/// its `Completed` condition: `Completed` is current; `Pending` and `Running` in progress;
/// `Halted` and `Failed` stalled (a human changes the spec or the Worker); `Paused` is held:
/// `Ready=False` but neither reconciling nor stalled, which kstatus reads as InProgress (it
/// has no suspended status, and a paused plan has not resumed its tasks: a pipeline waiting for
/// it waits until it is unpaused) and Argo CD as Suspended.
pub fn health(phase: ResumePhase, reason: &'static str, message: &str) -> Judged {
    let health = match phase {
        ResumePhase::Completed => Health::Current,
        ResumePhase::Pending | ResumePhase::Running => Health::InProgress,
        ResumePhase::Paused => Health::Held,
        ResumePhase::Halted | ResumePhase::Failed => Health::Failed,
    };
    Judged::new(health, reason, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn batch() -> CurrentBatch {
        CurrentBatch {
            number: 2,
            tasks: names(&["a.json", "b.json", "c.json", "d.json"]),
            failed_before: names(&["d.json"]),
            released_time: Some(Time(at(0))),
            moved: 4,
            failed_increase_at_release: 10,
        }
    }

    #[test]
    fn a_batch_counts_only_its_own_new_failures() {
        // x.json failed long ago, outside the batch; d.json was in failed/ before the batch.
        let failed = names(&["x.json", "a.json", "d.json"]);
        let r = judge(&batch(), &failed, 10, at(30));
        assert_eq!((r.failed_files, r.metric_failures, r.failed), (1, 0, 1));
        assert_eq!(r.failed_tasks, names(&["a.json"]));
        assert_eq!(r.size, 4);
        assert!(!exceeds(&r, 0.5));
    }

    #[test]
    fn a_metric_rise_counts_when_it_is_larger() {
        let r = judge(&batch(), &names(&["a.json"]), 13, at(30));
        assert_eq!((r.failed_files, r.metric_failures, r.failed), (1, 3, 3));
        assert!(exceeds(&r, 0.5), "3 of 4 is more than half");
        assert!(halt_reason(&r, 0.5).contains("batch 2 failed 3 of 4"));
        // A counter baseline above the current increase (never expected) counts as no rise.
        let r = judge(&batch(), &[], 5, at(30));
        assert_eq!(r.metric_failures, 0);
    }

    #[test]
    fn the_stop_rule_is_strictly_more_than_the_ratio() {
        let mut r = judge(&batch(), &names(&["a.json", "b.json"]), 10, at(30));
        assert_eq!(r.failed, 2);
        assert!(!exceeds(&r, 0.5), "exactly half does not halt (runbook: >)");
        r.failed = 3;
        assert!(exceeds(&r, 0.5));
        r.failed = 0;
        assert!(!exceeds(&r, 0.0));
        r.failed = 1;
        assert!(exceeds(&r, 0.0), "ratio 0 halts at the first failure");
        r.failed = 4;
        assert!(!exceeds(&r, 1.0), "ratio 1 never halts");
    }

    #[test]
    fn the_health_follows_the_phase() {
        use crate::controller::conditions::{READY, RECONCILING, STALLED};
        let spec: ResumePlanSpec = serde_json::from_value(serde_json::json!({
            "workerRef": {"name": "marie"}
        }))
        .unwrap();
        let status = ResumePlanStatus {
            halt_reason: Some("batch 2 failed 3 of 4 tasks".into()),
            ..Default::default()
        };
        let of = |phase, blocked: Option<&Blocked>| {
            let all = conditions(phase, &status, &spec, blocked);
            let get = |t| all.iter().find(|c| c.type_ == t).unwrap().status;
            (get(READY), get(RECONCILING), get(STALLED))
        };
        use ConditionStatus::{False, True};
        assert_eq!(of(ResumePhase::Completed, None), (True, False, False));
        assert_eq!(of(ResumePhase::Running, None), (False, True, False));
        assert_eq!(of(ResumePhase::Pending, None), (False, True, False));
        assert_eq!(of(ResumePhase::Paused, None), (False, False, False));
        assert_eq!(of(ResumePhase::Halted, None), (False, False, True));
        let refused = Blocked {
            reason: "WorkerRefused",
            message: "refused".into(),
            waits: false,
        };
        assert_eq!(
            of(ResumePhase::Failed, Some(&refused)),
            (False, False, True)
        );
        let halted = health(ResumePhase::Halted, "Halted", "batch 2 failed");
        assert_eq!(
            (halted.reason, halted.message.as_str()),
            ("Halted", "batch 2 failed")
        );
    }

    #[test]
    fn the_wait_runs_from_the_release() {
        let b = batch();
        assert_eq!(wait_left(&b, 30, at(10)), Some(Duration::from_secs(20)));
        assert_eq!(wait_left(&b, 30, at(30)), None);
        assert_eq!(wait_left(&b, 0, at(0)), None);
        let unreleased = CurrentBatch {
            released_time: None,
            ..b
        };
        assert_eq!(wait_left(&unreleased, 30, at(10)), None);
    }

    #[test]
    fn the_cutoff_rounds_up_to_a_whole_second() {
        assert_eq!(cutoff(at(5)), at(5));
        let mid = at(5) + Duration::from_millis(300);
        assert_eq!(cutoff(mid), at(6));
    }

    #[test]
    fn the_worst_status_stays_far_below_the_object_size_limit() {
        use crate::{
            bounded::json_len, crd::monitoring::MetricsWatch,
            recover::batches::MAX_BATCH_NAME_BYTES,
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        // 255-byte file names that JSON escapes six-fold.
        let worst = |i: usize| format!("{i:04}{}.json", "\u{1}".repeat(246));
        assert_eq!(worst(0).len(), 255);
        let all: Vec<String> = (0..1000).map(worst).collect();
        // The largest batch scan_pending records: as many names as its byte budget holds.
        let mut used = 0;
        let recorded: Vec<String> = all
            .iter()
            .take_while(|n| {
                used += json_len(n);
                used <= MAX_BATCH_NAME_BYTES
            })
            .cloned()
            .collect();
        let long = "m".repeat(4096);
        let condition = |t: &str| Condition {
            type_: t.into(),
            status: "False".into(),
            reason: "Halted".into(),
            message: long.clone(),
            last_transition_time: Time(at(0)),
            observed_generation: Some(i64::MAX),
        };
        let mut status = ResumePlanStatus {
            phase: Some(ResumePhase::Halted),
            conditions: vec![condition(COMPLETED), condition(HALTED)],
            halt_reason: Some(long.clone()),
            left_out: (0..NAME_SAMPLE)
                .map(|i| {
                    format!(
                        "{}: a FIFO, not a task file; not followed, left in pending/",
                        worst(i)
                    )
                })
                .collect(),
            monitoring: Some(MetricsWatch {
                last_error: Some(long.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Every judged batch at the schema's largest size, every task of it failed.
        let full = CurrentBatch {
            tasks: all.clone(),
            ..batch()
        };
        for n in 1..=(MAX_BATCH_HISTORY as u32 + 5) {
            let mut r = judge(&full, &all, i64::MAX, at(30));
            r.number = n;
            record(&mut status, r);
        }
        status.current_batch = Some(CurrentBatch {
            tasks: recorded.clone(),
            failed_before: recorded,
            ..batch()
        });
        let len = serde_json::to_vec(&status).unwrap().len();
        eprintln!("worst ResumePlan status: {len} bytes");
        assert!(len < 256 * 1024, "{len}");
    }

    #[test]
    fn history_is_bounded_but_totals_count_every_batch() {
        let mut status = ResumePlanStatus::default();
        for n in 1..=(MAX_BATCH_HISTORY as u32 + 5) {
            let mut r = judge(&batch(), &[], 11, at(30));
            r.number = n;
            record(&mut status, r);
        }
        assert_eq!(status.batches.len(), MAX_BATCH_HISTORY);
        assert_eq!(status.batches[0].number, 6);
        assert_eq!(status.batches_done, MAX_BATCH_HISTORY as u32 + 5);
        assert_eq!(status.tasks_failed, MAX_BATCH_HISTORY as u64 + 5);
    }
}
