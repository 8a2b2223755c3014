//! Declared container settings (the runbook's compose file: `mem_limit`, `memswap_limit`,
//! `cpu_quota`, `ulimits`, a health check), sizes as Docker writes them, and the drift of a
//! container from them. Everything here is pure.

use std::time::Duration;

use super::ContainerInfo;
pub use super::HealthCheck;
use crate::crd::worker::{DeclaredResources, DriftItem};

/// Suffix of the container a recreate creates before it takes the original's name.
pub const NEW_SUFFIX: &str = "-wro-new";

/// The declared settings, parsed: sizes in bytes, the CPU quota in microseconds per 100 ms
/// period, ulimits as (soft, hard). `None`: not declared, whatever the container has is fine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub nofile: Option<(i64, i64)>,
    pub nproc: Option<(i64, i64)>,
    pub health_check: Option<HealthCheck>,
}

/// Why the spec's declaration cannot be used; the text is what the logs say.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeclarationError {
    /// `field` (`memory`, `memorySwap`) is not a size.
    #[error("{field}: {source}")]
    Size {
        field: &'static str,
        #[source]
        source: SizeError,
    },
    #[error("{field}: 0 is no limit; leave {field} out instead")]
    ZeroSize { field: &'static str },
    #[error(
        "memorySwap {} is below memory {}: it is memory plus swap, at least memory",
        format_size(*.memory_swap),
        format_size(*.memory)
    )]
    SwapBelowMemory { memory_swap: i64, memory: i64 },
    #[error("cpuQuota {0} must be positive")]
    CpuQuota(i64),
    /// `field` is `nofile` or `nproc`.
    #[error("{field}: soft limit {soft} is above the hard limit {hard}")]
    SoftAboveHard {
        field: &'static str,
        soft: i64,
        hard: i64,
    },
    #[error("{field}: limits must not be negative")]
    NegativeUlimit { field: &'static str },
    #[error("healthCheck: the command is empty")]
    EmptyHealthCommand,
}

/// Why a text is not a size ([`parse_size`]); `text` is the text as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("an empty size")]
    Empty,
    #[error("{text:?}: a size cannot be negative")]
    Negative { text: String },
    #[error("{text:?} is not a size: it must start with a number such as 512 or 1.5")]
    NotANumber { text: String },
    #[error("{text:?}: unknown unit {unit:?} (use k, m, g, t, Ki, Mi, Gi or Ti)")]
    UnknownUnit { text: String, unit: String },
    #[error("{text:?} is too large")]
    TooLarge { text: String },
}

/// Parse and check the spec's declaration (what the CRD schema cannot check: sizes, memory
/// not above memory+swap, soft not above hard).
pub fn declared(spec: &DeclaredResources) -> Result<Declared, DeclarationError> {
    let size = |v: &Option<String>, field: &'static str| match v.as_deref().map(parse_size) {
        Some(Err(source)) => Err(DeclarationError::Size { field, source }),
        Some(Ok(0)) => Err(DeclarationError::ZeroSize { field }),
        Some(Ok(v)) => Ok(Some(v)),
        None => Ok(None),
    };
    let memory = size(&spec.memory, "memory")?;
    let memory_swap = size(&spec.memory_swap, "memorySwap")?;
    if let (Some(memory), Some(memory_swap)) = (memory, memory_swap) {
        if memory_swap < memory {
            return Err(DeclarationError::SwapBelowMemory {
                memory_swap,
                memory,
            });
        }
    }
    if let Some(q) = spec.cpu_quota {
        if q <= 0 {
            return Err(DeclarationError::CpuQuota(q));
        }
    }
    let ulimit = |u: Option<crate::crd::worker::UlimitSpec>, field: &'static str| match u {
        Some(u) if u.soft > u.hard => Err(DeclarationError::SoftAboveHard {
            field,
            soft: u.soft,
            hard: u.hard,
        }),
        Some(u) if u.soft < 0 => Err(DeclarationError::NegativeUlimit { field }),
        u => Ok(u.map(|u| (u.soft, u.hard))),
    };
    let health_check = match &spec.health_check {
        Some(h) if h.command.is_empty() || h.command[0].is_empty() => {
            return Err(DeclarationError::EmptyHealthCommand)
        }
        Some(h) => Some(HealthCheck {
            command: h.command.clone(),
            interval: Duration::from_secs(u64::from(h.interval_seconds)),
            timeout: Duration::from_secs(u64::from(h.timeout_seconds)),
            retries: h.retries,
            start_period: Duration::from_secs(u64::from(h.start_period_seconds)),
        }),
        None => None,
    };
    Ok(Declared {
        memory,
        memory_swap,
        cpu_quota: spec.cpu_quota,
        nofile: ulimit(spec.nofile, "nofile")?,
        nproc: ulimit(spec.nproc, "nproc")?,
        health_check,
    })
}

