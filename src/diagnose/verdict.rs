//! Ranking findings into root causes. Pure: the same findings always give the same verdict.
//!
//! Each finding kind adds weight to the causes it supports. The weights encode the runbook's
//! judgement: an OOM kill outranks a log error (the log error is usually the OOM's symptom),
//! a hung process in a running container outranks a missing metrics endpoint, a missing
//! dependency outranks the crash it causes.

use std::collections::BTreeMap;

use crate::crd::diagnosis::{Finding, FindingKind, RankedCause, RootCause, Verdict};

/// The weight a finding kind gives to each cause it supports.
fn weights(finding: &Finding) -> &'static [(RootCause, u32)] {
    use FindingKind::*;
    use RootCause::*;
    match finding.kind {
        OomKilled => &[(OutOfMemory, 100)],
        // The kernel's own word that it killed the worker for memory.
        KernelOomKill | OomEvent => &[(OutOfMemory, 60)],
        MemoryNearLimit => &[(OutOfMemory, 20)],
        FdExhausted => &[(FileDescriptorExhaustion, 90)],
        FdNearLimit => &[(FileDescriptorExhaustion, 40)],
        BinaryMissing | BinaryNotExecutable | PackageMissing | PipeMissing | PipeNotFifo => {
            &[(MissingDependency, 80)]
        }
        ContainerExited => match finding.evidence.get("exitCode").map(String::as_str) {
            // 127 is the shell's "command not found", 126 "not executable".
            Some("127") | Some("126") => &[(MissingDependency, 30), (ApplicationCrash, 60)],
            // SIGKILL came from outside the worker (the OOM killer, `kill -9`): weak evidence
            // of an error of its own.
            Some("137") => &[(ApplicationCrash, 20)],
            _ => &[(ApplicationCrash, 60)],
        },
        ContainerNotFound => &[(ContainerMissing, 100)],
        HeartbeatStale | HeartbeatMissing => &[(Deadlock, 70)],
        NoProgress => &[(Deadlock, 50)],
        StuckTask => &[(Deadlock, 30)],
        StaleLock => &[(Deadlock, 20)],
        LogErrors => log_weights(finding),
        MetricsUnreachable => &[(MetricsEndpointDown, 10)],
        _ => &[],
    }
}

/// A log error counts for the cause its text points at, and weighs less than direct evidence.
fn log_weights(finding: &Finding) -> &'static [(RootCause, u32)] {
    // Only the log lines themselves: a path or a count must not look like a cause.
    let text = finding
        .evidence
        .iter()
        .filter(|(key, _)| key.starts_with("line") || *key == "firstError")
        .map(|(_, v)| v.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join("\n");
    if text.contains("too many open files") || text.contains("os error 24") {
        &[(RootCause::FileDescriptorExhaustion, 30)]
    } else if [
        "out of memory",
        "oom-kill",
        "oomkill",
        "cannot allocate memory",
    ]
    .iter()
    .any(|p| text.contains(p))
    {
        &[(RootCause::OutOfMemory, 20)]
    } else if text.contains("not found")
        || text.contains("no such file")
        || text.contains("dependency")
    {
        &[
            (RootCause::MissingDependency, 20),
            (RootCause::ApplicationCrash, 20),
        ]
    } else {
        &[(RootCause::ApplicationCrash, 20)]
    }
}

/// Hung-worker and metrics findings only point at a cause while the process is still there;
/// a dead worker does not heartbeat or serve metrics either.
fn process_alive(findings: &[Finding]) -> bool {
    findings.iter().any(|f| {
        matches!(
            f.kind,
            FindingKind::ProcessAlive | FindingKind::ContainerRunning
        )
    }) && !findings.iter().any(|f| {
        matches!(
            f.kind,
            FindingKind::ContainerExited | FindingKind::OomKilled | FindingKind::ContainerNotFound
        )
    })
}

fn describe(cause: RootCause) -> &'static str {
    match cause {
        RootCause::OutOfMemory => {
            "the kernel's OOM killer ended the worker (runbook: Memory Issues)"
        }
        RootCause::FileDescriptorExhaustion => {
            "the worker ran out of file descriptors (runbook: File Descriptor Exhaustion)"
        }
        RootCause::Deadlock => {
            "the worker is alive but stuck: no heartbeat or progress (runbook: Deadlock Detection)"
        }
        RootCause::MissingDependency => {
            "a required dependency is missing (runbook: Dependency Issues)"
        }
        RootCause::ApplicationCrash => "the worker process exited on an error of its own",
        RootCause::ContainerMissing => "the worker's container does not exist",
        RootCause::MetricsEndpointDown => "the metrics endpoint does not answer",
    }
}

