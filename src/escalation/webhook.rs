//! The escalation webhook: a JSON POST of [`EscalationPayload`] through the operator's HTTP
//! client (`crate::http`: http or https, the URL policy, no redirects), retried with backoff
//! until it is delivered, refused, out of attempts or past its deadline.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::http::{HttpClient, HttpError, Response, MESSAGE_BODY_BYTES};

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

/// Where to post, and how hard to try.
#[derive(Clone, Debug, PartialEq)]
pub struct Hook {
    pub url: String,
    /// Longest one attempt may take.
    pub timeout: Duration,
    pub max_attempts: u32,
}

/// How a notification went.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub attempts: u32,
    /// The HTTP status of a delivered notification, or why it was not delivered.
    pub result: Result<u16, DeliveryError>,
}

/// An answer other than 2xx: its status and the start of its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    pub status: u16,
    /// [`Response::body_excerpt`].
    pub body: String,
}

impl Answered {
    fn of(r: &Response) -> Self {
        Self {
            status: r.status,
            body: r.body_excerpt(),
        }
    }
}

impl std::fmt::Display for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.status {
            300..=399 => " (redirects are not followed)",
            _ => "",
        };
        write!(f, "answered with status {}{what}", self.status)?;
        if !self.body.is_empty() {
            write!(f, ": {}", self.body)?;
        }
        Ok(())
    }
}

/// Why an attempt that another attempt may change did not deliver.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// 5xx, 408 or 429.
    #[error("{0}")]
    Answered(Answered),
    /// A timeout or a connection failure.
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// Why a notification was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// An answer another attempt would not change (a redirect, a refusal).
    #[error("{0}; not retried")]
    NotRetried(Answered),
    /// A URL the operator may not or cannot reach: invalid, or refused by the URL policy.
    #[error(transparent)]
    Unreachable(HttpError),
    /// Every attempt was made; the last one failed so.
    #[error(transparent)]
    OutOfAttempts(AttemptError),
    /// The delivery deadline came after `attempts` attempts, the last of which failed so.
    #[error("gave up at the delivery deadline after {attempts} attempt(s): {last}")]
    Deadline {
        attempts: u32,
        #[source]
        last: AttemptError,
    },
    #[error("gave up at the delivery deadline before any attempt")]
    DeadlineBeforeAnyAttempt,
    /// The deadline came while other notifications were being delivered (see the notifier).
    #[error("gave up at the delivery deadline, waiting for other deliveries to end")]
    DeadlineWhileQueued,
}

/// The wait before attempt `attempt + 1`: 1 s, 2 s, 4 s, ... at most 30 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// POST `payload` to the hook, attempt after attempt until `deadline`. A 2xx answer is
/// delivered; 5xx, 408, 429, timeouts and connection failures are retried; other answers
/// (redirects, refusals) and URLs the operator may not reach are not.
pub async fn deliver(
    http: &HttpClient,
    hook: &Hook,
    payload: &EscalationPayload,
    deadline: Instant,
) -> Delivery {
    deliver_with(http, hook, payload, deadline, retry_delay).await
}