/// The declared settings the container does not have, one item per field (`memory`,
/// `memorySwap`, `cpuQuota`, `nofile`, `nproc`, `healthCheck`), values human-readable: sizes
/// as [`format_size`] writes them, ulimits `soft:hard`, the health check as its command and
/// timing; what the container does not set is `unset`. A setting not declared is never drift.
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

/// `curl -f http://localhost/ every 30s, timeout 10s, 3 retries, start period 0s`.
fn describe_health(h: &HealthCheck) -> String {
    let command = h
        .command
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{command} every {}, timeout {}, {} retries, start period {}",
        duration(h.interval),
        duration(h.timeout),
        h.retries,
        duration(h.start_period)
    )
}

fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Whether putting the declaration in place needs a new container: anything but `memory`,
/// `memorySwap` and `cpuQuota`, which `docker update` changes in place.
pub fn needs_recreate(drift: &[DriftItem]) -> bool {
    drift
        .iter()
        .any(|d| !matches!(d.field.as_str(), "memory" | "memorySwap" | "cpuQuota"))
}

/// The memory+swap limit to set along with `memory`, for a container whose memory+swap limit
/// is `current_swap` (bytes; `-1` or `None`: unlimited or unset). Docker refuses a memory
/// limit above the memory+swap limit, so:
/// * a `declared_swap` is set as it is (it is at least the memory: [`declared`] checks);
/// * else, when `memory` goes above a set `current_swap`, the swap limit is raised to
///   `memory` (the container then has no swap: a limit that was the default twice the old
///   memory does not follow);
/// * else the swap limit is left as it is (`None`).
pub fn swap_for_update(
    current_swap: Option<i64>,
    memory: Option<i64>,
    declared_swap: Option<i64>,
) -> Option<i64> {
    if declared_swap.is_some() {
        return declared_swap;
    }
    match (memory, current_swap) {
        (Some(m), Some(s)) if s > 0 && s < m => Some(m),
        _ => None,
    }
}

/// Bytes from a size as Docker's `-m` reads them: `1073741824`, `512m`, `512M`, `512mb`,
/// `2g`, `2Gi`, `2GiB`, `1.5g`, `100k`, `1t`. The units `k`, `m`, `g`, `t` are binary
/// (1024-based) as in Docker, as are `Ki`, `Mi`, `Gi`, `Ti`; a trailing `b`/`B` changes
/// nothing. A fraction of a byte is dropped, as Docker does. Empty, negative, unknown units
/// and sizes beyond `i64` are refused.
pub fn parse_size(s: &str) -> Result<i64, SizeError> {
    let text = || s.to_string();
    let t = s.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    if t.starts_with('-') {
        return Err(SizeError::Negative { text: text() });
    }
    let number_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(number_end);
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && !digits(fraction)) {
        return Err(SizeError::NotANumber { text: text() });
    }
    let lower = unit.to_ascii_lowercase();
    let prefix = lower.strip_suffix('b').unwrap_or(&lower);
    let power = match prefix {
        "" => 0,
        "k" | "ki" => 1,
        "m" | "mi" => 2,
        "g" | "gi" => 3,
        "t" | "ti" => 4,
        _ => {
            return Err(SizeError::UnknownUnit {
                text: text(),
                unit: unit.to_string(),
            })
        }
    };
    let factor: u128 = 1 << (10 * power);
    let out_of_range = || SizeError::TooLarge { text: text() };
    // Exact arithmetic: whole * factor + fraction * factor / 10^len (truncated).
    let whole: u128 = whole.parse().map_err(|_| out_of_range())?;
    let fraction = &fraction[..fraction.len().min(30)];
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| out_of_range())?
    };
    let bytes = whole
        .checked_mul(factor)
        .and_then(|w| w.checked_add(fraction.checked_mul(factor)? / scale))
        .ok_or_else(out_of_range)?;
    i64::try_from(bytes).map_err(|_| out_of_range())
}

