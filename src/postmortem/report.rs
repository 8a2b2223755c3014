//! The post-mortem of one incident, as the runbook's "Document Incident" asks: a timeline, the
//! root cause with its evidence, the impact, the actions taken and follow-up items derived from
//! the cause. Built from the Worker's status (the incident's timeline) and the incident's
//! WorkerRecoveries and ResumePlans; rendered as Markdown and as JSON. Pure.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::timeline::human;
use crate::crd::{
    diagnosis::{Diagnosis, RootCause, Severity},
    resume_plan::{ResumePhase, ResumePlan},
    worker::{IncidentOutcome, IncidentStatus, Worker, WorkerStatus},
    worker_recovery::{AnalysisState, CoreDump, StepName, WorkerRecovery},
};

/// One post-mortem.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub namespace: String,
    pub worker: String,
    pub incident: u32,
    /// `open`, `recovered` or `lastLevel`.
    pub state: String,
    pub started: Option<Timestamp>,
    pub ended: Option<Timestamp>,
    pub timeline: Vec<Line>,
    pub root_cause: Option<Cause>,
    pub impact: Impact,
    pub actions: Vec<String>,
    pub follow_ups: Vec<String>,
    /// The cores the incident's `Debug` runs collected, with their backtraces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crash_dumps: Vec<CrashDump>,
}

/// A core one of the incident's runs collected.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CrashDump {
    pub run: String,
    #[serde(flatten)]
    pub core: CoreDump,
}

/// Most backtrace bytes in one report: the first cores' in full, the others' cut (the run's
/// status has each at [`crate::crash::MAX_BACKTRACE_BYTES`]).
const MAX_REPORT_BACKTRACE_BYTES: usize = 24 * 1024;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    pub time: Option<Timestamp>,
    pub kind: String,
    pub event: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cause {
    pub cause: RootCause,
    /// The run whose diagnosis found it.
    pub run: String,
    pub evidence: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Impact {
    /// From the failure to recovery (or to now / the last level).
    pub downtime_seconds: u64,
    pub tasks_requeued: i64,
    pub tasks_dead_lettered: i64,
    pub tasks_quarantined: i64,
    pub tasks_poisoned: Vec<String>,
    pub tasks_failed_over: u64,
    /// ResumePlans of the incident that halted, with why.
    pub batches_halted: Vec<String>,
}

/// What the report is built from.
pub struct Sources<'a> {
    pub worker: &'a Worker,
    pub status: &'a WorkerStatus,
    pub incident: &'a IncidentStatus,
    /// The incident's runs, in any order.
    pub runs: &'a [WorkerRecovery],
    pub plans: &'a [ResumePlan],
    pub now: Timestamp,
}

/// Build the report.
pub fn build(src: &Sources<'_>) -> Report {
    let incident = src.incident;
    let started = incident.started.as_ref().map(|t| t.0);
    let ended = incident.ended.as_ref().map(|t| t.0);
    let mut runs: Vec<&WorkerRecovery> = src.runs.iter().collect();
    runs.sort_by_key(|r| {
        r.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0)
    });
    let root_cause = root_cause(&runs);
    let impact = impact(src, &runs, started, ended);
    let actions = actions(src, &runs);
    let crash_dumps = crash_dumps(&runs);
    let mut follow_ups = follow_ups(src, root_cause.as_ref(), &impact);
    follow_ups.extend(crash_dumps.iter().map(crash_follow_up));
    let mut timeline = timeline(incident, &runs);
    timeline.extend(crash_dumps.iter().map(crash_line));
    timeline.sort_by_key(|l| l.time);
    Report {
        namespace: src.worker.namespace().unwrap_or_default(),
        worker: src.worker.name_any(),
        incident: incident.number,
        state: match incident.outcome {
            None => "open",
            Some(IncidentOutcome::Recovered) => "recovered",
            Some(IncidentOutcome::LastLevel) => "lastLevel",
        }
        .into(),
        started,
        ended,
        timeline,
        root_cause,
        impact,
        actions,
        follow_ups,
        crash_dumps,
    }
}

/// The runs' cores, oldest run first, their backtraces within [`MAX_REPORT_BACKTRACE_BYTES`].
fn crash_dumps(runs: &[&WorkerRecovery]) -> Vec<CrashDump> {
    let mut budget = MAX_REPORT_BACKTRACE_BYTES;
    let mut out = Vec::new();
    for run in runs {
        for core in run.status.iter().flat_map(|s| s.core_dumps.iter()) {
            let mut core = core.clone();
            if let Some(bt) = core.analysis.backtrace.as_mut() {
                if bt.len() > budget {
                    let mut end = budget;
                    while !bt.is_char_boundary(end) {
                        end -= 1;
                    }
                    bt.truncate(end);
                    bt.push_str("\n[cut here: the whole backtrace is in the run's status]");
                }
                budget = budget.saturating_sub(bt.len());
            }
            out.push(CrashDump {
                run: run.name_any(),
                core,
            });
        }
    }
    out
}

