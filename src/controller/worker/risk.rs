//! Failure prediction (runbook "Update Monitoring: implement predictive failure detection"):
//! the memory of a running container with a limit is sampled every
//! `prediction.sampleIntervalSeconds`, a least-squares trend over `windowSeconds` says when it
//! reaches the limit, and within `horizonSeconds` the Worker is `AtRisk`. The samples live in
//! this process only: after a restart the window fills again.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use tracing::debug;

use crate::{
    controller::{
        conditions::{self, ConditionState, ConditionStatus},
        Context,
    },
    crd::worker::{PredictionSpec, RiskResource, RiskStatus, Worker, WorkerStatus},
    metrics::Usage,
    observe::trend::{Sample, Samples, Trend, MIN_SAMPLES},
    runtime::ContainerInfo,
};

/// The condition of the prediction.
pub const AT_RISK: &str = "AtRisk";

/// A resource whose trend reaches its limit within the horizon.
#[derive(Clone, Debug, PartialEq)]
pub struct Risk {
    pub resource: RiskResource,
    pub trend: Trend,
    pub limit: i64,
    /// Seconds until the trend reaches the limit.
    pub seconds_to_limit: f64,
}

/// What this look's prediction found.
#[derive(Clone, Debug, PartialEq)]
pub struct RiskLook {
    /// The latest memory sample and the limit (for the metrics).
    pub memory: Option<Usage>,
    pub trend: Option<Trend>,
    pub risk: Option<Risk>,
    pub condition: ConditionState,
    /// When the next sample is due.
    pub next_sample: Option<Duration>,
}

/// Sample the container's memory when due and judge its trend; `None` when prediction is off.
pub async fn look(
    ctx: &Context,
    worker: &Worker,
    key: &str,
    container: Option<&ContainerInfo>,
    now: Timestamp,
) -> Option<RiskLook> {
    let spec = &worker.spec.prediction;
    if !spec.enabled {
        ctx.memory_samples.lock().unwrap().remove(key);
        return None;
    }
    let Some((c, limit)) = container
        .filter(|c| c.running)
        .and_then(|c| Some((c, c.memory_limit.filter(|l| *l > 0)?)))
    else {
        ctx.memory_samples.lock().unwrap().remove(key);
        return Some(not_predicted());
    };
    let interval = Duration::from_secs(u64::from(spec.sample_interval_seconds));
    let window = Duration::from_secs(u64::from(spec.window_seconds));
    let last = ctx
        .memory_samples
        .lock()
        .unwrap()
        .get(key)
        .and_then(Samples::last_at);
    if due(last, now, interval) {
        let stats = match ctx.runtime(worker) {
            Ok(runtime) => runtime.memory_stats(&c.id).await,
            Err(e) => Err(e),
        };
        match stats {
            Ok(m) => {
                let sample = Sample {
                    at: now,
                    value: m.usage_bytes as f64,
                };
                let mut all = ctx.memory_samples.lock().unwrap();
                all.entry(key.to_string()).or_default().push(sample, window);
            }
            Err(e) => debug!(error = %e, "no memory sample"),
        }
    }
    let samples = ctx.memory_samples.lock().unwrap().get(key).cloned()?;
    Some(judge(spec, &samples, limit, now))
}

/// Whether a sample is due, `last` taken at that time; a tenth of a second early counts, so
/// that a look requeued for the sample takes it.
fn due(last: Option<Timestamp>, now: Timestamp, interval: Duration) -> bool {
    last.is_none_or(|at| {
        now.duration_since(at).unsigned_abs() + Duration::from_millis(100) >= interval
    })
}

fn not_predicted() -> RiskLook {
    RiskLook {
        memory: None,
        trend: None,
        risk: None,
        condition: ConditionState {
            type_: AT_RISK,
            status: ConditionStatus::False,
            reason: "NotPredicted",
            message: "no running container with a memory limit to predict".into(),
        },
        next_sample: None,
    }
}

