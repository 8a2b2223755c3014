//! The run's trace (runbook "Trace Recovery Process"): a root span `worker_recovery` with one
//! child per step, named as the runbook draws them, built from what `status` recorded. See
//! `crate::telemetry::recovery_trace` for why the spans are emitted from status.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use opentelemetry::KeyValue;
use tracing::{field, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    crd::worker_recovery::{
        RecoveryPhase, StepName, StepState, WorkerRecovery, WorkerRecoveryStatus,
    },
    telemetry::recovery_trace::{self, SpanRecord, TARGET},
};

/// The runbook's span name of a step.
pub fn span_name(step: StepName) -> &'static str {
    match step {
        StepName::Diagnose => "check_crash_reason",
        StepName::CleanState => "clean_state",
        StepName::Restart => "restart_worker",
        StepName::DebugStart => "start_debug_worker",
        StepName::VerifyHealth => "verify_health",
        StepName::Resume => "resume",
    }
}

/// Attributes every span of the run carries.
fn run_attributes(rec: &WorkerRecovery) -> Vec<KeyValue> {
    vec![
        KeyValue::new("worker.name", rec.spec.worker_ref.name.clone()),
        KeyValue::new("recovery.name", rec.name_any()),
        KeyValue::new("k8s.namespace.name", rec.namespace().unwrap_or_default()),
        KeyValue::new("recovery.mode", format!("{:?}", rec.spec.mode)),
    ]
}

/// Root cause as the diagnosis ranked it, and the failure reason written into tasks.
fn cause_attributes(status: &WorkerRecoveryStatus) -> Vec<KeyValue> {
    let mut out = Vec::new();
    if let Some(top) = status
        .diagnosis
        .as_ref()
        .and_then(|d| d.verdict.causes.first())
    {
        out.push(KeyValue::new(
            "recovery.root_cause",
            format!("{:?}", top.cause),
        ));
    }
    if let Some(reason) = &status.failure_reason {
        out.push(KeyValue::new("recovery.failure_reason", reason.clone()));
    }
    out
}

/// A `tracing` span for one attempt of step `i`, a child of the step's span in the run's trace,
/// or a disabled span when the attempt is not traced (`traced` false: a later poll).
pub fn attempt_span(status: &WorkerRecoveryStatus, i: usize, traced: bool) -> Span {
    let step = &status.steps[i];
    let (Some(trace), Some(step_span), true) = (&status.trace, &step.span_id, traced) else {
        return Span::none();
    };
    let Some(parent) = recovery_trace::remote_context(&trace.trace_id, step_span) else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: TARGET,
        "step_attempt",
        otel.name = format!("{} attempt {}", span_name(step.name), step.attempt),
        step.attempt = step.attempt,
        otel.status_code = field::Empty,
        otel.status_message = field::Empty,
    );
    // Fails only when no OpenTelemetry layer is installed (export off): nothing to link then.
    let _ = span.set_parent(parent);
    span
}

/// Mark an attempt span as failed with `message`.
pub fn attempt_failed(span: &Span, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_message", message);
}

/// The span of step `i`, once it finished.
pub fn step_span(
    rec: &WorkerRecovery,
    status: &WorkerRecoveryStatus,
    i: usize,
) -> Option<SpanRecord> {
    let trace = status.trace.as_ref()?;
    let step = &status.steps[i];
    let end = step.finish_time.as_ref()?.0;
    let start = step.start_time.as_ref().map_or(end, |t| t.0);
    let mut attributes = run_attributes(rec);
    attributes.push(KeyValue::new("step.attempt", i64::from(step.attempt)));
    attributes.push(KeyValue::new("step.state", format!("{:?}", step.state)));
    if let Some(m) = &step.message {
        attributes.push(KeyValue::new("step.message", m.clone()));
    }
    for (k, v) in &step.figures {
        attributes.push(KeyValue::new(format!("step.{k}"), *v));
    }
    if step.name == StepName::Diagnose {
        attributes.extend(cause_attributes(status));
    }
    Some(SpanRecord {
        name: span_name(step.name).into(),
        trace_id: trace.trace_id.clone(),
        span_id: step.span_id.clone()?,
        parent_span_id: Some(trace.span_id.clone()),
        start: start.into(),
        end: end.into(),
        attributes,
        error: (step.state == StepState::Failed).then(|| step.message.clone().unwrap_or_default()),
        events: vec![],
    })
}

