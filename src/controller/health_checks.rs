//! The Argo CD health checks (`charts/worker-recovery-operator/health/*.lua`), run in an embedded
//! Lua against the statuses the operator's own functions write for each state.

use k8s_openapi::jiff::Timestamp;
use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::{json, Value};

use super::{
    conditions::{merge, Health},
    recovery::plan,
    resume_plan::decide::{self as resume, Blocked},
    worker::health::tests::{expected, status_in, STATES},
};
use crate::crd::{
    resume_plan::{ResumePhase, ResumePlanSpec, ResumePlanStatus},
    worker_recovery::{RecoveryMode, RecoveryPhase, StepState},
};

const WORKER: &str = include_str!("../../charts/worker-recovery-operator/health/worker.lua");
const RECOVERY: &str =
    include_str!("../../charts/worker-recovery-operator/health/workerrecovery.lua");
const PLAN: &str = include_str!("../../charts/worker-recovery-operator/health/resumeplan.lua");
const DOC: &str = include_str!("../../charts/worker-recovery-operator/docs/argocd-health.md");

/// Run a health check on `object` as Argo CD does (the object in the global `obj`); its
/// `hs.status` and `hs.message`.
fn check(script: &str, object: &Value) -> (String, String) {
    let lua = Lua::new();
    lua.globals()
        .set("obj", lua.to_value(object).unwrap())
        .unwrap();
    let hs: Table = lua.load(script).eval().unwrap();
    (hs.get("status").unwrap(), hs.get("message").unwrap())
}

fn object(generation: i64, status: impl serde::Serialize) -> Value {
    json!({"metadata": {"name": "marie", "generation": generation}, "status": status})
}

/// What Argo CD should say of an object of this health.
fn argo(health: Health) -> &'static str {
    match health {
        Health::Current => "Healthy",
        Health::InProgress => "Progressing",
        Health::Held => "Suspended",
        Health::Failed => "Degraded",
    }
}

fn now() -> Timestamp {
    Timestamp::from_second(1_795_823_941).unwrap()
}

#[test]
fn the_worker_check_follows_each_state() {
    for state in STATES {
        let (status, judged) = status_in(state);
        let (hs, message) = check(WORKER, &object(1, &status));
        assert_eq!(hs, argo(expected(state)), "{state:?}: {message}");
        assert!(message.contains(judged.reason), "{state:?}: {message}");
    }
}

/// The status the run controller writes for a run whose steps are in `states`.
fn run_status(states: &[StepState]) -> Value {
    let mut steps = plan::initial_steps(RecoveryMode::Quick);
    for (s, st) in steps.iter_mut().zip(states) {
        s.state = *st;
    }
    let phase = plan::phase(&steps);
    let completed = plan::completed_condition(&steps, false);
    let [ready, reconciling, stalled] = plan::health(phase, &completed).conditions();
    let conditions = merge(
        &[],
        &[completed, ready, reconciling, stalled],
        Some(1),
        now(),
    );
    json!({"phase": phase, "observedGeneration": 1, "conditions": conditions})
}

#[test]
fn the_run_check_follows_each_phase() {
    use StepState::*;
    for (states, want) in [
        (&[Succeeded, Succeeded, Succeeded][..], "Healthy"),
        (&[Pending, Pending, Pending], "Progressing"),
        (&[Succeeded, Running, Pending], "Progressing"),
        (&[Succeeded, Failed, Pending], "Degraded"),
    ] {
        let (hs, message) = check(RECOVERY, &object(1, run_status(states)));
        assert_eq!(hs, want, "{states:?}: {message}");
    }
    let failed = run_status(&[Failed, Pending, Pending]);
    assert_eq!(failed["phase"], json!(RecoveryPhase::Failed));
    assert!(check(RECOVERY, &object(1, failed)).1.contains("StepFailed"));
}

/// The status the plan controller writes in `phase`.
fn plan_status(phase: ResumePhase, blocked: Option<&Blocked>) -> ResumePlanStatus {
    let spec: ResumePlanSpec =
        serde_json::from_value(json!({"workerRef": {"name": "marie"}})).expect("a valid spec");
    let mut status = ResumePlanStatus {
        phase: Some(phase),
        observed_generation: Some(1),
        halt_reason: Some("batch 2 failed 3 of 4 tasks".into()),
        ..Default::default()
    };
    let states = resume::conditions(phase, &status, &spec, blocked);
    status.conditions = merge(&[], &states, Some(1), now());
    status
}

#[test]
fn the_plan_check_follows_each_phase() {
    let refused = Blocked {
        reason: "WorkerRefused",
        message: "its Worker is refused".into(),
        waits: false,
    };
    for (phase, blocked, want) in [
        (ResumePhase::Completed, None, "Healthy"),
        (ResumePhase::Pending, None, "Progressing"),
        (ResumePhase::Running, None, "Progressing"),
        (ResumePhase::Paused, None, "Suspended"),
        (ResumePhase::Halted, None, "Degraded"),
        (ResumePhase::Failed, Some(&refused), "Degraded"),
    ] {
        let (hs, message) = check(PLAN, &object(1, plan_status(phase, blocked)));
        assert_eq!(hs, want, "{phase:?}: {message}");
    }
}

#[test]
fn an_unobserved_generation_or_no_status_is_progressing() {
    let done = plan_status(ResumePhase::Completed, None);
    assert_eq!(check(PLAN, &object(2, &done)).0, "Progressing");
    let (healthy, _) = status_in(STATES[0]);
    assert_eq!(check(WORKER, &object(2, &healthy)).0, "Progressing");
    for script in [WORKER, RECOVERY, PLAN] {
        let fresh = json!({"metadata": {"name": "marie", "generation": 1}});
        assert_eq!(check(script, &fresh).0, "Progressing");
    }
}

#[test]
fn the_doc_holds_each_script_verbatim_and_ready_for_argocd_cm() {
    for (kind, script) in [
        ("Worker", WORKER),
        ("WorkerRecovery", RECOVERY),
        ("ResumePlan", PLAN),
    ] {
        assert!(DOC.contains(&format!("```lua\n{script}```")), "{kind}");
        let indented: String = script
            .lines()
            .map(|l| {
                if l.is_empty() {
                    "\n".to_string()
                } else {
                    format!("    {l}\n")
                }
            })
            .collect();
        let key = format!("  resource.customizations.health.workerrecovery.io_{kind}: |\n");
        assert!(
            DOC.contains(&format!("{key}{indented}")),
            "{kind} in argocd-cm"
        );
    }
}
