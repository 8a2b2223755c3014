//! `sample-worker`: a small, static agent worker used as the realistic target
//! of every worker-recovery-operator test. It follows the shared-directory
//! layout of the "Debugging Worker Crashes" runbook and can simulate the
//! crashes the runbook deals with.
//!
//! # Environment
//!
//! | Variable                  | Default        | Meaning |
//! |---------------------------|----------------|---------|
//! | `WORKER_NAME`             | (required)     | Worker name used in every path below. |
//! | `SHARED_ROOT`             | `/shared`      | Root of the shared directory tree. |
//! | `HEARTBEAT_INTERVAL_SECS` | `2`            | Heartbeat period (fractions allowed, > 0). |
//! | `TASK_DURATION_MS`        | `500`          | Simulated work per task (a task's `"duration_ms"` overrides it). |
//! | `POLL_INTERVAL_MS`        | `200`          | Idle poll period for new tasks / the fault file. |
//! | `METRICS_ADDR`            | `0.0.0.0:9091` | `ip:port` (or `:port`) of the `/metrics` endpoint. |
//! | `FAULT_MODE`              | `none`         | `none`, `crash`, `abort`, `oom`, `leak`, `fd-leak`, `hang`, `missing-dependency`. |
//! | `FAULT_AFTER_SECS`        | `0`            | Delay before `FAULT_MODE` is applied. |
//! | `REQUIRED_BINARIES`       | (unset)        | Comma list that must be on `PATH` at start, else exit 127. `missing-dependency` defaults it to `claude`. |
//! | `OOM_MAX_MIB`             | `1024`         | Safety cap of the `oom` fault (exit 137 if reached without an OOM kill). |
//! | `LEAK_MIB_PER_SEC`        | `4`            | Growth rate of the `leak` fault. |
//! | `LEAK_MAX_MIB`            | `1024`         | Where the `leak` fault stops growing (memory then stays flat). |
//! | `FD_LEAK_MAX`             | `100000`       | Safety cap of the `fd-leak` fault. |
//! | `RESUME_ACTIVE`           | `0`            | `1`: at start, work the tasks a previous run left in `active/` first (taking over its own stale locks). |
//!
//! Invalid configuration: `FATAL: configuration error: ...`, exit code 2.
//!
//! # Shared layout (`<root>` = `SHARED_ROOT`, created at start)
//!
//! * `<root>/workers/<name>/heartbeat.json`: `{"worker","timestamp" (RFC 3339
//!   UTC, ms),"status" ("starting"|"idle"|"working"),"current_task" (id or
//!   null),"progress" (tasks completed since start),"pid"}`, rewritten
//!   atomically every interval by its own thread.
//! * `<root>/workers/<name>/state.json`: read and logged at start if present;
//!   while its `"status"` is `"recovering"` (set by a clean recovery and by a
//!   gradual resume), tasks are taken from `staged/` only.
//! * `<root>/workers/<name>/fault`: one-shot fault trigger (content = mode
//!   name); checked every loop iteration and during a task (every 100 ms),
//!   deleted before acting on it.
//! * `<root>/tasks/<name>/{pending,active,staged,done,failed}/*.json`: tasks
//!   are taken from `staged/` first, then `pending/`, oldest mtime first
//!   (name breaks ties), renamed to `active/`, worked on, renamed to `done/`
//!   (or `failed/` plus `<file>.reason` if the task has `"fail": true`). A task
//!   with `"crash": true` makes the worker exit with code 3 when it starts it
//!   (a poison task).
//!   Malformed files (not JSON, not an object, bad `id`) go to `failed/` with
//!   a `<file>.reason`; nothing is ever deleted. Task id = `"id"` (string or
//!   number), else the file stem.
//! * `<root>/locks/<name>_<id>.lock`: created exclusively before the move to
//!   `active/`, `{"holder","pid","task","acquired_at"}`, removed when the task
//!   ends. A task whose lock file already exists (stale lock) is left where it
//!   is and skipped (logged once).
//! * `<root>/tmp/<name>/<id>.work`: scratch file while a task runs.
//!
//! # Metrics
//!
//! `GET /metrics` (Prometheus text): `worker_up`, `active_tasks`,
//! `task_completed_total`, `task_failed_total`, `heartbeat_timestamp_seconds`,
//! `worker_info{worker,version}`. Other paths: 404. A bind failure is logged
//! and the worker runs on without metrics.
//!
//! # Signals
//!
//! SIGTERM/SIGINT: `INFO: received SIGTERM, exiting`, exit 0 at once (also as
//! PID 1, also while hung). An active task stays in `active/` with its lock.
//!
//! # Fault modes
//!
//! * `crash`: takes one waiting task to `active/` (with lock) if none is
//!   active, logs `FATAL: simulated crash (fault mode crash)...`, exits 3.
//! * `abort`: logs `FATAL: simulated abort (fault mode abort): raising
//!   SIGABRT` and calls `abort()` (through the never-inlined
//!   `worker::simulate_abort` and `fault::abort_now`, so a backtrace of the
//!   core names them): killed by SIGABRT, exit 134, core dumped as
//!   `core_pattern` and `ulimit -c` say (e.g. `--ulimit core=-1`). As PID 1 of
//!   a container the kernel ignores SIGABRT and glibc's `abort()` falls back to
//!   a SIGSEGV (exit 139, still with a core, logged as a WARN first): run it
//!   with `docker run --init` for the real SIGABRT.
//! * `oom`: allocates and touches 1 MiB chunks, logging every 8 MiB, until the
//!   OOM killer kills it (exit 137, `OOMKilled=true` under `-m`).
//! * `leak`: memory grows by `LEAK_MIB_PER_SEC` every second (resident, in tenth-of-a-second
//!   steps, logged every 16 MiB) on a thread of its own while the worker goes on heartbeating
//!   and working, until the OOM killer ends it or `LEAK_MAX_MIB` is held (then it stays flat).
//! * `fd-leak`: opens `/dev/null` until `EMFILE`, logs
//!   `ERROR: Too many open files (os error 24) after N descriptors`, keeps the
//!   descriptors and carries on; heartbeat writes and task polling then fail
//!   (logged, rate-limited) so the heartbeat goes stale. `/metrics` keeps
//!   answering (with a stale `heartbeat_timestamp_seconds`): its blocked
//!   `accept()` had already reserved the lowest free descriptor, so the leak
//!   gets one descriptor less than `ulimit -n` allows (59 of 64 with four
//!   already open).
//! * `hang`: takes one waiting task to `active/` (with lock) if none is
//!   active, writes a last heartbeat, stops heartbeating and blocks forever;
//!   `/metrics` keeps answering (with a stale `heartbeat_timestamp_seconds`).
//! * `missing-dependency`: `FATAL: required dependency 'claude' not found in
//!   PATH`, exit 127 (unless all of `REQUIRED_BINARIES`/`claude` exist).

