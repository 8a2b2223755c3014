//! The crash dumps of a `Debug` run ([`crate::crash`]): where its debug copy dumps, and the
//! cores it dumped, recorded in the run's status with their analysis.

use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::{steps::RUN_LABEL, Error};
use crate::{
    blocking, confined,
    controller::Context,
    crash::{self, core_file, placement::Placement, Analyzer, FoundCore},
    crd::worker::{ResolvedPaths, Worker},
    crd::worker_recovery::{
        AnalysisState, CoreAnalysis, CoreDump, StepName, WorkerRecovery, WorkerRecoveryStatus,
    },
    runtime::{BindMount, ContainerInfo, Job},
};

/// Key of the DebugStart step's details naming the run's core directory.
pub const CORE_DIR_DETAIL: &str = "coreDumpDir";

/// Where the debug copy's cores go.
pub struct CoreSetup {
    /// The run's core directory, mounted into the copy; `None` when cores are not collected.
    pub dir: Option<PathBuf>,
    pub mount: Option<BindMount>,
    pub working_dir: Option<String>,
    /// What the step says about it.
    pub note: String,
}

/// Prepare the run's core directory in the Worker's `diagnostics.coreDumpDir` and say where
/// to mount it in the debug copy, from the host's `kernel.core_pattern`.
pub async fn setup(
    ctx: &Context,
    rec: &WorkerRecovery,
    paths: &crate::crd::worker::ResolvedPaths,
    dry_run: bool,
) -> CoreSetup {
    let none = |note: String| CoreSetup {
        dir: None,
        mount: None,
        working_dir: None,
        note,
    };
    let Some(base) = &paths.core_dump_dir else {
        return none("core dumps are not collected (no spec.diagnostics.coreDumpDir)".into());
    };
    let placement = match ctx.host.core_pattern().await {
        Ok(pattern) => Placement::for_pattern(&pattern),
        Err(why) => return none(format!("core dumps are not collected: {why}")),
    };
    let Some((target, start_in_it)) = placement.mount_point() else {
        let Placement::Elsewhere(why) = &placement else {
            unreachable!("only Elsewhere has no mount point")
        };
        return none(format!("core dumps are not collected: {why}"));
    };
    let dir = base.join(run_dir_name(rec));
    if !dry_run {
        let (root, made) = (paths.trusted_root.clone(), dir.clone());
        if let Err(e) = on_pool(move || confined::make_dir(&root, &made, crash::RUN_DIR_MODE)).await
        {
            return none(format!("core dumps are not collected: {e}"));
        }
    }
    CoreSetup {
        mount: Some(BindMount {
            host: dir.clone(),
            target: target.to_string(),
            read_only: false,
        }),
        working_dir: start_in_it.then(|| target.to_string()),
        note: format!("cores go to {}", dir.display()),
        dir: Some(dir),
    }
}

/// Run a file operation on the blocking pool; its failure, or the pool's, in words.
async fn on_pool(
    f: impl FnOnce() -> Result<(), confined::FsError> + Send + 'static,
) -> Result<(), String> {
    match blocking::run(f).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Remove the run's core directory with the run (as its debug copy is): the cores are the
/// run's evidence, and kept as long as it is. `None` when the directory was kept because the
/// Worker is gone or not admitted (nothing is removed without a confined root).
pub async fn remove(ctx: &Context, rec: &WorkerRecovery, worker: Option<&Worker>) -> Option<u64> {
    let admission = ctx.admit(worker?).await.ok()?;
    let dir = run_dir(&admission.paths, rec, rec.status.as_ref()?)?;
    let root = admission.paths.trusted_root.clone();
    match blocking::run(move || confined::remove_dir_tree(&root, &dir)).await {
        Ok(Ok(removed)) => Some(removed),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not remove the run's core directory");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not remove the run's core directory");
            None
        }
    }
}

/// `<run>-<first 8 characters of its UID>`: a run deleted and created again under its name
/// does not take the cores of the first for its own.
fn run_dir_name(rec: &WorkerRecovery) -> String {
    let uid = rec.uid().unwrap_or_default();
    format!("{}-{}", rec.name_any(), &uid[..uid.len().min(8)])
}

