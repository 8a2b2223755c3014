//! The task-processing loop and fault injection (the I/O parts).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, DEFAULT_PATH};
use crate::fault::{self, FaultMode};
use crate::heartbeat::{self, Status};
use crate::log::{self, Level, Throttle};
use crate::state::{lock, Shared};
use crate::tasks::{self, file_safe, Layout, Task};
use crate::timefmt::now_rfc3339;

/// Exit code of the `crash` fault.
pub const EXIT_CRASH: i32 = 3;
/// Exit code when a required binary is missing (what a shell returns).
pub const EXIT_MISSING_DEPENDENCY: i32 = 127;

/// A task this process has claimed (moved to `active/`, lock held).
pub struct ActiveTask {
    pub task: Task,
    pub file_name: OsString,
    pub from: &'static str,
    pub active_path: PathBuf,
    pub lock_path: PathBuf,
    pub scratch_path: PathBuf,
}

pub struct Worker {
    cfg: Config,
    layout: Layout,
    shared: Arc<Shared>,
    start: Instant,
    env_fault_done: bool,
    loop_errors: Throttle,
    fault_file_errors: Throttle,
    /// Tasks already reported as blocked by an existing lock file.
    lock_warned: HashSet<String>,
    /// Whether the last look at state.json found `"status": "recovering"`.
    recovering: bool,
}

impl Worker {
    pub fn new(cfg: Config, layout: Layout, shared: Arc<Shared>) -> Self {
        let env_fault_done = cfg.fault_mode == FaultMode::None;
        Worker {
            cfg,
            layout,
            shared,
            start: Instant::now(),
            env_fault_done,
            loop_errors: Throttle::new(Duration::from_secs(10)),
            fault_file_errors: Throttle::new(Duration::from_secs(10)),
            lock_warned: HashSet::new(),
            recovering: false,
        }
    }

    /// `RESUME_ACTIVE=1`: work the tasks a previous run of this worker left in `active/`
    /// before anything else. Their lock files, held by this worker's name, are its own stale
    /// ones and are taken over; a lock held by another worker leaves the task alone.
    pub fn resume_left_active(&mut self) {
        let dir = self.layout.tasks("active");
        let names = match list_candidates(&dir) {
            Ok(n) => n,
            Err(e) => {
                log::warn(&format!("could not list active/: {e}"));
                return;
            }
        };
        for name in names {
            let path = dir.join(&name);
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(task) = tasks::parse_task(&bytes, tasks::file_stem(&name.to_string_lossy()))
            else {
                continue;
            };
            let lock_path = self.layout.lock_file(&task.id);
            let holder = fs::read(&lock_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("holder").and_then(|h| h.as_str()).map(String::from));
            match holder.as_deref() {
                Some(h) if h != self.layout.name => continue,
                Some(_) => {
                    let _ = fs::remove_file(&lock_path);
                }
                None => {}
            }
            let body = tasks::lock_json(
                &self.layout.name,
                std::process::id(),
                &task.id,
                &now_rfc3339(),
            );
            if create_new(&lock_path, body.as_bytes()).is_err() {
                continue;
            }
            log::info(&format!("resuming task {} left in active/", task.id));
            let scratch_path = self
                .layout
                .tmp_dir()
                .join(format!("{}.work", file_safe(&task.id)));
            self.work(ActiveTask {
                task,
                file_name: name,
                from: "active",
                active_path: path,
                lock_path,
                scratch_path,
            });
        }
    }

    /// Main loop; never returns (exit happens via signals or faults).
    pub fn run(&mut self) -> ! {
        loop {
            self.check_faults(None);
            match self.claim_next() {
                Ok(Some(t)) => self.work(t),
                Ok(None) => std::thread::sleep(self.cfg.poll_interval),
                Err(e) => {
                    self.loop_errors
                        .log(Level::Error, &format!("task poll failed: {e}"));
                    std::thread::sleep(self.cfg.poll_interval);
                }
            }
        }
    }

    // ----- task handling -------------------------------------------------