async fn deliver_with(
    http: &HttpClient,
    hook: &Hook,
    payload: &EscalationPayload,
    deadline: Instant,
    delay: impl Fn(u32) -> Duration,
) -> Delivery {
    let body = serde_json::to_vec(payload).expect("the payload serializes");
    let max_attempts = hook.max_attempts.max(1);
    let mut attempts = 0;
    let mut last = None;
    while attempts < max_attempts {
        if attempts > 0 {
            let wait = delay(attempts);
            if Instant::now() + wait >= deadline {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        attempts += 1;
        let answer = http
            .post_json(
                &hook.url,
                body.clone(),
                hook.timeout.min(left),
                MESSAGE_BODY_BYTES,
            )
            .await;
        let error = match answer {
            Ok(r) if (200..300).contains(&r.status) => {
                return Delivery {
                    attempts,
                    result: Ok(r.status),
                }
            }
            Ok(r) if !retried(r.status) => Err(DeliveryError::NotRetried(Answered::of(&r))),
            Ok(r) => Ok(AttemptError::Answered(Answered::of(&r))),
            Err(e) if !e.is_transient() => Err(DeliveryError::Unreachable(e)),
            Err(e) => Ok(AttemptError::Http(e)),
        };
        match error {
            Err(final_error) => {
                return Delivery {
                    attempts,
                    result: Err(final_error),
                }
            }
            Ok(retryable) => last = Some(retryable),
        }
    }
    let result = match last {
        Some(last) if attempts == max_attempts => DeliveryError::OutOfAttempts(last),
        Some(last) => DeliveryError::Deadline { attempts, last },
        None => DeliveryError::DeadlineBeforeAnyAttempt,
    };
    Delivery {
        attempts,
        result: Err(result),
    }
}

/// Whether an answer other than 2xx may go otherwise on another attempt.
fn retried(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{
        testing::{black_hole, client, closed_port, serve, serve_tls, Answer, TestTls},
        tls, UrlPolicy,
    };

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

    fn hook(url: &str, max_attempts: u32) -> Hook {
        Hook {
            url: url.into(),
            timeout: Duration::from_secs(2),
            max_attempts,
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn no_wait(_: u32) -> Duration {
        Duration::ZERO
    }

    async fn statuses(script: &[u16], max_attempts: u32) -> Delivery {
        let server = serve(script.iter().map(|&s| Answer::status(s)).collect()).await;
        let url = format!("{}/hook", server.url);
        deliver_with(
            &client(),
            &hook(&url, max_attempts),
            &payload(),
            far(),
            no_wait,
        )
        .await
    }

    #[tokio::test]
    async fn a_2xx_is_delivered_with_the_json_body() {
        let server = serve(vec![Answer::status(200)]).await;
        let url = format!("{}/hook", server.url);
        let d = deliver_with(&client(), &hook(&url, 3), &payload(), far(), no_wait).await;
        assert_eq!(
            d,
            Delivery {
                attempts: 1,
                result: Ok(200)
            }
        );
        let req = server.requests.lock().unwrap()[0].clone();
        let head = req.to_ascii_lowercase();
        assert!(head.starts_with("post /hook http/1.1\r\n"), "{req}");
        assert!(head.contains("content-type: application/json\r\n"), "{req}");
        assert!(
            head.contains("user-agent: worker-recovery-operator\r\n"),
            "{req}"
        );
        let body: serde_json::Value =
            serde_json::from_str(req.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["worker"], "marie");
        assert_eq!(body["level"], "L1");
        assert_eq!(body["previousLevel"], "Automated");
        assert_eq!(body["rootCause"], "OutOfMemory");
        assert_eq!(body["run"], "marie-auto-3");
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_refusals_are_not() {
        let ok = |attempts, status| Delivery {
            attempts,
            result: Ok(status),
        };
        assert_eq!(statuses(&[503, 200], 5).await, ok(2, 200));
        assert_eq!(statuses(&[429, 408, 202], 5).await, ok(3, 202));
        let d = statuses(&[400], 5).await;
        assert_eq!(d.attempts, 1);
        assert!(d.result.unwrap_err().to_string().contains("status 400"));
        let d = statuses(&[302], 5).await;
        assert_eq!(d.attempts, 1);
        assert!(d
            .result
            .unwrap_err()
            .to_string()
            .contains("redirects are not followed"));
        let d = statuses(&[500], 3).await;
        assert_eq!(d.attempts, 3);
        assert_eq!(
            d.result.unwrap_err().to_string(),
            "answered with status 500"
        );
    }

    #[tokio::test]
    async fn the_start_of_a_refusal_s_body_is_kept_for_the_message() {
        let server = serve(vec![
            Answer::status(403).body(format!("invalid\r\ntoken {}", "x".repeat(5000)))
        ])
        .await;
        let d = deliver_with(&client(), &hook(&server.url, 3), &payload(), far(), no_wait).await;
        let err = d.result.unwrap_err().to_string();
        assert!(
            err.starts_with("answered with status 403: invalid token xxx"),
            "{err}"
        );
        assert!(err.len() < 300, "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_or_forbidden_hook_says_why() {
        let url = format!("http://127.0.0.1:{}/hook/s3cret", closed_port());
        let d = deliver_with(&client(), &hook(&url, 3), &payload(), far(), no_wait).await;
        assert_eq!(d.attempts, 3);
        let err = d.result.unwrap_err().to_string();
        assert!(
            err.starts_with("cannot connect to http://127.0.0.1:"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        // The metadata service is not retried: the policy will not change its mind.
        let url = "http://169.254.169.254/latest/meta-data";
        let d = deliver_with(&client(), &hook(url, 3), &payload(), far(), no_wait).await;
        assert_eq!(d.attempts, 1);
        assert!(d.result.unwrap_err().to_string().contains("not allowed"));
    }

    #[tokio::test]
    async fn https_hooks_are_delivered_with_the_operator_s_extra_roots() {
        let tls_server = TestTls::generate();
        let server = serve_tls(vec![Answer::status(204)], &tls_server).await;
        let http = HttpClient::new(
            UrlPolicy::default(),
            tls::client_config(Some(tls_server.ca_pem.as_bytes())).unwrap(),
        )
        .unwrap();
        let url = format!("{}/hook?token=s3cret", server.url);
        let d = deliver_with(&http, &hook(&url, 1), &payload(), far(), no_wait).await;
        assert_eq!(d.result, Ok(204));
        let req = server.requests.lock().unwrap()[0].clone();
        assert!(
            req.starts_with("POST /hook?token=s3cret HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("\"level\":\"L1\""), "{req}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_black_holed_hook_gives_up_at_the_deadline() {
        let url = black_hole().await;
        let hook = Hook {
            url,
            timeout: Duration::from_secs(5),
            max_attempts: 20,
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        let d = deliver(&client(), &hook, &payload(), deadline).await;
        // 5 s, a wait of 1 s, then the 4 s left; the next wait would pass the deadline.
        assert_eq!(d.attempts, 2);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let err = d.result.unwrap_err().to_string();
        assert!(
            err.starts_with("gave up at the delivery deadline after 2 attempt(s): no answer from"),
            "{err}"
        );
        let d = deliver(&client(), &hook, &payload(), Instant::now()).await;
        assert_eq!(d.attempts, 0);
        assert!(d
            .result
            .unwrap_err()
            .to_string()
            .contains("before any attempt"));
    }

    #[test]
    fn retries_back_off_up_to_30s() {
        let secs: Vec<u64> = (1..=8).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
