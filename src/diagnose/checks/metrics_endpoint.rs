//! Metrics-endpoint check (runbook: `curl -f http://marie:9091/metrics` and "Real-time Health
//! Checks"): the endpoint answers 200 within a timeout, and `active_tasks`, `task_failed_total`
//! and `task_completed_total` (with `worker_up` and `heartbeat_timestamp_seconds` as evidence
//! when present) are read from its Prometheus text. The GET goes through the
//! operator's HTTP client (`crate::http`): `http://` or `https://`, under the URL policy.

use std::time::{Duration, Instant};

use crate::{
    diagnose::{CheckContext, CheckName, CheckResult, Finding, FindingKind, Severity},
    observe::prometheus_text as prometheus,
};

const CHECK: CheckName = CheckName::MetricsEndpoint;

/// Longest the whole request may take (the runbook's `requests.get(..., timeout=5)`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(ctx: &CheckContext) -> CheckResult {
    let Some(metrics) = &ctx.spec.metrics else {
        return Ok(vec![ctx.finding(
            CHECK,
            FindingKind::MetricsNotDeclared,
            Severity::Info,
            "the Worker declares no metrics endpoint (spec.metrics.url); not checked",
        )]);
    };
    let url = metrics.url.as_str();
    // Stay inside the check's own timeout, so a slow endpoint is reported as unreachable
    // rather than as a check that did not finish.
    let check_timeout =
        Duration::from_secs(u64::from(ctx.spec.diagnostics.check_timeout_seconds)).mul_f64(0.8);
    let timeout = MAX_TIMEOUT.min(check_timeout);
    let unreachable = |error: String| -> Finding {
        ctx.finding(
            CHECK,
            FindingKind::MetricsUnreachable,
            Severity::Warning,
            // The error names the endpoint by its origin, never its path or query.
            format!("the metrics endpoint does not answer: {error}"),
        )
        .with("url", url)
        .with("error", error)
        .with("timeoutMs", timeout.as_millis())
    };
    let started = Instant::now();
    let response = match ctx.http.get(url, timeout, prometheus::MAX_PAGE_BYTES).await {
        Ok(r) => r,
        Err(e) => return Ok(vec![unreachable(e.to_string())]),
    };
    let latency_ms = started.elapsed().as_millis();
    if response.status != 200 {
        return Ok(vec![unreachable(format!(
            "HTTP status {}",
            response.status
        ))
        .with("statusCode", response.status)
        .with("latencyMs", latency_ms)]);
    }
    let text = String::from_utf8_lossy(&response.body);
    let parsed = prometheus::parse(&text);
    let mut f = ctx
        .finding(
            CHECK,
            FindingKind::MetricsReachable,
            Severity::Info,
            String::new(),
        )
        .with("url", url)
        .with("statusCode", response.status)
        .with("latencyMs", latency_ms)
        .with("samples", parsed.samples.len());
    let mut parts = vec![format!("metrics endpoint answered 200 in {latency_ms}ms")];
    let mut missing = Vec::new();
    for (metric, key) in [
        ("active_tasks", "activeTasks"),
        ("task_failed_total", "taskFailedTotal"),
        ("task_completed_total", "taskCompletedTotal"),
        ("worker_up", "workerUp"),
        ("heartbeat_timestamp_seconds", "heartbeatTimestampSeconds"),
    ] {
        match parsed.sum(metric) {
            Some(v) => {
                if key != "heartbeatTimestampSeconds" && key != "workerUp" {
                    parts.push(format!("{metric}={}", prometheus::format_value(v)));
                }
                f = f.with(key, prometheus::format_value(v));
            }
            None if key == "activeTasks" || key == "taskFailedTotal" => missing.push(metric),
            None => {}
        }
    }
    if !missing.is_empty() {
        f = f.with("missingMetrics", missing.join(","));
        parts.push(format!("without {}", missing.join(", ")));
    }
    if !parsed.errors.is_empty() {
        f = f
            .with("parseErrors", parsed.errors.len())
            .with("firstParseError", &parsed.errors[0]);
    }
    if response.truncated {
        f = f.with("truncatedAtBytes", prometheus::MAX_PAGE_BYTES);
    }
    f.summary = parts.join(", ");
    Ok(vec![f])
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;
    use crate::{
        crd::worker::MetricsEndpointSpec,
        diagnose::testing,
        http::{self, HttpClient, UrlPolicy},
        observe::prometheus_text::tests::SAMPLE,
        runtime::fake::FakeRuntime,
    };

    fn ctx_with(url: Option<&str>) -> CheckContext {
        let mut w = testing::worker();
        w.spec.metrics = url.map(|u| MetricsEndpointSpec { url: u.into() });
        testing::context(
            &w,
            Ok(Some(testing::running())),
            FakeRuntime::default(),
            Ok(String::new()),
        )
    }

    /// Serve one canned response per connection.
    async fn serve(response: &'static [u8], delay: Duration) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let _ = s.write_all(response).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn not_declared() {
        let f = run(&ctx_with(None)).await.unwrap();
        assert_eq!(f[0].kind, FindingKind::MetricsNotDeclared);
        assert_eq!(f[0].severity, Severity::Info);
    }

    #[tokio::test]
    async fn reachable_with_values() {
        let body: &'static str = Box::leak(
            format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\r\n{SAMPLE}")
                .into_boxed_str(),
        );
        let port = serve(body.as_bytes(), Duration::ZERO).await;
        let url = format!("http://127.0.0.1:{port}/metrics");
        let f = run(&ctx_with(Some(&url))).await.unwrap();
        let f = &f[0];
        assert_eq!(f.kind, FindingKind::MetricsReachable, "{f:#?}");
        assert_eq!(f.evidence["url"], url);
        assert_eq!(f.evidence["statusCode"], "200");
        assert_eq!(f.evidence["activeTasks"], "1");
        assert_eq!(f.evidence["taskFailedTotal"], "2");
        assert_eq!(f.evidence["taskCompletedTotal"], "12");
        assert_eq!(f.evidence["workerUp"], "1");
        assert_eq!(f.evidence["heartbeatTimestampSeconds"], "1795823941.123");
        assert!(f.evidence.contains_key("latencyMs"));
        assert!(f.summary.contains("active_tasks=1"), "{}", f.summary);
    }

    #[tokio::test]
    async fn unreachable_cases() {
        // HTTP error status.
        let port = serve(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n",
            Duration::ZERO,
        )
        .await;
        let f = &run(&ctx_with(Some(&format!("http://127.0.0.1:{port}/nope"))))
            .await
            .unwrap()[0];
        assert_eq!(f.kind, FindingKind::MetricsUnreachable);
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(f.evidence["statusCode"], "404");

        // Closed port.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let f = &run(&ctx_with(Some(&format!(
            "http://127.0.0.1:{closed}/metrics"
        ))))
        .await
        .unwrap()[0];
        assert_eq!(f.kind, FindingKind::MetricsUnreachable);
        assert!(f.evidence["error"].contains("cannot connect"), "{f:#?}");

        // Too slow: the check's timeout is 1s, so the request gets 800ms.
        let port = serve(
            b"HTTP/1.0 200 OK\r\n\r\nactive_tasks 0\n",
            Duration::from_secs(3),
        )
        .await;
        let mut ctx = ctx_with(Some(&format!("http://127.0.0.1:{port}/metrics")));
        ctx.spec.diagnostics.check_timeout_seconds = 1;
        let f = &run(&ctx).await.unwrap()[0];
        assert_eq!(f.kind, FindingKind::MetricsUnreachable);
        assert!(f.evidence["error"].contains("within 800ms"), "{f:#?}");

        // Not HTTP.
        let port = serve(b"SSH-2.0-OpenSSH_9.6\r\n", Duration::ZERO).await;
        let f = &run(&ctx_with(Some(&format!("http://127.0.0.1:{port}/"))))
            .await
            .unwrap()[0];
        assert_eq!(f.kind, FindingKind::MetricsUnreachable);

        // Bad URL.
        let f = &run(&ctx_with(Some("ftp://marie:9091/metrics")))
            .await
            .unwrap()[0];
        assert_eq!(f.kind, FindingKind::MetricsUnreachable);
        assert!(f.evidence["error"].contains("invalid URL"));

        // An address the operator's URL policy denies.
        let f = &run(&ctx_with(Some("http://169.254.169.254/latest/meta-data")))
            .await
            .unwrap()[0];
        assert_eq!(f.kind, FindingKind::MetricsUnreachable);
        assert!(f.evidence["error"].contains("not allowed"), "{f:#?}");
        assert!(!f.summary.contains("latest"), "{}", f.summary);
    }

    #[tokio::test]
    async fn reachable_over_https_with_the_operator_s_extra_roots() {
        let tls = http::testing::TestTls::generate();
        let server =
            http::testing::serve_tls(vec![http::testing::Answer::status(200).body(SAMPLE)], &tls)
                .await;
        let url = format!("{}/metrics", server.url);
        let mut ctx = ctx_with(Some(&url));
        ctx.http = HttpClient::new(
            UrlPolicy::default(),
            http::tls::client_config(Some(tls.ca_pem.as_bytes())).unwrap(),
        )
        .unwrap();
        let f = &run(&ctx).await.unwrap()[0];
        assert_eq!(f.kind, FindingKind::MetricsReachable, "{f:#?}");
        assert_eq!(f.evidence["activeTasks"], "1");
    }
}
