//! The WorkerRecovery controller: one run of the runbook against one Worker.
//!
//! Today a run is its first step, the diagnosis: every check of the runbook, findings with
//! evidence and a ranked root cause, written into status. The run is read-only and idempotent:
//! a run that finished is not repeated; one interrupted by an operator crash runs again.

mod error;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::Api,
    runtime::{
        controller::{Action, Controller},
        events::EventType,
    },
    ResourceExt,
};
use tracing::{info, instrument, warn};

pub use error::Error;

use super::{
    apply_status,
    conditions::{merge, ConditionState, ConditionStatus},
    log_failure, object_key, spec_changes, Context,
};
use crate::{
    crd::{
        worker::Worker,
        worker_recovery::{RecoveryPhase, WorkerRecovery, WorkerRecoveryStatus},
    },
    diagnose::{self, CheckContext, Diagnosis},
    trust::{self, AdmitError},
};

pub const CONTROLLER: &str = "workerrecovery";
/// Condition that tells whether the diagnosis step finished.
pub const DIAGNOSED: &str = "Diagnosed";
/// How long to wait for a Worker that does not exist (yet).
const WORKER_WAIT: Duration = Duration::from_secs(15);

/// Run the WorkerRecovery controller until a shutdown signal.
pub async fn run(ctx: Arc<Context>, recoveries: Api<WorkerRecovery>) {
    let (reader, trigger) = spec_changes(recoveries);
    Controller::for_stream(trigger, reader)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(log_failure(CONTROLLER))
        .await;
}

#[instrument(skip_all, fields(recovery = %rec.name_any(), namespace = rec.namespace().unwrap_or_default()))]
async fn reconcile(rec: Arc<WorkerRecovery>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.measured(CONTROLLER, rec.as_ref(), run_steps(&rec, &ctx))
        .await
}

async fn run_steps(rec: &WorkerRecovery, ctx: &Context) -> Result<Action, Error> {
    let status = rec.status.clone().unwrap_or_default();
    if status.observed_generation == rec.metadata.generation
        && status.phase.is_some_and(RecoveryPhase::is_terminal)
    {
        return Ok(Action::await_change());
    }
    let ns = rec.namespace().unwrap_or_default();
    let api: Api<WorkerRecovery> = Api::namespaced(ctx.client.clone(), &ns);
    let workers: Api<Worker> = Api::namespaced(ctx.client.clone(), &ns);
    let worker_name = &rec.spec.worker_ref.name;
    let start_time = status.start_time.clone().unwrap_or(Time(Timestamp::now()));

    let Some(worker) = workers.get_opt(worker_name).await? else {
        let next = step_status(
            rec,
            RecoveryPhase::Pending,
            &start_time,
            ConditionStatus::False,
            "WorkerNotFound",
            format!("Worker {worker_name:?} does not exist in namespace {ns}; waiting for it"),
            None,
        );
        apply_status(&api, rec, &next).await?;
        return Ok(Action::requeue(WORKER_WAIT));
    };

    // Mark the run as started before the (slow) diagnosis, so progress is visible.
    let running = step_status(
        rec,
        RecoveryPhase::Running,
        &start_time,
        ConditionStatus::False,
        "Diagnosing",
        format!("running the runbook's checks against Worker {worker_name}"),
        None,
    );
    apply_status(&api, rec, &running).await?;

    let admission = match trust::admit(&worker, &ctx.allowed_roots, ctx.docker.as_ref()).await {
        Ok(admission) => admission,
        Err(e) => {
            let (reason, message) = match &e {
                AdmitError::InvalidSpec(e) => (
                    "InvalidWorkerSpec",
                    format!("Worker {worker_name} has an invalid spec: {e}"),
                ),
                AdmitError::Refused(refusal) => (
                    refusal.reason.as_str(),
                    format!("Worker {worker_name} is refused: {refusal}"),
                ),
            };
            let mut failed = step_status(
                rec,
                RecoveryPhase::Failed,
                &start_time,
                ConditionStatus::False,
                reason,
                message.clone(),
                None,
            );
            failed.completion_time = Some(Time(Timestamp::now()));
            apply_status(&api, rec, &failed).await?;
            ctx.publish(rec, EventType::Warning, reason, "Diagnose", message)
                .await;
            return Ok(Action::await_change());
        }
    };
    let check_ctx = CheckContext::new(&worker, admission, ctx.docker.clone(), ctx.host.clone());
    let diagnosis = diagnose::diagnose(&check_ctx).await;
    let summary = verdict_summary(&diagnosis);
    info!(worker = %worker_name, %summary, findings = diagnosis.findings.len(), "diagnosis complete");
    let mut done = step_status(
        rec,
        RecoveryPhase::Succeeded,
        &start_time,
        ConditionStatus::True,
        "DiagnosisComplete",
        summary.clone(),
        Some(diagnosis),
    );
    done.completion_time = Some(Time(Timestamp::now()));
    apply_status(&api, rec, &done).await?;
    ctx.publish(rec, EventType::Normal, "Diagnosed", "Diagnose", summary)
        .await;
    Ok(Action::await_change())
}

/// "root cause: OutOfMemory (...); 14 findings, 3 critical"
fn verdict_summary(d: &Diagnosis) -> String {
    let critical = d
        .findings
        .iter()
        .filter(|f| f.severity == diagnose::Severity::Critical)
        .count();
    let cause = match d.verdict.causes.first() {
        Some(top) => format!("root cause: {:?} ({})", top.cause, top.summary),
        None => "no root cause found: every check looks healthy".to_string(),
    };
    format!(
        "{cause}; {} findings, {critical} critical",
        d.findings.len()
    )
}

