//! Fault modes the worker can simulate.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::log;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    None,
    Crash,
    /// Dies by SIGABRT (`abort()`), so the kernel dumps core.
    Abort,
    Oom,
    /// Memory grows at a steady rate (a leak) while the worker goes on working.
    Leak,
    FdLeak,
    Hang,
    MissingDependency,
}

impl FaultMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultMode::None => "none",
            FaultMode::Crash => "crash",
            FaultMode::Abort => "abort",
            FaultMode::Oom => "oom",
            FaultMode::Leak => "leak",
            FaultMode::FdLeak => "fd-leak",
            FaultMode::Hang => "hang",
            FaultMode::MissingDependency => "missing-dependency",
        }
    }
}

impl fmt::Display for FaultMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultMode {
    type Err = String;

    /// Case-insensitive; surrounding whitespace ignored; `_` accepted for `-`.
    /// Empty means `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        match norm.as_str() {
            "" | "none" | "off" => Ok(FaultMode::None),
            "crash" => Ok(FaultMode::Crash),
            "abort" => Ok(FaultMode::Abort),
            "oom" => Ok(FaultMode::Oom),
            "leak" => Ok(FaultMode::Leak),
            "fd-leak" | "fdleak" => Ok(FaultMode::FdLeak),
            "hang" => Ok(FaultMode::Hang),
            "missing-dependency" | "missing-dep" => Ok(FaultMode::MissingDependency),
            _ => Err(format!(
                "unknown fault mode {:?} (expected one of: none, crash, abort, oom, leak, fd-leak, hang, missing-dependency)",
                s.trim()
            )),
        }
    }
}

/// Looks `bin` up like a shell would: a name containing `/` is checked as a
/// path, otherwise every directory of `path_var` is searched for an
/// executable regular file.
pub fn find_in_path(bin: &str, path_var: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if bin.contains('/') {
        let p = PathBuf::from(bin);
        return is_exec(&p).then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(bin))
        .find(|p| is_exec(p))
}

/// First required binary that cannot be found, if any.
pub fn first_missing<'a>(bins: &'a [String], path_var: &str) -> Option<&'a str> {
    bins.iter()
        .map(String::as_str)
        .find(|b| find_in_path(b, path_var).is_none())
}

/// `abort` fault: dies at once by SIGABRT through `std::process::abort()` (libc
/// `abort()`), so the kernel dumps core where `core_pattern` and `ulimit -c`
/// say. Never inlined (nor is its caller in the worker loop), so a backtrace of
/// that core names `sample_worker::fault::abort_now`.
#[inline(never)]
pub fn abort_now() -> ! {
    std::process::abort()
}

/// `oom` fault: allocate 1 MiB chunks, touching every byte so the memory is
/// really resident, and keep them until the kernel OOM killer ends the
/// process. Safety net: after `max_mib` MiB without being killed the worker
/// gives up with exit code 137.
pub fn eat_memory(max_mib: u64) -> ! {
    const MIB: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    for i in 1..=max_mib {
        let mut chunk = Vec::with_capacity(MIB);
        chunk.resize(MIB, 0xA5u8);
        hoard.push(std::hint::black_box(chunk));
        if i % 8 == 0 {
            log::warn(&format!("oom: {i} MiB allocated and resident"));
        }
    }
    log::fatal(&format!(
        "oom: allocated {max_mib} MiB (OOM_MAX_MIB) without being OOM-killed; giving up (exit 137)"
    ));
    std::process::exit(137)
}

/// `leak` fault: `mib_per_sec` MiB more resident memory every second (in steps of a tenth of
/// a second, touching every byte), kept forever, until `max_mib` MiB; then memory stays flat.
/// Run on a thread of its own: the worker goes on heartbeating and working, as a leaking
/// worker does, until the limit ends it.
pub fn leak_memory(mib_per_sec: u64, max_mib: u64) {
    const STEP: Duration = Duration::from_millis(100);
    let step_bytes = (mib_per_sec << 20) / 10;
    let max_bytes = max_mib << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    while total < max_bytes {
        let n = step_bytes.min(max_bytes - total) as usize;
        let mut chunk = Vec::with_capacity(n);
        chunk.resize(n, 0x5Au8);
        hoard.push(std::hint::black_box(chunk));
        total += n as u64;
        let mib = total >> 20;
        if mib.is_multiple_of(16) && (total - n as u64) >> 20 != mib {
            log::warn(&format!("leak: {mib} MiB held"));
        }
        std::thread::sleep(STEP);
    }
    log::warn(&format!(
        "leak: reached LEAK_MAX_MIB ({max_mib} MiB); memory stays flat"
    ));
    std::mem::forget(hoard);
}

