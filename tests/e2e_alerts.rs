//! The alert rules in the stack's real Prometheus: it scrapes a real operator's per-worker
//! series and evaluates the chart's rules file. A worker crashes with auto-recovery off:
//! `WorkerDown` goes pending, then fires a minute later (its `for`); a recovery run heals the
//! worker and the alert resolves.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The rule's `for`, and the stack's scrape and evaluation intervals.
const FOR: Duration = Duration::from_secs(60);
const SCRAPE: Duration = Duration::from_secs(2);
const EVALUATION: Duration = Duration::from_secs(2);

#[test]
fn worker_down_fires_in_prometheus_and_resolves_after_healing() {
    let stack = stack();
    let ns = stack.namespace("alerts");
    let wc = WorkerContainer::start(&ns, "rosa", &[], &[]);
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
}
