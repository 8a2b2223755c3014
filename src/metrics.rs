//! Prometheus metrics of the operator.

use std::time::Instant;

use prometheus::{
    exponential_buckets, histogram_opts, opts, Encoder, HistogramVec, IntCounterVec, Registry,
    TextEncoder,
};

/// Metrics shared by every controller, labelled by controller name.
pub struct Metrics {
    registry: Registry,
    reconciliations: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    restarts: IntCounterVec,
    docker_events: IntCounterVec,
    event_stream_breaks: prometheus::IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            opts!(
                "workerrecovery_reconciliations_total",
                "Reconciliations started, per controller"
            ),
            &["controller"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            opts!(
                "workerrecovery_reconcile_errors_total",
                "Reconciliations that failed, per controller and error kind"
            ),
            &["controller", "error"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            histogram_opts!(
                "workerrecovery_reconcile_duration_seconds",
                "Duration of reconciliations, per controller",
                exponential_buckets(0.001, 2.0, 14).expect("valid buckets")
            ),
            &["controller"],
        )
        .expect("valid metric");
        let restarts = IntCounterVec::new(
            opts!(
                "workerrecovery_container_restarts_total",
                "Worker containers the operator started again, per controller"
            ),
            &["controller"],
        )
        .expect("valid metric");
        let docker_events = IntCounterVec::new(
            opts!(
                "workerrecovery_docker_events_total",
                "Docker events about consenting containers, per action"
            ),
            &["action"],
        )
        .expect("valid metric");
        let event_stream_breaks = prometheus::IntCounter::new(
            "workerrecovery_docker_event_stream_breaks_total",
            "Times the Docker event stream ended or failed and was followed again",
        )
        .expect("valid metric");
        for m in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(restarts.clone()),
            Box::new(docker_events.clone()),
            Box::new(event_stream_breaks.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        Self {
            registry,
            reconciliations,
            failures,
            duration,
            restarts,
            docker_events,
            event_stream_breaks,
        }
    }
}

/// Observes the duration of one reconcile when dropped.
pub struct ReconcileTimer {
    histogram: prometheus::Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Count a reconcile of `controller` and time it until the returned guard drops.
    pub fn reconcile_timer(&self, controller: &str) -> ReconcileTimer {
        self.reconciliations.with_label_values(&[controller]).inc();
        ReconcileTimer {
            histogram: self.duration.with_label_values(&[controller]),
            start: Instant::now(),
        }
    }

    pub fn reconcile_failure(&self, controller: &str, error: &str) {
        self.failures.with_label_values(&[controller, error]).inc();
    }

    pub fn record_restart(&self, controller: &str) {
        self.restarts.with_label_values(&[controller]).inc();
    }

    pub fn record_docker_event(&self, action: &str) {
        // `health_status: healthy` and the like count as one action.
        let action = action.split(':').next().unwrap_or(action).trim();
        self.docker_events.with_label_values(&[action]).inc();
    }

    pub fn record_event_stream_break(&self) {
        self.event_stream_breaks.inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_times_reconciles() {
        let m = Metrics::default();
        drop(m.reconcile_timer("worker"));
        m.reconcile_failure("worker", "docker_unavailable");
        m.record_restart("worker");
        let text = m.render();
        assert!(
            text.contains(r#"workerrecovery_reconciliations_total{controller="worker"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"workerrecovery_reconcile_errors_total{controller="worker",error="docker_unavailable"} 1"#
        ));
        assert!(text
            .contains(r#"workerrecovery_reconcile_duration_seconds_count{controller="worker"} 1"#));
        assert!(text.contains(r#"workerrecovery_container_restarts_total{controller="worker"} 1"#));
    }
}