/// The root span `worker_recovery`, once the run finished.
pub fn root_span(rec: &WorkerRecovery, status: &WorkerRecoveryStatus) -> Option<SpanRecord> {
    let trace = status.trace.as_ref()?;
    let phase = status.phase?;
    if !phase.is_terminal() {
        return None;
    }
    let end = status
        .completion_time
        .as_ref()
        .map_or_else(Timestamp::now, |t| t.0);
    let start = status.start_time.as_ref().map_or(end, |t| t.0);
    let mut attributes = run_attributes(rec);
    attributes.extend([
        KeyValue::new("recovery.type", "crash"),
        KeyValue::new("recovery.timestamp", start.to_string()),
        KeyValue::new("recovery.dry_run", rec.spec.dry_run),
        KeyValue::new("recovery.phase", format!("{phase:?}")),
    ]);
    attributes.extend(cause_attributes(status));
    let error = match phase {
        RecoveryPhase::Succeeded => None,
        _ => Some(
            status
                .steps
                .iter()
                .find(|s| s.state == StepState::Failed)
                .map(|s| {
                    format!(
                        "step {:?} failed: {}",
                        s.name,
                        s.message.clone().unwrap_or_default()
                    )
                })
                .or_else(|| {
                    status
                        .conditions
                        .iter()
                        .find(|c| c.type_ == super::plan::COMPLETED)
                        .map(|c| c.message.clone())
                })
                .unwrap_or_else(|| "the run failed".into()),
        ),
    };
    let events = match phase {
        RecoveryPhase::Succeeded => vec![("recovery_completed".to_string(), end.into(), vec![])],
        _ => vec![],
    };
    Some(SpanRecord {
        name: "worker_recovery".into(),
        trace_id: trace.trace_id.clone(),
        span_id: trace.span_id.clone(),
        parent_span_id: None,
        start: start.into(),
        end: end.into(),
        attributes,
        error,
        events,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::crd::worker_recovery::{StepStatus, TraceRef};

    fn rec() -> WorkerRecovery {
        serde_json::from_value(json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "WorkerRecovery",
            "metadata": {"name": "marie-1", "namespace": "default"},
            "spec": {"workerRef": {"name": "marie"}, "mode": "Clean"}
        }))
        .unwrap()
    }

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + s).unwrap())
    }

    fn status(clean_state: StepState) -> WorkerRecoveryStatus {
        let mut step = StepStatus::pending(StepName::CleanState);
        step.state = clean_state;
        step.start_time = Some(at(1));
        step.finish_time = Some(at(3));
        step.attempt = 2;
        step.span_id = Some("00f067aa0ba902b7".into());
        step.message = Some("requeued 4 task(s)".into());
        step.figures.insert("requeued".into(), 4);
        WorkerRecoveryStatus {
            phase: Some(match clean_state {
                StepState::Failed => RecoveryPhase::Failed,
                _ => RecoveryPhase::Succeeded,
            }),
            start_time: Some(at(0)),
            completion_time: Some(at(5)),
            failure_reason: Some("oom".into()),
            trace: Some(TraceRef {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: "a3ce929d0e0e4736".into(),
            }),
            steps: vec![step],
            ..Default::default()
        }
    }

    fn attr(span: &SpanRecord, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn a_step_span_sits_under_the_root_with_its_recorded_id_times_and_figures() {
        let st = status(StepState::Succeeded);
        let span = step_span(&rec(), &st, 0).unwrap();
        assert_eq!(span.name, "clean_state");
        assert_eq!(span.span_id, "00f067aa0ba902b7");
        assert_eq!(span.parent_span_id.as_deref(), Some("a3ce929d0e0e4736"));
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.start, std::time::SystemTime::from(at(1).0));
        assert_eq!(span.end, std::time::SystemTime::from(at(3).0));
        assert_eq!(attr(&span, "step.requeued").as_deref(), Some("4"));
        assert_eq!(attr(&span, "step.attempt").as_deref(), Some("2"));
        assert_eq!(attr(&span, "worker.name").as_deref(), Some("marie"));
        assert_eq!(attr(&span, "recovery.mode").as_deref(), Some("Clean"));
        assert_eq!(span.error, None);
        // A step that has not finished has no span yet.
        let mut running = st.clone();
        running.steps[0].finish_time = None;
        assert!(step_span(&rec(), &running, 0).is_none());
    }

    #[test]
    fn the_root_span_ends_with_the_run_ok_with_its_event_or_error_with_the_failed_step() {
        let ok = root_span(&rec(), &status(StepState::Succeeded)).unwrap();
        assert_eq!(ok.name, "worker_recovery");
        assert_eq!(ok.parent_span_id, None);
        assert_eq!(ok.span_id, "a3ce929d0e0e4736");
        assert_eq!((ok.start, ok.end), (at(0).0.into(), at(5).0.into()));
        assert_eq!(ok.error, None);
        assert_eq!(ok.events[0].0, "recovery_completed");
        assert_eq!(attr(&ok, "recovery.failure_reason").as_deref(), Some("oom"));
        assert_eq!(attr(&ok, "recovery.type").as_deref(), Some("crash"));

        let failed = root_span(&rec(), &status(StepState::Failed)).unwrap();
        assert!(failed.events.is_empty());
        assert_eq!(
            failed.error.as_deref(),
            Some("step CleanState failed: requeued 4 task(s)")
        );
        // A run still going has no root span yet.
        let mut running = status(StepState::Running);
        running.phase = Some(RecoveryPhase::Running);
        assert!(root_span(&rec(), &running).is_none());
    }
}
