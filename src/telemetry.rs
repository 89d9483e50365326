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

/// One RPC a server span describes, named as OpenTelemetry's RPC semantic
/// conventions name it: `{rpc.service}/{rpc.method}`. Static, so opening a
/// span allocates no name per request.
#[derive(Debug, Clone, Copy)]
pub struct Rpc {
    pub service: &'static str,
    pub method: &'static str,
    /// `service/method`, the exported span name.
    pub name: &'static str,
}

impl Rpc {
    pub const SCORE: Rpc = Rpc {
        service: "segscore.v1.Scoring",
        method: "Score",
        name: "segscore.v1.Scoring/Score",
    };
    pub const SCORE_STREAM: Rpc = Rpc {
        service: "segscore.v1.Scoring",
        method: "ScoreStream",
        name: "segscore.v1.Scoring/ScoreStream",
    };
    pub const MODEL_INFER: Rpc = Rpc {
        service: "inference.GRPCInferenceService",
        method: "ModelInfer",
        name: "inference.GRPCInferenceService/ModelInfer",
    };
}

/// A gRPC server span (kind SERVER, `rpc.*` attributes), a child of the
/// caller's `traceparent` when there is one. segscore's own fields are typed
/// once here so every RPC exports them alike: `segscore.rows` and
/// `segscore.version` are integers, `segscore.models` is `name:version,...`.
/// Model names, versions, row counts and statuses only: ids and feature
/// values are personal data and never enter a span.
pub fn rpc_server_span(rpc: Rpc, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = rpc.name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = rpc.service,
        rpc.method = rpc.method,
        rpc.grpc.status_code = tracing::field::Empty,
        status = tracing::field::Empty,
        segscore.models = tracing::field::Empty,
        segscore.model = tracing::field::Empty,
        segscore.version = tracing::field::Empty,
        segscore.rows = tracing::field::Empty,
        segscore.chunks = tracing::field::Empty,
    );
    link_parent(&span, metadata);
    span
}

/// One ScoreStream chunk: a child of the stream's server span, so a trace
/// shows every chunk with its rows and outcome (kind INTERNAL: the stream's
/// span is the one server span of the call).
pub fn stream_chunk_span(stream: &tracing::Span, sequence: u64) -> tracing::Span {
    tracing::info_span!(
        parent: stream,
        "chunk",
        otel.name = "ScoreStream chunk",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        rpc.grpc.status_code = tracing::field::Empty,
        status = tracing::field::Empty,
        segscore.sequence = sequence as i64,
        segscore.models = tracing::field::Empty,
        segscore.rows = tracing::field::Empty,
    )
}

/// Records how an RPC (or a chunk) ended. The span status follows the
/// OpenTelemetry gRPC convention for server spans: ERROR only for the codes
/// that mean the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS); a caller's mistake such as
/// INVALID_ARGUMENT or NOT_FOUND leaves it UNSET, so error-rate views built
/// on span status count only our failures.
pub fn record_rpc_outcome(span: &tracing::Span, code: tonic::Code, message: &str) {
    span.record("rpc.grpc.status_code", code as i64);
    span.record("status", tracing::field::debug(code));
    if server_fault(code) {
        span.record("otel.status_code", "ERROR");
        // The message is ours (an ApiError's text), bounded by `echo`; it
        // names models and columns, never ids or values.
        span.record("otel.status_description", message);
    }
}

/// The gRPC codes that OpenTelemetry counts as a server span error.
pub fn server_fault(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
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

    /// Keeps what the SDK exports, so a span's kind, status and attributes
    /// can be read back without a collector.
    #[derive(Debug, Clone, Default)]
    struct Kept(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Kept {
        async fn export(
            &self,
            batch: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Opens an RPC span, ends it with `code`, and returns what was exported.
    fn exported_after(code: tonic::Code) -> opentelemetry_sdk::trace::SpanData {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let kept = Kept::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = super::rpc_server_span(
                super::Rpc::MODEL_INFER,
                &tonic::metadata::MetadataMap::new(),
            );
            super::record_rpc_outcome(&span, code, "model churn: the worker stopped");
        });
        let mut spans = kept.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 1, "{spans:#?}");
        spans.remove(0)
    }

    #[test]
    fn server_faults_set_error_status_and_callers_mistakes_leave_it_unset() {
        use opentelemetry::{trace::SpanKind, trace::Status, KeyValue, Value};
        let failed = exported_after(tonic::Code::Internal);
        assert_eq!(failed.name, "inference.GRPCInferenceService/ModelInfer");
        assert_eq!(failed.span_kind, SpanKind::Server);
        assert_eq!(
            failed.status,
            Status::error("model churn: the worker stopped")
        );
        assert!(failed
            .attributes
            .contains(&KeyValue::new("rpc.grpc.status_code", Value::I64(13))));
        assert!(failed
            .attributes
            .contains(&KeyValue::new("rpc.method", "ModelInfer")));
        for code in [
            tonic::Code::Unknown,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Unimplemented,
            tonic::Code::Unavailable,
            tonic::Code::DataLoss,
        ] {
            assert!(super::server_fault(code), "{code:?}");
        }
        let refused = exported_after(tonic::Code::InvalidArgument);
        assert_eq!(refused.status, Status::Unset);
        assert!(refused
            .attributes
            .contains(&KeyValue::new("rpc.grpc.status_code", Value::I64(3))));
        assert_eq!(exported_after(tonic::Code::Ok).status, Status::Unset);
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