fn crash_line(d: &CrashDump) -> Line {
    Line {
        time: d
            .core
            .time
            .as_ref()
            .and_then(|t| Timestamp::from_second(t.0.as_second()).ok()),
        kind: "core".into(),
        event: format!(
            "{} dumped core {} on {} (run {})",
            d.core.executable.as_deref().unwrap_or("the debug copy"),
            d.core.file,
            d.core.signal.as_deref().unwrap_or("an unknown signal"),
            d.run
        ),
    }
}

fn crash_follow_up(d: &CrashDump) -> String {
    let what = d.core.executable.as_deref().unwrap_or("the worker");
    let signal = d.core.signal.as_deref().unwrap_or("a signal");
    match d.core.analysis.state {
        AnalysisState::Analyzed => format!(
            "Find where {what} died on {signal} in the backtrace of {} (Crash dumps), and fix it.",
            d.core.file
        ),
        _ => format!(
            "Analyze the core {} of {what} ({signal}) with gdb: `thread apply all bt full`.",
            d.core.file
        ),
    }
}

/// The incident's entries and each run's start and steps, in time order.
fn timeline(incident: &IncidentStatus, runs: &[&WorkerRecovery]) -> Vec<Line> {
    let mut lines: Vec<Line> = incident
        .timeline
        .iter()
        .map(|e| Line {
            time: e.time.as_ref().map(|t| t.0),
            kind: e.kind.clone(),
            event: e.message.clone(),
        })
        .collect();
    for run in runs {
        let Some(st) = &run.status else { continue };
        let name = run.name_any();
        lines.push(Line {
            time: st.start_time.as_ref().map(|t| t.0),
            kind: "run".into(),
            event: format!("run {name} ({:?}) started", run.spec.mode),
        });
        for step in &st.steps {
            let (Some(start), Some(end)) = (&step.start_time, &step.finish_time) else {
                continue;
            };
            let took = end.0.duration_since(start.0).unsigned_abs();
            let message = step
                .message
                .as_ref()
                .map_or(String::new(), |m| format!(": {m}"));
            lines.push(Line {
                time: Some(end.0),
                kind: "step".into(),
                event: format!(
                    "run {name}: {:?} {:?} in {:.1} s{message}",
                    step.name,
                    step.state,
                    took.as_secs_f64()
                ),
            });
        }
    }
    // To the second, as the API keeps the runs' times; a stable sort keeps the incident's own
    // entries (listed first) ahead of run lines of the same second.
    for l in &mut lines {
        l.time = l
            .time
            .and_then(|t| Timestamp::from_second(t.as_second()).ok());
    }
    lines.sort_by_key(|l| l.time);
    lines
}

/// The last diagnosis of the incident that found a cause, with its strongest findings.
fn root_cause(runs: &[&WorkerRecovery]) -> Option<Cause> {
    runs.iter().rev().find_map(|run| {
        let d: &Diagnosis = run.status.as_ref()?.diagnosis.as_ref()?;
        let cause = d.verdict.top_cause?;
        let mut findings: Vec<_> = d
            .findings
            .iter()
            .filter(|f| matches!(f.severity, Severity::Critical | Severity::Warning))
            .collect();
        findings.sort_by_key(|f| std::cmp::Reverse(rank(f.severity)));
        let evidence = findings
            .iter()
            .take(5)
            .map(|f| {
                let facts: Vec<String> = f
                    .evidence
                    .iter()
                    .take(4)
                    .map(|(k, v)| format!("{k}={}", short(v, 80)))
                    .collect();
                format!("{:?}: {} ({})", f.severity, f.summary, facts.join(", "))
            })
            .collect();
        Some(Cause {
            cause,
            run: run.name_any(),
            evidence,
        })
    })
}

fn rank(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::Warning => 1,
        _ => 0,
    }
}

fn short(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() <= max {
        line.to_string()
    } else {
        format!("{}...", line.chars().take(max).collect::<String>())
    }
}

