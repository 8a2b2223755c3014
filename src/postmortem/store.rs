//! Where post-mortems live: a ConfigMap `<worker>-postmortems` in the Worker's namespace, owned
//! by the Worker (deleted with it), holding `incident-<n>.md` and `incident-<n>.json` for the
//! last [`MAX_INCIDENTS`] incidents, each at most [`MAX_REPORT_BYTES`].

use k8s_openapi::{api::core::v1::ConfigMap, jiff::Timestamp};
use kube::{
    api::{Api, ListParams, ObjectMeta, Patch, PatchParams},
    Client, Resource as _, ResourceExt,
};

use super::report::{self, Report, Sources};
use crate::{
    controller::FIELD_MANAGER,
    crd::{
        resume_plan::ResumePlan,
        worker::{IncidentStatus, Worker, WorkerStatus},
        worker_recovery::WorkerRecovery,
    },
};

/// Incidents kept per Worker; older ones are dropped.
pub const MAX_INCIDENTS: usize = 5;
/// The largest Markdown or JSON of one incident; past it, the latest timeline lines go.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// The ConfigMap of `worker`'s post-mortems.
pub fn configmap_name(worker: &str) -> String {
    format!("{worker}-postmortems")
}

pub fn markdown_key(incident: u32) -> String {
    format!("incident-{incident}.md")
}

pub fn json_key(incident: u32) -> String {
    format!("incident-{incident}.json")
}

/// Why a post-mortem could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("the report does not serialize: {0}")]
    Json(#[from] serde_json::Error),
    #[error("ConfigMap {name} exists and is not this Worker's: its post-mortems are not written")]
    NotOurs { name: String },
    #[error("no post-mortem of Worker {namespace}/{worker}{which}")]
    NotFound {
        namespace: String,
        worker: String,
        which: String,
    },
}

/// Write (or rewrite) the post-mortem of `incident`, keeping the latest others.
pub async fn write(
    client: &Client,
    worker: &Worker,
    status: &WorkerStatus,
    incident: &IncidentStatus,
) -> Result<(), StoreError> {
    let ns = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let runs = incident_runs(client, &ns, &name, incident).await?;
    let plans = incident_plans(client, &ns, &runs).await?;
    let report = report::build(&Sources {
        worker,
        status,
        incident,
        runs: &runs,
        plans: &plans,
        now: Timestamp::now(),
    });
    let (markdown, json) = fit(report)?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm_name = configmap_name(&name);
    let existing = api.get_opt(&cm_name).await?;
    if let Some(cm) = &existing {
        if !owned_by(cm, worker) {
            return Err(StoreError::NotOurs { name: cm_name });
        }
    }
    let existing = existing.and_then(|cm| cm.data);
    let mut data = kept(existing.unwrap_or_default(), incident.number);
    data.insert(markdown_key(incident.number), markdown);
    data.insert(json_key(incident.number), json);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(cm_name.clone()),
            namespace: Some(ns),
            labels: Some(
                [
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        FIELD_MANAGER.to_string(),
                    ),
                    ("workerrecovery.io/postmortems-of".to_string(), name.clone()),
                ]
                .into(),
            ),
            owner_references: worker.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&cm_name, &params, &Patch::Apply(&cm)).await?;
    Ok(())
}

/// Whether `cm` is this Worker's post-mortem ConfigMap: owned by it (its UID). Any other
/// ConfigMap of that name is left alone: a Worker's name must not let the operator take over
/// (and tie to the Worker's lifetime) a ConfigMap its creator could not write.
fn owned_by(cm: &ConfigMap, worker: &Worker) -> bool {
    let uid = worker.uid();
    cm.owner_references()
        .iter()
        .any(|o| o.kind == "Worker" && Some(&o.uid) == uid.as_ref())
}

/// The other incidents' entries to keep: the latest `MAX_INCIDENTS - 1` besides `current`.
fn kept(
    mut data: std::collections::BTreeMap<String, String>,
    current: u32,
) -> std::collections::BTreeMap<String, String> {
    let mut numbers: Vec<u32> = data
        .keys()
        .filter_map(|k| {
            k.strip_prefix("incident-")?
                .strip_suffix(".md")?
                .parse()
                .ok()
        })
        .filter(|n| *n != current)
        .collect();
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    numbers.truncate(MAX_INCIDENTS - 1);
    data.retain(|k, _| {
        numbers
            .iter()
            .any(|n| *k == markdown_key(*n) || *k == json_key(*n))
    });
    data
}

/// The report as Markdown and JSON, each within [`MAX_REPORT_BYTES`]: timeline lines go from
/// the end (a note says so) until both fit.
pub fn fit(mut report: Report) -> Result<(String, String), serde_json::Error> {
    let mut dropped = 0;
    loop {
        let markdown = report::markdown(&report);
        let json = serde_json::to_string_pretty(&report)?;
        if (markdown.len() <= MAX_REPORT_BYTES && json.len() <= MAX_REPORT_BYTES)
            || report.timeline.len() <= 1
        {
            return Ok((markdown, json));
        }
        let cut = (report.timeline.len() / 10).max(1);
        dropped += cut;
        report.timeline.truncate(report.timeline.len() - cut);
        if let Some(last) = report.timeline.last_mut() {
            if !last.event.ends_with(" lines left out)") {
                last.event = format!(
                    "{} (the timeline is cut here; {dropped} lines left out)",
                    last.event
                );
            }
        }
    }
}