/// The prediction from the samples of the window: pure, for the tests.
pub fn judge(spec: &PredictionSpec, samples: &Samples, limit: i64, now: Timestamp) -> RiskLook {
    let interval = Duration::from_secs(u64::from(spec.sample_interval_seconds));
    let horizon = Duration::from_secs(u64::from(spec.horizon_seconds));
    let trend = samples.trend(now);
    let risk = trend.and_then(|t| {
        let seconds = t.seconds_to(limit as f64)?;
        (seconds <= horizon.as_secs_f64()).then_some(Risk {
            resource: RiskResource::Memory,
            trend: t,
            limit,
            seconds_to_limit: seconds,
        })
    });
    let next_sample = samples.last_at().map(|at| {
        interval.saturating_sub(now.duration_since(at).unsigned_abs()) + Duration::from_millis(20)
    });
    RiskLook {
        memory: samples.latest().map(|s| Usage {
            used: s.value,
            limit: Some(limit as f64),
        }),
        trend,
        condition: condition(trend.is_some(), risk.as_ref(), horizon),
        risk,
        next_sample,
    }
}

fn condition(has_trend: bool, risk: Option<&Risk>, horizon: Duration) -> ConditionState {
    let (status, reason, message) = match risk {
        Some(r) => (ConditionStatus::True, "MemoryTrend", describe(r)),
        None if !has_trend => (
            ConditionStatus::False,
            "CollectingSamples",
            format!("fewer than {MIN_SAMPLES} memory samples in the window"),
        ),
        None => (
            ConditionStatus::False,
            "NoTrendToLimit",
            format!(
                "at its trend, memory does not reach its limit within {} s",
                horizon.as_secs()
            ),
        ),
    };
    ConditionState {
        type_: AT_RISK,
        status,
        reason,
        message,
    }
}

/// `memory 96.0 MiB of 128.0 MiB, growing 4.0 MiB/s over the last 20 s (11 samples): at the
/// limit in about 8 s`.
pub fn describe(r: &Risk) -> String {
    let mib = |v: f64| v / (1024.0 * 1024.0);
    format!(
        "memory {:.1} MiB of {:.1} MiB, growing {:.1} MiB/s over the last {} s ({} samples): at the limit in about {:.0} s",
        mib(r.trend.now_value.max(0.0)),
        mib(r.limit as f64),
        mib(r.trend.per_second),
        r.trend.span.as_secs(),
        r.trend.samples,
        r.seconds_to_limit
    )
}

/// The status' record of a risk: since when (kept from the previous status while it lasts) and
/// when the limit is reached (to the second).
pub fn status(risk: &Risk, previous: Option<&WorkerStatus>, now: Timestamp) -> RiskStatus {
    let since = previous
        .and_then(|s| s.at_risk.as_ref())
        .filter(|r| r.resource == risk.resource)
        .and_then(|r| r.since.clone())
        .unwrap_or(Time(now));
    let predicted = now + Duration::from_secs(risk.seconds_to_limit.round() as u64);
    RiskStatus {
        resource: risk.resource,
        limit_bytes: risk.limit,
        predicted_time: Timestamp::from_second(predicted.as_second()).ok().map(Time),
        since: Some(since),
    }
}

/// Put this look's prediction in `status`: the `AtRisk` condition and, while at risk,
/// `atRisk`. Without a prediction (off, or the Worker not admitted) neither is there.
pub fn add(
    status: &mut WorkerStatus,
    previous: Option<&WorkerStatus>,
    look: Option<&RiskLook>,
    generation: Option<i64>,
    now: Timestamp,
) {
    status.conditions.retain(|c| c.type_ != AT_RISK);
    let Some(look) = look else {
        status.at_risk = None;
        return;
    };
    let before = previous.map_or(&[][..], |s| s.conditions.as_slice());
    let condition = std::slice::from_ref(&look.condition);
    status
        .conditions
        .extend(conditions::merge(before, condition, generation, now));
    status.at_risk = look.risk.as_ref().map(|r| self::status(r, previous, now));
}

