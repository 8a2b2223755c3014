//! The runbook's "Monitoring During Recovery": scrape the worker's `active_tasks` and
//! `task_failed_total` on an interval and keep the latest values and how they moved.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    crd::monitoring::MetricsWatch,
    http::{HttpClient, HttpError},
    observe::prometheus_text::{self, Parsed},
};

/// How long one scrape may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// The two task metrics of one scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TaskMetrics {
    pub active_tasks: Option<i64>,
    pub task_failed_total: Option<i64>,
}

/// Find the runbook's metrics in a scrape: the series named exactly `name`, else those whose
/// name ends in `_<name>` (a worker that prefixes its metrics, as `agent_active_tasks`),
/// summed over labels.
pub fn task_metrics(parsed: &Parsed) -> TaskMetrics {
    let find = |name: &str| {
        parsed.sum(name).or_else(|| {
            let suffix = format!("_{name}");
            let mut values = parsed
                .samples
                .iter()
                .filter(|s| s.name.ends_with(&suffix))
                .map(|s| s.value)
                .peekable();
            values.peek()?;
            Some(values.sum::<f64>())
        })
    };
    let count = |v: f64| v.is_finite().then(|| v.round() as i64);
    TaskMetrics {
        active_tasks: find("active_tasks").and_then(count),
        task_failed_total: find("task_failed_total").and_then(count),
    }
}

/// Why a scrape gave no task metrics; its text is what the status' `lastError` says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// No answer: an invalid or forbidden URL, no connection, a timeout.
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("answered with status {0}")]
    Status(u16),
    /// An answer without either series (lines that do not parse are skipped, so a page of
    /// nothing but bad lines ends here too).
    #[error("the endpoint answered without active_tasks or task_failed_total")]
    NoTaskMetrics,
}

/// Scrape `url` once.
pub async fn scrape(http: &HttpClient, url: &str) -> Result<TaskMetrics, ScrapeError> {
    let page = http
        .get(url, SCRAPE_TIMEOUT, prometheus_text::MAX_PAGE_BYTES)
        .await?;
    if page.status != 200 {
        return Err(ScrapeError::Status(page.status));
    }
    let parsed = prometheus_text::parse(&String::from_utf8_lossy(&page.body));
    let metrics = task_metrics(&parsed);
    if metrics.active_tasks.is_none() && metrics.task_failed_total.is_none() {
        return Err(ScrapeError::NoTaskMetrics);
    }
    Ok(metrics)
}

/// Whether the watch is due for a scrape at `now`, `interval` after the last one.
pub fn due(watch: Option<&MetricsWatch>, interval: Duration, now: Timestamp) -> bool {
    match watch.and_then(|w| w.last_scrape_time.as_ref()) {
        None => true,
        Some(last) => now.duration_since(last.0).unsigned_abs() >= interval,
    }
}

