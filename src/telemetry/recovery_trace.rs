//! One OpenTelemetry trace per recovery run, kept across operator restarts.
//!
//! A run lasts longer than one reconcile and may outlive the operator process, so its spans
//! cannot be held open in memory. Instead the ids are chosen up front and written into the
//! run's status (the trace id and the root span's id when the run starts, a step's span id
//! when the step first starts); each span is emitted once, when what it covers has finished,
//! with the recorded ids and times. An operator restarted mid-run emits the remaining spans
//! under the same trace. The SDK draws ids itself, so [`PinnedIds`] hands it the recorded ones.
//!
//! Work done inside a step is traced with ordinary `tracing` spans of target [`TARGET`] whose
//! parent is set to the step's span ([`remote_context`]); `tracing-opentelemetry` exports them.

use std::{cell::Cell, time::SystemTime};

use opentelemetry::{
    trace::{
        SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer,
    },
    Context, KeyValue,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use super::SCOPE;
use crate::crd::worker_recovery::TraceRef;

/// `tracing` target of the spans that are exported as part of a recovery trace.
pub const TARGET: &str = "wro::recovery_trace";

thread_local! {
    static PINNED: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

/// Random ids, except for the next span built on this thread after [`emit`] pinned its ids.
#[derive(Debug, Default)]
pub struct PinnedIds;

impl IdGenerator for PinnedIds {
    fn new_trace_id(&self) -> TraceId {
        let (trace, span) = PINNED.with(Cell::get);
        match trace {
            Some(t) => {
                PINNED.with(|p| p.set((None, span)));
                t
            }
            None => RandomIdGenerator::default().new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        let (trace, span) = PINNED.with(Cell::get);
        match span {
            Some(s) => {
                PINNED.with(|p| p.set((trace, None)));
                s
            }
            None => RandomIdGenerator::default().new_span_id(),
        }
    }
}

/// A fresh trace: a new trace id and the id of its root span.
pub fn new_trace() -> TraceRef {
    let ids = RandomIdGenerator::default();
    TraceRef {
        trace_id: format!("{:032x}", ids.new_trace_id()),
        span_id: format!("{:016x}", ids.new_span_id()),
    }
}

/// A fresh span id, 16 lowercase hex digits.
pub fn new_span_id() -> String {
    format!("{:016x}", RandomIdGenerator::default().new_span_id())
}

fn ids(trace_id: &str, span_id: &str) -> Option<(TraceId, SpanId)> {
    let t = TraceId::from_hex(trace_id).ok()?;
    let s = SpanId::from_hex(span_id).ok()?;
    (t != TraceId::INVALID && s != SpanId::INVALID).then_some((t, s))
}

/// A context whose parent is the recorded span `span_id` of trace `trace_id`, for spans that
/// belong under it. `None` when the ids are not valid W3C ids.
pub fn remote_context(trace_id: &str, span_id: &str) -> Option<Context> {
    let (t, s) = ids(trace_id, span_id)?;
    Some(Context::new().with_remote_span_context(SpanContext::new(
        t,
        s,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )))
}

/// The W3C `traceparent` naming span `span_id` of trace `trace_id`.
pub fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

/// `(trace id, span id)` of a W3C `traceparent`, when it is one.
pub fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, _flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    ids(trace, span)?;
    let lower = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    (lower(trace) && lower(span)).then(|| (trace.to_string(), span.to_string()))
}

/// A finished span to emit with recorded ids and times.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for the root span of a trace.
    pub parent_span_id: Option<String>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// `None`: status OK. `Some(message)`: status ERROR, and the error recorded as an
    /// `exception` event.
    pub error: Option<String>,
    pub events: Vec<(String, SystemTime, Vec<KeyValue>)>,
}

/// Emit `record` through the global tracer provider (a no-op when export is off). Spans with
/// ids that are not valid W3C ids are dropped.
pub fn emit(record: SpanRecord) {
    emit_to(&opentelemetry::global::tracer(SCOPE), record)
}

/// [`emit`] through `tracer`, whose provider must draw ids from [`PinnedIds`].
pub fn emit_to<T: Tracer>(tracer: &T, record: SpanRecord)
where
    T::Span: Send + Sync + 'static,
{
    let Some((trace_id, span_id)) = ids(&record.trace_id, &record.span_id) else {
        tracing::warn!(span = %record.name, "not emitting a span with invalid recorded ids");
        return;
    };
    let parent = match &record.parent_span_id {
        Some(p) => match remote_context(&record.trace_id, p) {
            Some(cx) => cx,
            None => {
                tracing::warn!(span = %record.name, "not emitting a span with an invalid parent id");
                return;
            }
        },
        None => Context::new(),
    };
    // The root span takes the recorded trace id; a child inherits it from its parent.
    let pinned_trace = record.parent_span_id.is_none().then_some(trace_id);
    PINNED.with(|p| p.set((pinned_trace, Some(span_id))));
    let span = tracer
        .span_builder(record.name)
        .with_kind(SpanKind::Internal)
        .with_start_time(record.start)
        .with_attributes(record.attributes)
        .start_with_context(tracer, &parent);
    PINNED.with(|p| p.set((None, None)));
    let cx = Context::current_with_span(span);
    let span = cx.span();
    for (name, at, attributes) in record.events {
        span.add_event_with_timestamp(name, at, attributes);
    }
    match record.error {
        None => span.set_status(Status::Ok),
        Some(message) => {
            span.add_event_with_timestamp(
                "exception",
                record.end,
                vec![
                    KeyValue::new("exception.type", "RecoveryError"),
                    KeyValue::new("exception.message", message.clone()),
                ],
            );
            span.set_status(Status::error(message));
        }
    }
    span.end_with_timestamp(record.end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_junk() {
        let t = new_trace();
        assert_eq!(t.trace_id.len(), 32);
        assert_eq!(t.span_id.len(), 16);
        let header = traceparent(&t.trace_id, &t.span_id);
        assert_eq!(
            parse_traceparent(&header),
            Some((t.trace_id.clone(), t.span_id.clone()))
        );
        for junk in [
            "",
            "00-zz-11-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(parse_traceparent(junk), None, "{junk}");
        }
    }

    #[test]
    fn emitted_spans_keep_the_recorded_ids_times_and_parent() {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_id_generator(PinnedIds)
            .build();
        let tracer = provider.tracer(SCOPE);
        let run = new_trace();
        let step = new_span_id();
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let t1 = t0 + std::time::Duration::from_secs(3);
        emit_to(
            &tracer,
            SpanRecord {
                name: "clean_state".into(),
                trace_id: run.trace_id.clone(),
                span_id: step.clone(),
                parent_span_id: Some(run.span_id.clone()),
                start: t0,
                end: t1,
                attributes: vec![KeyValue::new("step.requeued", 7)],
                error: Some("disk full".into()),
                events: vec![],
            },
        );
        emit_to(
            &tracer,
            SpanRecord {
                name: "worker_recovery".into(),
                trace_id: run.trace_id.clone(),
                span_id: run.span_id.clone(),
                parent_span_id: None,
                start: t0,
                end: t1,
                attributes: vec![],
                error: None,
                events: vec![("recovery_completed".into(), t1, vec![])],
            },
        );
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 2);
        let (child, root) = (&spans[0], &spans[1]);
        assert_eq!(
            format!("{:032x}", child.span_context.trace_id()),
            run.trace_id
        );
        assert_eq!(format!("{:016x}", child.span_context.span_id()), step);
        assert_eq!(format!("{:016x}", child.parent_span_id), run.span_id);
        assert_eq!((child.start_time, child.end_time), (t0, t1));
        assert!(matches!(child.status, Status::Error { .. }));
        assert_eq!(child.events.events[0].name, "exception");
        assert_eq!(
            format!("{:032x}", root.span_context.trace_id()),
            run.trace_id
        );
        assert_eq!(format!("{:016x}", root.span_context.span_id()), run.span_id);
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(root.status, Status::Ok);
        assert_eq!(root.events.events[0].name, "recovery_completed");
    }

    #[test]
    fn pinned_ids_are_used_once_then_random() {
        let g = PinnedIds;
        let t = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let s = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        PINNED.with(|p| p.set((Some(t), Some(s))));
        assert_eq!(g.new_span_id(), s);
        assert_eq!(g.new_trace_id(), t);
        assert_ne!(g.new_span_id(), s);
        assert_ne!(g.new_trace_id(), t);
    }
}
