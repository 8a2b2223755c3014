//! Which Workers this operator process acts on: every Worker, or (a per-node agent started
//! with `--node-name`) only the Workers whose `spec.nodeName` names its node.

use kube::{api::Api, runtime::watcher};

use crate::crd::worker::Worker;

/// The Workers this process acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only the Workers of this node; every Worker when `None`.
    pub node: Option<String>,
}

impl Scope {
    /// Every Worker.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only the Workers whose `spec.nodeName` is `node`.
    pub fn node(node: impl Into<String>) -> Self {
        Self {
            node: Some(node.into()),
        }
    }

    /// Whether this process acts on `worker`.
    pub fn covers(&self, worker: &Worker) -> bool {
        match &self.node {
            None => true,
            Some(node) => worker.spec.node_name.as_deref() == Some(node.as_str()),
        }
    }

    /// How the Worker controller watches: a per-node agent asks the API server for its node's
    /// Workers only (a field selector), so that it neither caches nor sees the others.
    pub fn worker_watch(&self) -> watcher::Config {
        let config = watcher::Config::default();
        match &self.node {
            None => config,
            Some(node) => config.fields(&format!("spec.nodeName={node}")),
        }
    }

    /// Whether this process acts on the run or plan that names Worker `name` in `namespace`.
    /// An unscoped process asks nothing. A per-node agent reads the Worker: one of another
    /// node is not its business; a missing one is everybody's, as without a scope (the run
    /// waits for it, a deleted run is cleaned up).
    pub async fn covers_worker_named(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> kube::Result<bool> {
        if self.node.is_none() {
            return Ok(true);
        }
        let workers: Api<Worker> = Api::namespaced(client.clone(), namespace);
        Ok(workers
            .get_opt(name)
            .await?
            .is_none_or(|worker| self.covers(&worker)))
    }

    /// For logs: the node, or `<all>`.
    pub fn describe(&self) -> &str {
        self.node.as_deref().unwrap_or("<all>")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::mock_api;

    fn worker(node: Option<&str>) -> Worker {
        let mut spec = json!({"container": "marie", "sharedRoot": "/shared"});
        if let Some(node) = node {
            spec["nodeName"] = json!(node);
        }
        serde_json::from_value(json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "Worker",
            "metadata": {"name": "marie", "namespace": "default"},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn without_a_node_every_worker_is_covered() {
        let scope = Scope::all();
        assert!(scope.covers(&worker(None)));
        assert!(scope.covers(&worker(Some("node-a"))));
        assert_eq!(scope.worker_watch().field_selector, None);
        assert_eq!(scope.describe(), "<all>");
    }

    #[test]
    fn a_node_covers_only_its_own_workers() {
        let scope = Scope::node("node-a");
        assert!(scope.covers(&worker(Some("node-a"))));
        assert!(!scope.covers(&worker(Some("node-b"))));
        assert!(!scope.covers(&worker(None)));
        assert_eq!(
            scope.worker_watch().field_selector.as_deref(),
            Some("spec.nodeName=node-a")
        );
    }

    #[tokio::test]
    async fn an_unscoped_process_reads_no_worker() {
        let (client, requests) = mock_api::client(|_, path, _| mock_api::not_found(path));
        let covered = Scope::all()
            .covers_worker_named(&client, "default", "marie")
            .await
            .unwrap();
        assert!(covered);
        assert!(requests.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_node_agent_reads_the_worker_of_a_run() {
        let other = serde_json::to_value(worker(Some("node-b"))).unwrap();
        let (client, _) = mock_api::client(move |_, _, _| (200, other.clone()));
        let scope = Scope::node("node-a");
        assert!(!scope
            .covers_worker_named(&client, "default", "marie")
            .await
            .unwrap());
        let (client, _) = mock_api::client(|_, path, _| mock_api::not_found(path));
        assert!(scope
            .covers_worker_named(&client, "default", "marie")
            .await
            .unwrap());
    }
}
