//! Logging and tracing set-up. Spans and events carry model names, versions,
//! row counts and statuses, never entity ids or feature values (personal
//! data). With `--otlp-endpoint` request spans are also exported over OTLP,
//! and an incoming W3C `traceparent` makes them children of the caller's span.

use std::io::IsTerminal;

use opentelemetry::{propagation::Extractor, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes pending spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: flushing OpenTelemetry spans: {e}");
            }
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Pretty,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info`.
/// Call it inside a tokio runtime when `otlp_endpoint` is set (the exporter's
/// gRPC channel runs on it).
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    // Colour codes only for a person at a terminal: in files and pipes they
    // break grep and log shippers.
    let ansi = std::io::stderr().is_terminal();
    let base = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = match format {
        LogFormat::Text => base.boxed(),
        LogFormat::Pretty => base.pretty().boxed(),
        LogFormat::Json => base.json().boxed(),
    };
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint}: {e}"))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("segscore")
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer().with_tracer(p.tracer("segscore"))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

/// An error and its causes on one line, `outer: cause: root`, each message
/// once: many errors already quote their source in their own message (tonic's
/// transport errors, `model {m} version {v}: {source}`), and `{:#}` would say
/// it twice.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

/// Reads W3C trace context (`traceparent`, `tracestate`) from gRPC metadata.
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Makes `span` a child of the caller's span when the request carries a
/// `traceparent` (a no-op without one, or without an exporter).
pub fn link_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    if metadata.contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&MetadataExtractor(metadata))
        });
        let _ = span.set_parent(parent);
    }
}

/// Reads W3C trace context from HTTP headers.
struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// [`link_parent`] for an HTTP request's headers.
pub fn link_http_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(headers))
        });
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[derive(Debug, thiserror::Error)]
    #[error("invalid URL, scheme is missing")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Quoting(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("model `churn` version 2: {source}")]
    struct Prefixing {
        source: Inner,
    }

    #[test]
    fn a_cause_its_parent_already_quotes_is_said_once() {
        let e = anyhow::Error::new(Quoting(Inner)).context("connecting to 127.0.0.1:50401");
        assert_eq!(
            error_line(&e),
            "connecting to 127.0.0.1:50401: invalid URL, scheme is missing"
        );
        let e = anyhow::Error::new(Prefixing { source: Inner });
        assert_eq!(
            error_line(&e),
            "model `churn` version 2: invalid URL, scheme is missing"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept_in_order() {
        let e = anyhow::anyhow!("permission denied")
            .context("reading models/churn/2/model.toml")
            .context("loading churn");
        assert_eq!(
            error_line(&e),
            "loading churn: reading models/churn/2/model.toml: permission denied"
        );
    }
}