mod config;
mod fault;
mod heartbeat;
mod log;
mod metrics;
mod state;
mod tasks;
mod timefmt;
mod worker;

use std::net::TcpListener;
use std::sync::Arc;

use config::Config;
use fault::FaultMode;
use heartbeat::Status;
use state::{lock, Shared};
use tasks::Layout;

/// Blocks SIGTERM/SIGINT in every thread (call before spawning any) and
/// waits for them in a dedicated thread. Blocked signals are queued even for
/// PID 1, which would otherwise ignore SIGTERM (no handler installed).
fn install_signal_thread() -> std::io::Result<()> {
    // SAFETY: plain libc signal-mask calls on a locally owned sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid, initialised signal set.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                let name = if sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                log::info(&format!("received {name}, exiting"));
                std::process::exit(0);
            }
        })?;
    Ok(())
}

fn main() {
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            log::fatal(&format!("configuration error: {e}"));
            std::process::exit(2);
        }
    };
    if let Err(e) = install_signal_thread() {
        log::error(&format!("could not set up signal handling: {e}"));
    }
    log::info(&format!(
        "sample-worker {} starting: worker={} pid={} shared_root={} metrics={} heartbeat={:?} task_duration={:?} fault_mode={} fault_after={:?}",
        env!("CARGO_PKG_VERSION"),
        cfg.worker_name,
        std::process::id(),
        cfg.shared_root.display(),
        cfg.metrics_addr,
        cfg.heartbeat_interval,
        cfg.task_duration,
        cfg.fault_mode,
        cfg.fault_after,
    ));

    // Dependency check at start, in every mode (missing-dependency defaults
    // the list to `claude`).
    if let Some(bins) = &cfg.required_binaries {
        worker::check_dependencies(bins);
    } else if cfg.fault_mode == FaultMode::MissingDependency && cfg.fault_after.is_zero() {
        worker::check_dependencies(&["claude".to_string()]);
    }

    let layout = Layout::new(cfg.shared_root.clone(), cfg.worker_name.clone());
    for dir in layout.all_dirs() {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            log::fatal(&format!("cannot create {}: {e}", dir.display()));
            std::process::exit(1);
        }
    }
    worker::report_leftovers(&layout);

    let shared = Arc::new(Shared::default());
    if let Err(e) = heartbeat::beat(&shared, &layout) {
        log::error(&format!("heartbeat write failed: {e}"));
    }

    match TcpListener::bind(cfg.metrics_addr) {
        Ok(listener) => {
            log::info(&format!(
                "metrics listening on http://{}/metrics",
                cfg.metrics_addr
            ));
            let (s, name) = (shared.clone(), cfg.worker_name.clone());
            let spawned = std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || metrics::serve(listener, s, name));
            if let Err(e) = spawned {
                log::error(&format!("could not start metrics thread: {e}"));
            }
        }
        Err(e) => log::error(&format!(
            "metrics endpoint disabled: cannot bind {}: {e}",
            cfg.metrics_addr
        )),
    }

    lock(&shared.hb).status = Status::Idle;
    {
        let (s, l, every) = (shared.clone(), layout.clone(), cfg.heartbeat_interval);
        let spawned = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || heartbeat::run(s, l, every));
        if let Err(e) = spawned {
            log::error(&format!("could not start heartbeat thread: {e}"));
        }
    }
    if cfg.fault_mode != FaultMode::None && !cfg.fault_after.is_zero() {
        log::info(&format!(
            "fault mode {} scheduled in {:?}",
            cfg.fault_mode, cfg.fault_after
        ));
    }
    log::info("ready: watching staged/ and pending/");
    let resume = cfg.resume_active;
    let mut w = worker::Worker::new(cfg, layout, shared);
    if resume {
        w.resume_left_active();
    }
    w.run();
}
