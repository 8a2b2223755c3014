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
