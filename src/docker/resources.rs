//! Declared container settings (the runbook's compose file: `mem_limit`, `memswap_limit`,
//! `cpu_quota`, `ulimits`, a health check), sizes as Docker writes them, and the drift of a
//! running container from them.

use std::time::Duration;

use super::ContainerInfo;
use crate::crd::worker::{DeclaredResources, DriftItem};

/// Suffix of the container a recreate creates before it takes the original's name.
pub const NEW_SUFFIX: &str = "-wro-new";

/// A container health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `CMD` form: the command and its arguments.
    pub command: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

/// The declared settings, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub nofile: Option<(i64, i64)>,
    pub nproc: Option<(i64, i64)>,
    pub health_check: Option<HealthCheck>,
}

/// Parse the spec's declaration.
pub fn declared(spec: &DeclaredResources) -> Result<Declared, String> {
    let size = |v: &Option<String>, what: &str| {
        v.as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|e| format!("{what}: {e}"))
    };
    Ok(Declared {
        memory: size(&spec.memory, "memory")?,
        memory_swap: size(&spec.memory_swap, "memorySwap")?,
        cpu_quota: spec.cpu_quota,
        nofile: spec.nofile.map(|u| (u.soft, u.hard)),
        nproc: spec.nproc.map(|u| (u.soft, u.hard)),
        health_check: spec.health_check.as_ref().map(|h| HealthCheck {
            command: h.command.clone(),
            interval: Duration::from_secs(u64::from(h.interval_seconds)),
            timeout: Duration::from_secs(u64::from(h.timeout_seconds)),
            retries: h.retries,
            start_period: Duration::from_secs(u64::from(h.start_period_seconds)),
        }),
    })
}

/// The declared settings the running container does not have. A setting not declared is
/// never drift.
pub fn drift(declared: &Declared, actual: &ContainerInfo) -> Vec<DriftItem> {
    let mut out = Vec::new();
    let mut check = |field: &str, want: Option<String>, have: Option<String>| {
        if let Some(want) = want {
            let have = have.unwrap_or_else(|| "unset".into());
            if want != have {
                out.push(DriftItem {
                    field: field.into(),
                    declared: want,
                    actual: have,
                });
            }
        }
    };
    let pair = |p: Option<(i64, i64)>| p.map(|(s, h)| format!("{s}:{h}"));
    check(
        "memory",
        declared.memory.map(format_size),
        actual.memory_limit.map(format_size),
    );
    check(
        "memorySwap",
        declared.memory_swap.map(format_size),
        actual.memory_swap.map(|s| {
            if s < 0 {
                "unlimited".into()
            } else {
                format_size(s)
            }
        }),
    );
    check(
        "cpuQuota",
        declared.cpu_quota.map(|q| q.to_string()),
        actual.cpu_quota.map(|q| q.to_string()),
    );
    check("nofile", pair(declared.nofile), pair(actual.nofile_limit));
    check("nproc", pair(declared.nproc), pair(actual.nproc_limit));
    check(
        "healthCheck",
        declared.health_check.as_ref().map(describe_health),
        actual.health_check.as_ref().map(describe_health),
    );
    out
}

fn describe_health(h: &HealthCheck) -> String {
    format!(
        "{} every {}s (timeout {}s, {} retries, start period {}s)",
        h.command.join(" "),
        h.interval.as_secs(),
        h.timeout.as_secs(),
        h.retries,
        h.start_period.as_secs()
    )
}

/// Whether putting the declaration in place needs a new container: anything but the memory
/// and CPU limits, which `docker update` changes in place.
pub fn needs_recreate(drift: &[DriftItem]) -> bool {
    drift
        .iter()
        .any(|d| !matches!(d.field.as_str(), "memory" | "memorySwap" | "cpuQuota"))
}

/// Bytes from `1073741824`, `512m`, `512M`, `512mb`, `2g`, `2Gi`, `1.5g`, `100k`, `1t`. Units
/// are binary (1024-based), as Docker's `-m` reads them.
pub fn parse_size(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!("{s:?} is not a size: it has no number"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size: {number:?} is not a number"))?;
    let unit = unit.to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let factor: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0_f64.powi(4),
        other => return Err(format!("{s:?} is not a size: unknown unit {other:?}")),
    };
    let bytes = (value * factor).round();
    if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as i64)
}

/// `256Mi`, `1.5Gi`, or the bytes when no unit divides it to at most one decimal.
pub fn format_size(bytes: i64) -> String {
    for (unit, factor) in [
        ("Ti", 1i64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= factor {
            let tenths = bytes as f64 / factor as f64 * 10.0;
            if (tenths - tenths.round()).abs() < 1e-9 {
                let v = tenths.round() / 10.0;
                return if v.fract() == 0.0 {
                    format!("{}{unit}", v as i64)
                } else {
                    format!("{v}{unit}")
                };
            }
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_lists_only_declared_settings_that_differ() {
        let actual = ContainerInfo {
            memory_limit: Some(256 << 20),
            nofile_limit: Some((64, 64)),
            ..Default::default()
        };
        assert!(
            drift(&Declared::default(), &actual).is_empty(),
            "nothing declared"
        );
        let want = Declared {
            memory: Some(256 << 20),
            nofile: Some((1024, 1024)),
            nproc: Some((512, 512)),
            ..Default::default()
        };
        let d = drift(&want, &actual);
        let fields: Vec<_> = d
            .iter()
            .map(|d| (d.field.as_str(), d.declared.as_str(), d.actual.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("nofile", "1024:1024", "64:64"),
                ("nproc", "512:512", "unset")
            ]
        );
        assert!(needs_recreate(&d));
        let mem_only = drift(
            &Declared {
                memory: Some(512 << 20),
                ..Default::default()
            },
            &actual,
        );
        assert_eq!(mem_only[0].declared, "512Mi");
        assert_eq!(mem_only[0].actual, "256Mi");
        assert!(!needs_recreate(&mem_only));
    }

    #[test]
    fn sizes_parse_as_docker_reads_them() {
        for (text, bytes) in [
            ("1073741824", 1 << 30),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("512mb", 512 << 20),
            ("2g", 2 << 30),
            ("2Gi", 2 << 30),
            ("1.5g", 3 << 29),
            ("100k", 100 << 10),
            ("1t", 1 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "m", "-1m", "12x", "1.2.3g", "99999999999t"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_format_with_the_largest_exact_unit() {
        assert_eq!(format_size(256 << 20), "256Mi");
        assert_eq!(format_size(3 << 29), "1.5Gi");
        assert_eq!(format_size(64 << 20), "64Mi");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(1536), "1.5Ki");
    }
}
