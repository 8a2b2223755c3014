//! End-to-end tests of the two modes of running the operator: per-node agents (`--node-name`,
//! each acting only on its node's Workers) and one leader among several processes
//! (`--leader-elect`), against the real kube-apiserver, etcd, Docker engine and sample worker.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const RESTARTS: &str = r#"workerrecovery_container_restarts_total{controller="worker"}"#;

/// Auto-recovery without backoff or cooldown, so that a restart follows a crash at once.
fn eager(m: Manifest) -> Manifest {
    m.auto_recovery()
        .spec(json!({"autoRecovery": {"cooldownSeconds": 0, "backoff": {"initialSeconds": 0}}}))
}

/// Who published the Events about `name` (their reporting instances).
fn reporters(stack: &Stack, ns: &str, name: &str) -> Vec<String> {
    stack
        .events_for(ns, name)
        .iter()
        .map(|e| {
            e["reportingInstance"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn agent(
    stack: &Stack,
    ns: &str,
    dir: &std::path::Path,
    roots: &[&std::path::Path],
    node: &str,
) -> Operator {
    Operator::builder(stack, ns, dir)
        .allowed_roots(roots)
        .env("WRO_NODE_NAME", node)
        .env("POD_NAME", &format!("agent-{node}"))
        .start()
}

#[test]
fn each_node_agent_heals_only_the_workers_of_its_node() {
    let stack = stack();
    let ns = stack.namespace("nodes");
    let alpha = WorkerContainer::start(&ns, "alpha", &[], &[]);
    let bravo = WorkerContainer::start(&ns, "bravo", &[], &[]);
    let charlie = WorkerContainer::start(&ns, "charlie", &[], &[]);
    let on = |wc: &WorkerContainer, name: &str, node: &str| {
        eager(wc.worker(name, &ns)).spec(json!({"nodeName": node}))
    };
    stack.apply_ok(list([
        on(&alpha, "alpha", "node-a"),
        on(&bravo, "bravo", "node-b"),
        on(&charlie, "charlie", "node-c"),
    ]));
    let roots = [alpha.dir.path(), bravo.dir.path(), charlie.dir.path()];
    let a = agent(stack, &ns, alpha.dir.path(), &roots, "node-a");
    let b = agent(stack, &ns, bravo.dir.path(), &roots, "node-b");
    wait_phase(stack, &ns, "alpha", "Healthy");
    wait_phase(stack, &ns, "bravo", "Healthy");

    alpha.inject_fault("crash");
    bravo.inject_fault("crash");
    wait_restarted(stack, &ns, "alpha", 1, Duration::from_secs(60));
    wait_restarted(stack, &ns, "bravo", 1, Duration::from_secs(60));

    // Each agent restarted one container: its own.
    assert_eq!(a.metric_value(RESTARTS), 1.0);
    assert_eq!(b.metric_value(RESTARTS), 1.0);
    let alpha_by = reporters(stack, &ns, "alpha");
    let bravo_by = reporters(stack, &ns, "bravo");
    assert!(
        !alpha_by.is_empty() && alpha_by.iter().all(|r| r == "agent-node-a"),
        "{alpha_by:?}"
    );
    assert!(
        !bravo_by.is_empty() && bravo_by.iter().all(|r| r == "agent-node-b"),
        "{bravo_by:?}"
    );
    // Agent A never reconciled Worker bravo (its watch does not even bring it), and B never
    // alpha; each saw the other's automatic run and left it alone.
    for (op, other) in [(&a, "bravo"), (&b, "alpha")] {
        let reconciled = format!(r#""worker":"{other}","name":"reconcile""#);
        assert!(!op.logged(&[&reconciled]), "{}", op.log_tail());
        assert!(
            !op.logged(&["not found in local store"]),
            "{}",
            op.log_tail()
        );
        assert!(op.logged(&["left alone", other]), "{}", op.log_tail());
    }
    // The automatic runs are seen by both agents: each one's run is left to its node's agent.
    let runs = stack.get_json(&ns, "workerrecoveries");
    for run in runs["items"].as_array().unwrap() {
        let name = run["metadata"]["name"].as_str().unwrap();
        let worker = run["spec"]["workerRef"]["name"].as_str().unwrap();
        let by = reporters(stack, &ns, name);
        let expected = if worker == "alpha" {
            "agent-node-a"
        } else {
            "agent-node-b"
        };
        assert!(by.iter().all(|r| r == expected), "run {name}: {by:?}");
    }

    // Nobody's node: left alone, no status at all, no Event.
    let charlie_now = worker_json(stack, &ns, "charlie");
    assert_eq!(charlie_now["status"], Value::Null, "{charlie_now}");
    assert!(reporters(stack, &ns, "charlie").is_empty());
}

/// Start two candidates for the leader Lease (4 s, renewed every second).
fn candidate(stack: &Stack, ns: &str, wc: &WorkerContainer, name: &str) -> Operator {
    Operator::builder(stack, ns, wc.dir.path())
        .env("WRO_LEADER_ELECT", "1")
        .env("WRO_LEADER_ELECTION_NAMESPACE", ns)
        .env("WRO_LEADER_ELECTION_LEASE_SECONDS", "4")
        .env("WRO_LEADER_ELECTION_RENEW_SECONDS", "1")
        .env("POD_NAME", name)
        .start()
}

#[test]
fn only_the_leader_acts_and_a_standby_takes_over_when_it_dies() {
    let stack = stack();
    let ns = stack.namespace("leader");
    let wc = WorkerContainer::start(&ns, "lima", &[], &[]);
    stack.apply_ok(eager(wc.worker("lima", &ns)));
    let first = candidate(stack, &ns, &wc, "first");
    let second = candidate(stack, &ns, &wc, "second");
    let leads = |op: &Operator| op.logged(&["became the leader"]);
    wait_for("a leader", Duration::from_secs(30), || {
        (leads(&first) || leads(&second))
            .then_some(())
            .ok_or_else(|| first.log_tail())
    });
    wait_phase(stack, &ns, "lima", "Healthy");
    let (leader, standby) = if leads(&first) {
        (first, second)
    } else {
        (second, first)
    };
    assert!(!leads(&standby), "two leaders:\n{}", standby.log_tail());

    wc.inject_fault("crash");
    let first_run = wait_restarted(stack, &ns, "lima", 1, Duration::from_secs(60));
    let first_run = first_run["status"]["autoRecovery"]["attempts"][0]["run"]
        .as_str()
        .unwrap()
        .to_string();
    // The leader's run is over (verified healthy): the standby has nothing of it to resume.
    wait_run_finished(stack, &ns, &first_run);
    assert_eq!(leader.metric_value(RESTARTS), 1.0);
    assert_eq!(standby.metric(RESTARTS).unwrap_or(0.0), 0.0);
    assert!(
        !standby.logged(&["starting controllers"]),
        "{}",
        standby.log_tail()
    );

    leader.kill();
    let killed = Instant::now();
    wc.inject_fault("crash");
    wait_restarted(stack, &ns, "lima", 2, Duration::from_secs(60));
    let healed = killed.elapsed();
    assert!(leads(&standby), "{}", standby.log_tail());
    eprintln!(
        "leader SIGKILLed -> standby healed the second crash in {:.1} s (lease 4 s, renew 1 s)",
        healed.as_secs_f64()
    );
    // Nothing twice: one restart per crash, the second one by the new leader.
    std::thread::sleep(Duration::from_secs(5));
    let lima = worker_json(stack, &ns, "lima");
    assert_eq!(lima["status"]["restartCount"], 2, "{lima}");
    assert_eq!(standby.metric_value(RESTARTS), 1.0);
}