/// The run's core directory: the one its DebugStart step recorded, when that is where this
/// run's directory belongs in the Worker's `coreDumpDir` now. A path is never taken from status
/// alone: it is compared, then computed.
fn run_dir(
    paths: &ResolvedPaths,
    rec: &WorkerRecovery,
    status: &WorkerRecoveryStatus,
) -> Option<PathBuf> {
    let expected = paths.core_dump_dir.as_ref()?.join(run_dir_name(rec));
    (recorded_dir(status)? == expected).then_some(expected)
}

/// The run's core directory, as its DebugStart step recorded it.
pub fn recorded_dir(status: &WorkerRecoveryStatus) -> Option<PathBuf> {
    let step = status
        .steps
        .iter()
        .find(|s| s.name == StepName::DebugStart)?;
    step.details
        .get(CORE_DIR_DETAIL)?
        .first()
        .map(PathBuf::from)
}

/// How often a finished `Debug` run whose copy still runs looks for its cores.
pub const CORE_POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// Look at the run's debug copy and record the cores it dumped: `(status changed, copy still
/// running)`. Nothing is recorded while it runs (a core is complete once its process is gone).
pub async fn look(
    ctx: &Context,
    rec: &WorkerRecovery,
    paths: &ResolvedPaths,
    status: &mut WorkerRecoveryStatus,
) -> Result<(bool, bool), Error> {
    let Some(name) = status
        .steps
        .iter()
        .find(|s| s.name == StepName::DebugStart)
        .and_then(|s| s.details.get("container")?.first().cloned())
    else {
        return Ok((false, false));
    };
    // Only the copy this run labelled is the run's.
    let copy = ctx
        .docker
        .inspect(&name)
        .await?
        .filter(|c| c.labels.get(RUN_LABEL) == Some(&run_key(rec)));
    let running = copy.as_ref().is_some_and(|c| c.running);
    if running {
        return Ok((false, true));
    }
    let changed = collect(ctx, rec, paths, copy.as_ref(), status).await?;
    Ok((changed, false))
}

/// Record the cores in the run's directory that it has not recorded yet. `true` when the
/// status changed.
async fn collect(
    ctx: &Context,
    rec: &WorkerRecovery,
    paths: &ResolvedPaths,
    copy: Option<&ContainerInfo>,
    status: &mut WorkerRecoveryStatus,
) -> Result<bool, Error> {
    let Some(dir) = run_dir(paths, rec, status) else {
        return Ok(false);
    };
    let trusted_root = paths.trusted_root.as_path();
    if status.core_dumps.len() >= crash::MAX_CORES {
        return Ok(false);
    }
    let known: Vec<String> = status.core_dumps.iter().map(|c| c.file.clone()).collect();
    let max = crash::MAX_CORES - known.len();
    let root = trusted_root.to_path_buf();
    let found = blocking::run(move || crash::find_new(&root, &dir, &known, max)).await?;
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for core dumps");
            return Ok(false);
        }
    };
    let changed = !found.is_empty();
    for core in found {
        let index = status.core_dumps.len();
        let dump = record(ctx, rec, trusted_root, copy, core, index).await;
        announce(ctx, rec, &dump).await;
        status.core_dumps.push(dump);
    }
    Ok(changed)
}

/// One core as the run records it, analyzed when an analyzer is configured.
async fn record(
    ctx: &Context,
    rec: &WorkerRecovery,
    trusted_root: &Path,
    copy: Option<&ContainerInfo>,
    core: FoundCore,
    index: usize,
) -> CoreDump {
    let info = core.info.as_ref().ok();
    let analysis = match (&ctx.core_analyzer, &core.info) {
        (None, _) => CoreAnalysis {
            state: AnalysisState::NotConfigured,
            message: Some("no analyzer image is configured (--core-analyzer-image)".into()),
            backtrace: None,
        },
        (Some(_), Err(why)) => failed(format!("not read as a core: {why}")),
        (Some(analyzer), Ok(info)) => {
            analyze(ctx, rec, analyzer, trusted_root, copy, &core, info, index).await
        }
    };
    CoreDump {
        file: core.path.display().to_string(),
        size_bytes: core.size,
        time: core.modified.map(Time),
        signal: info.and_then(|i| i.signal).map(core_file::signal_name),
        command: info.and_then(|i| i.command.clone()),
        executable: info.and_then(|i| i.executable.clone()),
        analysis,
    }
}

