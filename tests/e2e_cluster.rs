//! End-to-end test of the Helm chart in the one-node cluster of `scripts/stack.sh up --cluster`:
//! the operator image (`scripts/build-operator-image.sh`) runs as a pod placed by the real
//! scheduler and started by the real kubelet, and heals a crashed sample worker.
//!
//! Needs the cluster (`scripts/stack.sh up --cluster`) and the image `worker-recovery-operator:dev`
//! in the Docker engine; the test loads it into the cluster's containerd itself.
//! `scripts/test-cluster.sh` does all of it (the last step of `scripts/test.sh`); the test target
//! needs the `cluster-e2e` feature, so a plain `cargo test` does not run it without the cluster.

mod support;

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::*;

const NODE: &str = "wro-node";
const OPERATOR_IMAGE: &str = "worker-recovery-operator:dev";
const CHART: &str = "charts/worker-recovery-operator";
/// Per node, on the host's network.
const VALUES: &str = "charts/worker-recovery-operator/ci/local-cluster-values.yaml";
/// Single host, two replicas on the pod network.
const SINGLE_HOST_VALUES: &str =
    "charts/worker-recovery-operator/ci/local-cluster-single-host-values.yaml";

/// Auto-recovery without backoff or cooldown, so that a restart follows a crash at once.
fn eager(m: Manifest) -> Manifest {
    m.auto_recovery()
        .spec(json!({"autoRecovery": {"cooldownSeconds": 0, "backoff": {"initialSeconds": 0}}}))
}

/// (reportingController, reportingInstance) of every Event about `name`.
fn reporters(stack: &Stack, ns: &str, name: &str) -> Vec<(String, String)> {
    stack
        .events_for(ns, name)
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("reportingComponent"), s("reportingInstance"))
        })
        .collect()
}

/// Crash the worker and wait until the operator restarted it (its `restarts`-th restart) and it
/// is Healthy again; returns how long that took.
fn crash_and_heal(
    stack: &Stack,
    wc: &WorkerContainer,
    ns: &str,
    name: &str,
    restarts: u64,
) -> Duration {
    let crashed = Instant::now();
    wc.inject_fault("crash");
    wait_restarted(stack, ns, name, restarts, Duration::from_secs(60));
    crashed.elapsed()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out: Output = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The node is Ready, and the operator image is in the cluster's containerd.
fn cluster_ready(stack: &Stack) {
    let node = stack.kubectl(&["get", "node", NODE, "-o", "json"], None);
    assert!(
        node.status.success(),
        "no node {NODE}: run scripts/stack.sh up --cluster first ({})",
        String::from_utf8_lossy(&node.stderr)
    );
    let image = docker(&["image", "inspect", OPERATOR_IMAGE]);
    assert!(
        image.status.success(),
        "no image {OPERATOR_IMAGE} in the Docker engine: run scripts/build-operator-image.sh first"
    );
    run(
        Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .args(["load-image", OPERATOR_IMAGE]),
        "scripts/stack.sh load-image",
    );
}

/// A Helm release of the chart in its own namespace, uninstalled (and the namespace deleted)
/// on drop; when the test failed, its pods' logs and the namespace's Events are printed first.
struct Release {
    stack: &'static Stack,
    name: String,
    ns: String,
    helm: PathBuf,
    home: tempfile::TempDir,
}

impl Release {
    fn install(stack: &'static Stack, name: &str, values: &str, args: &[&str]) -> Self {
        let root = repo_root();
        let helm = run(
            Command::new("bash")
                .arg(root.join("scripts/stack.sh"))
                .arg("helm"),
            "scripts/stack.sh helm",
        );
        let release = Self {
            stack,
            name: name.to_string(),
            ns: format!("{name}-ns"),
            helm: PathBuf::from(helm),
            home: tempfile::tempdir().unwrap(),
        };
        let mut all = vec![
            "install",
            name,
            CHART,
            "--namespace",
            &release.ns,
            "--create-namespace",
            "-f",
            values,
        ];
        all.extend_from_slice(args);
        run(&mut release.helm_cmd(&all), "helm install");
        release
    }

    fn helm_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.helm);
        let home = self.home.path();
        cmd.current_dir(repo_root())
            .env("KUBECONFIG", &self.stack.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .args(args);
        cmd
    }

    fn pods(&self) -> Vec<Value> {
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let list: Value = serde_json::from_str(
            &self
                .stack
                .kubectl_ok(&["get", "pods", "-n", &self.ns, "-l", &selector, "-o", "json"]),
        )
        .unwrap();
        list["items"].as_array().unwrap().clone()
    }

    /// Wait until exactly one pod of the release is Running and Ready on the node, and no other
    /// pod is left (not `not`, the pod deleted before); returns its name.
    fn wait_one_ready(&self, not: Option<&str>, timeout: Duration) -> String {
        self.wait_ready(1, not, timeout).remove(0)
    }

    /// Wait until the release has `count` pods, all Running and Ready on the node, none of them
    /// `not` and none terminating; returns their names.
    fn wait_ready(&self, count: usize, not: Option<&str>, timeout: Duration) -> Vec<String> {
        wait_for(&format!("{count} operator pods Ready"), timeout, || {
            let pods = self.pods();
            let summary: Vec<String> = pods.iter().map(pod_summary).collect();
            let names: Vec<String> = pods
                .iter()
                .filter(|p| pod_ready(p))
                .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            if pods.len() == count
                && names.len() == count
                && !names.iter().any(|n| Some(n.as_str()) == not)
            {
                Ok(names)
            } else {
                Err(summary.join("; "))
            }
        })
    }
}

