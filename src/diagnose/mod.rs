//! Diagnosis: every check of the runbook's "Verify Worker Status", "Check Crash Logs" and
//! "Root Cause Analysis" as code. Each check is a small async function that returns findings;
//! they run concurrently, each under a timeout, and a check that fails becomes a finding.

pub mod checks;
pub mod error;
pub mod host;
pub mod report;
#[cfg(test)]
pub(crate) mod testing;
pub mod verdict;

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

pub use crate::crd::diagnosis::{
    CheckName, Diagnosis, Finding, FindingKind, RootCause, Severity, Verdict,
};

pub use self::{error::CheckError, host::KernelLogError};
use crate::{
    crd::worker::{ResolvedPaths, Worker, WorkerSpec, WorkerStatus},
    runtime::{ContainerInfo, ContainerObservation, RuntimeError, WorkerRuntime},
    trust::Admission,
};
use checks::process::ProcessError;

/// Facts about the host outside any container (kernel log).
#[async_trait::async_trait]
pub trait HostProbe: Send + Sync + 'static {
    /// The kernel ring buffer (`dmesg`), or why it cannot be read.
    async fn kernel_log(&self) -> Result<String, KernelLogError>;
    /// The host's `kernel.core_pattern` (where the kernel writes core files), or why it cannot
    /// be read.
    async fn core_pattern(&self) -> Result<String, String>;
}

/// Everything a check may look at. Built once per diagnosis; checks only read it.
pub struct CheckContext {
    pub worker_name: String,
    pub spec: WorkerSpec,
    pub paths: ResolvedPaths,
    /// The Worker's last status, for comparisons with the previous observation.
    pub previous: Option<WorkerStatus>,
    /// The container as inspected at the start: `Ok(None)` when it does not exist,
    /// `Err` when Docker could not be asked.
    pub container: Result<Option<ContainerInfo>, RuntimeError>,
    pub docker: Arc<dyn WorkerRuntime>,
    pub host: Arc<dyn HostProbe>,
    /// The client for the metrics endpoint, under the operator's URL policy.
    pub http: crate::http::HttpClient,
    pub now: Timestamp,
    /// The worker's own process, found once and shared by the checks that look at it.
    pub worker_process: tokio::sync::OnceCell<Result<checks::process::Located, ProcessError>>,
    /// How the container ended before automatic recovery started it again (the next start
    /// clears Docker's exit code and OOMKilled flag).
    pub crash: Option<CrashEvidence>,
}

/// The container's end as seen before it was started again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrashEvidence {
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub finished_at: Option<Timestamp>,
}

/// What a check returns: its findings, or why it could not run.
pub type CheckResult = Result<Vec<Finding>, CheckError>;

impl CheckContext {
    /// Build the context for `worker` from its admission (`crate::trust::admit`): only an
    /// admitted Worker, with a consenting container, is diagnosed.
    pub fn new(
        worker: &Worker,
        admission: Admission,
        docker: Arc<dyn WorkerRuntime>,
        host: Arc<dyn HostProbe>,
        http: crate::http::HttpClient,
    ) -> Self {
        let container = match admission.container {
            ContainerObservation::Found(info) => Ok(Some(*info)),
            ContainerObservation::NotFound => Ok(None),
            ContainerObservation::Unavailable(e) => Err(e),
        };
        Self {
            worker_name: admission.paths.worker_name.clone(),
            // The checks name what runs the worker as "the container": a unit, for systemd.
            spec: crate::crd::worker::WorkerSpec {
                container: worker.target().to_string(),
                ..worker.spec.clone()
            },
            paths: admission.paths,
            previous: worker.status.clone(),
            container,
            docker,
            host,
            http,
            now: Timestamp::now(),
            worker_process: Default::default(),
            crash: None,
        }
    }

    /// The worker's own process in the running container (see [`checks::process::locate`]).
    pub async fn worker_process(&self) -> Result<checks::process::Located, ProcessError> {
        let Some(c) = self.running_container() else {
            return Err(ProcessError::NotRunning(self.spec.container.clone()));
        };
        self.worker_process
            .get_or_init(|| checks::process::locate(self, c))
            .await
            .clone()
    }