/// The WorkerRecoveries of `worker` that belong to the incident: its automatic attempts, and
/// any other run started since it began.
async fn incident_runs(
    client: &Client,
    ns: &str,
    worker: &str,
    incident: &IncidentStatus,
) -> Result<Vec<WorkerRecovery>, kube::Error> {
    let api: Api<WorkerRecovery> = Api::namespaced(client.clone(), ns);
    let started = incident.started.as_ref().map(|t| t.0);
    let ended = incident.ended.as_ref().map(|t| t.0);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| r.spec.worker_ref.name == worker)
        .filter(|r| {
            let begun = r.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0);
            incident.runs.contains(&r.name_any())
                || matches!((begun, started), (Some(b), Some(s)) if b >= s && ended.is_none_or(|e| b <= e))
        })
        .collect())
}

async fn incident_plans(
    client: &Client,
    ns: &str,
    runs: &[WorkerRecovery],
) -> Result<Vec<ResumePlan>, kube::Error> {
    let api: Api<ResumePlan> = Api::namespaced(client.clone(), ns);
    let mut plans = Vec::new();
    for name in runs
        .iter()
        .filter_map(|r| r.status.as_ref()?.resume_plan.clone())
    {
        if let Some(plan) = api.get_opt(&name).await? {
            plans.push(plan);
        }
    }
    Ok(plans)
}

/// The stored post-mortem of `worker`'s incident `incident` (the latest without one), as
/// Markdown or JSON.
pub async fn read(
    client: &Client,
    ns: &str,
    worker: &str,
    incident: Option<u32>,
    json: bool,
) -> Result<String, StoreError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let data = api
        .get_opt(&configmap_name(worker))
        .await?
        .and_then(|cm| cm.data)
        .unwrap_or_default();
    let number = incident.or_else(|| {
        data.keys()
            .filter_map(|k| {
                k.strip_prefix("incident-")?
                    .strip_suffix(".md")?
                    .parse()
                    .ok()
            })
            .max()
    });
    let not_found = || StoreError::NotFound {
        namespace: ns.to_string(),
        worker: worker.to_string(),
        which: incident.map_or(String::new(), |n| format!(" for incident {n}")),
    };
    let n = number.ok_or_else(not_found)?;
    let key = if json { json_key(n) } else { markdown_key(n) };
    data.get(&key).cloned().ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postmortem::report::{Impact, Line};

    fn report(lines: usize) -> Report {
        Report {
            namespace: "ns".into(),
            worker: "w".into(),
            incident: 1,
            state: "open".into(),
            started: None,
            ended: None,
            timeline: (0..lines)
                .map(|i| Line {
                    time: None,
                    kind: "attempt".into(),
                    event: format!("{i}: {}", "x".repeat(200)),
                })
                .collect(),
            root_cause: None,
            impact: Impact::default(),
            actions: vec![],
            follow_ups: vec![],
            crash_dumps: vec![],
        }
    }

    #[test]
    fn a_long_report_is_cut_to_fit_and_says_so() {
        let (md, json) = fit(report(2000)).unwrap();
        assert!(md.len() <= MAX_REPORT_BYTES && json.len() <= MAX_REPORT_BYTES);
        assert!(md.contains("lines left out)"), "{}", &md[md.len() - 400..]);
        assert!(md.contains("| attempt: 0: xxx"));
        let (small, _) = fit(report(3)).unwrap();
        assert!(!small.contains("left out"));
    }

    #[test]
    fn only_a_configmap_owned_by_the_worker_is_written_over() {
        let worker: Worker = serde_json::from_value(serde_json::json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "Worker",
            "metadata": {"name": "w", "namespace": "ns", "uid": "u-1"},
            "spec": {"container": "w"}
        }))
        .unwrap();
        let cm = |owner: Option<&str>| ConfigMap {
            metadata: ObjectMeta {
                owner_references: owner.map(|uid| {
                    vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            kind: "Worker".into(),
                            uid: uid.into(),
                            ..Default::default()
                        },
                    ]
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(owned_by(&cm(Some("u-1")), &worker));
        assert!(!owned_by(&cm(Some("u-2")), &worker), "another Worker's");
        assert!(!owned_by(&cm(None), &worker), "someone's own ConfigMap");
    }

    #[test]
    fn the_latest_incidents_are_kept() {
        let mut data = std::collections::BTreeMap::new();
        for n in 1..=7 {
            data.insert(markdown_key(n), format!("{n}"));
            data.insert(json_key(n), format!("{n}"));
        }
        data.insert("other".into(), "x".into());
        let kept = kept(data, 8);
        let mut keys: Vec<_> = kept.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [4, 4, 5, 5, 6, 6, 7, 7]
                .iter()
                .enumerate()
                .map(|(i, n)| if i % 2 == 0 {
                    json_key(*n)
                } else {
                    markdown_key(*n)
                })
                .collect::<Vec<_>>()
        );
        // Rewriting the current incident keeps it out of the others.
        assert!(!super::kept(kept.clone(), 7).contains_key(&markdown_key(7)));
    }
}
