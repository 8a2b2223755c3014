//! Metrics-endpoint check (runbook: `curl -f http://marie:9091/metrics` and "Real-time Health
//! Checks"): the endpoint answers 200 within a timeout, and `active_tasks`, `task_failed_total`
//! and `task_completed_total` are read from its Prometheus text.
//!
//! A plain HTTP/1.0 GET over a tokio `TcpStream` (`Connection: close`), so no HTTP client crate
//! is needed; only `http://` URLs are accepted (the CRD says so too).

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    diagnose::{CheckContext, CheckName, CheckResult, Finding, FindingKind, Severity},
    observe::prometheus_text as prometheus,
};

const CHECK: CheckName = CheckName::MetricsEndpoint;

/// Longest the whole request may take (the runbook's `requests.get(..., timeout=5)`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response read; a metrics page is a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

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
            format!("metrics endpoint {url} does not answer: {error}"),
        )
        .with("url", url)
        .with("error", error)
        .with("timeoutMs", timeout.as_millis())
    };
    let target = match HttpUrl::parse(url) {
        Ok(t) => t,
        Err(e) => return Ok(vec![unreachable(format!("invalid URL: {e}"))]),
    };
    let started = Instant::now();
    let response = match tokio::time::timeout(timeout, get(&target)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Ok(vec![unreachable(e)]),
        Err(_) => {
            return Ok(vec![unreachable(format!(
                "no answer within {}ms",
                timeout.as_millis()
            ))])
        }
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
        f = f.with("truncatedAtBytes", MAX_RESPONSE_BYTES);
    }
    f.summary = parts.join(", ");
    Ok(vec![f])
}

/// An `http://host[:port][/path]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host as written (brackets removed for IPv6).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let rest = url
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("http://"))
            .map(|_| &url[7..])
            .ok_or_else(|| "only http:// URLs are supported".to_string())?;
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = path.split('#').next().unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        if authority.is_empty() {
            return Err("no host".into());
        }
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        if authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
            || path.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err("whitespace or control characters in the URL".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or("unclosed '[' in host")?;
            let host = &v6[..end];
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err("unexpected text after ']'".into()),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("invalid port {p:?}"))?,
        };
        Ok(Self {
            host,
            port,
            path,
            authority: authority.to_string(),
        })
    }
}

/// A response: status code and body (de-chunked, capped).
#[derive(Debug, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    pub truncated: bool,
}

/// Whether `url` answers with a 2xx status within `timeout`: `Ok(status)` or why not.
pub async fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let target = HttpUrl::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    match tokio::time::timeout(timeout, get(&target)).await {
        Ok(Ok(r)) if (200..300).contains(&r.status) => Ok(r.status),
        Ok(Ok(r)) => Err(format!("answered with status {}", r.status)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
    }
}

/// Fetch `url` and parse it as Prometheus text, within `timeout`: the samples, or why not.
pub async fn scrape(url: &str, timeout: Duration) -> Result<prometheus::Parsed, String> {
    let target = HttpUrl::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    match tokio::time::timeout(timeout, get(&target)).await {
        Ok(Ok(r)) if r.status == 200 => Ok(prometheus::parse(&String::from_utf8_lossy(&r.body))),
        Ok(Ok(r)) => Err(format!("answered with status {}", r.status)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
    }
}

async fn get(url: &HttpUrl) -> Result<HttpResponse, String> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", url.host, url.port))?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: worker-recovery-operator\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        url.path, url.authority
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut raw = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the response: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_RESPONSE_BYTES {
            raw.truncate(MAX_RESPONSE_BYTES);
            truncated = true;
            break;
        }
    }
    let mut response = parse_response(&raw)?;
    response.truncated |= truncated;
    Ok(response)
}

/// Parse a raw HTTP/1.x response: status line, headers, and a body (honouring Content-Length
/// and chunked transfer encoding).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    if raw.is_empty() {
        return Err("the connection closed without a response".into());
    }
    let head_end = find(raw, b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| find(raw, b"\n\n").map(|i| (i, i + 2)))
        .ok_or("incomplete HTTP response header")?;
    let head = String::from_utf8_lossy(&raw[..head_end.0]);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        return Err(format!("not an HTTP response: {:?}", cut(status_line)));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {:?}", cut(status_line)))?;
    let mut chunked = false;
    let mut content_length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            } else if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.parse::<usize>().ok();
            }
        }
    }
    let mut body = raw[head_end.1..].to_vec();
    let mut truncated = false;
    if chunked {
        let (decoded, complete) = dechunk(&body);
        body = decoded;
        truncated = !complete;
    } else if let Some(len) = content_length {
        if body.len() > len {
            body.truncate(len);
        } else if body.len() < len {
            truncated = true;
        }
    }
    Ok(HttpResponse {
        status,
        body,
        truncated,
    })
}

fn cut(s: &str) -> String {
    s.chars().take(80).collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decode a chunked body; the flag says whether the terminating chunk was seen.
fn dechunk(mut data: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (out, false);
        };
        data = &data[eol + 2..];
        if size == 0 {
            return (out, true);
        }
        if data.len() < size {
            out.extend_from_slice(data);
            return (out, false);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size..];
        data = data.strip_prefix(b"\r\n").unwrap_or(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::prometheus_text::tests::SAMPLE;
    use crate::{
        crd::worker::MetricsEndpointSpec, diagnose::host::testing, docker::fake::FakeRuntime,
    };
    use tokio::net::TcpListener;

    #[test]
    fn parses_urls() {
        let u = HttpUrl::parse("http://marie:9091/metrics").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("marie", 9091, "/metrics")
        );
        assert_eq!(u.authority, "marie:9091");
        let u = HttpUrl::parse("HTTP://127.0.0.1").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        let u = HttpUrl::parse("http://[::1]:8080/m?x=1#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/m?x=1")
        );
        for bad in [
            "https://x/metrics",
            "ftp://x",
            "http://",
            "http://:80/",
            "http://x:0/",
            "http://x:99999/",
            "http://u:p@x/",
            "http://x/a b",
            "http://x/\r\nHost: evil",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_responses() {
        let r =
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nactive_tasks 1\n")
                .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"active_tasks 1\n");
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, b"hello world");
        assert!(!r.truncated);
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!(r.body, b"abc");
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\nnot found\n").unwrap();
        assert_eq!(r.status, 404);
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nX: y").is_err());
    }

    fn ctx_with(url: Option<&str>) -> CheckContext {
        let mut w = testing::worker();
        w.spec.metrics = url.map(|u| MetricsEndpointSpec { url: u.into() });
        testing::context(
            &w,
            Ok(Some(testing::running())),
            FakeRuntime::default(),
            Err("n/a".into()),
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
        let f = &run(&ctx_with(Some("https://marie:9091/metrics")))
            .await
            .unwrap()[0];
        assert_eq!(f.kind, FindingKind::MetricsUnreachable);
        assert!(f.evidence["error"].contains("invalid URL"));
    }
}
