//! Configuration from environment variables (see the doc comment in main.rs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::fault::FaultMode;

pub const DEFAULT_SHARED_ROOT: &str = "/shared";
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9091";
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Work the tasks a previous run left in `active/` first (`RESUME_ACTIVE=1`).
    pub resume_active: bool,
    pub worker_name: String,
    pub shared_root: PathBuf,
    pub heartbeat_interval: Duration,
    pub task_duration: Duration,
    pub poll_interval: Duration,
    pub metrics_addr: SocketAddr,
    pub fault_mode: FaultMode,
    pub fault_after: Duration,
    /// `Some` only when `REQUIRED_BINARIES` is set (and non-empty).
    pub required_binaries: Option<Vec<String>>,
    pub oom_max_mib: u64,
    pub leak_mib_per_sec: u64,
    pub leak_max_mib: u64,
    pub fd_leak_max: u64,
}

impl Config {
    /// Builds the configuration from a variable lookup (the process
    /// environment in production, a map in tests).
    pub fn from_lookup<F>(get: F) -> Result<Config, String>
    where
        F: Fn(&str) -> Option<String>,
    {
        // Empty values count as unset.
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());

        let worker_name = var("WORKER_NAME").ok_or("WORKER_NAME is required")?;
        let worker_name = worker_name.trim().to_string();
        validate_worker_name(&worker_name)?;

        let shared_root = PathBuf::from(var("SHARED_ROOT").unwrap_or(DEFAULT_SHARED_ROOT.into()));
        let heartbeat_interval = parse_secs(
            "HEARTBEAT_INTERVAL_SECS",
            var("HEARTBEAT_INTERVAL_SECS"),
            2.0,
            false,
        )?;
        let task_duration = parse_millis("TASK_DURATION_MS", var("TASK_DURATION_MS"), 500)?;
        let poll_interval = parse_millis("POLL_INTERVAL_MS", var("POLL_INTERVAL_MS"), 200)?
            .max(Duration::from_millis(10));
        let metrics_addr = parse_addr(&var("METRICS_ADDR").unwrap_or(DEFAULT_METRICS_ADDR.into()))?;
        let fault_mode = match var("FAULT_MODE") {
            Some(v) => v
                .parse::<FaultMode>()
                .map_err(|e| format!("FAULT_MODE: {e}"))?,
            None => FaultMode::None,
        };
        let fault_after = parse_secs("FAULT_AFTER_SECS", var("FAULT_AFTER_SECS"), 0.0, true)?;
        let required_binaries = var("REQUIRED_BINARIES")
            .map(|v| parse_list(&v))
            .filter(|l| !l.is_empty());
        let oom_max_mib = parse_u64("OOM_MAX_MIB", var("OOM_MAX_MIB"), 1024)?;
        let leak_mib_per_sec = parse_u64("LEAK_MIB_PER_SEC", var("LEAK_MIB_PER_SEC"), 4)?.max(1);
        let leak_max_mib = parse_u64("LEAK_MAX_MIB", var("LEAK_MAX_MIB"), 1024)?;
        let fd_leak_max = parse_u64("FD_LEAK_MAX", var("FD_LEAK_MAX"), 100_000)?;
        let resume_active = match var("RESUME_ACTIVE").as_deref().map(str::trim) {
            None | Some("" | "0" | "false") => false,
            Some("1" | "true") => true,
            Some(other) => {
                return Err(format!(
                    "RESUME_ACTIVE: expected 1/true or 0/false, got {other:?}"
                ))
            }
        };

        Ok(Config {
            worker_name,
            shared_root,
            heartbeat_interval,
            task_duration,
            poll_interval,
            metrics_addr,
            fault_mode,
            fault_after,
            required_binaries,
            oom_max_mib,
            leak_mib_per_sec,
            leak_max_mib,
            fd_leak_max,
            resume_active,
        })
    }

    pub fn from_env() -> Result<Config, String> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }
}