/// Fold one scrape into the watch. The first values seen are the baseline; a
/// `task_failed_total` lower than the last one means the worker restarted and its counter
/// began again from zero, so the new value is all increase (Prometheus' `increase()`). An
/// error is written as text into `last_error`.
pub fn record(watch: &mut MetricsWatch, scrape: Result<TaskMetrics, ScrapeError>, now: Timestamp) {
    watch.last_scrape_time = Some(Time(now));
    let m = match scrape {
        Ok(m) => m,
        Err(e) => {
            watch.last_error = Some(e.to_string());
            return;
        }
    };
    watch.last_error = None;
    watch.scrapes = watch.scrapes.saturating_add(1);
    if let Some(active) = m.active_tasks {
        watch.active_tasks_at_start.get_or_insert(active);
        watch.active_tasks = Some(active);
    }
    if let Some(total) = m.task_failed_total {
        let rise = match watch.task_failed_total {
            Some(last) if total >= last => total - last,
            Some(_) => total.max(0),
            None => 0,
        };
        watch.task_failed_increase = watch.task_failed_increase.saturating_add(rise);
        watch.task_failed_total = Some(total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        http::testing::{client, serve, Answer},
        observe::prometheus_text as prometheus,
    };

    #[tokio::test]
    async fn a_scrape_reads_the_task_metrics_or_says_why_not() {
        let server = serve(vec![
            Answer::status(200).body("active_tasks 2\ntask_failed_total 5\n"),
            Answer::status(200).body("up 1\n"),
            Answer::status(503),
        ])
        .await;
        let url = format!("{}/metrics", server.url);
        assert_eq!(
            scrape(&client(), &url).await,
            Ok(TaskMetrics {
                active_tasks: Some(2),
                task_failed_total: Some(5)
            })
        );
        let missing = scrape(&client(), &url).await.unwrap_err();
        assert_eq!(missing, ScrapeError::NoTaskMetrics);
        assert!(missing.to_string().contains("without active_tasks"));
        let refused = scrape(&client(), &url).await.unwrap_err();
        assert_eq!(refused, ScrapeError::Status(503));
        assert_eq!(refused.to_string(), "answered with status 503");
        let invalid = scrape(&client(), "ftp://x/metrics").await.unwrap_err();
        assert!(matches!(
            invalid,
            ScrapeError::Http(HttpError::InvalidUrl(_))
        ));
        assert_eq!(
            invalid.to_string(),
            "invalid URL: only http:// and https:// URLs are supported"
        );
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn metrics(active: i64, failed: i64) -> Result<TaskMetrics, ScrapeError> {
        Ok(TaskMetrics {
            active_tasks: Some(active),
            task_failed_total: Some(failed),
        })
    }

    #[test]
    fn increase_counts_rises_and_survives_a_counter_reset() {
        let mut w = MetricsWatch::default();
        record(&mut w, metrics(1, 4), at(0));
        assert_eq!(
            w.task_failed_increase, 0,
            "the first scrape is the baseline"
        );
        record(&mut w, metrics(1, 6), at(10));
        assert_eq!(w.task_failed_increase, 2);
        // The worker restarted: its counter starts again at 0 and reached 3.
        record(&mut w, metrics(0, 3), at(20));
        assert_eq!(w.task_failed_increase, 5);
        let refused = HttpError::Connect {
            origin: "http://10.0.0.1:9100".into(),
            reason: "Connection refused".into(),
        };
        record(&mut w, Err(refused.into()), at(30));
        assert_eq!(
            w.last_error.as_deref(),
            Some("cannot connect to http://10.0.0.1:9100: Connection refused")
        );
        assert_eq!(
            w.task_failed_total,
            Some(3),
            "an error keeps the last values"
        );
        record(&mut w, metrics(2, 4), at(40));
        assert_eq!(w.task_failed_increase, 6);
        assert_eq!(w.last_error, None);
        assert_eq!(
            (w.active_tasks_at_start, w.active_tasks),
            (Some(1), Some(2))
        );
        assert_eq!(w.scrapes, 4);
        assert_eq!(w.last_scrape_time, Some(Time(at(40))));
    }

    #[test]
    fn a_scrape_is_due_after_the_interval() {
        let mut w = MetricsWatch::default();
        let ten = Duration::from_secs(10);
        assert!(due(None, ten, at(0)));
        assert!(due(Some(&w), ten, at(0)));
        record(&mut w, metrics(0, 0), at(0));
        assert!(!due(Some(&w), ten, at(9)));
        assert!(due(Some(&w), ten, at(10)));
    }

    #[test]
    fn metrics_are_found_by_name_then_by_suffix() {
        let p = prometheus::parse(
            "active_tasks 2\ntask_failed_total{reason=\"a\"} 3\ntask_failed_total{reason=\"b\"} 4\n",
        );
        assert_eq!(
            task_metrics(&p),
            TaskMetrics {
                active_tasks: Some(2),
                task_failed_total: Some(7)
            }
        );
        let prefixed = prometheus::parse("agent_active_tasks 1\nagent_task_failed_total 9\n");
        assert_eq!(
            task_metrics(&prefixed),
            TaskMetrics {
                active_tasks: Some(1),
                task_failed_total: Some(9)
            }
        );
        // A name that merely contains the word is not the metric.
        let other = prometheus::parse("inactive_tasksx 5\n");
        assert_eq!(task_metrics(&other), TaskMetrics::default());
    }
}
