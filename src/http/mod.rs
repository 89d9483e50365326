//! The REST front end (`--http-addr`): KServe V2 REST ([`v2`]), segscore
//! JSON ([`v1`]) and its OpenAPI document ([`openapi`]), on axum, served by
//! the same process over the same repository, segments, scoring core and
//! request gate as gRPC. Wire ↔ core only: the OIP calls go through
//! [`InferenceService`]'s protocol-neutral methods and segscore JSON through
//! [`Scorer::score`], so both protocols answer the same, errors included
//! (one [`ApiError`], mapped to an HTTP status in `error.rs`).
//!
//! Every request passes one middleware, [`front_door`]: a SERVER span named
//! `{METHOD} {route}` with the OpenTelemetry HTTP attributes (child of the
//! caller's `traceparent`), the token's role checked exactly as gRPC checks
//! the equivalent method, and for scoring routes the shared gate (the same
//! concurrency slots, the caller's `Timeout` or the default deadline, the
//! request metrics with `protocol="http"`). CORS is off unless
//! `--http-cors-origin` names origins; bodies above the cap get 413.

pub mod openapi;
pub mod v1;
pub mod v2;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    body::Bytes,
    extract::{FromRequest, MatchedPath, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{field::Empty, Instrument};

use crate::{
    api::{
        gate::{parse_grpc_timeout, Protocol, RequestGate},
        inference::InferenceService,
    },
    error::{AnsweredCode, ApiError},
    infer::Scorer,
    security::{required_role, BearerAuth},
};

/// What every handler shares.
pub struct HttpState {
    /// OIP: the same methods the gRPC service answers with.
    pub inference: InferenceService,
    /// segscore JSON goes straight to the core.
    pub scorer: Scorer,
    pub gate: Arc<RequestGate>,
    /// Tokens for every route but health and the OpenAPI document...
    pub auth: BearerAuth,
    /// ...which take one only with --auth-health, as gRPC health does.
    pub open: BearerAuth,
    /// --http-max-body-bytes, named in the 413 message.
    pub max_body: usize,
}

/// The model versions that scored a request, left in the response's
/// extensions by a scoring handler for the request metrics.
#[derive(Debug, Clone, Default)]
pub struct ScoredBy(pub Vec<(String, u64)>);

/// The deadline the gate gave a scoring request, for its handler.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Option<tokio::time::Instant>);

/// The router with every route, the middleware, the body cap and CORS.
pub fn router(state: Arc<HttpState>, cors_origins: &[String]) -> anyhow::Result<Router> {
    let router = Router::new()
        .merge(v2::routes())
        .merge(v1::routes())
        .route("/openapi.json", get(openapi::document))
        .route("/", get(status_page))
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            front_door,
        ))
        // The cap axum's body extractors enforce; `Body` turns its refusal
        // into a 413 with the JSON error body.
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
        .with_state(state);
    Ok(match cors(cors_origins)? {
        // Outermost: a preflight is answered before auth (browsers send no
        // token with it), and every answer gets the CORS headers.
        Some(cors) => router.layer(cors),
        None => router,
    })
}

/// CORS for the configured origins; none = no CORS headers at all, so a
/// browser on another origin cannot read any answer.
fn cors(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .with_context(|| format!("--http-cors-origin `{o}` is not a header value"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::HeaderName::from_static("timeout"),
                header::HeaderName::from_static("traceparent"),
                header::HeaderName::from_static(v2::HEADER_LENGTH),
            ])
            .expose_headers([header::HeaderName::from_static(v2::HEADER_LENGTH)])
            .max_age(Duration::from_secs(600)),
    ))
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    // As for gRPC: small answers must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server")
}

/// How a route is guarded: the gRPC method whose role it needs (so a token
/// may do over HTTP exactly what it may over gRPC), and for scoring routes
/// the gate's method name for the concurrency limit, deadline and metrics.
struct Policy {
    /// None: health and the API document, open unless --auth-health.
    grpc_method: Option<&'static str>,
    gated: Option<&'static str>,
}

fn policy(route: &str) -> Policy {
    const OIP: &str = "/inference.GRPCInferenceService/";
    let (grpc_method, gated) = match route {
        "/v2/health/live" | "/v2/health/ready" | "/openapi.json" => (None, None),
        "/v2" => (Some("/inference.GRPCInferenceService/ServerMetadata"), None),
        "/v2/repository/index" => (
            Some("/inference.GRPCInferenceService/RepositoryIndex"),
            None,
        ),
        // The status page shows what ListModels and ListSegments do.
        "/" | "/v1/models" => (Some("/segscore.v1.Scoring/ListModels"), None),
        "/v1/segments" => (Some("/segscore.v1.Scoring/ListSegments"), None),
        "/v1/score" | "/v1/segments/{name}/members" | "/v1/customers/{id}/segments" => {
            (Some("/segscore.v1.Scoring/Score"), Some("Score"))
        }
        r if r.ends_with("/infer") => (
            Some("/inference.GRPCInferenceService/ModelInfer"),
            Some("ModelInfer"),
        ),
        r if r.ends_with("/ready") => (Some("/inference.GRPCInferenceService/ModelReady"), None),
        r if r.ends_with("/config") => (Some("/inference.GRPCInferenceService/ModelConfig"), None),
        r if r.ends_with("/stats") => (
            Some("/inference.GRPCInferenceService/ModelStatistics"),
            None,
        ),
        r if r.starts_with("/v2/models") => {
            (Some("/inference.GRPCInferenceService/ModelMetadata"), None)
        }
        // Unknown routes answer 404 to anyone, like an unknown gRPC method
        // after the token check: any valid token.
        _ => (Some("/segscore.v1.Scoring/ListModels"), None),
    };
    debug_assert!(grpc_method.is_none_or(|m| m.starts_with('/') || m.starts_with(OIP)));
    Policy { grpc_method, gated }
}

