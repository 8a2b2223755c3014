//! Prometheus text exposition on `GET /metrics`, served with `std::net`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::log::{Level, Throttle};
use crate::state::Shared;

/// A point-in-time copy of the metric values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub active: u64,
    pub completed: u64,
    pub failed: u64,
    pub heartbeat_ms: u64,
}

impl Snapshot {
    pub fn take(shared: &Shared) -> Snapshot {
        let m = &shared.metrics;
        Snapshot {
            active: m.active.load(Ordering::Relaxed),
            completed: m.completed.load(Ordering::Relaxed),
            failed: m.failed.load(Ordering::Relaxed),
            heartbeat_ms: m.heartbeat_ms.load(Ordering::Relaxed),
        }
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the Prometheus text format (version 0.0.4).
pub fn render(worker: &str, s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "worker_up",
        "gauge",
        "1 while the worker process is running and serving metrics.",
        "1".into(),
    );
    metric(
        "active_tasks",
        "gauge",
        "Tasks this worker process currently holds in active/.",
        s.active.to_string(),
    );
    metric(
        "task_completed_total",
        "counter",
        "Tasks moved to done/ since process start.",
        s.completed.to_string(),
    );
    metric(
        "task_failed_total",
        "counter",
        "Tasks moved to failed/ (malformed or failing) since process start.",
        s.failed.to_string(),
    );
    metric(
        "heartbeat_timestamp_seconds",
        "gauge",
        "Unix time of the last successful heartbeat.json write (0 = never).",
        format!("{}.{:03}", s.heartbeat_ms / 1000, s.heartbeat_ms % 1000),
    );
    out.push_str(&format!(
        "# HELP worker_info Static worker information.\n# TYPE worker_info gauge\nworker_info{{worker=\"{}\",version=\"{}\"}} 1\n",
        escape_label(worker),
        env!("CARGO_PKG_VERSION")
    ));
    out
}

/// Parses the request line: returns (method, path without query string).
pub fn parse_request_line(req: &str) -> Option<(&str, &str)> {
    let line = req.lines().next()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?;
    let target = parts.next()?;
    parts.next()?; // HTTP version must be present
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some((method, path))
}

/// Decides the response: (status line, content type, body, send body?).
pub fn respond(
    req: &str,
    body: impl FnOnce() -> String,
) -> (&'static str, &'static str, String, bool) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match parse_request_line(req) {
        None => ("400 Bad Request", TEXT, "bad request\n".into(), true),
        Some((m, "/metrics")) if m == "GET" || m == "HEAD" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            body(),
            m == "GET",
        ),
        Some((m, "/metrics")) => (
            "405 Method Not Allowed",
            TEXT,
            format!("method {m} not allowed\n"),
            true,
        ),
        Some(_) => ("404 Not Found", TEXT, "not found\n".into(), true),
    }
}

fn handle(mut stream: TcpStream, shared: &Shared, worker: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Tolerate bare-LF clients.
        if buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    let req = String::from_utf8_lossy(&buf);
    let (status, ctype, body, send_body) =
        respond(&req, || render(worker, &Snapshot::take(shared)));
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if send_body {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// Accept loop (one connection at a time; scrapes are tiny).
pub fn serve(listener: TcpListener, shared: Arc<Shared>, worker: String) {
    let mut errors = Throttle::new(Duration::from_secs(10));
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = handle(stream, &shared, &worker) {
                    errors.log(Level::Warn, &format!("metrics request failed: {e}"));
                }
            }
            Err(e) => {
                // e.g. EMFILE after the fd-leak fault: back off, don't spin.
                errors.log(Level::Error, &format!("metrics accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_metrics_with_help_and_type() {
        let s = Snapshot {
            active: 1,
            completed: 5,
            failed: 2,
            heartbeat_ms: 1_795_823_941_123,
        };
        let text = render("marie", &s);
        for (name, kind, value) in [
            ("worker_up", "gauge", "1"),
            ("active_tasks", "gauge", "1"),
            ("task_completed_total", "counter", "5"),
            ("task_failed_total", "counter", "2"),
            ("heartbeat_timestamp_seconds", "gauge", "1795823941.123"),
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
            assert!(text.contains(&format!("\n{name} {value}\n")), "{name}");
        }
        assert!(text.contains("worker_info{worker=\"marie\",version="));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn zero_heartbeat() {
        let text = render("a", &Snapshot::default());
        assert!(text.contains("\nheartbeat_timestamp_seconds 0.000\n"));
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label("a\"b\\c"), "a\\\"b\\\\c");
    }

    #[test]
    fn request_parsing() {
        assert_eq!(
            parse_request_line("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line("garbage"), None);
        assert_eq!(parse_request_line(""), None);
    }

    #[test]
    fn routing() {
        let r = respond("GET /metrics HTTP/1.1\r\n\r\n", || "body".into());
        assert_eq!((r.0, r.2.as_str(), r.3), ("200 OK", "body", true));
        assert!(r.1.starts_with("text/plain; version=0.0.4"));
        let r = respond("HEAD /metrics HTTP/1.1\r\n\r\n", || "body".into());
        assert_eq!((r.0, r.3), ("200 OK", false));
        assert_eq!(
            respond("GET / HTTP/1.1\r\n\r\n", String::new).0,
            "404 Not Found"
        );
        assert_eq!(
            respond("GET /metricsx HTTP/1.1\r\n\r\n", String::new).0,
            "404 Not Found"
        );
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n\r\n", String::new).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("", String::new).0, "400 Bad Request");
    }
}