    /// Picks the next task (`staged/` first, then `pending/`, oldest first),
    /// takes its lock and moves it to `active/`. While state.json says
    /// `"status": "recovering"` (a gradual resume is releasing tasks in
    /// batches), only `staged/` is taken from.
    fn claim_next(&mut self) -> io::Result<Option<ActiveTask>> {
        let recovering = is_recovering(&self.layout.state());
        if recovering != self.recovering {
            self.recovering = recovering;
            log::info(if recovering {
                "state.json says recovering: taking tasks from staged/ only"
            } else {
                "state.json no longer says recovering: taking tasks from staged/ and pending/"
            });
        }
        let sources: &[&'static str] = if recovering {
            &["staged"]
        } else {
            &["staged", "pending"]
        };
        for &from in sources {
            let dir = self.layout.tasks(from);
            for name in list_candidates(&dir)? {
                if let Some(t) = self.try_claim(from, &dir, name)? {
                    return Ok(Some(t));
                }
            }
        }
        Ok(None)
    }

    fn try_claim(
        &mut self,
        from: &'static str,
        dir: &Path,
        name: OsString,
    ) -> io::Result<Option<ActiveTask>> {
        let path = dir.join(&name);
        let name_str = name.to_string_lossy().into_owned();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let task = match tasks::parse_task(&bytes, tasks::file_stem(&name_str)) {
            Ok(t) => t,
            Err(reason) => {
                self.reject(from, &path, &name, &reason);
                return Ok(None);
            }
        };

        let lock_path = self.layout.lock_file(&task.id);
        let lock_body = tasks::lock_json(
            &self.layout.name,
            std::process::id(),
            &task.id,
            &now_rfc3339(),
        );
        match create_new(&lock_path, lock_body.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if self.lock_warned.insert(task.id.clone()) {
                    log::warn(&format!(
                        "task {} blocked: lock {} already exists (stale lock?); leaving {from}/{name_str} untouched",
                        task.id,
                        lock_path.display()
                    ));
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        self.lock_warned.remove(&task.id);

        let active_path = self.layout.tasks("active").join(&name);
        if let Err(e) = fs::rename(&path, &active_path) {
            let _ = fs::remove_file(&lock_path);
            return if e.kind() == io::ErrorKind::NotFound {
                Ok(None) // someone else moved it away meanwhile
            } else {
                Err(e)
            };
        }
        let scratch_path = self
            .layout
            .tmp_dir()
            .join(format!("{}.work", file_safe(&task.id)));
        Ok(Some(ActiveTask {
            task,
            file_name: name,
            from,
            active_path,
            lock_path,
            scratch_path,
        }))
    }

    /// Moves a malformed task file to `failed/` with a `<file>.reason` sibling.
    fn reject(&mut self, from: &str, path: &Path, name: &OsString, reason: &str) {
        let name_str = name.to_string_lossy();
        let failed = self.layout.tasks("failed").join(name);
        if let Err(e) = fs::rename(path, &failed) {
            self.loop_errors.log(
                Level::Error,
                &format!(
                    "malformed task file {from}/{name_str} could not be moved to failed/: {e}"
                ),
            );
            return;
        }
        let reason_path = reason_path(&failed);
        if let Err(e) = fs::write(&reason_path, format!("{reason}\n")) {
            log::error(&format!("could not write {}: {e}", reason_path.display()));
        }
        self.shared.metrics.failed.fetch_add(1, Ordering::Relaxed);
        log::error(&format!(
            "task file {from}/{name_str} is malformed ({reason}); moved to failed/"
        ));
    }

    /// Bookkeeping when a task becomes active.
    fn start_task(&self, t: &ActiveTask) {
        self.shared.metrics.active.store(1, Ordering::Relaxed);
        {
            let mut hb = lock(&self.shared.hb);
            hb.status = Status::Working;
            hb.current_task = Some(t.task.id.clone());
        }
        if let Err(e) = fs::write(&t.scratch_path, format!("task {} in progress\n", t.task.id)) {
            log::warn(&format!(
                "task {}: could not write scratch file {}: {e}",
                t.task.id,
                t.scratch_path.display()
            ));
        }
        log::info(&format!(
            "task {} started (type {}, from {}/{})",
            t.task.id,
            t.task.kind.as_deref().unwrap_or("-"),
            t.from,
            t.file_name.to_string_lossy()
        ));
    }

    fn work(&mut self, t: ActiveTask) {
        self.start_task(&t);
        if t.task.crash {
            log::error(&format!(
                "FATAL: task {} crashes the worker (\"crash\": true); exiting with code 3",
                t.task.id
            ));
            std::process::exit(3);
        }
        let duration = t.task.duration.unwrap_or(self.cfg.task_duration);
        let deadline = Instant::now() + duration;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
            self.check_faults(Some(&t));
        }
        self.finish(t);
    }

    fn finish(&mut self, t: ActiveTask) {
        let id = &t.task.id;
        let (dest_dir, ok) = if t.task.fail {
            ("failed", false)
        } else {
            ("done", true)
        };
        let dest = self.layout.tasks(dest_dir).join(&t.file_name);
        match fs::rename(&t.active_path, &dest) {
            Ok(()) => {
                if let Err(e) = fs::remove_file(&t.lock_path) {
                    log::error(&format!(
                        "task {id}: could not remove lock {}: {e}",
                        t.lock_path.display()
                    ));
                }
                if ok {
                    self.shared.metrics.completed.fetch_add(1, Ordering::Relaxed);
                    log::info(&format!("task {id} completed (moved to done/)"));
                } else {
                    let reason = "task requested failure (\"fail\": true)";
                    if let Err(e) = fs::write(reason_path(&dest), format!("{reason}\n")) {
                        log::error(&format!("task {id}: could not write reason file: {e}"));
                    }
                    self.shared.metrics.failed.fetch_add(1, Ordering::Relaxed);
                    log::error(&format!("task {id} failed: {reason} (moved to failed/)"));
                }
            }
            Err(e) => log::error(&format!(
                "task {id}: could not move {} to {dest_dir}/: {e}; task left in active/ with its lock",
                t.active_path.display()
            )),
        }
        let _ = fs::remove_file(&t.scratch_path);
        self.shared.metrics.active.store(0, Ordering::Relaxed);
        let mut hb = lock(&self.shared.hb);
        hb.status = Status::Idle;
        hb.current_task = None;
    }

    // ----- faults --------------------------------------------------------

    /// Checks the `FAULT_MODE` timer and the one-shot control file.
    fn check_faults(&mut self, active: Option<&ActiveTask>) {
        if !self.env_fault_done && self.start.elapsed() >= self.cfg.fault_after {
            self.env_fault_done = true;
            self.apply_fault(self.cfg.fault_mode, active, "FAULT_MODE");
        }
        let path = self.layout.fault_file();
        let content = match fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                self.fault_file_errors.log(
                    Level::Error,
                    &format!("could not read fault file {}: {e}", path.display()),
                );
                return;
            }
        };
        // One-shot: delete before acting so a restart does not re-trigger it.
        if let Err(e) = fs::remove_file(&path) {
            log::error(&format!(
                "could not delete fault file {}: {e}",
                path.display()
            ));
        }
        match content.parse::<FaultMode>() {
            Ok(mode) => self.apply_fault(mode, active, "fault file"),
            Err(e) => log::error(&format!("ignoring fault file {}: {e}", path.display())),
        }
    }

    fn apply_fault(&mut self, mode: FaultMode, active: Option<&ActiveTask>, source: &str) {
        if mode == FaultMode::None {
            log::info(&format!(
                "fault mode none requested by {source}: nothing to do"
            ));
            return;
        }
        log::warn(&format!(
            "fault injection: mode {mode} triggered by {source}"
        ));
        match mode {
            FaultMode::None => {}
            FaultMode::Crash => {
                let claimed = if active.is_none() {
                    self.claim_for_fault()
                } else {
                    None
                };
                let task = active.or(claimed.as_ref()).map(|t| t.task.id.clone());
                match task {
                    Some(id) => log::fatal(&format!(
                        "simulated crash (fault mode crash) while processing task {id}; exiting with code {EXIT_CRASH}"
                    )),
                    None => log::fatal(&format!(
                        "simulated crash (fault mode crash); exiting with code {EXIT_CRASH}"
                    )),
                }
                std::process::exit(EXIT_CRASH);
            }
            FaultMode::Abort => simulate_abort(active.map(|t| t.task.id.as_str())),
            FaultMode::Oom => {
                log::warn(&format!(
                    "fault mode oom: allocating memory in 1 MiB chunks until the OOM killer strikes (cap {} MiB)",
                    self.cfg.oom_max_mib
                ));
                fault::eat_memory(self.cfg.oom_max_mib);
            }
            FaultMode::Leak => {
                let (rate, max) = (self.cfg.leak_mib_per_sec, self.cfg.leak_max_mib);
                log::warn(&format!(
                    "fault mode leak: memory grows by {rate} MiB/s up to {max} MiB while the worker goes on"
                ));
                std::thread::spawn(move || fault::leak_memory(rate, max));
            }
            FaultMode::FdLeak => self.leak_fds(),
            FaultMode::Hang => {
                let claimed = if active.is_none() {
                    self.claim_for_fault()
                } else {
                    None
                };
                let task = active.or(claimed.as_ref()).map(|t| t.task.id.clone());
                // One last beat showing what we hang on, then silence.
                if let Err(e) = heartbeat::beat(&self.shared, &self.layout) {
                    log::error(&format!("heartbeat write failed: {e}"));
                }
                self.shared.hb_stopped.store(true, Ordering::SeqCst);
                log::warn(&format!(
                    "simulated hang (fault mode hang){}: heartbeat stopped, blocking forever (metrics keep answering)",
                    task.map(|id| format!(" while holding task {id}"))
                        .unwrap_or_default()
                ));
                loop {
                    std::thread::park();
                }
            }
            FaultMode::MissingDependency => {
                let bins = self
                    .cfg
                    .required_binaries
                    .clone()
                    .unwrap_or_else(|| vec!["claude".to_string()]);
                check_dependencies(&bins);
                log::warn(&format!(
                    "fault mode missing-dependency: all required binaries ({}) are present; continuing",
                    bins.join(",")
                ));
            }
        }
    }

    /// For crash/hang: take one task to active (with lock) if any is waiting.
    fn claim_for_fault(&mut self) -> Option<ActiveTask> {
        match self.claim_next() {
            Ok(Some(t)) => {
                self.start_task(&t);
                Some(t)
            }
            Ok(None) => None,
            Err(e) => {
                log::error(&format!("task poll failed: {e}"));
                None
            }
        }
    }

    fn leak_fds(&mut self) {
        let limits = fault::nofile_limits()
            .map(|(s, h)| format!("soft={s}, hard={h}"))
            .unwrap_or_else(|| "unknown".into());
        log::warn(&format!(
            "fault mode fd-leak: opening file descriptors without closing them (ulimit -n {limits})"
        ));
        let target = if Path::new("/dev/null").exists() {
            PathBuf::from("/dev/null")
        } else {
            let p = self.layout.tmp_dir().join("fd-leak");
            let _ = fs::write(&p, b"");
            p
        };
        let (n, err) = fault::leak_fds(&target, self.cfg.fd_leak_max);
        match err {
            Some(e) => log::error(&format!("{e} after {n} descriptors")),
            None => log::error(&format!(
                "fd-leak stopped at FD_LEAK_MAX={} leaked descriptors without hitting the limit",
                self.cfg.fd_leak_max
            )),
        }
    }
}