fn failed(message: String) -> CoreAnalysis {
    CoreAnalysis {
        state: AnalysisState::Failed,
        message: Some(message),
        backtrace: None,
    }
}

/// Copy the executable out of the debug copy next to the core, then run the analyzer on both.
#[allow(clippy::too_many_arguments)]
async fn analyze(
    ctx: &Context,
    rec: &WorkerRecovery,
    analyzer: &Analyzer,
    trusted_root: &Path,
    copy: Option<&ContainerInfo>,
    core: &FoundCore,
    info: &core_file::CoreInfo,
    index: usize,
) -> CoreAnalysis {
    let Some(executable) = &info.executable else {
        return failed("the core names no executable".into());
    };
    let Some(copy) = copy else {
        return failed("the debug copy is gone: its executable cannot be copied".into());
    };
    let bytes = match ctx
        .docker
        .copy_file_out(&copy.id, executable, crash::MAX_EXECUTABLE_BYTES)
        .await
    {
        Ok(bytes) => bytes,
        Err(e) => {
            return failed(format!(
                "cannot copy {executable} out of the debug copy: {e}"
            ))
        }
    };
    let name = core.path.file_name().unwrap_or_default().to_string_lossy();
    let exe_path = core.path.with_file_name(format!(".{name}.executable"));
    let (root, placed) = (trusted_root.to_path_buf(), exe_path.clone());
    if let Err(e) = on_pool(move || confined::place_file(&root, &placed, &bytes, 0o400)).await {
        return failed(format!("cannot keep the executable next to the core: {e}"));
    }
    let exe_mount = Analyzer::executable_mount(executable);
    let job = Job {
        name: format!("{}-core-{index}", run_dir_name(rec)),
        image: analyzer.image.clone(),
        command: Analyzer::command(&exe_mount),
        mounts: vec![
            read_only(&core.path, crash::CORE_MOUNT),
            read_only(&exe_path, &exe_mount),
        ],
        labels: [(RUN_LABEL.to_string(), run_key(rec))].into(),
        timeout: analyzer.timeout,
        memory_bytes: analyzer.memory_bytes,
    };
    match ctx.docker.run_job(&job, crash::MAX_BACKTRACE_BYTES).await {
        Ok(out) => CoreAnalysis {
            state: match out.exit_code {
                Some(0) => AnalysisState::Analyzed,
                _ => AnalysisState::Failed,
            },
            message: Some(match out.exit_code {
                Some(code) => format!("{} exited with {code}", analyzer.image),
                None => format!(
                    "{} was stopped after {}s",
                    analyzer.image,
                    analyzer.timeout.as_secs()
                ),
            }),
            backtrace: Some(crash::cap_backtrace(&out.output, out.truncated)),
        },
        Err(e) => failed(format!("the analyzer did not run: {e}")),
    }
}

fn read_only(host: &Path, target: &str) -> BindMount {
    BindMount {
        host: host.to_path_buf(),
        target: target.into(),
        read_only: true,
    }
}

fn run_key(rec: &WorkerRecovery) -> String {
    format!("{}/{}", rec.namespace().unwrap_or_default(), rec.name_any())
}

/// A Warning Event per core: what dumped, on which signal, and where the backtrace is.
async fn announce(ctx: &Context, rec: &WorkerRecovery, dump: &CoreDump) {
    let what = dump.executable.as_deref().unwrap_or("the debug copy");
    let signal = dump.signal.as_deref().unwrap_or("an unknown signal");
    let analysis = match dump.analysis.state {
        AnalysisState::Analyzed => "its backtrace is in the run's status and the post-mortem",
        AnalysisState::NotConfigured => "not analyzed: no analyzer image is configured",
        AnalysisState::Failed => "the analysis failed (see the run's status)",
    };
    let message = format!(
        "{what} dumped core {} ({} bytes) on {signal}; {analysis}",
        dump.file, dump.size_bytes
    );
    ctx.publish(
        rec,
        kube::runtime::events::EventType::Warning,
        "CoreDumped",
        "Analyze",
        message,
    )
    .await;
}
