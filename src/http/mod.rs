//! The operator's one HTTP client, for the escalation webhook and the workers' metrics
//! endpoints: reqwest over rustls ([`tls`]), HTTP/1.1, redirects never followed, a timeout and
//! a cap on the body read for every request, and the operator's [`UrlPolicy`] on every address
//! connected to. Environment proxies are not used: through one, the policy could not see where
//! a request goes.
//!
//! Errors name only `scheme://host:port`: a webhook URL's path or query often holds a secret.

pub mod policy;
pub mod tls;

use std::{net::IpAddr, sync::Arc, time::Duration};

use reqwest::Url;

pub use policy::UrlPolicy;

/// Sent with every request.
pub const USER_AGENT: &str = "worker-recovery-operator";
/// Bytes of an answer's body kept for a message (the answer to a webhook POST).
pub const MESSAGE_BODY_BYTES: usize = 1 << 10;

/// A cheap-to-clone handle on the shared connection pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    policy: Arc<UrlPolicy>,
}

/// An answer: its status and its body, up to the cap the request was made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The body went on past the cap and was cut there.
    pub truncated: bool,
}

impl Response {
    /// The start of the body as one line of text, for a message.
    pub fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        line.chars().take(200).collect()
    }
}

/// Why a request got no answer. Only the URL's origin is named.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("{origin}: {}", policy::NotAllowed)]
    NotAllowed { origin: String },
    #[error("cannot connect to {origin}: {reason}")]
    Connect { origin: String, reason: String },
    #[error("no answer from {origin} within {}ms", .timeout.as_millis())]
    Timeout { origin: String, timeout: Duration },
    #[error("{origin}: {reason}")]
    Exchange { origin: String, reason: String },
}

impl HttpError {
    /// Whether the same request may get an answer later; an invalid or forbidden URL stays so.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::InvalidUrl(_) | Self::NotAllowed { .. })
    }
}

