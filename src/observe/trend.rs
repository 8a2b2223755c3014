//! A resource's trend from its samples: the least-squares line over a window, as PromQL's
//! `predict_linear` fits it, and when that line reaches a limit.

use std::{collections::VecDeque, time::Duration};

use k8s_openapi::jiff::Timestamp;

/// One reading of a resource.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at: Timestamp,
    pub value: f64,
}

/// The readings of the last window, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(VecDeque<Sample>);

/// Fewer samples than this make no trend.
pub const MIN_SAMPLES: usize = 3;

impl Samples {
    /// Add `sample` and drop those older than `window` before it.
    pub fn push(&mut self, sample: Sample, window: Duration) {
        self.0.push_back(sample);
        while self
            .0
            .front()
            .is_some_and(|s| sample.at.duration_since(s.at).unsigned_abs() > window)
        {
            self.0.pop_front();
        }
    }

    /// When the last sample was taken.
    pub fn last_at(&self) -> Option<Timestamp> {
        self.0.back().map(|s| s.at)
    }

    pub fn latest(&self) -> Option<Sample> {
        self.0.back().copied()
    }

    /// The least-squares line through the samples, evaluated at `now`.
    pub fn trend(&self, now: Timestamp) -> Option<Trend> {
        fit(self.0.iter().copied(), now)
    }
}

/// A fitted line: its value at the time it was evaluated for, and its slope.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    /// The line's value now.
    pub now_value: f64,
    /// Units per second.
    pub per_second: f64,
    pub samples: usize,
    /// From the first sample to the last.
    pub span: Duration,
}

impl Trend {
    /// Seconds from now until the line reaches `limit`: 0 when it is there already, `None`
    /// when it does not grow.
    pub fn seconds_to(&self, limit: f64) -> Option<f64> {
        if self.now_value >= limit {
            return Some(0.0);
        }
        (self.per_second > 0.0).then(|| (limit - self.now_value) / self.per_second)
    }
}

/// Ordinary least squares of value against time (seconds relative to `now`, for precision),
/// intercept at `now`. `None` under [`MIN_SAMPLES`] or when all samples share one time.
pub fn fit(samples: impl IntoIterator<Item = Sample>, now: Timestamp) -> Option<Trend> {
    let points: Vec<(f64, f64)> = samples
        .into_iter()
        .map(|s| (s.at.duration_since(now).as_secs_f64(), s.value))
        .collect();
    let n = points.len();
    if n < MIN_SAMPLES {
        return None;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let (mut cov, mut var) = (0.0, 0.0);
    for (t, v) in &points {
        cov += (t - mean_t) * (v - mean_v);
        var += (t - mean_t) * (t - mean_t);
    }
    if var <= f64::EPSILON {
        return None;
    }
    let per_second = cov / var;
    let span = points[n - 1].0 - points[0].0;
    Some(Trend {
        now_value: mean_v - per_second * mean_t,
        per_second,
        samples: n,
        span: Duration::from_secs_f64(span.max(0.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now: Timestamp, seconds_ago: u64) -> Timestamp {
        now - Duration::from_secs(seconds_ago)
    }

    #[test]
    fn a_steady_leak_is_fitted_exactly_and_reaches_its_limit() {
        let now = Timestamp::now();
        // 4 MiB/s, 80 MiB now.
        let mib = 1024.0 * 1024.0;
        let samples = (0..6).map(|i| Sample {
            at: at(now, 10 - 2 * i),
            value: (40.0 + 8.0 * i as f64) * mib,
        });
        let t = fit(samples, now).unwrap();
        assert!((t.per_second - 4.0 * mib).abs() < 1.0, "{t:?}");
        assert!((t.now_value - 80.0 * mib).abs() < 1.0, "{t:?}");
        assert_eq!(t.samples, 6);
        assert_eq!(t.span, Duration::from_secs(10));
        let left = t.seconds_to(128.0 * mib).unwrap();
        assert!((left - 12.0).abs() < 1e-6, "{left}");
        // Past the limit already: zero.
        assert_eq!(t.seconds_to(64.0 * mib), Some(0.0));
    }

    #[test]
    fn flat_or_falling_memory_never_reaches_a_limit() {
        let now = Timestamp::now();
        let flat = (0..5).map(|i| Sample {
            at: at(now, 5 - i),
            value: 100.0,
        });
        assert_eq!(fit(flat, now).unwrap().seconds_to(200.0), None);
        let falling = (0..5).map(|i| Sample {
            at: at(now, 5 - i),
            value: 100.0 - i as f64,
        });
        assert_eq!(fit(falling, now).unwrap().seconds_to(200.0), None);
    }

    #[test]
    fn too_few_samples_or_one_instant_make_no_trend() {
        let now = Timestamp::now();
        let two = (0..2).map(|i| Sample {
            at: at(now, i),
            value: i as f64,
        });
        assert_eq!(fit(two, now), None);
        let same_time = (0..4).map(|i| Sample {
            at: now,
            value: i as f64,
        });
        assert_eq!(fit(same_time, now), None);
    }

    #[test]
    fn the_window_keeps_only_recent_samples() {
        let now = Timestamp::now();
        let mut s = Samples::default();
        for i in 0..10 {
            s.push(
                Sample {
                    at: at(now, 90 - 10 * i),
                    value: i as f64,
                },
                Duration::from_secs(30),
            );
        }
        // 0, 10, 20, 30 s ago.
        assert_eq!(s.0.len(), 4);
        assert_eq!(s.last_at(), Some(now));
        assert_eq!(s.latest().unwrap().value, 9.0);
    }
}