    /// The worker's container or unit as messages name it: `container "marie"`,
    /// `unit "agent-worker-marie.service"`.
    pub fn target(&self) -> String {
        let noun = match self.docker.capabilities().runtime {
            crate::runtime::RuntimeKind::Docker => "container",
            crate::runtime::RuntimeKind::Systemd => "unit",
        };
        format!("{noun} {:?}", self.spec.container)
    }

    /// What to call the container in engine requests: the ID of the container that consented
    /// at admission, never its name (a container that takes the name later is not this
    /// Worker's). No container was admitted (a file-only Worker): `NotFound`.
    pub fn container_ref(&self) -> Result<&str, RuntimeError> {
        match &self.container {
            Ok(Some(c)) if !c.id.is_empty() => Ok(&c.id),
            _ => Err(RuntimeError::NotFound(self.spec.container.clone())),
        }
    }

    /// A finding of `check` observed now.
    pub fn finding(
        &self,
        check: CheckName,
        kind: FindingKind,
        severity: Severity,
        summary: impl Into<String>,
    ) -> Finding {
        Finding {
            check,
            kind,
            severity,
            summary: summary.into(),
            evidence: Default::default(),
            observed_at: Time(self.now),
        }
    }

    /// The container as inspected, for a check that cannot run without one: an error when
    /// Docker could not be asked or there is no container (`so`: what that prevents).
    pub fn inspected_container(
        &self,
        so: Option<&'static str>,
    ) -> Result<&ContainerInfo, CheckError> {
        match &self.container {
            Err(reason) => Err(self.uninspectable(reason)),
            Ok(None) => Err(CheckError::NoContainer {
                container: self.spec.container.clone(),
                so,
            }),
            Ok(Some(c)) => Ok(c),
        }
    }

    /// Docker could not be asked about the container when the diagnosis started (`reason`).
    pub fn uninspectable(&self, source: &RuntimeError) -> CheckError {
        CheckError::Uninspectable {
            container: self.spec.container.clone(),
            source: source.clone(),
        }
    }

    /// The running container, or `None` when it is absent or stopped.
    pub fn running_container(&self) -> Option<&ContainerInfo> {
        self.container.as_ref().ok()?.as_ref().filter(|c| c.running)
    }
}

/// Run one check. The dependencies check also looks at the named pipes ([`checks::pipes`]):
/// when its in-container part cannot run, the pipes' findings are kept next to that failure.
async fn run_check(ctx: &CheckContext, check: CheckName) -> CheckResult {
    match check {
        CheckName::Container => checks::container::run(ctx).await,
        CheckName::Process => checks::process::run(ctx).await,
        CheckName::Heartbeat => checks::heartbeat::run(ctx).await,
        CheckName::CrashLogs => checks::crash_logs::run(ctx).await,
        CheckName::Memory => checks::memory::run(ctx).await,
        CheckName::FileDescriptors => checks::file_descriptors::run(ctx).await,
        CheckName::Deadlock => checks::deadlock::run(ctx).await,
        CheckName::Dependencies => {
            // Binaries and packages live in the container, named pipes on the host.
            let (in_container, mut pipes) = tokio::join!(
                checks::dependencies::run(ctx),
                checks::pipes::check_named_pipes(ctx)
            );
            match in_container {
                Ok(findings) => Ok(findings.into_iter().chain(pipes).collect()),
                Err(reason) if pipes.is_empty() => Err(reason),
                Err(reason) => {
                    pipes.push(check_failed(ctx, check, &reason));
                    Ok(pipes)
                }
            }
        }
        CheckName::MetricsEndpoint => checks::metrics_endpoint::run(ctx).await,
    }
}

/// Run every check concurrently, each under the spec's per-check timeout, and rank the causes.
pub async fn diagnose(ctx: &CheckContext) -> Diagnosis {
    let started_at = Time(ctx.now);
    let timeout = Duration::from_secs(u64::from(ctx.spec.diagnostics.check_timeout_seconds));
    let results = join_all(CheckName::ALL.iter().map(|&check| async move {
        match tokio::time::timeout(timeout, run_check(ctx, check)).await {
            Ok(Ok(findings)) => findings,
            Ok(Err(reason)) => vec![check_failed(ctx, check, &reason)],
            Err(_) => vec![check_failed(
                ctx,
                check,
                &CheckError::TimedOut {
                    seconds: timeout.as_secs(),
                },
            )],
        }
    }))
    .await;
    let findings: Vec<Finding> = results.into_iter().flatten().collect();
    // Ranked on every finding; only the status copy is bounded.
    let verdict = verdict::rank(&findings);
    let findings = bounded_findings(findings, ctx.now);
    Diagnosis {
        worker: ctx.worker_name.clone(),
        container: ctx.spec.container.clone(),
        started_at,
        completed_at: Time(Timestamp::now()),
        findings,
        verdict,
    }
}