/// `abort` fault: logs the FATAL line, then dies by SIGABRT with a core dump
/// (`fault::abort_now`). Never inlined, so the core's backtrace shows
/// `sample_worker::worker::simulate_abort` calling `sample_worker::fault::abort_now`.
#[inline(never)]
fn simulate_abort(active_task: Option<&str>) -> ! {
    if std::process::id() == 1 {
        // The kernel drops SIGABRT (any signal left at its default action but
        // SIGKILL/SIGSTOP) for the init of a PID namespace; glibc's abort()
        // then falls back to `hlt`, i.e. a SIGSEGV, still with a core dump.
        log::warn(
            "running as PID 1: the kernel ignores SIGABRT for a PID namespace's init, so this \
             ends in SIGSEGV (exit 139) instead; run the container with --init for a real SIGABRT",
        );
    }
    match active_task {
        Some(id) => log::fatal(&format!(
            "simulated abort (fault mode abort) while processing task {id}: raising SIGABRT"
        )),
        None => log::fatal("simulated abort (fault mode abort): raising SIGABRT"),
    }
    fault::abort_now()
}

/// Exits with 127 if one of `bins` is not on PATH.
pub fn check_dependencies(bins: &[String]) {
    let path_var = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string());
    if let Some(missing) = fault::first_missing(bins, &path_var) {
        log::fatal(&format!(
            "required dependency '{missing}' not found in PATH"
        ));
        std::process::exit(EXIT_MISSING_DEPENDENCY);
    }
}

