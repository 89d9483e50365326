//! Logs and traces of the real binary: request spans carry models, versions,
//! rows and status, never the entity ids or feature values sent; spans reach
//! an OTLP collector as children of the caller's W3C `traceparent`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::{
    common::v1::any_value::Value,
    trace::v1::{span::SpanKind, status::StatusCode, Span},
};
use segscore::proto::pb::{self, scoring_client::ScoringClient};
use tonic::{Request, Response, Status};

use crate::helpers::*;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// An OTLP trace receiver on a free loopback port: the collector, its
    /// address and the task serving it.
    async fn start() -> (Self, std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        (collector, addr, task)
    }

    /// Every span exported so far.
    fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const STREAM_TRACE_ID: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
/// Values no log line may contain.
const SECRET_IDS: [&str; 2] = ["cust-7f3a9c-private", "cust-0b1d22-private"];
const SECRET_RECENCY: f32 = 13.625;
const SECRET_ENGAGEMENT: f32 = 97531.125;

fn secret_rows() -> pb::ScoreRequest {
    let mut columns = full_rows(2);
    columns[0] = f32_col("recency_days", vec![SECRET_RECENCY; 2]);
    let mut req = request(matrix(columns), vec![model("churn", 0), model("ltv", 0)]);
    req.entity_ids = SECRET_IDS.iter().map(|s| s.to_string()).collect();
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_no_ids_or_values_and_spans_reach_otlp_under_the_callers_trace() {
    let (collector, otlp, server) = Collector::start().await;

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_segscore"));
    command
        .args([
            "serve",
            "--log-format",
            "json",
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .args([
            "--otlp-endpoint",
            &format!("http://{otlp}"),
            "--model-repository",
        ])
        .arg(shipped_models())
        .env(
            "RUST_LOG",
            "debug,ort=warn,h2=info,hyper=info,tonic=info,tower=info",
        );
    let mut binary = ServedBinary::start(command);
    let addr = binary.addr.clone();

    let mut client = ScoringClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut traced = Request::new(secret_rows());
    traced.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let resp = client.score(traced).await.unwrap().into_inner();
    assert_eq!(resp.entity_ids, SECRET_IDS);
    // A refused request whose value would be tempting to log.
    let mut bad = secret_rows();
    bad.features.as_mut().unwrap().columns[10] =
        f32_col("email_engagement", vec![SECRET_ENGAGEMENT; 2]);
    let err = client.score(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("email_engagement"),
        "{}",
        err.message()
    );
    // A stream of three chunks under its own trace: one server span, one
    // child span per chunk.
    let chunks: Vec<pb::ScoreRequest> = (1..=3)
        .map(|sequence| pb::ScoreRequest {
            sequence,
            ..request(matrix(full_rows(2)), vec![model("churn", 0)])
        })
        .collect();
    let mut streamed = Request::new(futures::stream::iter(chunks));
    streamed.metadata_mut().insert(
        "traceparent",
        format!("00-{STREAM_TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let answers: Vec<_> = client
        .score_stream(streamed)
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(answers.len(), 3);
    assert!(answers.iter().all(|a| a.as_ref().unwrap().error.is_none()));
    drop(client);

    assert_eq!(binary.terminate().code(), Some(0));
    let mut log = std::mem::take(&mut binary.seen);
    while let Ok(line) = binary.log.recv_timeout(Duration::from_secs(10)) {
        log.push(line);
    }
    let text = log.join("\n");
    for secret in SECRET_IDS
        .iter()
        .map(|s| s.to_string())
        .chain([SECRET_RECENCY.to_string(), SECRET_ENGAGEMENT.to_string()])
    {
        assert!(
            !text.contains(&secret),
            "`{secret}` reached the log:\n{text}"
        );
    }
    // The request span's fields are in the log: models with versions, rows, status.
    let spans: Vec<serde_json::Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["span"]["rpc.method"] == "Score")
        .collect();
    let scored = spans
        .iter()
        .find(|j| j["fields"]["message"] == "scored")
        .unwrap_or_else(|| panic!("no `scored` event:\n{text}"));
    let models = scored["span"]["segscore.models"].as_str().unwrap();
    assert!(
        models.contains("churn:") && models.contains("ltv:"),
        "{scored}"
    );
    assert_eq!(scored["span"]["segscore.rows"], 2);
    assert_eq!(scored["span"]["status"], "Ok");
    assert!(
        spans
            .iter()
            .any(|j| j["span"]["status"] == "InvalidArgument"),
        "{text}"
    );

    // The exporter flushed at shutdown: the score span is a child of the caller's trace.
    let spans = collector.spans();
    let traced = spans
        .iter()
        .find(|s| hex::encode(&s.trace_id) == TRACE_ID)
        .unwrap_or_else(|| panic!("no span in trace {TRACE_ID}: {spans:#?}"));
    assert_eq!(hex::encode(&traced.parent_span_id), "00f067aa0ba902b7");
    // OpenTelemetry's RPC conventions: `service/method`, kind SERVER, rpc.*
    // attributes, and segscore's own fields typed as integers.
    assert_eq!(traced.name, "segscore.v1.Scoring/Score");
    assert_eq!(traced.kind, SpanKind::Server as i32);
    assert_eq!(
        attr(traced, "rpc.system"),
        Some(Value::StringValue("grpc".into()))
    );
    assert_eq!(
        attr(traced, "rpc.service"),
        Some(Value::StringValue("segscore.v1.Scoring".into()))
    );
    assert_eq!(
        attr(traced, "rpc.method"),
        Some(Value::StringValue("Score".into()))
    );
    assert_eq!(
        attr(traced, "rpc.grpc.status_code"),
        Some(Value::IntValue(0))
    );
    assert_eq!(attr(traced, "segscore.rows"), Some(Value::IntValue(2)));
    assert_eq!(status_code(traced), StatusCode::Unset);
    // The refused request: its code is on the span; INVALID_ARGUMENT is the
    // caller's mistake, so the status stays UNSET (server faults set ERROR,
    // see telemetry::server_fault's unit test).
    let refused = spans
        .iter()
        .find(|s| attr(s, "rpc.grpc.status_code") == Some(Value::IntValue(3)))
        .unwrap_or_else(|| panic!("no INVALID_ARGUMENT span: {spans:#?}"));
    assert_eq!(refused.kind, SpanKind::Server as i32);
    assert_eq!(status_code(refused), StatusCode::Unset);
    // The stream: one server span and three chunk spans under it.
    let in_stream: Vec<_> = spans
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == STREAM_TRACE_ID)
        .collect();
    let stream = in_stream
        .iter()
        .find(|s| s.name == "segscore.v1.Scoring/ScoreStream")
        .unwrap_or_else(|| panic!("no ScoreStream span: {in_stream:#?}"));
    assert_eq!(stream.kind, SpanKind::Server as i32);
    assert_eq!(attr(stream, "segscore.chunks"), Some(Value::IntValue(3)));
    assert_eq!(
        attr(stream, "rpc.grpc.status_code"),
        Some(Value::IntValue(0))
    );
    let chunk_spans: Vec<_> = in_stream
        .iter()
        .filter(|s| s.parent_span_id == stream.span_id)
        .collect();
    assert_eq!(chunk_spans.len(), 3, "{in_stream:#?}");
    for chunk in chunk_spans {
        assert_eq!(chunk.name, "ScoreStream chunk");
        assert_eq!(attr(chunk, "segscore.rows"), Some(Value::IntValue(2)));
    }
    server.abort();
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.clone())
}

fn status_code(span: &Span) -> StatusCode {
    span.status
        .as_ref()
        .map(|s| StatusCode::try_from(s.code).unwrap())
        .unwrap_or(StatusCode::Unset)
}

/// The REST front end's spans: one SERVER span per request named
/// `{METHOD} {route}` with the OpenTelemetry HTTP attributes, a child of the
/// caller's `traceparent`, with an error status on a 5xx only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_server_spans_with_http_attributes() {
    let (collector, otlp, server) = Collector::start().await;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_segscore"));
    command
        .args(["serve", "--log-format", "json", "--addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0", "--workers", "1"])
        .args([
            "--otlp-endpoint",
            &format!("http://{otlp}"),
            "--model-repository",
        ])
        .arg(shipped_models())
        .env("RUST_LOG", "info");
    let mut binary = ServedBinary::start(command);
    let http_addr: std::net::SocketAddr = binary
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|j| j["fields"]["http_addr"].as_str().map(str::to_owned))
        .expect("the HTTP address is logged before `serving`")
        .parse()
        .unwrap();
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let row = serde_json::json!({"models": ["churn"], "rows": [{"recency_days": 3}]});
    let scored = crate::http::http(
        http_addr,
        "POST",
        "/v1/score",
        &[
            ("content-type", "application/json"),
            ("traceparent", &traceparent),
        ],
        row.to_string().as_bytes(),
    )
    .await;
    // A refused row (frequency is `reject` when missing) is still a 4xx span.
    assert_eq!(
        scored.status,
        400,
        "{}",
        String::from_utf8_lossy(&scored.body)
    );
    assert_eq!(
        crate::http::get(http_addr, "/v2/models/churn").await.status,
        200
    );
    assert_eq!(
        crate::http::get(http_addr, "/v2/models/nope/ready")
            .await
            .status,
        503
    );
    assert_eq!(binary.terminate().code(), Some(0));

    let spans = collector.spans();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no `{name}` span: {spans:#?}"))
    };
    let score = find("POST /v1/score");
    assert_eq!(score.kind, SpanKind::Server as i32);
    assert_eq!(hex::encode(&score.trace_id), TRACE_ID);
    assert_eq!(hex::encode(&score.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        attr(score, "http.request.method"),
        Some(Value::StringValue("POST".into()))
    );
    assert_eq!(
        attr(score, "http.route"),
        Some(Value::StringValue("/v1/score".into()))
    );
    assert_eq!(
        attr(score, "url.path"),
        Some(Value::StringValue("/v1/score".into()))
    );
    assert_eq!(
        attr(score, "http.response.status_code"),
        Some(Value::IntValue(400))
    );
    assert_eq!(
        attr(score, "server.address"),
        Some(Value::StringValue("127.0.0.1".into()))
    );
    // 4xx is the caller's: no error status on a server span.
    assert_ne!(score.status.as_ref().map(|s| s.code), Some(2));
    let metadata = find("GET /v2/models/{model}");
    assert_eq!(metadata.kind, SpanKind::Server as i32);
    assert_eq!(
        attr(metadata, "url.path"),
        Some(Value::StringValue("/v2/models/churn".into()))
    );
    let not_ready = find("GET /v2/models/{model}/ready");
    assert_eq!(
        attr(not_ready, "http.response.status_code"),
        Some(Value::IntValue(503))
    );
    assert_eq!(
        not_ready.status.as_ref().map(|s| s.code),
        Some(2),
        "{not_ready:#?}"
    );
    server.abort();
}
