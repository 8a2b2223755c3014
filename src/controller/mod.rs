//! Controllers of the operator and what they share.

pub mod backoff;
pub mod conditions;
pub mod worker;

use std::sync::Arc;

use kube::runtime::events::{Recorder, Reporter};

use crate::{docker::ContainerRuntime, metrics::Metrics};

/// Field manager under which the operator server-side-applies status.
pub const FIELD_MANAGER: &str = "worker-recovery-operator";

/// What every reconcile needs: the API client, the container engine, events and metrics.
pub struct Context {
    pub client: kube::Client,
    pub docker: Arc<dyn ContainerRuntime>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub backoff: backoff::Backoff,
}

impl Context {
    pub fn new(
        client: kube::Client,
        docker: Arc<dyn ContainerRuntime>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            docker,
            metrics,
            backoff: backoff::Backoff::default(),
        }
    }
}