fn step_status(
    rec: &WorkerRecovery,
    phase: RecoveryPhase,
    start_time: &Time,
    diagnosed: ConditionStatus,
    reason: &'static str,
    message: String,
    diagnosis: Option<Diagnosis>,
) -> WorkerRecoveryStatus {
    let previous = rec.status.clone().unwrap_or_default();
    WorkerRecoveryStatus {
        phase: Some(phase),
        conditions: merge(
            &previous.conditions,
            &[ConditionState {
                type_: DIAGNOSED,
                status: diagnosed,
                reason,
                message,
            }],
            rec.metadata.generation,
            Timestamp::now(),
        ),
        observed_generation: rec.metadata.generation,
        start_time: Some(start_time.clone()),
        completion_time: None,
        diagnosis,
    }
}

fn error_policy(rec: Arc<WorkerRecovery>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_failure(CONTROLLER, error.metric_label());
    let delay = ctx.backoff.next_delay(&object_key(rec.as_ref()));
    warn!(recovery = %rec.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Method;
    use serde_json::{json, Value};

    use super::*;
    use crate::{
        controller::mock_api,
        diagnose::host::{testing, FakeHost},
        docker::fake::FakeRuntime,
        metrics::Metrics,
        trust::AllowedRoots,
    };

    const RECOVERY_STATUS: &str =
        "/apis/workerrecovery.io/v1alpha1/namespaces/default/workerrecoveries/marie-1/status";
    const WORKER: &str = "/apis/workerrecovery.io/v1alpha1/namespaces/default/workers/marie";

    fn recovery() -> WorkerRecovery {
        serde_json::from_value(json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
            "metadata": {"name": "marie-1", "namespace": "default", "generation": 1},
            "spec": {"workerRef": {"name": "marie"}}
        }))
        .unwrap()
    }

    /// A context whose API server knows the Worker `marie` (when `worker_exists`) with its
    /// shared root at `root`, and whose operator allows the shared roots under `allowed`.
    fn context(
        worker_exists: bool,
        root: &std::path::Path,
        allowed: &[std::path::PathBuf],
    ) -> (Context, Arc<std::sync::Mutex<Vec<mock_api::Recorded>>>) {
        let mut worker = testing::worker();
        worker.spec.shared_root = root.display().to_string();
        let (client, requests) =
            mock_api::client(move |method, path, body: &Value| match (method, path) {
                (&Method::GET, WORKER) if worker_exists => {
                    (200, serde_json::to_value(&worker).unwrap())
                }
                (&Method::PATCH, RECOVERY_STATUS) => {
                    let mut object = serde_json::to_value(recovery()).unwrap();
                    object["status"] = body["status"].clone();
                    (200, object)
                }
                (&Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events") => {
                    (201, body.clone())
                }
                _ => mock_api::not_found(path),
            });
        let fake = FakeRuntime::with_container(testing::exited(3));
        let ctx = Context::new(
            client,
            Arc::new(fake),
            Arc::new(FakeHost(Ok(String::new()))),
            Arc::new(Metrics::default()),
            AllowedRoots::new(allowed).unwrap(),
        );
        (ctx, requests)
    }

    fn last_status(requests: &std::sync::Mutex<Vec<mock_api::Recorded>>) -> Value {
        let recorded = requests.lock().unwrap();
        let patch = recorded
            .iter()
            .rev()
            .find(|r| r.method == Method::PATCH)
            .expect("a status patch");
        patch.body["status"].clone()
    }

    #[tokio::test]
    async fn a_missing_worker_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, requests) = context(false, dir.path(), &[dir.path().into()]);
        let action = run_steps(&recovery(), &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(WORKER_WAIT));
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Pending");
        assert_eq!(status["conditions"][0]["reason"], "WorkerNotFound");
    }

    #[tokio::test]
    async fn a_diagnosis_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, requests) = context(true, dir.path(), &[dir.path().into()]);
        run_steps(&recovery(), &ctx).await.unwrap();
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Succeeded");
        assert_eq!(status["conditions"][0]["type"], DIAGNOSED);
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(
            status["diagnosis"]["verdict"]["topCause"],
            "ApplicationCrash"
        );
        assert!(status["completionTime"].is_string());
        let recorded = requests.lock().unwrap().clone();
        let event = recorded
            .iter()
            .find(|r| r.body["reason"] == "Diagnosed")
            .expect("a Diagnosed event");
        assert!(event.body["note"]
            .as_str()
            .unwrap()
            .contains("ApplicationCrash"));

        // The finished run, as the watch brings it back, is not run again.
        let mut done = recovery();
        done.status = Some(serde_json::from_value(status).unwrap());
        let before = requests.lock().unwrap().len();
        assert_eq!(
            run_steps(&done, &ctx).await.unwrap(),
            Action::await_change()
        );
        assert_eq!(
            requests.lock().unwrap().len(),
            before,
            "no request for a finished run"
        );
    }

    #[tokio::test]
    async fn a_refused_worker_fails_the_run_without_a_diagnosis() {
        let allowed = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let (ctx, requests) = context(true, outside.path(), &[allowed.path().into()]);
        assert_eq!(
            run_steps(&recovery(), &ctx).await.unwrap(),
            Action::await_change()
        );
        let status = last_status(&requests);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["conditions"][0]["reason"], "SharedRootNotAllowed");
        assert!(status.get("diagnosis").is_none(), "{status}");
        let recorded = requests.lock().unwrap().clone();
        assert!(recorded
            .iter()
            .any(|r| r.body["reason"] == "SharedRootNotAllowed" && r.body["type"] == "Warning"));
    }
}