/// Most bytes the findings take in a WorkerRecovery's status (as JSON): with the rest of the
/// run's status far below the API server's object size limit.
pub const MAX_FINDINGS_BYTES: usize = 96 * 1024;
/// Longest summary kept (a summary may quote a worker's task id or log line).
pub const MAX_SUMMARY_CHARS: usize = 512;

/// The findings as the status keeps them: summaries cut at [`MAX_SUMMARY_CHARS`], then the
/// most severe first (in their order) while they fit in [`MAX_FINDINGS_BYTES`]; one more
/// finding tells how many were left out.
pub fn bounded_findings(findings: Vec<Finding>, now: Timestamp) -> Vec<Finding> {
    let mut findings: Vec<(usize, Finding)> = findings
        .into_iter()
        .map(|mut f| {
            f.summary = crate::bounded::clip(&f.summary, MAX_SUMMARY_CHARS);
            f
        })
        .enumerate()
        .collect();
    findings.sort_by_key(|(i, f)| (std::cmp::Reverse(f.severity), *i));
    // Room for the note about the ones left out.
    let mut used = 1024;
    let (mut kept, mut left_out) = (Vec::new(), 0usize);
    for (i, f) in findings {
        let size = serde_json::to_vec(&f).map_or(usize::MAX, |b| b.len() + 1);
        if used + size <= MAX_FINDINGS_BYTES {
            used += size;
            kept.push((i, f));
        } else {
            left_out += 1;
        }
    }
    kept.sort_by_key(|(i, _)| *i);
    let mut kept: Vec<Finding> = kept.into_iter().map(|(_, f)| f).collect();
    if left_out > 0 {
        let check = kept.first().map_or(CheckName::Container, |f| f.check);
        kept.push(
            Finding {
                check,
                kind: FindingKind::CheckFailed,
                severity: Severity::Info,
                summary: format!(
                    "{left_out} less severe finding(s) not kept: the findings would not fit in \
                     {MAX_FINDINGS_BYTES} bytes of status"
                ),
                evidence: Default::default(),
                observed_at: Time(now),
            }
            .with("notKept", left_out),
        );
    }
    kept
}

/// The finding of a check that could not run: where its error becomes text.
fn check_failed(ctx: &CheckContext, check: CheckName, error: &CheckError) -> Finding {
    let reason = error::message(error);
    let mut f = ctx.finding(
        check,
        FindingKind::CheckFailed,
        Severity::Warning,
        format!("the {} check could not run: {reason}", check.as_str()),
    );
    f.evidence.insert("error".into(), reason);
    f
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{diagnose::testing, runtime::fake::FakeRuntime};

    // Paused time: the 1 s timeout passes in simulated time once every other check is done
    // (tokio does not jump ahead while blocking work runs), so a slow machine cannot make the
    // healthy checks miss it.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_becomes_a_finding_and_the_diagnosis_finishes() {
        let fake = FakeRuntime {
            exec_delay: Some(Duration::from_secs(3600)),
            ..FakeRuntime::with_container(testing::running())
        };
        let mut worker = testing::worker();
        worker.spec.diagnostics.check_timeout_seconds = 1;
        let ctx = testing::context(
            &worker,
            Ok(Some(testing::running())),
            fake,
            Ok(String::new()),
        );

        let d = diagnose(&ctx).await;
        for check in [CheckName::Process, CheckName::FileDescriptors] {
            let failed = d
                .findings
                .iter()
                .find(|f| f.check == check && f.kind == FindingKind::CheckFailed)
                .unwrap_or_else(|| panic!("no CheckFailed for {check:?}: {:#?}", d.findings));
            assert_eq!(failed.evidence["error"], "did not finish within 1s");
        }
        // The other checks still reported.
        assert!(d
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::ContainerRunning));
        let checks: std::collections::BTreeSet<_> = d.findings.iter().map(|f| f.check).collect();
        assert!(checks.len() >= 7, "{checks:?}");
    }
}
