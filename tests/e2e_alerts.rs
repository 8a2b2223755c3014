//! The alert rules in the stack's real Prometheus: it scrapes a real operator's per-worker
//! series and evaluates the chart's rules file. A worker crashes with auto-recovery off:
//! `WorkerDown` goes pending, then fires a minute later (its `for`); a recovery run heals the
//! worker and the alert resolves. Then every query of the Grafana dashboard runs against the
//! series this left, and each must parse and return data.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// The rule's `for`, and the stack's scrape and evaluation intervals.
const FOR: Duration = Duration::from_secs(60);
const SCRAPE: Duration = Duration::from_secs(2);
const EVALUATION: Duration = Duration::from_secs(2);

#[test]
fn worker_down_fires_in_prometheus_and_resolves_after_healing() {
    let stack = stack();
    let ns = stack.namespace("alerts");
    // A memory limit: its memory is sampled (the failure prediction) for the dashboard.
    let wc = WorkerContainer::start(&ns, "rosa", &["-m", "256m"], &[]);
    apply_worker(stack, &wc, "rosa", &ns);
    let op = Operator::start(stack, &ns, wc.dir.path());
    let _target = ScrapeTarget::register(&ns, &op.listen);
    wait_phase(stack, &ns, "rosa", "Healthy");
    let up = format!(r#"workerrecovery_worker_up{{namespace="{ns}",worker="rosa"}}"#);
    wait_for("Prometheus has rosa up", Duration::from_secs(30), || {
        let r = query(&up)?;
        (r.len() == 1 && r[0]["value"][1] == "1")
            .then_some(())
            .ok_or(format!("{r:?}"))
    });

    wc.inject_fault("crash");
    wait_phase(stack, &ns, "rosa", "Down");
    let down = Instant::now();
    let mut states = Vec::new();
    wait_for("WorkerDown firing", FOR * 2, || {
        let state = alert_state("WorkerDown", &ns, "rosa")?;
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        (state.as_deref() == Some("firing"))
            .then_some(())
            .ok_or(format!("{states:?}"))
    });
    let fired = down.elapsed();
    eprintln!(
        "e2e_alerts: Down in status -> WorkerDown firing in {fired:?} (for {FOR:?}, scrape {SCRAPE:?}, evaluation {EVALUATION:?}); states seen {states:?}"
    );
    assert!(
        states.contains(&Some("pending".to_string())),
        "pending before firing: {states:?}"
    );
    // Down in status is seen by the next scrape, the rule by the next evaluation after it, and
    // it fires `for` later; a second of slack for the poll and the operator's own look.
    assert!(
        fired <= FOR + SCRAPE + EVALUATION + Duration::from_secs(3),
        "{fired:?}"
    );

    let healing = Instant::now();
    stack.apply_ok(recovery("heal-1", &ns, "rosa").mode("Quick"));
    let run = wait_run_finished(stack, &ns, "heal-1");
    assert_phase(&run, "Succeeded");
    wait_phase(stack, &ns, "rosa", "Healthy");
    wait_for(
        "WorkerDown resolved",
        Duration::from_secs(30),
        || match alert_state("WorkerDown", &ns, "rosa")? {
            None => Ok(()),
            Some(state) => Err(state),
        },
    );
    eprintln!(
        "e2e_alerts: recovery run -> WorkerDown resolved in {:?}",
        healing.elapsed()
    );
    // The run is counted, with its mode and outcome, and Prometheus has it.
    let runs = format!(
        r#"workerrecovery_worker_recovery_runs_total{{namespace="{ns}",worker="rosa",mode="Quick",outcome="Succeeded"}}"#
    );
    wait_for(
        "the run counted in Prometheus",
        Duration::from_secs(30),
        || {
            let r = query(&runs)?;
            (r.len() == 1 && r[0]["value"][1] == "1")
                .then_some(())
                .ok_or(format!("{r:?}"))
        },
    );
    dashboard_queries_return_data(&ns, "rosa");
}

/// Every panel query and template variable of the shipped dashboard, with the variables set
/// to this test's Worker, parses and returns at least one finite value.
fn dashboard_queries_return_data(ns: &str, worker: &str) {
    let path = repo_root().join("charts/worker-recovery-operator/files/dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let title = format!("{} {}", panel["title"], target["refId"]);
            queries.push((title, target["expr"].as_str().unwrap().to_string()));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            queries.push((
                format!("variable {}", var["name"]),
                label_values_as_promql(q),
            ));
        }
    }
    assert!(queries.len() >= 12, "{queries:?}");
    for (what, expr) in queries {
        let expr = expr
            .replace("$namespace", &regex_quote(ns))
            .replace("$worker", worker)
            .replace("$__range", "1h")
            .replace("$__rate_interval", "1m");
        // Data scraped seconds ago may not be in an instant query's view yet: a few tries.
        wait_for(
            &format!("dashboard {what}: {expr}"),
            Duration::from_secs(20),
            || {
                let result = query(&expr)?;
                let finite = result.iter().any(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                });
                finite.then_some(()).ok_or(format!("{result:?}"))
            },
        );
    }
}

/// Grafana's `label_values(SELECTOR, LABEL)` as the PromQL that returns the same label values.
fn label_values_as_promql(q: &str) -> String {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(...): {q}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    format!("group by ({}) ({})", label.trim(), selector.trim())
}

/// `s` as a regular expression matching only itself.
fn regex_quote(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