/// The `AtRisk` condition's message when it turned True with `status`.
pub fn turned_at_risk(previous: Option<&WorkerStatus>, status: &WorkerStatus) -> Option<String> {
    let is_true = |s: &WorkerStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == AT_RISK && c.status == "True")
            .map(|c| c.message.clone())
    };
    let now = is_true(status)?;
    previous.and_then(is_true).is_none().then_some(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    fn spec(interval: u32, window: u32, horizon: u32) -> PredictionSpec {
        PredictionSpec {
            enabled: true,
            sample_interval_seconds: interval,
            window_seconds: window,
            horizon_seconds: horizon,
        }
    }

    /// Samples every 2 s for `n` samples up to now, growing by `rate` MiB/s from `start` MiB.
    fn leak(now: Timestamp, n: u64, start: f64, rate: f64) -> Samples {
        let mut s = Samples::default();
        for i in 0..n {
            let at = now - Duration::from_secs(2 * (n - 1 - i));
            s.push(
                Sample {
                    at,
                    value: (start + rate * 2.0 * i as f64) * MIB,
                },
                Duration::from_secs(60),
            );
        }
        s
    }

    /// 4 MiB/s, at 80 MiB now, limit 128 MiB: 12 s to go; horizon 30 s.
    fn leaking(now: Timestamp) -> RiskLook {
        judge(
            &spec(2, 20, 30),
            &leak(now, 6, 40.0, 4.0),
            (128.0 * MIB) as i64,
            now,
        )
    }

    #[test]
    fn a_leak_that_reaches_the_limit_within_the_horizon_is_a_risk() {
        let now = Timestamp::now();
        let look = leaking(now);
        let risk = look.risk.as_ref().unwrap();
        assert!((risk.seconds_to_limit - 12.0).abs() < 0.01, "{risk:?}");
        assert_eq!(look.condition.status, ConditionStatus::True);
        assert_eq!(look.condition.reason, "MemoryTrend");
        assert!(
            look.condition
                .message
                .contains("at the limit in about 12 s"),
            "{}",
            look.condition.message
        );
        assert_eq!(look.memory.unwrap().used, 80.0 * MIB);
        // The next sample is due 2 s after the last one.
        assert_eq!(look.next_sample, Some(Duration::from_millis(2020)));
        let st = status(risk, None, now);
        assert_eq!(st.limit_bytes, (128.0 * MIB) as i64);
        let predicted = st.predicted_time.unwrap().0;
        assert_eq!(predicted.as_second(), now.as_second() + 12);
    }

    #[test]
    fn beyond_the_horizon_flat_or_too_few_samples_is_no_risk() {
        let now = Timestamp::now();
        let limit = (128.0 * MIB) as i64;
        let far = judge(&spec(2, 20, 5), &leak(now, 6, 40.0, 4.0), limit, now);
        assert_eq!(far.risk, None);
        assert_eq!(far.condition.reason, "NoTrendToLimit");
        let flat = judge(&spec(2, 20, 600), &leak(now, 6, 60.0, 0.0), limit, now);
        assert_eq!(flat.risk, None);
        let few = judge(&spec(2, 20, 600), &leak(now, 2, 60.0, 4.0), limit, now);
        assert_eq!(few.risk, None);
        assert_eq!(few.condition.reason, "CollectingSamples");
        assert_eq!(few.condition.status, ConditionStatus::False);
    }

    #[test]
    fn the_risk_keeps_its_start_while_it_lasts() {
        let now = Timestamp::now();
        let look = leaking(now);
        let risk = look.risk.unwrap();
        let earlier = Time(now - Duration::from_secs(30));
        let previous = WorkerStatus {
            at_risk: Some(RiskStatus {
                since: Some(earlier.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(status(&risk, Some(&previous), now).since, Some(earlier));
        assert_eq!(status(&risk, None, now).since, Some(Time(now)));
    }

    #[test]
    fn the_condition_and_the_record_go_into_status_and_turning_true_is_noticed() {
        let now = Timestamp::now();
        let look = leaking(now);
        let mut status = WorkerStatus::default();
        add(&mut status, None, Some(&look), Some(3), now);
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == AT_RISK)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "MemoryTrend")
        );
        assert_eq!(c.observed_generation, Some(3));
        assert!(status.at_risk.is_some());
        assert!(turned_at_risk(None, &status).is_some());
        assert_eq!(turned_at_risk(Some(&status), &status), None);
        // Prediction off: neither the condition nor the record.
        let mut off = status.clone();
        add(&mut off, Some(&status), None, Some(3), now);
        assert!(off.conditions.iter().all(|c| c.type_ != AT_RISK));
        assert_eq!(off.at_risk, None);
    }

    #[test]
    fn a_sample_is_due_at_its_interval() {
        let now = Timestamp::now();
        let i = Duration::from_secs(2);
        assert!(due(None, now, i));
        assert!(!due(Some(now - Duration::from_secs(1)), now, i));
        assert!(due(Some(now - Duration::from_millis(1950)), now, i));
    }
}