/// The one middleware: span, token and role, gate (limit, deadline,
/// metrics) for scoring routes.
async fn front_door(
    State(state): State<Arc<HttpState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", |p| p.as_str())
        .to_owned();
    let method = request.method().clone();
    // An entity id in the path is personal data: the span keeps the route
    // template, not the path, on the route that carries one.
    let path = if route.contains("{id}") {
        route.clone()
    } else {
        request.uri().path().to_owned()
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (address, port) = match host.rsplit_once(':') {
        Some((a, p)) => (a.to_owned(), p.parse::<u16>().ok()),
        None => (host.to_owned(), None),
    };
    let name = if route.is_empty() {
        method.to_string()
    } else {
        format!("{method} {route}")
    };
    let span = tracing::info_span!(
        "http_request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %route,
        url.path = %path,
        url.scheme = "http",
        server.address = %address,
        server.port = port.map(i64::from),
        http.response.status_code = Empty,
        error.r#type = Empty,
    );
    crate::telemetry::link_http_parent(&span, request.headers());
    let policy = policy(&route);
    let response = async {
        let checked = match policy.grpc_method {
            Some(m) => state
                .auth
                .authorize_role(required_role(m), m, request.headers()),
            None => {
                state
                    .open
                    .authorize_role(crate::security::Role::Score, &route, request.headers())
            }
        };
        if let Err(e) = checked {
            return e.into_response();
        }
        let Some(gated) = policy.gated else {
            return next.run(request).await;
        };
        let timeout = match timeout(request.headers()) {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        };
        let admitted = match state.gate.admit_request(gated, Protocol::Http, timeout) {
            Ok(a) => a,
            Err(e) => return e.into_response(),
        };
        request
            .extensions_mut()
            .insert(Deadline(admitted.deadline()));
        let response = admitted
            .within_deadline(async { Ok::<_, ApiError>(next.run(request).await) })
            .await
            .unwrap_or_else(IntoResponse::into_response);
        let code = answered_code(&response);
        match response.extensions().get::<ScoredBy>() {
            Some(ScoredBy(models)) => {
                admitted.record(code, models.iter().map(|(m, v)| (m.as_str(), *v)))
            }
            None => admitted.record(code, []),
        }
        response
    }
    .instrument(span.clone())
    .await;
    let status = response.status();
    // As an i64: tracing-opentelemetry exports unsigned values as strings.
    span.record("http.response.status_code", i64::from(status.as_u16()));
    // Server spans are errors on 5xx only: a 4xx is the caller's mistake
    // (OpenTelemetry HTTP semantic conventions).
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status.as_str());
    }
    response
}

/// The gRPC code an answer stands for: the error's own, else from the
/// status (200 is OK).
fn answered_code(response: &Response) -> tonic::Code {
    if let Some(AnsweredCode(code)) = response.extensions().get::<AnsweredCode>() {
        return *code;
    }
    match response.status() {
        s if s.is_success() => tonic::Code::Ok,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => {
            tonic::Code::ResourceExhausted
        }
        StatusCode::NOT_FOUND => tonic::Code::NotFound,
        s if s.is_client_error() => tonic::Code::InvalidArgument,
        _ => tonic::Code::Internal,
    }
}

/// The caller's timeout: the `Timeout` header in seconds (`0.25`), or in
/// `grpc-timeout` form (`250m`). A value that is neither is refused rather
/// than ignored: the caller meant a deadline.
fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let Some(value) = headers.get("timeout") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::InvalidArgument(
            "the `Timeout` header is not a duration: give seconds (`0.5`) or a \
             grpc-timeout value (`500m`)"
                .into(),
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if let Some(d) = parse_grpc_timeout(text) {
        return Ok(Some(d));
    }
    let seconds: f64 = text.parse().map_err(|_| bad())?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(bad());
    }
    Ok(Some(
        Duration::try_from_secs_f64(seconds).map_err(|_| bad())?,
    ))
}

/// A request body within the cap: over it is a 413 with the JSON error.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge(
                "the request body is larger than --http-max-body-bytes".into(),
            )),
            Err(e) => Err(ApiError::InvalidArgument(format!(
                "the request body could not be read: {}",
                e.body_text()
            ))),
        }
    }
}

/// Parses a JSON body, naming where it is malformed (line, column, field).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    T::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| {
            ApiError::InvalidArgument(format!(
                "the request body is not valid JSON for this route: {e}"
            ))
        })
}

/// The status page (docs/monitoring.md): models, versions and their cards,
/// segments with sizes and turnover, drift and score histograms, rendered on
/// the server with inline SVG, so it reads in any browser with no script.
async fn status_page(State(state): State<Arc<HttpState>>) -> Response {
    let Some(monitor) = state.scorer.monitor() else {
        // Every server the binary starts has a monitor; a scorer built
        // without one (tests, embedding) has no page to show.
        return ApiError::Unavailable("this server keeps no monitoring state".into())
            .into_response();
    };
    let snapshot = crate::monitor::status::snapshot(&state.scorer.repository().load(), monitor);
    axum::response::Html(crate::monitor::page::render(&snapshot)).into_response()
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "error": format!(
                "no route {method} {} (see /openapi.json and docs/api.md)",
                crate::echo::echo_up_to(uri.path(), 200)
            )
        })),
    )
        .into_response()
}
