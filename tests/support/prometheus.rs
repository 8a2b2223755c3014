//! The stack's Prometheus (`scripts/stack.sh`, port 19090): operators registered as scrape
//! targets, instant queries and the alerts it holds.

use std::{fs, path::PathBuf};

use serde_json::{json, Value};

use super::{http_get, repo_root};

pub const PROMETHEUS_ADDR: &str = "127.0.0.1:19090";

/// An operator's `/metrics` scraped by the stack's Prometheus (a file_sd target file) until
/// dropped. Its series carry `test=<name>`.
pub struct ScrapeTarget {
    path: PathBuf,
}

impl ScrapeTarget {
    pub fn register(name: &str, addr: &str) -> Self {
        let dir = repo_root().join(".stack/prometheus/targets");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.json"));
        let tmp = dir.join(format!(".{name}.json.tmp"));
        let targets = json!([{"targets": [addr], "labels": {"test": name}}]);
        // Written whole, then renamed: Prometheus never reads half a file.
        fs::write(&tmp, targets.to_string()).unwrap();
        fs::rename(&tmp, &path).unwrap();
        Self { path }
    }
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `GET` a Prometheus API path; the `data` of a successful answer.
fn api(path: &str) -> Result<Value, String> {
    let (code, body) = http_get(PROMETHEUS_ADDR, path).ok_or("Prometheus did not answer")?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{code}: {e}: {body}"))?;
    if code != 200 || v["status"] != "success" {
        return Err(format!("{code}: {body}"));
    }
    Ok(v["data"].clone())
}

/// The result vector of an instant query.
pub fn query(expr: &str) -> Result<Vec<Value>, String> {
    let data = api(&format!("/api/v1/query?query={}", percent_encode(expr)))?;
    Ok(data["result"].as_array().cloned().unwrap_or_default())
}

/// Every alert Prometheus holds (pending or firing).
pub fn alerts() -> Result<Vec<Value>, String> {
    let data = api("/api/v1/alerts")?;
    Ok(data["alerts"].as_array().cloned().unwrap_or_default())
}

/// The state (`pending`, `firing`) of the alert `name` about `worker` in `namespace`, if any.
pub fn alert_state(name: &str, namespace: &str, worker: &str) -> Result<Option<String>, String> {
    Ok(alerts()?
        .into_iter()
        .find(|a| {
            let l = &a["labels"];
            l["alertname"] == name && l["namespace"] == namespace && l["worker"] == worker
        })
        .and_then(|a| a["state"].as_str().map(String::from)))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
