//! The custom resources as JSON (which `kubectl apply` takes as it takes YAML), with builders
//! for the fields the tests set most.

use std::path::Path;

use serde_json::{json, Value};

use super::{Stack, WorkerContainer};

pub const API_VERSION: &str = "workerrecovery.io/v1alpha1";

/// One object to apply: `apiVersion`, `kind`, `metadata` (name, namespace) and `spec`.
#[derive(Clone, Debug)]
pub struct Manifest(pub Value);

impl Manifest {
    pub fn new(kind: &str, name: &str, ns: &str, spec: Value) -> Self {
        Self(json!({
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
    }

    /// Merge `patch` into the spec: objects key by key (so `{"autoRecovery": {...}}` adds to
    /// the policy already there), anything else replaces what was there.
    pub fn spec(mut self, patch: Value) -> Self {
        merge(&mut self.0["spec"], patch);
        self
    }

    /// A run's `spec.mode` (`Diagnose`, `Quick`, `Clean`, `Debug`).
    pub fn mode(self, mode: &str) -> Self {
        self.spec(json!({ "mode": mode }))
    }

    /// A Worker's `spec.heartbeatTimeoutSeconds`.
    pub fn heartbeat_timeout(self, seconds: u32) -> Self {
        self.spec(json!({ "heartbeatTimeoutSeconds": seconds }))
    }

    /// A Worker with `spec.autoRecovery.enabled: true`.
    pub fn auto_recovery(self) -> Self {
        self.spec(json!({"autoRecovery": {"enabled": true}}))
    }

    /// A Worker whose metrics the operator scrapes at `url`.
    pub fn metrics(self, url: &str) -> Self {
        self.spec(json!({"metrics": {"url": url}}))
    }
}

impl From<Manifest> for Value {
    fn from(m: Manifest) -> Value {
        m.0
    }
}

fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, patch) => *into = patch,
    }
}

/// Several objects applied by one `kubectl apply`, in order.
pub fn list(items: impl IntoIterator<Item = Manifest>) -> Value {
    let items: Vec<Value> = items.into_iter().map(Value::from).collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// A Worker of `container` with its files under `shared_root`, and nothing else.
pub fn worker(name: &str, ns: &str, container: &str, shared_root: &Path) -> Manifest {
    Manifest::new(
        "Worker",
        name,
        ns,
        json!({"container": container, "sharedRoot": shared_root}),
    )
}

impl WorkerContainer {
    /// The Worker for this container and its shared root: heartbeat timeout 10 s, auto-recovery
    /// off.
    pub fn worker(&self, name: &str, ns: &str) -> Manifest {
        worker(name, ns, &self.container, &self.shared_root()).spec(json!({
            "workerName": self.worker_name,
            "heartbeatTimeoutSeconds": 10,
            "autoRecovery": {"enabled": false},
        }))
    }
}

/// Apply the Worker for `wc` with its metrics scraped (what runs and plans monitor).
pub fn apply_worker(stack: &Stack, wc: &WorkerContainer, name: &str, ns: &str) {
    stack.apply_ok(wc.worker(name, ns).metrics(&wc.metrics_url));
}

/// A WorkerRecovery of `worker` with nothing else set (Quick, the operator's timeouts).
pub fn bare_recovery(name: &str, ns: &str, worker: &str) -> Manifest {
    Manifest::new(
        "WorkerRecovery",
        name,
        ns,
        json!({"workerRef": {"name": worker}}),
    )
}

/// A WorkerRecovery of `worker` with the tests' timeouts: 2 s to stop, 60 s to verify.
pub fn recovery(name: &str, ns: &str, worker: &str) -> Manifest {
    bare_recovery(name, ns, worker).spec(json!({
        "stopGracePeriodSeconds": 2,
        "verifyTimeoutSeconds": 60,
    }))
}

/// A ResumePlan for `worker` that monitors it every second.
pub fn plan(name: &str, ns: &str, worker: &str) -> Manifest {
    Manifest::new(
        "ResumePlan",
        name,
        ns,
        json!({"workerRef": {"name": worker}, "monitorIntervalSeconds": 1}),
    )
}
