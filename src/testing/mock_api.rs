//! A Kubernetes API server in memory, for fast unit tests of reconcilers.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::Value;

/// One request the mock answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub body: Value,
}

/// The requests a mock answered, in order.
pub type Requests = Arc<Mutex<Vec<Recorded>>>;

/// A client whose every request is recorded and answered by `answer(method, path, body)`
/// with a status code and a JSON body; Leases are kept by a [`Leases`] store.
pub fn client(
    answer: impl Fn(&Method, &str, &Value) -> (u16, Value) + Send + 'static,
) -> (kube::Client, Requests) {
    let (client, log, _) = client_and_leases(answer);
    (client, log)
}

/// [`client`], and the store of the Leases it keeps.
pub fn client_and_leases(
    answer: impl Fn(&Method, &str, &Value) -> (u16, Value) + Send + 'static,
) -> (kube::Client, Requests, Leases) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Requests = Arc::default();
    let recorded = log.clone();
    let leases = Leases::default();
    let store = leases.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path();
            let (code, reply) = store
                .answer(&parts.method, path, &body)
                .unwrap_or_else(|| answer(&parts.method, path, &body));
            recorded.lock().unwrap().push(Recorded {
                method: parts.method,
                path: path.to_string(),
                body,
            });
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (kube::Client::new(service, "default"), log, leases)
}

/// Leases as an API server keeps them: a create conflicts with an existing one, a replace
/// or a delete with a stale resourceVersion conflicts.
#[derive(Clone, Default)]
pub struct Leases {
    pub objects: Arc<Mutex<std::collections::HashMap<String, Value>>>,
    /// Put this Lease in place just before the next create, as a racing writer would.
    pub race: Arc<Mutex<Option<Value>>>,
}

impl Leases {
    fn answer(&self, method: &Method, path: &str, body: &Value) -> Option<(u16, Value)> {
        let rest = path.strip_prefix("/apis/coordination.k8s.io/v1/namespaces/")?;
        let (_, rest) = rest.split_once("/leases")?;
        let name = rest.trim_start_matches('/').to_string();
        let mut leases = self.objects.lock().unwrap();
        let conflict = (
            409,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "Conflict", "code": 409, "message": "conflict"}),
        );
        let version = |l: &Value| -> u64 {
            l["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let stored = |mut l: Value, rv: u64| {
            l["metadata"]["resourceVersion"] = serde_json::json!(rv.to_string());
            l["metadata"]["uid"] = serde_json::json!("lease-uid");
            l
        };
        Some(match *method {
            Method::GET => match leases.get(&name) {
                Some(l) => (200, l.clone()),
                None => not_found(path),
            },
            Method::POST => {
                if let Some(winner) = self.race.lock().unwrap().take() {
                    let n = winner["metadata"]["name"].as_str().unwrap().to_string();
                    leases.insert(n, stored(winner, 1));
                }
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                if leases.contains_key(name) {
                    return Some(conflict);
                }
                let l = stored(body.clone(), 1);
                leases.insert(name.to_string(), l.clone());
                (201, l)
            }
            Method::PUT => {
                let current = leases.get(&name).cloned().unwrap_or_default();
                if current["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] {
                    return Some(conflict);
                }
                let l = stored(body.clone(), version(&current) + 1);
                leases.insert(name, l.clone());
                (200, l)
            }
            Method::DELETE => {
                let current = leases.get(&name).cloned().unwrap_or_default();
                let wanted = &body["preconditions"]["resourceVersion"];
                if !wanted.is_null() && current["metadata"]["resourceVersion"] != *wanted {
                    return Some(conflict);
                }
                leases.remove(&name);
                (
                    200,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            }
            _ => not_found(path),
        })
    }

    /// The `holderIdentity` of the Lease `name`.
    pub fn holder(&self, name: &str) -> Option<String> {
        let leases = self.objects.lock().unwrap();
        leases.get(name)?["spec"]["holderIdentity"]
            .as_str()
            .map(String::from)
    }
}

/// The `status` of the last PATCH the mock answered at `path`.
pub fn last_status(requests: &Mutex<Vec<Recorded>>, path: &str) -> Value {
    let recorded = requests.lock().unwrap();
    let patch = recorded
        .iter()
        .rev()
        .find(|r| r.method == Method::PATCH && r.path == path);
    patch.expect("a status patch").body["status"].clone()
}

/// The `Status` an API server sends with a 404.
pub fn not_found(what: &str) -> (u16, Value) {
    (
        404,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("{what} not found"), "reason": "NotFound", "code": 404
        }),
    )
}
