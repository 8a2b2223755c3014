//! Logs and traces through `tracing`.
//!
//! Logs go to stderr, human-readable by default (coloured only on a terminal) or JSON for log
//! pipelines (`--log-format json`). Traces are exported
//! with OTLP over HTTP when the standard `OTEL_*` environment says so (see [`export_wanted`]),
//! and cost nothing otherwise: the recovery trace (`recovery_trace`) then goes to a no-op
//! tracer.

pub mod recovery_trace;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::{
    filter::filter_fn, fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer,
};

/// Name of the instrumentation scope of every span of the operator.
pub const SCOPE: &str = "worker-recovery-operator";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Whether human-readable logs are coloured: only on a terminal (never in a file or in
/// `kubectl logs`), and never when `NO_COLOR` is set to anything but the empty string.
fn colours(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Keeps the trace exporter alive; dropping it flushes the spans not sent yet.
#[must_use = "dropping the guard shuts the trace exporter down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: could not flush the last trace spans: {e}");
            }
        }
    }
}

/// Install the global subscriber and, when the environment asks for it, the OTLP exporter, whose
/// HTTPS connections use `tls`. `RUST_LOG` overrides the default log filter. Call it before any
/// async runtime starts: the exporter's HTTP client must not be built inside one.
pub fn init(format: LogFormat, tls: &rustls::ClientConfig) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=warn,kube_client=warn,hyper=warn"));
    let logs = match format {
        LogFormat::Pretty => fmt::layer()
            .with_ansi(colours(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (provider, problem) = match export_wanted(|k| std::env::var(k).ok()) {
        Ok(true) => match build_provider(tls) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(format!("trace export is off: {e}"))),
        },
        Ok(false) => (None, None),
        Err(e) => (None, Some(e.to_string())),
    };
    // Only the spans of recovery runs (and the events inside them) become OpenTelemetry data;
    // the controllers' own reconcile spans stay in the logs.
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SCOPE))
            .with_filter(filter_fn(|meta| {
                if meta.is_span() {
                    meta.target() == recovery_trace::TARGET
                } else {
                    *meta.level() <= Level::INFO
                }
            }))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .init();
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing::info!("exporting recovery traces with OTLP over HTTP");
    }
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    Telemetry { provider }
}

/// Why the environment's trace export is not done: a setting this build does not support.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExportConfigError {
    #[error("trace export is off: OTEL_TRACES_EXPORTER={0} is not supported (use otlp or none)")]
    Exporter(String),
    #[error(
        "trace export is off: {key}={value} is not supported; this build exports OTLP over HTTP (http/protobuf, usually port 4318)"
    )]
    Protocol { key: &'static str, value: String },
}

/// Why the OTLP exporter cannot be built.
#[derive(Debug, thiserror::Error)]
enum ProviderError {
    #[error(transparent)]
    Client(#[from] crate::http::ClientBuildError),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Whether the standard environment asks for trace export: `OTEL_TRACES_EXPORTER=otlp`, or an
/// OTLP endpoint set (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and
/// not `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`. Only OTLP over HTTP with protobuf
/// is built in; another protocol or exporter is refused with a message.
pub fn export_wanted(env: impl Fn(&str) -> Option<String>) -> Result<bool, ExportConfigError> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    let exporter = set("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase());
    match exporter.as_deref() {
        Some("none") => return Ok(false),
        Some("otlp") | None => {}
        Some(other) => return Err(ExportConfigError::Exporter(other.to_string())),
    }
    for key in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = set(key) {
            if p.trim() != "http/protobuf" {
                return Err(ExportConfigError::Protocol { key, value: p });
            }
            break;
        }
    }
    Ok(exporter.is_some()
        || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some())
}

/// The SDK provider: batch export over OTLP/HTTP, ids from [`recovery_trace::PinnedIds`] so a
/// run's spans keep the ids recorded in its status. Endpoint, headers, timeout, batch delays and
/// the service name come from the `OTEL_*` variables.
fn build_provider(tls: &rustls::ClientConfig) -> Result<SdkTracerProvider, ProviderError> {
    use opentelemetry_otlp::WithHttpConfig;
    // Our own client: the exporter's default one would look for a process-wide TLS crypto
    // provider, which this program does not install.
    let client =
        crate::http::blocking_client(tls.clone(), export_timeout(|k| std::env::var(k).ok()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .build()
        .map_err(ProviderError::Exporter)?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| SCOPE.to_string()),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(recovery_trace::PinnedIds)
        .with_resource(resource)
        .build())
}

/// The exporter's request timeout, as the OTLP exporter reads it when it builds its own client:
/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else 10 s.
fn export_timeout(env: impl Fn(&str) -> Option<String>) -> std::time::Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|k| env(k)?.trim().parse::<u64>().ok())
    .map_or(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))));
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(
            !colours(false, None),
            "a file or kubectl logs gets no escape codes"
        );
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn export_is_off_unless_the_environment_asks() {
        assert_eq!(export_wanted(env(&[])), Ok(false));
        assert_eq!(
            export_wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])),
            Ok(false)
        );
        assert_eq!(
            export_wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://j:4318")])),
            Ok(true)
        );
        assert_eq!(
            export_wanted(env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://j:4318/v1/traces"
            )])),
            Ok(true)
        );
        assert_eq!(
            export_wanted(env(&[("OTEL_TRACES_EXPORTER", "otlp")])),
            Ok(true)
        );
        assert_eq!(
            export_wanted(env(&[
                ("OTEL_TRACES_EXPORTER", "none"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://j:4318")
            ])),
            Ok(false)
        );
        assert_eq!(
            export_wanted(env(&[
                ("OTEL_SDK_DISABLED", "true"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://j:4318")
            ])),
            Ok(false)
        );
    }

    #[test]
    fn an_unsupported_protocol_or_exporter_is_refused_with_the_fix() {
        let err = export_wanted(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://j:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("http/protobuf"), "{err}");
        // The signal-specific protocol wins over the generic one.
        assert_eq!(
            export_wanted(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://j:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ])),
            Ok(true)
        );
        assert!(export_wanted(env(&[("OTEL_TRACES_EXPORTER", "zipkin")]))
            .unwrap_err()
            .to_string()
            .contains("zipkin"));
    }

    #[test]
    fn the_export_timeout_is_read_as_the_exporter_reads_it() {
        let secs = |pairs| export_timeout(env(pairs)).as_millis();
        assert_eq!(secs(&[]), 10_000);
        assert_eq!(secs(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]), 2500);
        assert_eq!(
            secs(&[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")
            ]),
            700
        );
        assert_eq!(secs(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]), 10_000);
    }

    #[test]
    fn the_exporter_builds_without_a_process_wide_crypto_provider() {
        // The exporter's own client would panic here: reqwest is built with TLS but without a
        // default crypto provider.
        let tls = crate::http::tls::client_config(None).unwrap();
        let provider = build_provider(&tls).unwrap();
        provider.shutdown().unwrap();
    }
}