fn impact(
    src: &Sources<'_>,
    runs: &[&WorkerRecovery],
    started: Option<Timestamp>,
    ended: Option<Timestamp>,
) -> Impact {
    let mut figures: BTreeMap<&str, i64> = BTreeMap::new();
    for run in runs {
        let steps = run.status.iter().flat_map(|s| s.steps.iter());
        for step in steps.filter(|s| s.name == StepName::CleanState) {
            for key in ["requeued", "deadLettered", "quarantined"] {
                *figures.entry(key).or_default() += step.figures.get(key).copied().unwrap_or(0);
            }
        }
    }
    let downtime = started.map_or(0, |s| {
        ended
            .unwrap_or(src.now)
            .duration_since(s)
            .unsigned_abs()
            .as_secs()
    });
    let poisoned = src
        .incident
        .timeline
        .iter()
        .filter(|e| e.kind == "poison")
        .filter_map(|e| e.message.strip_prefix("task "))
        .filter_map(|m| m.split_whitespace().next())
        .map(String::from)
        .collect();
    let failover = src
        .status
        .escalation
        .as_ref()
        .and_then(|e| e.failover.as_ref());
    let halted = src
        .plans
        .iter()
        .filter_map(|p| {
            let st = p.status.as_ref()?;
            (st.phase == Some(ResumePhase::Halted)).then(|| {
                let why = st.halt_reason.clone().unwrap_or_default();
                format!("{}: {why}", p.name_any())
            })
        })
        .collect();
    Impact {
        downtime_seconds: downtime,
        tasks_requeued: figures.get("requeued").copied().unwrap_or(0),
        tasks_dead_lettered: figures.get("deadLettered").copied().unwrap_or(0),
        tasks_quarantined: figures.get("quarantined").copied().unwrap_or(0),
        tasks_poisoned: poisoned,
        tasks_failed_over: failover.map_or(0, |f| f.moved),
        batches_halted: halted,
    }
}

/// What was done: restarts, remediations, runs, levels and notifications, the failover.
fn actions(src: &Sources<'_>, runs: &[&WorkerRecovery]) -> Vec<String> {
    let mut out = Vec::new();
    let attempts: Vec<_> = src
        .status
        .auto_recovery
        .iter()
        .flat_map(|a| a.attempts.iter())
        .filter(|a| src.incident.runs.contains(&a.run))
        .collect();
    if !attempts.is_empty() {
        out.push(format!(
            "{} automatic restart(s) of the container",
            attempts.len()
        ));
    }
    out.extend(attempts.iter().filter_map(|a| a.remediation.clone()));
    for run in runs {
        let phase = run
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or("unfinished".to_string(), |p| format!("{p:?}"));
        out.push(format!(
            "WorkerRecovery {} ({:?}): {phase}",
            run.name_any(),
            run.spec.mode
        ));
    }
    let levels: Vec<&str> = src
        .incident
        .timeline
        .iter()
        .filter(|e| e.kind == "escalated")
        .filter_map(|e| e.message.strip_prefix("escalated to ")?.split(' ').next())
        .collect();
    if !levels.is_empty() {
        out.push(format!("escalation levels reached: {}", levels.join(", ")));
    }
    for e in &src.incident.timeline {
        if matches!(e.kind.as_str(), "notified" | "failover") {
            out.push(e.message.clone());
        }
    }
    out
}

/// Follow-up items from the cause and what the incident did.
fn follow_ups(src: &Sources<'_>, cause: Option<&Cause>, impact: &Impact) -> Vec<String> {
    let raised = |what: &str| {
        src.status
            .auto_recovery
            .iter()
            .flat_map(|a| a.attempts.iter())
            .filter_map(|a| a.remediation.as_deref())
            .rfind(|r| r.contains(what))
            .map(String::from)
    };
    let mut out = Vec::new();
    match cause.map(|c| c.cause) {
        Some(RootCause::OutOfMemory) => out.push(match raised("memory limit") {
            Some(r) => format!("Declare the memory limit the worker needs in the Worker (spec.resources.memory) and in the compose file (mem_limit): it was raised on the running container only ({r})."),
            None => "Find the memory growth or raise the memory limit (spec.resources.memory, mem_limit): the worker was OOM-killed.".into(),
        }),
        Some(RootCause::FileDescriptorExhaustion) => out.push(match raised("nofile") {
            Some(r) => format!("Declare the nofile limit in the Worker (spec.resources.nofile) and the compose file (ulimits): {r}."),
            None => "Find the descriptor leak or raise the nofile limit (spec.resources.nofile, ulimits).".into(),
        }),
        Some(RootCause::MissingDependency) => out.push(format!(
            "Install what is missing in the worker's image: {}.",
            cause.and_then(|c| c.evidence.first()).cloned().unwrap_or_default()
        )),
        Some(RootCause::Deadlock) => out.push(
            "Inspect the stuck tasks and stale locks the diagnosis names, and why the worker stopped heartbeating.".into(),
        ),
        Some(RootCause::ApplicationCrash) => out.push(
            "Read the crash logs the diagnosis quotes and fix the error the worker exited on.".into(),
        ),
        Some(RootCause::ContainerMissing) => {
            out.push("Recreate the worker's container, or correct spec.container.".into())
        }
        Some(RootCause::MetricsEndpointDown) => {
            out.push("Bring the worker's metrics endpoint back (spec.metrics.url).".into())
        }
        None => out.push(
            "No root cause was found: run a Diagnose WorkerRecovery while it fails, or read the worker's logs.".into(),
        ),
    }
    for task in &impact.tasks_poisoned {
        out.push(format!(
            "Inspect the poison task {task} in failed/ before requeueing it."
        ));
    }
    for plan in &impact.batches_halted {
        out.push(format!(
            "Look at the halted ResumePlan {plan}, then change its spec to go on."
        ));
    }
    if let Some(e) = &src.status.escalation {
        out.push(format!(
            "Review why automatic recovery gave up ({}), and add a crash alert or a remediation for it.",
            e.reason
        ));
    }
    out
}

