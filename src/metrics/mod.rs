//! Prometheus metrics: the operator's own (labelled by controller) and the per-worker series
//! (labelled `namespace` and `worker`, see [`workers`]).

pub mod workers;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus::{
    core::Collector, exponential_buckets, histogram_opts, opts, Encoder, HistogramVec,
    IntCounterVec, Registry, TextEncoder,
};

pub use workers::{
    RiskReading, RunOutcome, TaskCounts, Usage, WorkerKey, WorkerSeries, WorkerSnapshot,
};

/// Buckets of the per-worker durations (seconds): from a restart to a long escalation.
const WORKER_DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Metrics shared by every controller, labelled by controller name, and the per-worker series.
pub struct Metrics {
    registry: Registry,
    /// What the Worker controller last saw of each Worker.
    pub workers: Arc<WorkerSeries>,
    run_duration: HistogramVec,
    time_to_healthy: HistogramVec,
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
        let workers = Arc::new(WorkerSeries::default());
        let per_worker = |name: &str, help: &str| {
            HistogramVec::new(
                histogram_opts!(name, help, WORKER_DURATION_BUCKETS.to_vec()),
                &["namespace", "worker"],
            )
            .expect("valid metric")
        };
        let run_duration = per_worker(
            "workerrecovery_worker_recovery_duration_seconds",
            "Duration of finished recovery runs, from start to completion",
        );
        let time_to_healthy = per_worker(
            "workerrecovery_worker_time_to_healthy_seconds",
            "Time from a Worker's failure (Ready turned False) to Healthy again",
        );
        for m in [
            Box::new(ArcCollector(workers.clone())) as Box<dyn prometheus::core::Collector>,
            Box::new(run_duration.clone()),
            Box::new(time_to_healthy.clone()),
            Box::new(reconciliations.clone()),
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
            workers,
            run_duration,
            time_to_healthy,
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

    /// Count a finished recovery run of `worker` and its duration.
    pub fn record_run(&self, worker: WorkerKey, outcome: RunOutcome, took: Duration) {
        self.run_duration
            .with_label_values(&[&worker.namespace, &worker.worker])
            .observe(took.as_secs_f64());
        self.workers.record_run(worker, outcome);
    }

    /// Create `worker`'s histogram series, empty, at the first look: its first observation is
    /// then an increase that `rate()` and `increase()` see.
    pub fn track(&self, worker: &WorkerKey) {
        for h in [&self.run_duration, &self.time_to_healthy] {
            h.with_label_values(&[&worker.namespace, &worker.worker]);
        }
    }

    /// `worker` is Healthy again, `took` after it failed.
    pub fn record_healthy_after(&self, worker: &WorkerKey, took: Duration) {
        self.time_to_healthy
            .with_label_values(&[&worker.namespace, &worker.worker])
            .observe(took.as_secs_f64());
    }

    /// Drop the series of every Worker whose `namespace/name` is not in `live`.
    pub fn forget_workers_but(&self, live: &HashSet<String>) {
        let mut gone = self.workers.forget_all_but(live);
        // A Worker may have histogram series and no snapshot (a run of a Worker never seen).
        let histogram_keys = |h: &HistogramVec| {
            h.collect()
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|m| {
                    let label = |n: &str| {
                        m.get_label()
                            .iter()
                            .find(|l| l.name() == n)
                            .map(|l| l.value().to_string())
                            .unwrap_or_default()
                    };
                    WorkerKey::new(label("namespace"), label("worker"))
                })
                .collect::<Vec<_>>()
        };
        for h in [&self.run_duration, &self.time_to_healthy] {
            gone.extend(
                histogram_keys(h)
                    .into_iter()
                    .filter(|k| !live.contains(&k.path())),
            );
        }
        for key in gone {
            for h in [&self.run_duration, &self.time_to_healthy] {
                let _ = h.remove_label_values(&[&key.namespace, &key.worker]);
            }
        }
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

/// Registers the shared [`WorkerSeries`] (the registry takes its collectors by value).
struct ArcCollector(Arc<WorkerSeries>);

impl prometheus::core::Collector for ArcCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
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
