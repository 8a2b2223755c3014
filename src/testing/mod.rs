//! Fixtures shared by the unit tests of every layer: one Worker, its container, a host with a
//! canned kernel log, an API server in memory ([`mock_api`]) and a controller [`context`] over
//! them.

pub mod mock_api;

use std::{path::Path, sync::Arc};

use http::Method;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::{
    controller::Context,
    crd::worker::Worker,
    diagnose::{HostProbe, KernelLogError},
    metrics::Metrics,
    runtime::{fake::FakeRuntime, ContainerInfo, ContainerState},
    trust::AllowedRoots,
};

/// A Worker `marie` whose container is `marie`.
pub fn worker() -> Worker {
    serde_yaml_ng::from_str(
        "apiVersion: workerrecovery.io/v1alpha1\nkind: Worker\nmetadata: {name: marie, namespace: default}\nspec: {container: marie}\n",
    )
    .expect("fixture parses")
}

/// A running container `marie` with a 64-hex ID and host PID 4242.
pub fn running() -> ContainerInfo {
    ContainerInfo {
        id: "3f2a9c1e7b4d5a6f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f".into(),
        name: "marie".into(),
        image: Some("wro-sample-worker:dev".into()),
        status: ContainerState::Running,
        running: true,
        exit_code: Some(0),
        pid: Some(4242),
        started_at: Some("2026-11-27T10:00:00Z".parse().unwrap()),
        env: vec![
            "PATH=/usr/local/bin:/bin".into(),
            "WORKER_NAME=marie".into(),
        ],
        command: vec!["/usr/local/bin/sample-worker".into()],
        labels: [(
            crate::trust::CONSENT_LABEL.to_string(),
            crate::trust::consent_value("default", "marie"),
        )]
        .into(),
        ..Default::default()
    }
}

/// The same container after it exited with `code`.
pub fn exited(code: i64) -> ContainerInfo {
    ContainerInfo {
        status: ContainerState::Exited,
        running: false,
        exit_code: Some(code),
        pid: None,
        finished_at: Some("2026-11-27T10:05:00Z".parse().unwrap()),
        ..running()
    }
}

/// A [`HostProbe`] with a canned kernel log.
pub struct FakeHost(pub Result<String, KernelLogError>);

#[async_trait::async_trait]
impl HostProbe for FakeHost {
    async fn kernel_log(&self) -> Result<String, KernelLogError> {
        self.0.clone()
    }

    /// The kernel's default: cores go to the working directory.
    async fn core_pattern(&self) -> Result<String, String> {
        Ok("core\n".into())
    }
}

/// A controller context over `client` (from [`mock_api`]) and `fake`, with no kernel log, which
/// allows the shared roots under `allowed`.
pub fn context(client: kube::Client, fake: Arc<FakeRuntime>, allowed: &Path) -> Context {
    Context::new(
        client,
        fake,
        Arc::new(FakeHost(Ok(String::new()))),
        Arc::new(Metrics::default()),
        AllowedRoots::new(&[allowed.to_path_buf()]).unwrap(),
        crate::http::testing::client(),
    )
}

/// A controller [`context`] over `fake` and an API server in memory that answers with
/// `answer` (see [`mock_api::client`]), and the requests that server saw.
pub fn api_context(
    answer: impl Fn(&Method, &str, &Value) -> (u16, Value) + Send + 'static,
    fake: Arc<FakeRuntime>,
    allowed: &Path,
) -> (Context, mock_api::Requests) {
    let (client, requests) = mock_api::client(answer);
    (context(client, fake, allowed), requests)
}

/// The heartbeat file of Worker `marie` under `root`, written now: `idle`, progress 3.
pub fn fresh_heartbeat(root: &Path) {
    heartbeat_at(root, Timestamp::now());
}

/// The heartbeat file of Worker `marie` under `root`, with the time `at`: `idle`, progress 3.
pub fn heartbeat_at(root: &Path, at: Timestamp) {
    let dir = root.join("workers/marie");
    std::fs::create_dir_all(&dir).unwrap();
    let body = serde_json::json!({"timestamp": at.to_string(), "status": "idle", "progress": 3});
    std::fs::write(dir.join("heartbeat.json"), body.to_string()).unwrap();
}
