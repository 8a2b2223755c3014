//! Post-mortems (runbook "Post-Recovery Actions: Document Incident"): each incident of a Worker,
//! from its first failure to healthy again or to the last escalation level, gets a report with
//! a timeline, the root cause and its evidence, the impact, the actions taken and follow-up
//! items. The Worker controller keeps the incident's timeline in status ([`timeline`]); the
//! report is built from it and the incident's runs ([`report`]) and kept in a ConfigMap owned
//! by the Worker ([`store`]), which `worker-recovery-operator postmortem` prints.

pub mod report;
pub mod store;
pub mod timeline;

use kube::Client;
use tracing::warn;

use crate::crd::worker::{Worker, WorkerStatus};

/// Write the post-mortem of the Worker's latest incident again: a run of it recorded a crash
/// dump after the report was written. An incident not reported yet is left to the Worker
/// controller, which writes it with every run it has.
pub async fn rewrite_for_run(client: &Client, worker: &Worker) {
    let Some(status) = worker.status.as_ref() else {
        return;
    };
    let Some(incident) = status.incident.as_ref().filter(|i| i.reported > 0) else {
        return;
    };
    if let Err(e) = store::write(client, worker, status, incident).await {
        warn!(error = %e, incident = incident.number, "could not write the post-mortem again");
    }
}

/// Write the post-mortem when it lags the incident's timeline; the status then records that it
/// is written. A failed write is tried again at the next look.
pub async fn report_if_behind(client: &Client, worker: &Worker, status: &mut WorkerStatus) {
    let Some(incident) = status.incident.clone() else {
        return;
    };
    let entries = incident.timeline.len() as u32;
    if incident.reported >= entries {
        return;
    }
    match store::write(client, worker, status, &incident).await {
        Ok(()) => {
            if let Some(i) = status.incident.as_mut() {
                i.reported = entries;
            }
        }
        // Someone else's ConfigMap of that name: no use trying again at every look.
        Err(e @ store::StoreError::NotOurs { .. }) => {
            warn!(error = %e, incident = incident.number, "post-mortem not written");
            if let Some(i) = status.incident.as_mut() {
                i.reported = entries;
            }
        }
        Err(e) => warn!(
            error = %e,
            incident = incident.number,
            "could not write the post-mortem; trying again at the next look"
        ),
    }
}