/// The report as Markdown, the runbook's post-mortem template.
pub fn markdown(r: &Report) -> String {
    let time = |t: Option<Timestamp>| {
        t.and_then(|t| Timestamp::from_second(t.as_second()).ok())
            .map_or("-".to_string(), |t| t.to_string())
    };
    let mut s = format!(
        "# Post-mortem: Worker {}/{}, incident {}\n\n",
        r.namespace, r.worker, r.incident
    );
    let state = match r.state.as_str() {
        "open" => "open",
        "recovered" => "closed: Healthy again",
        _ => "closed: the last escalation level was reached",
    };
    s += &format!(
        "- State: {state}\n- Started: {}\n- Ended: {}\n- Downtime: {}\n",
        time(r.started),
        time(r.ended),
        human(std::time::Duration::from_secs(r.impact.downtime_seconds))
    );
    if let Some(c) = &r.root_cause {
        s += &format!("- Root cause: {:?}\n", c.cause);
    }
    s += "\n## Timeline\n\n| time (UTC) | event |\n| --- | --- |\n";
    for l in &r.timeline {
        s += &format!("| {} | {}: {} |\n", time(l.time), l.kind, cell(&l.event));
    }
    s += "\n## Root cause\n\n";
    match &r.root_cause {
        Some(c) => {
            s += &format!(
                "{:?}, found by the diagnosis of run {}.\n\n",
                c.cause, c.run
            );
            for e in &c.evidence {
                s += &format!("- {e}\n");
            }
        }
        None => s += "No diagnosis of the incident found a cause.\n",
    }
    s += &crash_section(&r.crash_dumps);
    let i = &r.impact;
    s += &format!(
        "\n## Impact\n\n- Downtime: {}\n- Tasks requeued: {}\n- Tasks dead-lettered: {}\n- Tasks quarantined: {}\n- Poison tasks: {}\n- Tasks failed over: {}\n- Resume batches halted: {}\n",
        human(std::time::Duration::from_secs(i.downtime_seconds)),
        i.tasks_requeued,
        i.tasks_dead_lettered,
        i.tasks_quarantined,
        list(&i.tasks_poisoned),
        i.tasks_failed_over,
        list(&i.batches_halted),
    );
    s += "\n## Actions taken\n\n";
    for a in &r.actions {
        s += &format!("- {a}\n");
    }
    s += "\n## Follow-up items\n\n";
    for f in &r.follow_ups {
        s += &format!("- [ ] {f}\n");
    }
    s
}

/// "Crash dumps": each core, what it says, and its backtrace.
fn crash_section(dumps: &[CrashDump]) -> String {
    if dumps.is_empty() {
        return String::new();
    }
    let mut s = "\n## Crash dumps\n".to_string();
    for d in dumps {
        let c = &d.core;
        s += &format!(
            "\n### {}\n\n- Run: {}\n- Size: {} bytes\n- Time: {}\n- Signal: {}\n- Executable: {}\n- Command: {}\n- Analysis: {:?}{}\n",
            c.file,
            d.run,
            c.size_bytes,
            c.time.as_ref().map_or("-".into(), |t| t.0.to_string()),
            c.signal.as_deref().unwrap_or("-"),
            c.executable.as_deref().unwrap_or("-"),
            c.command.as_deref().unwrap_or("-"),
            c.analysis.state,
            c.analysis.message.as_deref().map_or(String::new(), |m| format!(" ({m})")),
        );
        if let Some(bt) = &c.analysis.backtrace {
            // A fence longer than any run of backticks in the (untrusted) output.
            let fence = "`".repeat(longest_backtick_run(bt).max(2) + 1);
            s += &format!("\n{fence}text\n{bt}\n{fence}\n");
        }
    }
    s
}

fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests;
