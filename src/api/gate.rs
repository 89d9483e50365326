//! The front door of the scoring requests, whichever protocol they came
//! over (gRPC here, HTTP in [`crate::http`]): a bound on concurrent requests
//! that answers RESOURCE_EXHAUSTED (HTTP 429) at once above it (after TEI and
//! Ray Serve: a 2-core server that queues without bound only turns overload
//! into timeouts), the request's deadline, and the per-request metrics with
//! a `protocol` label. One gate, one limit: an HTTP and a gRPC request take
//! slots from the same pool.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};

use crate::{
    error::ApiError,
    metrics::{InFlight, Metrics},
};

pub struct RequestGate {
    permits: Arc<Semaphore>,
    limit: usize,
    metrics: Option<Arc<Metrics>>,
    default_deadline: Option<Duration>,
}

impl RequestGate {
    pub fn new(
        limit: usize,
        metrics: Option<Arc<Metrics>>,
        default_deadline: Option<Duration>,
    ) -> Arc<Self> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            metrics,
            default_deadline,
        })
    }

    /// Admits one gRPC request of `method` (its deadline from
    /// `grpc-timeout`), or refuses it when `limit` requests are already being
    /// handled.
    pub fn admit(
        &self,
        method: &'static str,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Admitted, Status> {
        self.admit_request(method, Protocol::Grpc, grpc_timeout(metadata))
            .map_err(Status::from)
    }

    /// Admits one request of `method` over `protocol` whose caller asked for
    /// `timeout` (None: the server's default deadline applies).
    pub fn admit_request(
        &self,
        method: &'static str,
        protocol: Protocol,
        timeout: Option<Duration>,
    ) -> Result<Admitted, ApiError> {
        let started = Instant::now();
        let now = tokio::time::Instant::now();
        let caller_deadline = timeout.map(|t| now + t);
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admitted {
                _permit: permit,
                _in_flight: self.metrics.as_ref().map(|m| m.in_flight()),
                metrics: self.metrics.clone(),
                method,
                protocol,
                started,
                deadline: caller_deadline.or_else(|| self.default_deadline.map(|d| now + d)),
                caller_deadline,
                default_deadline: self.default_deadline,
                recorded: AtomicBool::new(false),
                record_on_drop: true,
            }),
            Err(_) => {
                let error = ApiError::Overloaded(format!(
                    "the server is handling its limit of {} concurrent requests \
                     (--max-concurrent-requests); retry with backoff",
                    self.limit
                ));
                if let Some(m) = &self.metrics {
                    m.request(method, protocol, error.code(), started.elapsed(), []);
                }
                Err(error)
            }
        }
    }
}

/// Which front end a request came through: the `protocol` label of the
/// request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}

/// An admitted request: holds its slot until dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _in_flight: Option<InFlight>,
    metrics: Option<Arc<Metrics>>,
    method: &'static str,
    protocol: Protocol,
    started: Instant,
    deadline: Option<tokio::time::Instant>,
    /// The caller's own timeout (`grpc-timeout`, HTTP `Timeout`), if any.
    caller_deadline: Option<tokio::time::Instant>,
    /// `--default-deadline-ms`: for streams, applied per chunk.
    default_deadline: Option<Duration>,
    /// Whether an answer was recorded; a unary request dropped unanswered
    /// was cancelled by its caller (or its deadline, client side) and is
    /// recorded as CANCELLED.
    recorded: AtomicBool,
    record_on_drop: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.record_on_drop && !self.recorded.load(Ordering::Relaxed) {
            self.record(Code::Cancelled, []);
        }
    }
}

impl Admitted {
    /// For a stream: each chunk is recorded, the stream itself is not.
    pub fn for_stream(mut self) -> Self {
        self.record_on_drop = false;
        self
    }

    /// The caller's deadline (`grpc-timeout`, else `--default-deadline-ms`).
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// The deadline of one stream chunk that starts now: the caller's
    /// `grpc-timeout` for the whole stream when it set one, else
    /// `--default-deadline-ms` from the chunk's arrival. A bulk stream runs
    /// for hours; the server's default bounds each chunk, not the stream.
    pub fn chunk_deadline(&self) -> Option<tokio::time::Instant> {
        self.caller_deadline.or_else(|| {
            self.default_deadline
                .map(|d| tokio::time::Instant::now() + d)
        })
    }

    /// Runs the request's work, abandoning it (queued chunks are dropped with
    /// their receivers) with DEADLINE_EXCEEDED when the deadline passes. The
    /// answer goes out just before the caller's deadline: tonic cancels the
    /// handler at that instant and would answer CANCELLED instead.
    pub async fn within_deadline<T, E: From<ApiError>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let Some(deadline) = self.deadline else {
            return work.await;
        };
        let now = tokio::time::Instant::now();
        let margin = Duration::from_millis(1).min(deadline.saturating_duration_since(now) / 2);
        match tokio::time::timeout_at(deadline - margin, work).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::DeadlineExceeded(
                "the request's deadline passed before it was scored; its work was abandoned".into(),
            )
            .into()),
        }
    }

    /// Records one answer (a request, or a ScoreStream chunk) with the model
    /// versions that scored it.
    pub fn record<'a>(&self, code: Code, models: impl IntoIterator<Item = (&'a str, u64)>) {
        self.record_since(self.started, code, models);
    }

    /// Records a chunk of a stream, timed from `started`.
    pub fn record_since<'a>(
        &self,
        started: Instant,
        code: Code,
        models: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.recorded.store(true, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.request(self.method, self.protocol, code, started.elapsed(), models);
        }
    }
}

/// The caller's timeout from the `grpc-timeout` header. tonic enforces it by
/// dropping the handler (which cancels queued work), but does not expose it;
/// the batcher needs the instant to drop expired chunks before they run.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value: digits and one unit letter (H, M, S, m, u, n).
/// The HTTP front end accepts the same spelling in its `Timeout` header.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}