/// Why an HTTP client cannot be built (at start-up). The message names the innermost cause.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {}", cause(.0))]
pub struct ClientBuildError(#[source] reqwest::Error);

impl HttpClient {
    /// A client that connects only where `policy` allows and trusts the roots of `tls`.
    pub fn new(policy: UrlPolicy, tls: rustls::ClientConfig) -> Result<Self, ClientBuildError> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(policy::PolicyResolver::new(policy.clone()))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(USER_AGENT)
            // Endpoints are many and seldom asked: keep few idle connections, briefly.
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(ClientBuildError)?;
        Ok(Self { client, policy })
    }

    /// GET `url` within `timeout`, reading at most `max_body` bytes of the body.
    pub async fn get(
        &self,
        url: &str,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, HttpError> {
        let (url, origin) = self.target(url)?;
        self.exchange(self.client.get(url), &origin, timeout, max_body)
            .await
    }

    /// POST `body` as JSON to `url` within `timeout`, reading at most `max_body` bytes of the
    /// answer.
    pub async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, HttpError> {
        let (url, origin) = self.target(url)?;
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.exchange(request, &origin, timeout, max_body).await
    }

    /// Parse `url` and check an IP literal against the policy (host names are checked as they
    /// are resolved); returns the URL and its origin.
    fn target(&self, url: &str) -> Result<(Url, String), HttpError> {
        let url = Url::parse(url.trim()).map_err(|e| HttpError::InvalidUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::InvalidUrl(
                "only http:// and https:// URLs are supported".into(),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(HttpError::InvalidUrl(
                "credentials in the URL are not supported".into(),
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| HttpError::InvalidUrl("no host".into()))?;
        let origin = origin(&url);
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if !self.policy.allows(ip) {
                return Err(HttpError::NotAllowed { origin });
            }
        }
        Ok((url, origin))
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        origin: &str,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, HttpError> {
        let exchange = async {
            let mut response = request.send().await.map_err(|e| classify(e, origin))?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| classify(e, origin))? {
                let room = max_body - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return Ok(Response {
                        status,
                        body,
                        truncated: true,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response {
                status,
                body,
                truncated: false,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(HttpError::Timeout {
                    origin: origin.to_string(),
                    timeout,
                })
            })
    }
}

/// `scheme://host:port` of `url`.
fn origin(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

fn classify(e: reqwest::Error, origin: &str) -> HttpError {
    let origin = origin.to_string();
    let e = e.without_url();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<policy::NotAllowed>() {
            return HttpError::NotAllowed { origin };
        }
        source = s.source();
    }
    let reason = cause(&e);
    if e.is_connect() {
        HttpError::Connect { origin, reason }
    } else {
        HttpError::Exchange { origin, reason }
    }
}

/// The innermost cause of `e`, which says what happened ("Connection refused", "invalid peer
/// certificate: UnknownIssuer"); the outer layers only say where.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = e;
    while let Some(s) = innermost.source() {
        innermost = s;
    }
    innermost.to_string()
}

/// The client of the OTLP trace exporter: the same TLS (so no process-wide crypto provider
/// either), with the exporter's usual proxy handling. Build it outside an async runtime.
pub fn blocking_client(
    tls: rustls::ClientConfig,
    timeout: Duration,
) -> Result<reqwest::blocking::Client, ClientBuildError> {
    reqwest::blocking::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .build()
        .map_err(ClientBuildError)
}

/// Local servers and a client for tests.
#[cfg(test)]
pub mod testing {
    use std::sync::{Arc, Mutex};

    use tokio::{
        io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A client with the default policy and Mozilla's roots.
    pub fn client() -> HttpClient {
        HttpClient::new(UrlPolicy::default(), tls::client_config(None).unwrap()).unwrap()
    }

    /// A canned answer.
    #[derive(Clone, Debug)]
    pub struct Answer {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Answer {
        pub fn status(status: u16) -> Self {
            Self {
                status,
                headers: Vec::new(),
                body: Vec::new(),
            }
        }

        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.into(), value.into()));
            self
        }

        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
            self.body = body.into();
            self
        }
    }

    /// A local HTTP/1.1 server: each connection gets the next answer of its script (the last
    /// one repeats). `url` is `scheme://127.0.0.1:port`; `requests` holds what it got.
    pub struct Server {
        pub url: String,
        pub requests: Arc<Mutex<Vec<String>>>,
    }

    /// A certificate authority and a server certificate it signed for `localhost` and
    /// `127.0.0.1`.
    pub struct TestTls {
        pub ca_pem: String,
        pub acceptor: tokio_rustls::TlsAcceptor,
    }

    impl TestTls {
        pub fn generate() -> Self {
            use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
            let ca_key = KeyPair::generate().unwrap();
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca_cert = ca_params.self_signed(&ca_key).unwrap();
            let issuer = Issuer::new(ca_params, ca_key);
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
            Self {
                ca_pem: ca_cert.pem(),
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            }
        }
    }

    /// Serve `script` over plain HTTP.
    pub async fn serve(script: Vec<Answer>) -> Server {
        start(script, None).await
    }

    /// Serve `script` over HTTPS with the certificate of `tls`.
    pub async fn serve_tls(script: Vec<Answer>, tls: &TestTls) -> Server {
        start(script, Some(tls.acceptor.clone())).await
    }

    async fn start(script: Vec<Answer>, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = requests.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let answer = script[i.min(script.len() - 1)].clone();
                let log = log.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                answer_one(stream, &answer, &log).await;
                            }
                        }
                        None => answer_one(tcp, &answer, &log).await,
                    }
                });
            }
        });
        Server { url, requests }
    }

    /// Read one request (head and Content-Length body), record it, answer.
    async fn answer_one(
        mut s: impl AsyncRead + AsyncWrite + Unpin,
        answer: &Answer,
        log: &Mutex<Vec<String>>,
    ) {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    log.lock().unwrap().push(text);
                    break;
                }
            }
        }
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
            answer.status,
            answer.body.len()
        );
        for (name, value) in &answer.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&answer.body).await;
        let _ = s.shutdown().await;
    }

    /// A receiver that accepts connections and never answers; its URL.
    pub async fn black_hole() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        url
    }

    /// A port nothing listens on.
    pub fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn posts_json_with_the_user_agent_and_reads_the_answer() {
        let server = serve(vec![Answer::status(202).body("queued")]).await;
        let r = client()
            .post_json(
                &format!("{}/hook?token=s3cret", server.url),
                br#"{"a":1}"#.to_vec(),
                SECOND,
                MESSAGE_BODY_BYTES,
            )
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (202, &b"queued"[..]));
        let req = server.requests.lock().unwrap()[0].to_ascii_lowercase();
        assert!(
            req.starts_with("post /hook?token=s3cret http/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.contains("user-agent: worker-recovery-operator\r\n"),
            "{req}"
        );
        assert!(req.contains("content-type: application/json\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\n{\"a\":1}"), "{req}");
    }

    #[tokio::test]
    async fn https_is_verified_against_the_extra_bundle() {
        let tls = TestTls::generate();
        let server = serve_tls(vec![Answer::status(200).body("ok")], &tls).await;
        let url = format!("{}/metrics", server.url);
        let trusting = HttpClient::new(
            UrlPolicy::default(),
            tls::client_config(Some(tls.ca_pem.as_bytes())).unwrap(),
        )
        .unwrap();
        let r = trusting.get(&url, SECOND, 100).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        // By name too (the certificate names localhost).
        let by_name = url.replace("127.0.0.1", "localhost");
        assert_eq!(
            trusting.get(&by_name, SECOND, 100).await.unwrap().status,
            200
        );

        // Without the bundle the server's CA is unknown.
        let err = client().get(&url, SECOND, 100).await.unwrap_err();
        assert!(
            matches!(&err, HttpError::Connect { reason, .. } if reason.contains("UnknownIssuer")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let target = serve(vec![Answer::status(200)]).await;
        let server = serve(vec![
            Answer::status(302).header("Location", &format!("{}/elsewhere", target.url))
        ])
        .await;
        let r = client()
            .get(&format!("{}/m", server.url), SECOND, 100)
            .await
            .unwrap();
        assert_eq!(r.status, 302);
        assert!(target.requests.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_body_is_read_up_to_the_cap() {
        let server = serve(vec![Answer::status(200).body(vec![b'x'; 10_000])]).await;
        let c = client();
        let r = c.get(&server.url, SECOND, 4096).await.unwrap();
        assert_eq!((r.body.len(), r.truncated), (4096, true));
        let r = c.get(&server.url, SECOND, 10_000).await.unwrap();
        assert_eq!((r.body.len(), r.truncated), (10_000, false));
    }

    #[tokio::test]
    async fn errors_name_the_origin_and_never_the_path_or_query() {
        let c = client();
        let closed = closed_port();
        let err = c
            .get(
                &format!("http://127.0.0.1:{closed}/hook/s3cret?k=v"),
                SECOND,
                10,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }), "{err}");
        assert!(err.is_transient());
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot connect to http://127.0.0.1:{closed}: ")),
            "{text}"
        );
        let hole = black_hole().await;
        let err = c
            .get(
                &format!("{hole}/s3cret?k=v"),
                Duration::from_millis(200),
                10,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("within 200ms"), "{err}");
        // Not HTTP at all.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
            }
        });
        let err = c
            .get(&format!("http://127.0.0.1:{port}/s3cret"), SECOND, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Exchange { .. }), "{err}");
        for err in [err.to_string(), format!("{err:?}")] {
            assert!(!err.contains("s3cret") && !err.contains("k=v"), "{err}");
        }
    }

    #[tokio::test]
    async fn invalid_urls_are_refused_before_any_request() {
        let c = client();
        for bad in [
            "ftp://x/",
            "http://",
            "not a url",
            "http://user:pass@127.0.0.1/",
            "file:///etc/passwd",
        ] {
            let err = c.get(bad, SECOND, 10).await.unwrap_err();
            assert!(matches!(err, HttpError::InvalidUrl(_)), "{bad}: {err}");
            assert!(!err.is_transient());
        }
    }

    #[tokio::test]
    async fn denied_ip_literals_are_refused_before_the_request() {
        let c = client();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest",
            "http://[::ffff:169.254.169.254]/",
            "https://100.100.100.200/",
            // The WHATWG forms of an IPv4 address are the address.
            "http://0xa9.0xfe.0xa9.0xfe/",
        ] {
            let err = c.get(url, SECOND, 10).await.unwrap_err();
            assert!(matches!(err, HttpError::NotAllowed { .. }), "{url}: {err}");
            assert!(err
                .to_string()
                .ends_with(": address not allowed by the operator's URL policy"));
            assert!(!err.to_string().contains("latest"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_host_name_is_checked_on_the_addresses_it_resolves_to() {
        let server = serve(vec![Answer::status(200)]).await;
        let port = server.url.rsplit(':').next().unwrap();
        let url = format!("http://localhost:{port}/m");
        let only = |deny: &[&str], allow: &[&str]| {
            let nets = |l: &[&str]| {
                l.iter()
                    .map(|n| policy::parse_network(n).unwrap())
                    .collect()
            };
            HttpClient::new(
                UrlPolicy::new(Some(nets(deny)), nets(allow)),
                tls::client_config(None).unwrap(),
            )
            .unwrap()
        };
        // localhost resolves to loopback, which the policy denies here.
        let err = only(&["127.0.0.0/8", "::1/128"], &[])
            .get(&url, SECOND, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::NotAllowed { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("http://localhost:{port}: address not allowed by the operator's URL policy")
        );
        // An allow list that does not hold it refuses it just the same.
        let err = only(&[], &["10.0.0.0/8"])
            .get(&url, SECOND, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::NotAllowed { .. }), "{err}");
        // The address left after the policy is the one connected to.
        let ok = only(&["::1/128"], &["127.0.0.0/8"]);
        assert_eq!(ok.get(&url, SECOND, 10).await.unwrap().status, 200);
        // Loopback is allowed by default.
        assert_eq!(client().get(&url, SECOND, 10).await.unwrap().status, 200);
    }
}