/// `<file>.reason` next to a failed task file.
fn reason_path(task_file: &Path) -> PathBuf {
    let mut s = task_file.as_os_str().to_os_string();
    s.push(".reason");
    PathBuf::from(s)
}

/// Whether state.json holds `"status": "recovering"`. A missing, unreadable
/// or malformed file means not recovering (the worker keeps working).
fn is_recovering(path: &Path) -> bool {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("status").and_then(|s| s.as_str()) == Some("recovering"))
}

/// Task file candidates of a directory, oldest mtime first.
fn list_candidates(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut v = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(tasks::is_task_file_name) {
            continue;
        }
        // Skip entries that vanish or are not regular files.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        v.push((mtime, name));
    }
    Ok(tasks::order_candidates(v))
}

/// Creates `path` exclusively (fails with AlreadyExists) and writes `body`.
fn create_new(path: &Path, body: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    if let Err(e) = f.write_all(body) {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Startup report of what a previous run left behind (for the operator).
pub fn report_leftovers(layout: &Layout) {
    match fs::read(layout.state()) {
        Ok(b) => match serde_json::from_slice::<serde_json::Value>(&b) {
            Ok(v) => log::info(&format!("state.json: {v}")),
            Err(e) => log::warn(&format!("state.json is not valid JSON: {e}")),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => log::info("no state.json"),
        Err(e) => log::warn(&format!("could not read state.json: {e}")),
    }
    if let Ok(names) = list_candidates(&layout.tasks("active")) {
        if !names.is_empty() {
            let names: Vec<_> = names.iter().map(|n| n.to_string_lossy()).collect();
            log::warn(&format!(
                "{} task(s) left in active/ by a previous run, not touched: {}",
                names.len(),
                names.join(", ")
            ));
        }
    }
    if let Ok(rd) = fs::read_dir(layout.locks_dir()) {
        let prefix = format!("{}_", layout.name);
        let mut locks: Vec<String> = rd
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix) && n.ends_with(".lock"))
            .collect();
        locks.sort();
        if !locks.is_empty() {
            log::warn(&format!(
                "{} lock file(s) of this worker already present: {}",
                locks.len(),
                locks.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_in(root: &Path) -> Worker {
        let root = root.to_string_lossy().into_owned();
        let cfg = Config::from_lookup(|k| match k {
            "WORKER_NAME" => Some("w".into()),
            "SHARED_ROOT" => Some(root.clone()),
            _ => None,
        })
        .unwrap();
        let layout = Layout::new(cfg.shared_root.clone(), cfg.worker_name.clone());
        for d in layout.all_dirs() {
            fs::create_dir_all(d).unwrap();
        }
        Worker::new(cfg, layout, Arc::new(Shared::default()))
    }

    /// Writes a task file and pins its mtime to `UNIX_EPOCH + secs`, so the
    /// claim order (oldest mtime first, name breaks ties) is set by the test
    /// and not by when the file system clock happens to tick.
    fn write_task(path: &Path, body: &str, mtime_secs: u64) {
        fs::write(path, body).unwrap();
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime_secs))
            .unwrap();
    }

    #[test]
    fn a_recovering_worker_takes_only_staged_tasks() {
        let root = std::env::temp_dir().join(format!("sw-recovering-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mut w = worker_in(&root);
        let l = w.layout.clone();
        fs::create_dir_all(l.worker_dir()).unwrap();
        write_task(
            &l.tasks("pending").join("p.json"),
            r#"{"id":"p"}"#,
            1_700_000_000,
        );
        fs::write(l.state(), r#"{"status":"recovering","recovery_count":1}"#).unwrap();
        assert!(w.claim_next().unwrap().is_none(), "pending/ is held back");
        assert!(l.tasks("pending").join("p.json").exists());
        write_task(
            &l.tasks("staged").join("s.json"),
            r#"{"id":"s"}"#,
            1_700_000_010,
        );
        let t = w.claim_next().unwrap().unwrap();
        assert_eq!(t.task.id, "s");
        w.finish(t);
        // Back to normal: pending/ is taken from again.
        fs::write(l.state(), r#"{"status":"running","recovery_count":1}"#).unwrap();
        let t = w.claim_next().unwrap().unwrap();
        assert_eq!(t.task.id, "p");
        w.finish(t);
        // A malformed state file does not stop the worker.
        fs::write(l.state(), b"{oops").unwrap();
        assert!(!is_recovering(&l.state()));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn left_active_tasks_are_resumed_with_their_own_stale_lock_taken_over() {
        let root = std::env::temp_dir().join(format!("sw-resume-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mut w = worker_in(&root);
        let l = w.layout.clone();
        write_task(
            &l.tasks("active").join("a.json"),
            r#"{"id":"a","duration_ms":1}"#,
            1_700_000_000,
        );
        write_task(
            &l.tasks("active").join("b.json"),
            r#"{"id":"b","duration_ms":1}"#,
            1_700_000_001,
        );
        fs::write(l.lock_file("a"), r#"{"holder":"w","pid":1,"task":"a"}"#).unwrap();
        fs::write(l.lock_file("b"), r#"{"holder":"other","pid":1,"task":"b"}"#).unwrap();
        w.resume_left_active();
        assert!(
            l.tasks("done").join("a.json").exists(),
            "its own task is resumed"
        );
        assert!(!l.lock_file("a").exists());
        assert!(
            l.tasks("active").join("b.json").exists(),
            "another holder's task is left"
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn claim_and_finish_flow() {
        let root = std::env::temp_dir().join(format!("sw-flow-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mut w = worker_in(&root);
        let l = w.layout.clone();
        // Explicit mtimes: bad.json is the oldest pending file, so it is
        // looked at (and set aside) before p.json; s.json is the newest file
        // of all, so it is claimed first only because staged/ comes first.
        let t0 = 1_700_000_000;
        write_task(&l.tasks("pending").join("bad.json"), "{oops", t0);
        write_task(&l.tasks("pending").join("p.json"), r#"{"id":"p"}"#, t0 + 10);
        write_task(
            &l.tasks("staged").join("s.json"),
            r#"{"id":"s","fail":true}"#,
            t0 + 20,
        );

        // staged/ first; lock and active file exist while it runs
        let t = w.claim_next().unwrap().unwrap();
        assert_eq!(t.task.id, "s");
        assert!(l.tasks("active").join("s.json").exists());
        let lock: serde_json::Value =
            serde_json::from_slice(&fs::read(l.lock_file("s")).unwrap()).unwrap();
        assert_eq!(lock["holder"], "w");
        w.finish(t);
        assert!(l.tasks("failed").join("s.json").exists());
        assert!(l.tasks("failed").join("s.json.reason").exists());
        assert!(!l.lock_file("s").exists());

        // the malformed file is set aside on the way to the good one
        let t = w.claim_next().unwrap().unwrap();
        assert_eq!(t.task.id, "p");
        assert!(l.tasks("failed").join("bad.json").exists());
        let reason = fs::read_to_string(l.tasks("failed").join("bad.json.reason")).unwrap();
        assert!(reason.starts_with("invalid JSON"), "{reason}");
        w.finish(t);
        assert!(l.tasks("done").join("p.json").exists());
        assert_eq!(w.shared.metrics.completed.load(Ordering::Relaxed), 1);
        assert_eq!(w.shared.metrics.failed.load(Ordering::Relaxed), 2);

        // a stale lock blocks its task, which stays in pending/
        write_task(&l.tasks("pending").join("q.json"), r#"{"id":"q"}"#, t0 + 30);
        fs::write(l.lock_file("q"), "{}").unwrap();
        assert!(w.claim_next().unwrap().is_none());
        assert!(l.tasks("pending").join("q.json").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn candidates_oldest_mtime_first_then_name() {
        let dir = std::env::temp_dir().join(format!("sw-order-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let t0 = 1_700_000_000;
        // mtime order deliberately differs from name order
        write_task(&dir.join("a.json"), "{}", t0 + 30);
        write_task(&dir.join("c.json"), "{}", t0 + 10);
        write_task(&dir.join("b.json"), "{}", t0 + 10);
        write_task(&dir.join("z.json"), "{}", t0);
        // not candidates: hidden, wrong suffix, directory
        write_task(&dir.join(".h.json"), "{}", t0);
        write_task(&dir.join("x.txt"), "{}", t0);
        fs::create_dir(dir.join("d.json")).unwrap();
        assert_eq!(
            list_candidates(&dir).unwrap(),
            vec!["z.json", "b.json", "c.json", "a.json"]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reason_file_name() {
        assert_eq!(
            reason_path(Path::new("/s/tasks/w/failed/t1.json")),
            PathBuf::from("/s/tasks/w/failed/t1.json.reason")
        );
    }
}