/// `256Mi`, `1.5Gi`: the largest binary unit that writes the size exactly with at most one
/// decimal; the bytes themselves (`1000`) when none does.
pub fn format_size(bytes: i64) -> String {
    for (unit, power) in [("Ti", 4), ("Gi", 3), ("Mi", 2), ("Ki", 1)] {
        let factor = 1i128 << (10 * power);
        let b = i128::from(bytes);
        if b >= factor && (b * 10) % factor == 0 {
            let tenths = b * 10 / factor;
            return if tenths % 10 == 0 {
                format!("{}{unit}", tenths / 10)
            } else {
                format!("{}.{}{unit}", tenths / 10, tenths % 10)
            };
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::worker::{HealthCheckSpec, UlimitSpec};

    const MI: i64 = 1 << 20;
    const GI: i64 = 1 << 30;

    fn health(command: &[&str]) -> HealthCheck {
        HealthCheck {
            command: command.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            retries: 3,
            start_period: Duration::ZERO,
        }
    }

    /// A container as `docker run -m 256m --memory-swap 512m --cpu-quota 50000
    /// --ulimit nofile=64:64 --ulimit nproc=256:512 --health-cmd ...` shows it.
    fn container() -> ContainerInfo {
        ContainerInfo {
            name: "w".into(),
            memory_limit: Some(256 * MI),
            memory_swap: Some(512 * MI),
            cpu_quota: Some(50_000),
            nofile_limit: Some((64, 64)),
            nproc_limit: Some((256, 512)),
            health_check: Some(health(&["/bin/worker", "--check"])),
            ..Default::default()
        }
    }

    /// Exactly what [`container`] has.
    fn same() -> Declared {
        Declared {
            memory: Some(256 * MI),
            memory_swap: Some(512 * MI),
            cpu_quota: Some(50_000),
            nofile: Some((64, 64)),
            nproc: Some((256, 512)),
            health_check: Some(health(&["/bin/worker", "--check"])),
        }
    }

    fn items(d: &[DriftItem]) -> Vec<(&str, &str, &str)> {
        d.iter()
            .map(|d| (d.field.as_str(), d.declared.as_str(), d.actual.as_str()))
            .collect()
    }

    #[test]
    fn sizes_parse_as_docker_reads_them() {
        for (text, bytes) in [
            ("1073741824", GI),
            ("0", 0),
            ("512m", 512 * MI),
            ("512M", 512 * MI),
            ("512mb", 512 * MI),
            ("512MB", 512 * MI),
            ("512Mi", 512 * MI),
            ("512MiB", 512 * MI),
            ("2g", 2 * GI),
            ("2G", 2 * GI),
            ("2gb", 2 * GI),
            ("2Gi", 2 * GI),
            ("1.5g", 3 * GI / 2),
            ("1.5Gi", 3 * GI / 2),
            ("0.5m", MI / 2),
            ("100k", 100 << 10),
            ("100Ki", 100 << 10),
            ("1t", 1 << 40),
            ("1Ti", 1 << 40),
            ("64b", 64),
            (" 256m ", 256 * MI),
            // Docker drops the fraction of a byte: 0.1k is 102.4 bytes.
            ("0.1k", 102),
            ("9223372036854775807", i64::MAX),
            ("8388607.999999t", 9_223_372_036_853_676_296),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "  ",
            "m",
            "-1",
            "-1m",
            "+1m",
            "12x",
            "12 m",
            "1.2.3g",
            ".5g",
            "5.g",
            "1..5g",
            "2ib",
            "2i",
            "2bb",
            "1p",
            "1e3",
            "9223372036854775808",
            "8388608t",
            "99999999999t",
            "99999999999999999999999999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        for (bad, want) in [
            ("", "an empty size"),
            ("-1m", "\"-1m\": a size cannot be negative"),
            (
                "1..5g",
                "\"1..5g\" is not a size: it must start with a number such as 512 or 1.5",
            ),
            (
                "12x",
                "\"12x\": unknown unit \"x\" (use k, m, g, t, Ki, Mi, Gi or Ti)",
            ),
            ("8388608t", "\"8388608t\" is too large"),
        ] {
            assert_eq!(parse_size(bad).unwrap_err().to_string(), want, "{bad:?}");
        }
    }

    #[test]
    fn sizes_format_with_the_largest_exact_unit() {
        for (bytes, text) in [
            (256 * MI, "256Mi"),
            (3 * GI / 2, "1.5Gi"),
            (GI, "1Gi"),
            (64 * MI, "64Mi"),
            (512 * MI, "512Mi"),
            (1280 * MI, "1280Mi"),
            (1 << 40, "1Ti"),
            (1536, "1.5Ki"),
            (1024, "1Ki"),
            (1000, "1000"),
            (1023, "1023"),
            (1025, "1025"),
            (0, "0"),
            (-1, "-1"),
            (i64::MAX, "9223372036854775807"),
            ((1 << 62) + 1, "4611686018427387905"),
        ] {
            assert_eq!(format_size(bytes), text, "{bytes}");
        }
        // What it writes, parse_size reads back.
        for bytes in [256 * MI, 3 * GI / 2, 1536, 1000, 1 << 40, 7 * GI + 1] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }

    #[test]
    fn declared_parses_sizes_and_checks_what_the_schema_cannot() {
        let spec = DeclaredResources {
            memory: Some("512m".into()),
            memory_swap: Some("1g".into()),
            cpu_quota: Some(150_000),
            nofile: Some(UlimitSpec {
                soft: 1024,
                hard: 4096,
            }),
            nproc: Some(UlimitSpec {
                soft: 512,
                hard: 512,
            }),
            health_check: Some(HealthCheckSpec {
                command: vec!["/bin/worker".into(), "--check".into()],
                interval_seconds: 30,
                timeout_seconds: 10,
                retries: 3,
                start_period_seconds: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            declared(&spec),
            Ok(Declared {
                memory: Some(512 * MI),
                memory_swap: Some(GI),
                cpu_quota: Some(150_000),
                nofile: Some((1024, 4096)),
                nproc: Some((512, 512)),
                health_check: Some(health(&["/bin/worker", "--check"])),
            })
        );
        assert_eq!(
            declared(&DeclaredResources::default()),
            Ok(Declared::default())
        );
        let bad = |f: &dyn Fn(&mut DeclaredResources)| {
            let mut s = spec.clone();
            f(&mut s);
            declared(&s).unwrap_err().to_string()
        };
        assert!(bad(&|s| s.memory = Some("lots".into())).starts_with("memory: "));
        assert!(bad(&|s| s.memory_swap = Some("1x".into())).starts_with("memorySwap: "));
        assert!(bad(&|s| s.memory = Some("0".into())).contains("no limit"));
        assert_eq!(
            bad(&|s| s.memory_swap = Some("256m".into())),
            "memorySwap 256Mi is below memory 512Mi: it is memory plus swap, at least memory"
        );
        assert_eq!(
            bad(&|s| s.memory = Some("lots".into())),
            "memory: \"lots\" is not a size: it must start with a number such as 512 or 1.5"
        );
        assert_eq!(
            bad(&|s| s.nproc = Some(UlimitSpec { soft: -1, hard: 1 })),
            "nproc: limits must not be negative"
        );
        assert_eq!(
            bad(&|s| s.memory_swap = Some("0".into())),
            "memorySwap: 0 is no limit; leave memorySwap out instead"
        );
        assert!(bad(&|s| s.cpu_quota = Some(0)).contains("cpuQuota"));
        assert!(bad(&|s| s.nofile = Some(UlimitSpec { soft: 2, hard: 1 })).starts_with("nofile"));
        assert!(bad(&|s| s.health_check.as_mut().unwrap().command.clear()).contains("empty"));
        // Swap alone, or equal to memory (no swap), is fine.
        let mut s = spec.clone();
        s.memory_swap = Some("512Mi".into());
        assert_eq!(declared(&s).unwrap().memory_swap, Some(512 * MI));
        s.memory = None;
        assert!(declared(&s).is_ok());
    }

    #[test]
    fn nothing_declared_is_no_drift() {
        assert!(drift(&Declared::default(), &container()).is_empty());
        assert!(drift(&Declared::default(), &ContainerInfo::default()).is_empty());
    }

    #[test]
    fn all_equal_is_no_drift() {
        assert!(drift(&same(), &container()).is_empty());
        // Written differently, the same size.
        let d = Declared {
            memory: Some(parse_size("0.25g").unwrap()),
            ..Default::default()
        };
        assert!(drift(&d, &container()).is_empty());
    }

    #[test]
    fn each_declared_field_that_differs_is_one_item() {
        let c = container();
        let one = |f: &dyn Fn(&mut Declared)| {
            let mut d = same();
            f(&mut d);
            drift(&d, &c)
        };
        assert_eq!(
            items(&one(&|d| d.memory = Some(3 * GI / 2))),
            [("memory", "1.5Gi", "256Mi")]
        );
        assert_eq!(
            items(&one(&|d| d.memory_swap = Some(GI))),
            [("memorySwap", "1Gi", "512Mi")]
        );
        assert_eq!(
            items(&one(&|d| d.cpu_quota = Some(100_000))),
            [("cpuQuota", "100000", "50000")]
        );
        assert_eq!(
            items(&one(&|d| d.nofile = Some((1024, 4096)))),
            [("nofile", "1024:4096", "64:64")]
        );
        assert_eq!(
            items(&one(&|d| d.nproc = Some((256, 256)))),
            [("nproc", "256:256", "256:512")]
        );
        assert_eq!(
            items(&one(&|d| d.health_check = Some(health(&["true"])))),
            [(
                "healthCheck",
                "true every 30s, timeout 10s, 3 retries, start period 0s",
                "/bin/worker --check every 30s, timeout 10s, 3 retries, start period 0s"
            )]
        );
        // The same command with another timing differs too.
        let slower = one(&|d| d.health_check.as_mut().unwrap().interval = Duration::from_secs(5));
        assert_eq!(slower.len(), 1);
        assert!(slower[0].declared.contains("every 5s"));
        // Several at once, in field order.
        let all = drift(
            &Declared {
                memory: Some(GI),
                nproc: Some((1, 1)),
                ..same()
            },
            &c,
        );
        assert_eq!(
            all.iter().map(|d| d.field.as_str()).collect::<Vec<_>>(),
            ["memory", "nproc"]
        );
    }

    #[test]
    fn what_the_container_does_not_set_is_unset() {
        let d = drift(&same(), &ContainerInfo::default());
        assert_eq!(d.len(), 6);
        assert!(d.iter().all(|i| i.actual == "unset"), "{d:?}");
        assert_eq!(
            items(&d[..5]),
            [
                ("memory", "256Mi", "unset"),
                ("memorySwap", "512Mi", "unset"),
                ("cpuQuota", "50000", "unset"),
                ("nofile", "64:64", "unset"),
                ("nproc", "256:512", "unset"),
            ]
        );
        // Unlimited swap (`--memory-swap -1`) says so.
        let unlimited = ContainerInfo {
            memory_swap: Some(-1),
            ..container()
        };
        assert_eq!(
            items(&drift(&same(), &unlimited)),
            [("memorySwap", "512Mi", "unlimited")]
        );
    }

    #[test]
    fn health_commands_quote_words_with_spaces() {
        let mut h = health(&["/bin/sh", "-c", "curl -f localhost || exit 1"]);
        h.interval = Duration::from_millis(1500);
        assert_eq!(
            describe_health(&h),
            "/bin/sh -c 'curl -f localhost || exit 1' every 1500ms, timeout 10s, 3 retries, \
             start period 0s"
        );
    }

    #[test]
    fn only_memory_and_cpu_are_updated_in_place() {
        let item = |field: &str| DriftItem {
            field: field.into(),
            declared: "x".into(),
            actual: "y".into(),
        };
        assert!(!needs_recreate(&[]));
        assert!(!needs_recreate(&[
            item("memory"),
            item("memorySwap"),
            item("cpuQuota")
        ]));
        for field in ["nofile", "nproc", "healthCheck"] {
            assert!(needs_recreate(&[item(field)]), "{field}");
            assert!(needs_recreate(&[item("memory"), item(field)]), "{field}");
        }
        assert!(needs_recreate(&drift(&same(), &ContainerInfo::default())));
    }

    #[test]
    fn swap_follows_a_memory_raise_above_it() {
        // (current swap, memory, declared swap) -> swap to set
        for (current, memory, declared_swap, want) in [
            // Raised above the swap limit: the swap limit comes along.
            (Some(512 * MI), Some(GI), None, Some(GI)),
            // Still below it, or lowered: left alone.
            (Some(512 * MI), Some(384 * MI), None, None),
            (Some(512 * MI), Some(512 * MI), None, None),
            (Some(512 * MI), Some(128 * MI), None, None),
            // Unlimited or unset swap never refuses a memory limit.
            (Some(-1), Some(GI), None, None),
            (None, Some(GI), None, None),
            (Some(0), Some(GI), None, None),
            // The declared swap limit wins.
            (Some(512 * MI), Some(GI), Some(2 * GI), Some(2 * GI)),
            (Some(512 * MI), None, Some(2 * GI), Some(2 * GI)),
            // No memory change: nothing to follow.
            (Some(512 * MI), None, None, None),
        ] {
            assert_eq!(
                swap_for_update(current, memory, declared_swap),
                want,
                "{current:?} {memory:?} {declared_swap:?}"
            );
        }
    }
}