/// Rank the causes the findings support, most likely first.
pub fn rank(findings: &[Finding]) -> Verdict {
    let alive = process_alive(findings);
    let mut scores: BTreeMap<RootCause, (u32, Vec<FindingKind>)> = BTreeMap::new();
    for finding in findings {
        for &(cause, weight) in weights(finding) {
            // A dead worker neither heartbeats nor serves metrics: those are symptoms then.
            if matches!(cause, RootCause::Deadlock | RootCause::MetricsEndpointDown) && !alive {
                continue;
            }
            // Each kind counts once per cause: ten stuck tasks are one piece of evidence,
            // not ten, and must not outrank an OOM kill.
            let entry = scores.entry(cause).or_default();
            if !entry.1.contains(&finding.kind) {
                entry.0 += weight;
                entry.1.push(finding.kind);
            }
        }
    }
    let mut causes: Vec<RankedCause> = scores
        .into_iter()
        .map(|(cause, (score, supporting))| RankedCause {
            cause,
            score,
            summary: describe(cause).to_string(),
            supporting,
        })
        .collect();
    // Highest score first; ties keep the enum order, which lists direct causes first.
    causes.sort_by(|a, b| b.score.cmp(&a.score).then(a.cause.cmp(&b.cause)));
    Verdict {
        top_cause: causes.first().map(|c| c.cause),
        causes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::diagnosis::{CheckName, Severity};
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    fn f(kind: FindingKind, evidence: &[(&str, &str)]) -> Finding {
        Finding {
            check: CheckName::Container,
            kind,
            severity: Severity::Critical,
            summary: String::new(),
            evidence: evidence
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            observed_at: Time(Timestamp::UNIX_EPOCH),
        }
    }

    use FindingKind::*;

    #[test]
    fn oom_kill_outranks_a_log_error() {
        let v = rank(&[
            f(OomKilled, &[("exitCode", "137")]),
            f(LogErrors, &[("line1", "ERROR: task failed: broken pipe")]),
        ]);
        assert_eq!(v.top_cause, Some(RootCause::OutOfMemory));
        assert_eq!(v.causes[1].cause, RootCause::ApplicationCrash);
    }

    #[test]
    fn hung_process_in_running_container_outranks_missing_metrics() {
        let v = rank(&[
            f(ContainerRunning, &[]),
            f(ProcessAlive, &[]),
            f(HeartbeatStale, &[("ageSeconds", "120")]),
            f(MetricsUnreachable, &[]),
        ]);
        assert_eq!(v.top_cause, Some(RootCause::Deadlock));
        assert_eq!(
            v.causes.last().unwrap().cause,
            RootCause::MetricsEndpointDown
        );
    }

    #[test]
    fn a_kill_the_kernel_logged_as_an_oom_kill_is_out_of_memory() {
        // systemd on cgroup v1 says `signal`, not `oom-kill`: the kernel log is the evidence.
        let v = rank(&[
            f(ContainerExited, &[("exitCode", "137")]),
            f(KernelOomKill, &[]),
            f(LogErrors, &[]),
        ]);
        assert_eq!(v.top_cause, Some(RootCause::OutOfMemory), "{v:?}");
        let plain_kill = rank(&[f(ContainerExited, &[("exitCode", "137")])]);
        assert_eq!(plain_kill.top_cause, Some(RootCause::ApplicationCrash));
    }

    #[test]
    fn a_dead_worker_is_not_deadlocked() {
        let v = rank(&[
            f(ContainerExited, &[("exitCode", "3")]),
            f(HeartbeatStale, &[]),
            f(MetricsUnreachable, &[]),
        ]);
        assert_eq!(v.top_cause, Some(RootCause::ApplicationCrash));
        assert_eq!(v.causes.len(), 1, "{v:?}");
    }

    #[test]
    fn fd_exhaustion_outranks_the_stale_heartbeat_it_causes() {
        let v = rank(&[
            f(ContainerRunning, &[]),
            f(ProcessAlive, &[]),
            f(HeartbeatStale, &[]),
            f(FdExhausted, &[("openFds", "63"), ("softLimit", "64")]),
            f(
                LogErrors,
                &[(
                    "line1",
                    "ERROR: Too many open files (os error 24) after 59 descriptors",
                )],
            ),
        ]);
        assert_eq!(v.top_cause, Some(RootCause::FileDescriptorExhaustion));
        assert_eq!(v.causes[0].score, 120);
        assert_eq!(v.causes[1].cause, RootCause::Deadlock);
    }

    #[test]
    fn missing_binary_outranks_the_crash_it_causes() {
        let v = rank(&[
            f(ContainerExited, &[("exitCode", "127")]),
            f(BinaryMissing, &[("binary", "claude")]),
            f(
                LogErrors,
                &[(
                    "line1",
                    "FATAL: required dependency 'claude' not found in PATH",
                )],
            ),
        ]);
        assert_eq!(v.top_cause, Some(RootCause::MissingDependency));
        assert_eq!(
            v.causes[0].supporting,
            vec![ContainerExited, BinaryMissing, LogErrors]
        );
    }

    #[test]
    fn repeated_findings_count_once() {
        let mut findings = vec![
            f(FdExhausted, &[]),
            f(ContainerRunning, &[]),
            f(ProcessAlive, &[]),
        ];
        findings.extend((0..20).map(|i| f(StuckTask, &[("taskId", &i.to_string())])));
        findings.extend((0..20).map(|_| f(StaleLock, &[])));
        let v = rank(&findings);
        assert_eq!(v.top_cause, Some(RootCause::FileDescriptorExhaustion));
        let deadlock = v
            .causes
            .iter()
            .find(|c| c.cause == RootCause::Deadlock)
            .unwrap();
        assert_eq!(deadlock.score, 50);
    }

    #[test]
    fn only_log_lines_point_at_a_cause() {
        let v = rank(&[f(
            LogErrors,
            &[("path", "/shared/room/app.log"), ("line1", "ERROR: boom")],
        )]);
        assert_eq!(v.top_cause, Some(RootCause::ApplicationCrash));
    }

    #[test]
    fn nothing_wrong_means_no_cause() {
        let v = rank(&[
            f(ContainerRunning, &[]),
            f(HeartbeatFresh, &[]),
            f(MetricsReachable, &[]),
        ]);
        assert_eq!(v, Verdict::default());
    }
}