fn pod_summary(p: &Value) -> String {
    format!(
        "{} {} deleting={} {}",
        p["metadata"]["name"],
        p["status"]["phase"],
        !p["metadata"]["deletionTimestamp"].is_null(),
        p["status"]["conditions"]
    )
}

/// Running and Ready on the node, and not being deleted.
fn pod_ready(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["metadata"]["deletionTimestamp"].is_null()
        && p["spec"]["nodeName"] == NODE
        && p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

impl Drop for Release {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for pod in self.pods() {
                let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                let logs = self
                    .stack
                    .kubectl(&["logs", "-n", &self.ns, name, "--tail", "40"], None);
                eprintln!(
                    "--- pod {name} logs (tail)\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
            let events = self.stack.kubectl(&["get", "events", "-n", &self.ns], None);
            eprintln!(
                "--- events in {}\n{}",
                self.ns,
                String::from_utf8_lossy(&events.stdout)
            );
        }
        let _ = self
            .helm_cmd(&["uninstall", &self.name, "--namespace", &self.ns, "--wait"])
            .output();
        let _ = self.stack.kubectl(
            &[
                "delete",
                "namespace",
                &self.ns,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
}

#[test]
fn the_chart_in_the_one_node_cluster_heals_the_workers_of_its_node() {
    let stack = stack();
    cluster_ready(stack);
    let ns = stack.namespace("cluster");
    // The allowed root, mounted into the pod at the same path.
    let root = tempfile::Builder::new()
        .prefix("wro-e2e-cluster-")
        .tempdir()
        .unwrap();
    let mike = WorkerContainer::start_in(root.path(), &ns, "mike");
    let oscar = WorkerContainer::start_in(root.path(), &ns, "oscar");
    stack.apply_ok(list([
        eager(mike.worker("mike", &ns)).spec(json!({"nodeName": NODE})),
        eager(oscar.worker("oscar", &ns)).spec(json!({"nodeName": "other-node"})),
    ]));

    let roots = format!("allowedRoots.global={}", json!([root.path()]));
    let installed = Instant::now();
    let release = Release::install(
        stack,
        &format!("wro-{}", unique_suffix()),
        VALUES,
        // Only this test's namespace: the other test's release, on the same Docker engine,
        // would otherwise act on these Workers too (and this one on its).
        &[
            "--set-json",
            &roots,
            "--set",
            &format!("watchNamespace={ns}"),
        ],
    );
    let pod = release.wait_one_ready(None, Duration::from_secs(120));
    eprintln!(
        "e2e_cluster: helm install -> pod {pod} Ready in {:?}",
        installed.elapsed()
    );
    // The DaemonSet's status follows its pod's (kube-controller-manager writes it).
    wait_object(
        stack,
        &release.ns,
        &format!("daemonset/{}-worker-recovery-operator", release.name),
        "numberReady 1",
        Duration::from_secs(30),
        |ds| ds["status"]["numberReady"] == 1,
    );

    let started = Instant::now();
    wait_phase(stack, &ns, "mike", "Healthy");
    eprintln!(
        "e2e_cluster: Worker mike Healthy {:?} after the pod was Ready",
        started.elapsed()
    );
    let healed = crash_and_heal(stack, &mike, &ns, "mike", 1);
    eprintln!("e2e_cluster: crash -> restarted and Healthy in {healed:?}");
    let by = reporters(stack, &ns, "mike");
    let from_pod = (FIELD_MANAGER.to_string(), pod.clone());
    assert!(
        !by.is_empty() && by.iter().all(|r| *r == from_pod),
        "Events about mike not all from {from_pod:?}: {by:?}"
    );

    // The Worker of another node: no status, no Event.
    let oscar_now = worker_json(stack, &ns, "oscar");
    assert_eq!(oscar_now["status"], Value::Null, "{oscar_now}");
    assert!(reporters(stack, &ns, "oscar").is_empty());

    // The DaemonSet brings a deleted pod back, and the new pod heals the next crash.
    let deleted = Instant::now();
    stack.kubectl_ok(&["delete", "pod", "-n", &release.ns, &pod]);
    let pod2 = release.wait_one_ready(Some(&pod), Duration::from_secs(120));
    eprintln!(
        "e2e_cluster: pod {pod} deleted -> pod {pod2} Ready in {:?}",
        deleted.elapsed()
    );
    let healed = crash_and_heal(stack, &mike, &ns, "mike", 2);
    eprintln!("e2e_cluster: second crash -> restarted and Healthy in {healed:?}");
    let by = reporters(stack, &ns, "mike");
    let from_pod2 = (FIELD_MANAGER.to_string(), pod2.clone());
    assert!(
        by.contains(&from_pod2),
        "no Event from {from_pod2:?}: {by:?}"
    );
    assert!(
        by.iter().all(|r| *r == from_pod || *r == from_pod2),
        "{by:?}"
    );
    let oscar_now = worker_json(stack, &ns, "oscar");
    assert_eq!(oscar_now["status"], Value::Null, "{oscar_now}");

    // helm upgrade with a changed value: the DaemonSet rolls its pod to the new template, and
    // the new pod heals the next crash.
    let upgraded = Instant::now();
    run(
        &mut release.helm_cmd(&[
            "upgrade",
            &release.name,
            CHART,
            "--namespace",
            &release.ns,
            "--reuse-values",
            "--set",
            "statusRefreshSeconds=60",
        ]),
        "helm upgrade",
    );
    let pod3 = release.wait_one_ready(Some(&pod2), Duration::from_secs(120));
    eprintln!(
        "e2e_cluster: helm upgrade -> pod {pod2} replaced by {pod3}, Ready in {:?}",
        upgraded.elapsed()
    );
    let env = stack.kubectl_ok(&[
        "get",
        "pod",
        "-n",
        &release.ns,
        &pod3,
        "-o",
        "jsonpath={.spec.containers[0].env[?(@.name=='WRO_STATUS_REFRESH_SECONDS')].value}",
    ]);
    assert_eq!(env, "60", "the new pod runs the upgraded values");
    let healed = crash_and_heal(stack, &mike, &ns, "mike", 3);
    eprintln!(
        "e2e_cluster: third crash (after the upgrade) -> restarted and Healthy in {healed:?}"
    );
    let by = reporters(stack, &ns, "mike");
    let from_pod3 = (FIELD_MANAGER.to_string(), pod3.clone());
    assert!(
        by.contains(&from_pod3),
        "no Event from {from_pod3:?}: {by:?}"
    );
    let oscar_now = worker_json(stack, &ns, "oscar");
    assert_eq!(oscar_now["status"], Value::Null, "{oscar_now}");
}

/// The holder of the leader Lease in the release's namespace (`<pod>-<n>`).
fn lease_holder(stack: &Stack, ns: &str) -> String {
    let lease = stack.get_json(ns, "lease/worker-recovery-operator");
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// singleHost, 2 replicas on the pod network, so both run at once: the one holding the Lease
/// heals, the other is a warm standby. Deleting the leader's pod hands the Lease to a standby,
/// which heals the next crash; no crash is healed twice.
#[test]
fn the_single_host_deployment_heals_and_fails_over_to_its_standby() {
    let stack = stack();
    cluster_ready(stack);
    let ns = stack.namespace("cluster-single");
    let root = tempfile::Builder::new()
        .prefix("wro-e2e-cluster-")
        .tempdir()
        .unwrap();
    let papa = WorkerContainer::start_in(root.path(), &ns, "papa");
    stack.apply_ok(eager(papa.worker("papa", &ns)));

    let roots = format!("allowedRoots.global={}", json!([root.path()]));
    let installed = Instant::now();
    let release = Release::install(
        stack,
        &format!("wro-{}", unique_suffix()),
        SINGLE_HOST_VALUES,
        &[
            "--set-json",
            &roots,
            "--set",
            &format!("watchNamespace={ns}"),
        ],
    );
    let pods = release.wait_ready(2, None, Duration::from_secs(120));
    eprintln!(
        "e2e_cluster: singleHost: helm install -> pods {pods:?} Ready in {:?}",
        installed.elapsed()
    );
    let leader = wait_for("the Lease held by a pod", Duration::from_secs(30), || {
        let holder = lease_holder(stack, &release.ns);
        pods.iter()
            .find(|p| holder.starts_with(p.as_str()))
            .cloned()
            .ok_or(holder)
    });
    wait_phase(stack, &ns, "papa", "Healthy");
    let since = docker_now();
    crash_and_heal(stack, &papa, &ns, "papa", 1);
    let from_leader = (FIELD_MANAGER.to_string(), leader.clone());
    let by = reporters(stack, &ns, "papa");
    assert!(
        !by.is_empty() && by.iter().all(|r| *r == from_leader),
        "only the leader acts, the standby does not: {by:?}"
    );

    // The leader's pod is deleted: it gives the Lease up as it stops, and a standby takes it at
    // the latest when it would have run out (6 s here): the other replica, or the pod that
    // replaces the deleted one, whichever looks first.
    let deleted = Instant::now();
    stack.kubectl_ok(&["delete", "pod", "-n", &release.ns, &leader, "--wait=false"]);
    let standby = wait_for("a standby holds the Lease", Duration::from_secs(60), || {
        let holder = lease_holder(stack, &release.ns);
        let live: Vec<String> = release
            .pods()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        live.into_iter()
            .find(|p| *p != leader && holder.starts_with(p.as_str()))
            .ok_or(holder)
    });
    let took_over = deleted.elapsed();
    let healed = crash_and_heal(stack, &papa, &ns, "papa", 2);
    eprintln!(
        "e2e_cluster: singleHost: leader {leader} deleted -> Lease held by the standby {standby} in {took_over:?}; \
         a crash then -> healed in {healed:?}; delete -> healed {:?}",
        deleted.elapsed()
    );
    let by = reporters(stack, &ns, "papa");
    let from_standby = (FIELD_MANAGER.to_string(), standby.clone());
    assert!(by.contains(&from_standby), "{by:?}");
    assert!(
        by.iter().all(|r| *r == from_leader || *r == from_standby),
        "{by:?}"
    );
    // Each crash started it once: neither the old leader nor the new pod acted twice.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(worker_json(stack, &ns, "papa")["status"]["restartCount"], 2);
    let starts = docker_events(&papa.container, &since)
        .into_iter()
        .filter(|a| a == "start")
        .count();
    assert_eq!(starts, 2, "one start per crash");
}

/// A Clean run interrupted by the deletion of the agent pod in its CleanState step: the pod the
/// DaemonSet brings back finishes it, and every active task is requeued exactly once.
#[test]
fn a_clean_run_survives_the_deletion_of_its_agent_pod() {
    const TASKS: usize = 20_000;
    let stack = stack();
    cluster_ready(stack);
    let ns = stack.namespace("cluster-clean");
    let root = tempfile::Builder::new()
        .prefix("wro-e2e-cluster-")
        .tempdir()
        .unwrap();
    // A worker that is not running: only the operator moves its tasks.
    let wc = WorkerContainer::start_command_in(
        root.path(),
        &ns,
        "quebec",
        &["--entrypoint", "/bin/sh"],
        &["-c", "exit 0"],
    );
    wait_exited(&wc);
    let ids = crashed_tasks(&wc.shared_root(), "quebec", TASKS);
    stack.apply_ok(wc.worker("quebec", &ns).spec(json!({"nodeName": NODE})));

    let roots = format!("allowedRoots.global={}", json!([root.path()]));
    let release = Release::install(
        stack,
        &format!("wro-{}", unique_suffix()),
        VALUES,
        &[
            "--set-json",
            &roots,
            "--set",
            &format!("watchNamespace={ns}"),
            // Not the other per-node test's host port: the tests run at once.
            "--set",
            "port=18082",
        ],
    );
    let pod = release.wait_one_ready(None, Duration::from_secs(120));
    stack.apply_ok(
        recovery("clean-1", &ns, "quebec")
            .mode("Clean")
            .spec(json!({"verifyTimeoutSeconds": 1})),
    );
    wait_step(stack, &ns, "clean-1", Duration::from_secs(60), |step| {
        step == "CleanState"
    });
    // One second to stop, then SIGKILL: the step does not get to finish (a graceful stop
    // would let it), as when a node goes down.
    stack.kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &release.ns,
        &pod,
        "--grace-period=1",
        "--wait=false",
    ]);
    let pod2 = release.wait_one_ready(Some(&pod), Duration::from_secs(120));
    let run = wait_run_finished_within(stack, &ns, "clean-1", Duration::from_secs(180));
    let clean = run_step(&run, "CleanState");
    assert_eq!(clean["state"], "Succeeded", "{:#}", run["status"]);
    eprintln!(
        "e2e_cluster: Clean run, pod {pod} deleted in CleanState, finished by {pod2}: attempt {}, {}",
        clean["attempt"], clean["message"]
    );
    assert!(
        clean["attempt"].as_u64().unwrap() >= 2,
        "the deletion landed while the step ran: {clean}"
    );
    let by = reporters(stack, &ns, "clean-1");
    for p in [&pod, &pod2] {
        assert!(
            by.contains(&(FIELD_MANAGER.to_string(), p.clone())),
            "the run has Events from {p}: {by:?}"
        );
    }
    assert_requeued_once(&wc, &ids);
}

const FIELD_MANAGER: &str = "worker-recovery-operator";