/// `fd-leak` fault: open files and never close them until `open` fails (with
/// EMFILE under a normal `ulimit -n`) or `max` descriptors have been leaked.
/// Returns the number leaked and the error that stopped it (if any).
pub fn leak_fds(target: &Path, max: u64) -> (u64, Option<io::Error>) {
    let mut n = 0u64;
    while n < max {
        match File::open(target) {
            Ok(f) => {
                // Deliberately leaked: the descriptor stays open forever.
                std::mem::forget(f);
                n += 1;
            }
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

/// Soft and hard `RLIMIT_NOFILE`.
pub fn nofile_limits() -> Option<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0).then_some((r.rlim_cur, r.rlim_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_modes() {
        for (s, m) in [
            ("", FaultMode::None),
            ("none", FaultMode::None),
            ("crash", FaultMode::Crash),
            ("abort", FaultMode::Abort),
            ("oom", FaultMode::Oom),
            ("leak", FaultMode::Leak),
            ("fd-leak", FaultMode::FdLeak),
            ("hang", FaultMode::Hang),
            ("missing-dependency", FaultMode::MissingDependency),
        ] {
            assert_eq!(s.parse::<FaultMode>(), Ok(m), "{s:?}");
            // round trip
            assert_eq!(m.as_str().parse::<FaultMode>(), Ok(m));
        }
    }

    #[test]
    fn lenient_spelling() {
        assert_eq!(" CRASH\n".parse::<FaultMode>(), Ok(FaultMode::Crash));
        assert_eq!("fd_leak".parse::<FaultMode>(), Ok(FaultMode::FdLeak));
        assert_eq!(
            "Missing_Dependency".parse::<FaultMode>(),
            Ok(FaultMode::MissingDependency)
        );
    }

    #[test]
    fn abort_mode() {
        assert_eq!("abort".parse::<FaultMode>(), Ok(FaultMode::Abort));
        assert_eq!(" ABORT\n".parse::<FaultMode>(), Ok(FaultMode::Abort));
        assert_eq!(FaultMode::Abort.to_string(), "abort");
        assert_ne!(FaultMode::Abort, FaultMode::Crash);
    }

    #[test]
    fn rejects_unknown() {
        let err = "explode".parse::<FaultMode>().unwrap_err();
        assert!(err.contains("unknown fault mode \"explode\""), "{err}");
        assert!(err.contains("crash, abort, oom"), "{err}");
        assert!("aborted".parse::<FaultMode>().is_err());
    }

    #[test]
    fn path_lookup() {
        let dir = std::env::temp_dir().join(format!("sw-path-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("claude");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.join("notexec");
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path_var = format!("/nonexistent::{}", dir.display());

        assert_eq!(find_in_path("claude", &path_var), Some(exe.clone()));
        assert_eq!(find_in_path("notexec", &path_var), None);
        assert_eq!(find_in_path("nope", &path_var), None);
        assert_eq!(find_in_path(exe.to_str().unwrap(), ""), Some(exe.clone()));
        let bins = vec!["claude".to_string(), "nope".to_string()];
        assert_eq!(first_missing(&bins, &path_var), Some("nope"));
        assert_eq!(first_missing(&bins[..1], &path_var), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fd_leak_respects_max() {
        let (n, err) = leak_fds(Path::new("/dev/null"), 3);
        assert_eq!(n, 3);
        assert!(err.is_none());
        let (n, err) = leak_fds(Path::new("/nonexistent/x"), 3);
        assert_eq!(n, 0);
        assert_eq!(err.unwrap().kind(), io::ErrorKind::NotFound);
    }
}