/// The name ends up in paths (`workers/<name>/`, `locks/<name>_<id>.lock`).
pub fn validate_worker_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "WORKER_NAME {name:?} is not a valid file name component"
        ));
    }
    Ok(())
}

/// Comma (or whitespace) separated list, empty items dropped.
pub fn parse_list(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// `ip:port`, or `:port` meaning all interfaces.
pub fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    let v = v.trim();
    let full = if let Some(port) = v.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        v.to_string()
    };
    full.parse::<SocketAddr>()
        .map_err(|e| format!("METRICS_ADDR {v:?}: expected ip:port ({e})"))
}

fn parse_secs(
    name: &str,
    v: Option<String>,
    default: f64,
    allow_zero: bool,
) -> Result<Duration, String> {
    let secs = match v {
        None => default,
        Some(v) => v
            .trim()
            .parse::<f64>()
            .map_err(|e| format!("{name} {v:?}: {e}"))?,
    };
    if !secs.is_finite() || secs < 0.0 || (!allow_zero && secs == 0.0) || secs > 86_400.0 * 365.0 {
        return Err(format!("{name} {secs} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_millis(name: &str, v: Option<String>, default: u64) -> Result<Duration, String> {
    Ok(Duration::from_millis(parse_u64(name, v, default)?))
}

fn parse_u64(name: &str, v: Option<String>, default: u64) -> Result<u64, String> {
    match v {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{name} {v:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[("WORKER_NAME", "marie")]).unwrap();
        assert_eq!(c.worker_name, "marie");
        assert_eq!(c.shared_root, PathBuf::from("/shared"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.task_duration, Duration::from_millis(500));
        assert_eq!(c.poll_interval, Duration::from_millis(200));
        assert_eq!(c.metrics_addr, "0.0.0.0:9091".parse().unwrap());
        assert_eq!(c.fault_mode, FaultMode::None);
        assert_eq!(c.fault_after, Duration::ZERO);
        assert_eq!(c.required_binaries, None);
    }

    #[test]
    fn overrides() {
        let c = cfg(&[
            ("WORKER_NAME", "anga"),
            ("SHARED_ROOT", "/tmp/x"),
            ("HEARTBEAT_INTERVAL_SECS", "0.5"),
            ("TASK_DURATION_MS", "50"),
            ("METRICS_ADDR", ":19091"),
            ("FAULT_MODE", "fd-leak"),
            ("FAULT_AFTER_SECS", "3"),
            ("REQUIRED_BINARIES", "claude, git"),
        ])
        .unwrap();
        assert_eq!(c.shared_root, PathBuf::from("/tmp/x"));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(c.task_duration, Duration::from_millis(50));
        assert_eq!(c.metrics_addr, "0.0.0.0:19091".parse().unwrap());
        assert_eq!(c.fault_mode, FaultMode::FdLeak);
        assert_eq!(c.fault_after, Duration::from_secs(3));
        assert_eq!(
            c.required_binaries,
            Some(vec!["claude".into(), "git".into()])
        );
        assert_eq!(
            cfg(&[("WORKER_NAME", "x"), ("FAULT_MODE", "abort")])
                .unwrap()
                .fault_mode,
            FaultMode::Abort
        );
    }

    #[test]
    fn errors() {
        assert!(cfg(&[]).unwrap_err().contains("WORKER_NAME is required"));
        assert!(cfg(&[("WORKER_NAME", "  ")]).is_err());
        assert!(cfg(&[("WORKER_NAME", "a/b")]).is_err());
        assert!(cfg(&[("WORKER_NAME", "x"), ("FAULT_MODE", "boom")]).is_err());
        assert!(cfg(&[("WORKER_NAME", "x"), ("HEARTBEAT_INTERVAL_SECS", "0")]).is_err());
        assert!(cfg(&[("WORKER_NAME", "x"), ("METRICS_ADDR", "localhost")]).is_err());
    }

    #[test]
    fn list_parsing() {
        assert_eq!(parse_list(" a,,b c "), vec!["a", "b", "c"]);
        assert!(parse_list(" , ").is_empty());
    }
}
