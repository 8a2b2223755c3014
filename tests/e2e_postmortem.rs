//! Post-mortems: a worker that crashes one second after every start is restarted three times,
//! then escalated through every level to the last (L2). The incident is one post-mortem, in the
//! ConfigMap `<worker>-postmortems` owned by the Worker, whose timeline lists every attempt and
//! every level; `worker-recovery-operator postmortem` prints it as Markdown and as JSON.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

#[test]
fn a_crash_loop_escalated_to_the_last_level_is_one_post_mortem_with_every_attempt_and_level() {
    let stack = stack();
    let ns = stack.namespace("postmortem");
    let wc = WorkerContainer::crash_looping(&ns, "loopy");
    stack.apply_ok(wc.worker("loopy", &ns).auto_recovery().spec(json!({
        "autoRecovery": {
            "maxRestarts": 3,
            "cooldownSeconds": 0,
            "backoff": {"initialSeconds": 1, "factor": 1, "maxSeconds": 1},
        },
        "escalation": {"levels": [
            {"name": "Automated", "afterSeconds": 0},
            {"name": "L1", "afterSeconds": 2},
            {"name": "L2", "afterSeconds": 4},
        ]},
    })));
    let _op = Operator::start(stack, &ns, wc.dir.path());

    let done = wait_worker(
        stack,
        &ns,
        "loopy",
        "the incident closed at the last level and reported",
        Duration::from_secs(120),
        |w| {
            let i = &w["status"]["incident"];
            i["outcome"] == "LastLevel"
                && i["reported"].as_u64() == i["timeline"].as_array().map(|t| t.len() as u64)
        },
    );
    let st = &done["status"];
    assert_eq!(st["incidentsTotal"], 1, "{st:#}");
    let incident = &st["incident"];
    assert_eq!(incident["number"], 1);
    let timeline: Vec<(String, String)> = incident["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("kind"), s("message"))
        })
        .collect();
    eprintln!("e2e_postmortem: timeline {timeline:#?}");
    let attempts: Vec<&String> = timeline
        .iter()
        .filter(|(k, _)| k == "attempt")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(attempts.len(), 3, "{timeline:#?}");
    for (i, m) in attempts.iter().enumerate() {
        assert!(
            m.starts_with(&format!("automatic attempt {}", i + 1)),
            "{m}"
        );
    }
    let levels: Vec<&String> = timeline
        .iter()
        .filter(|(k, _)| k == "escalated")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(levels.len(), 3, "{timeline:#?}");
    for (m, level) in levels.iter().zip(["Automated", "L1", "L2"]) {
        assert!(m.starts_with(&format!("escalated to {level} ")), "{m}");
    }
    assert_eq!(timeline[0].0, "detected");

    // One post-mortem, in the Worker's ConfigMap, owned by it.
    let cm = stack.get_json(&ns, "configmap/loopy-postmortems");
    let keys: Vec<&String> = cm["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["incident-1.json", "incident-1.md"], "{cm:#}");
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("Worker"), Some("loopy"))
    );
    assert_eq!(owner["uid"], done["metadata"]["uid"]);

    let markdown = postmortem_cli(stack, &["loopy", "-n", &ns]);
    eprintln!("e2e_postmortem: the post-mortem:\n{markdown}");
    for needle in [
        "# Post-mortem: Worker ",
        "- State: closed: the last escalation level was reached",
        "automatic attempt 1",
        "automatic attempt 2",
        "automatic attempt 3",
        "escalated to Automated",
        "escalated to L1",
        "escalated to L2",
        "## Root cause",
        "## Impact",
        "## Actions taken",
        "- 3 automatic restart(s) of the container",
        "- escalation levels reached: Automated, L1, L2",
        "## Follow-up items",
    ] {
        assert!(markdown.contains(needle), "missing {needle:?}");
    }
    // Each automatic run and its steps are in the timeline.
    for run in incident["runs"].as_array().unwrap() {
        let run = run.as_str().unwrap();
        assert!(
            markdown.contains(&format!("run {run} (Quick) started")),
            "{run}"
        );
    }
    let json: Value = serde_json::from_str(&postmortem_cli(
        stack,
        &["loopy", "-n", &ns, "--incident", "1", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(json["incident"], 1);
    assert_eq!(json["state"], "lastLevel");
    assert!(json["impact"]["downtimeSeconds"].as_u64().unwrap() >= 4);
    assert!(json["followUps"].as_array().unwrap().len() >= 2, "{json:#}");
}
