//! The escalation webhook: a JSON POST at each level change, with retries.
//!
//! The request is written over a plain `tokio` TCP stream with the same small HTTP/1.x code the
//! metrics probe uses (`diagnose::checks::metrics_endpoint`), so no HTTP client or TLS stack is
//! added for one POST. Hence `http://` only: an `https://` URL is refused with a message (use a
//! local relay such as an Alertmanager or a sidecar that speaks TLS).

use std::time::Duration;

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::diagnose::checks::metrics_endpoint::{parse_response, HttpUrl};

/// What is posted at a level change.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EscalationPayload {
    pub worker: String,
    pub namespace: String,
    pub level: String,
    pub level_index: u32,
    pub previous_level: Option<String>,
    pub reason: String,
    pub root_cause: Option<String>,
    pub run: Option<String>,
    pub since: String,
    pub time: String,
}

/// How a notification went.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub attempts: u32,
    /// The HTTP status of a delivered notification, or what the last attempt got.
    pub result: Result<u16, String>,
}

/// The wait before attempt `attempt + 1`: 1 s, 2 s, 4 s, ... at most 30 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// POST `payload` to `url`, each attempt within `timeout`, up to `max_attempts` attempts. A
/// 2xx answer is delivered; another 4xx than 408 and 429 is not retried.
pub async fn deliver(
    url: &str,
    payload: &EscalationPayload,
    timeout: Duration,
    max_attempts: u32,
) -> Delivery {
    deliver_with(url, payload, timeout, max_attempts, retry_delay).await
}

async fn deliver_with(
    url: &str,
    payload: &EscalationPayload,
    timeout: Duration,
    max_attempts: u32,
    delay: impl Fn(u32) -> Duration,
) -> Delivery {
    if url.trim().to_ascii_lowercase().starts_with("https://") {
        return Delivery {
            attempts: 0,
            result: Err(
                "https webhooks need TLS, which this build does not have; post to an http:// relay"
                    .into(),
            ),
        };
    }
    let target = match HttpUrl::parse(url) {
        Ok(t) => t,
        Err(e) => {
            return Delivery {
                attempts: 0,
                result: Err(format!("invalid webhook URL: {e}")),
            }
        }
    };
    let body = serde_json::to_vec(payload).expect("the payload serializes");
    let mut last = String::new();
    for attempt in 1..=max_attempts.max(1) {
        if attempt > 1 {
            tokio::time::sleep(delay(attempt - 1)).await;
        }
        match tokio::time::timeout(timeout, post(&target, &body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                return Delivery {
                    attempts: attempt,
                    result: Ok(status),
                }
            }
            Ok(Ok(status)) => {
                last = format!("answered with status {status}");
                if (400..500).contains(&status) && status != 408 && status != 429 {
                    return Delivery {
                        attempts: attempt,
                        result: Err(format!("{last}: refused, not retried")),
                    };
                }
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {}ms", timeout.as_millis()),
        }
    }
    Delivery {
        attempts: max_attempts.max(1),
        result: Err(last),
    }
}

async fn post(url: &HttpUrl, body: &[u8]) -> Result<u16, String> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", url.host, url.port))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: worker-recovery-operator\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority,
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    stream
        .write_all(body)
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 || raw.len() > 64 << 10 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    Ok(parse_response(&raw)?.status)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::net::TcpListener;

    use super::*;

    fn payload() -> EscalationPayload {
        EscalationPayload {
            worker: "marie".into(),
            namespace: "prod".into(),
            level: "L1".into(),
            level_index: 1,
            previous_level: Some("Automated".into()),
            reason: "restarts exhausted".into(),
            root_cause: Some("OutOfMemory".into()),
            run: Some("marie-auto-3".into()),
            since: "2026-11-28T10:00:00Z".into(),
            time: "2026-11-28T10:05:00Z".into(),
        }
    }

    /// A server answering each connection with the next status of `script` (the last one
    /// repeats); returns its URL and the requests it got.
    async fn server(script: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            let mut i = 0;
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read until the body (after the blank line) is complete.
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&got).to_string());
                let status = script[i.min(script.len() - 1)];
                i += 1;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        (url, seen)
    }

    fn no_wait(_: u32) -> Duration {
        Duration::ZERO
    }

    #[tokio::test]
    async fn a_2xx_is_delivered_with_the_json_body() {
        let (url, seen) = server(vec![200]).await;
        let d = deliver_with(&url, &payload(), Duration::from_secs(2), 3, no_wait).await;
        assert_eq!(
            d,
            Delivery {
                attempts: 1,
                result: Ok(200)
            }
        );
        let req = seen.lock().unwrap()[0].clone();
        assert!(req.starts_with("POST /hook HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Type: application/json"), "{req}");
        let body: serde_json::Value =
            serde_json::from_str(req.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["worker"], "marie");
        assert_eq!(body["level"], "L1");
        assert_eq!(body["rootCause"], "OutOfMemory");
        assert_eq!(body["run"], "marie-auto-3");
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_refusals_are_not() {
        let (url, _) = server(vec![503, 200]).await;
        let d = deliver_with(&url, &payload(), Duration::from_secs(2), 5, no_wait).await;
        assert_eq!(
            d,
            Delivery {
                attempts: 2,
                result: Ok(200)
            }
        );
        let (url, _) = server(vec![400]).await;
        let d = deliver_with(&url, &payload(), Duration::from_secs(2), 5, no_wait).await;
        assert_eq!(d.attempts, 1);
        assert!(d.result.unwrap_err().contains("status 400"));
        let (url, _) = server(vec![429, 429, 202]).await;
        let d = deliver_with(&url, &payload(), Duration::from_secs(2), 5, no_wait).await;
        assert_eq!(
            d,
            Delivery {
                attempts: 3,
                result: Ok(202)
            }
        );
    }

    #[tokio::test]
    async fn an_unreachable_hook_uses_every_attempt_and_says_why() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/hook");
        let d = deliver_with(&url, &payload(), Duration::from_secs(2), 3, no_wait).await;
        assert_eq!(d.attempts, 3);
        assert!(d.result.unwrap_err().contains("cannot connect"));
        let d = deliver(
            "https://hooks.local/x",
            &payload(),
            Duration::from_secs(1),
            3,
        )
        .await;
        assert!(d.result.unwrap_err().contains("TLS"));
    }

    #[test]
    fn retries_back_off_up_to_30s() {
        let secs: Vec<u64> = (1..=8).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
