//! Rendering a diagnosis for humans (a table) and machines (JSON).

use std::fmt::Write as _;

use crate::crd::diagnosis::{Diagnosis, Severity};

/// Output formats of the `diagnose` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn render(diagnosis: &Diagnosis, format: Format) -> String {
    match format {
        Format::Json => {
            let mut out = serde_json::to_string_pretty(diagnosis).expect("a diagnosis serializes");
            out.push('\n');
            out
        }
        Format::Table => table(diagnosis),
    }
}

fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRITICAL",
        Severity::Warning => "WARNING",
        Severity::Info => "info",
    }
}

/// A readable report: verdict first, then findings from most to least severe, with evidence.
pub fn table(d: &Diagnosis) -> String {
    let mut out = String::new();
    let took = d.completed_at.0.duration_since(d.started_at.0);
    let _ = writeln!(
        out,
        "Worker {} (container {}), diagnosed at {} in {:.1}s",
        d.worker,
        d.container,
        d.started_at.0,
        took.as_secs_f64()
    );
    match d.verdict.causes.first() {
        Some(top) => {
            let _ = writeln!(
                out,
                "\nROOT CAUSE: {:?} (score {}): {}",
                top.cause, top.score, top.summary
            );
            for other in &d.verdict.causes[1..] {
                let _ = writeln!(
                    out,
                    "  also possible: {:?} (score {}): {}",
                    other.cause, other.score, other.summary
                );
            }
        }
        None => {
            let _ = writeln!(out, "\nROOT CAUSE: none found; every check looks healthy");
        }
    }
    let mut findings: Vec<_> = d.findings.iter().collect();
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.check.cmp(&b.check)));
    let kind_width = findings
        .iter()
        .map(|f| format!("{:?}", f.kind).len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "\n{:<8}  {:<15}  {:<kind_width$}  SUMMARY",
        "SEVERITY", "CHECK", "KIND"
    );
    for f in findings {
        let _ = writeln!(
            out,
            "{:<8}  {:<15}  {:<kind_width$}  {}",
            severity_label(f.severity),
            f.check.as_str(),
            format!("{:?}", f.kind),
            f.summary
        );
        for (key, value) in &f.evidence {
            let value = value.replace('\n', "\n      ");
            let _ = writeln!(out, "{:>10}{key}: {value}", "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crd::diagnosis::{CheckName, Finding, FindingKind},
        diagnose::verdict,
    };
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    fn diagnosis() -> Diagnosis {
        let at = Time(Timestamp::from_second(1_795_823_941).unwrap());
        let findings = vec![
            Finding {
                check: CheckName::Heartbeat,
                kind: FindingKind::HeartbeatFresh,
                severity: Severity::Info,
                summary: "heartbeat 1s old".into(),
                evidence: Default::default(),
                observed_at: at.clone(),
            },
            Finding {
                check: CheckName::Container,
                kind: FindingKind::OomKilled,
                severity: Severity::Critical,
                summary: "container was OOM-killed".into(),
                evidence: [("exitCode".to_string(), "137".to_string())].into(),
                observed_at: at.clone(),
            },
        ];
        Diagnosis {
            worker: "marie".into(),
            container: "marie".into(),
            started_at: at.clone(),
            completed_at: at,
            verdict: verdict::rank(&findings),
            findings,
        }
    }

    #[test]
    fn table_puts_the_verdict_and_critical_findings_first() {
        let text = table(&diagnosis());
        assert!(
            text.contains("ROOT CAUSE: OutOfMemory (score 100)"),
            "{text}"
        );
        let critical = text.find("CRITICAL").unwrap();
        let info = text.find("info ").unwrap();
        assert!(critical < info, "{text}");
        assert!(text.contains("exitCode: 137"), "{text}");
    }

    #[test]
    fn json_round_trips() {
        let d = diagnosis();
        let back: Diagnosis = serde_json::from_str(&render(&d, Format::Json)).unwrap();
        assert_eq!(back, d);
        assert!(render(&d, Format::Json).contains(r#""topCause": "OutOfMemory""#));
    }
}
