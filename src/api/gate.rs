//! The front door of the scoring RPCs: a bound on concurrent requests that
//! answers RESOURCE_EXHAUSTED at once above it (after TEI and Ray Serve: a
//! 2-core server that queues without bound only turns overload into
//! timeouts), the request's deadline, and the per-request metrics.

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

    /// Admits one request of `method`, or refuses it when `limit` requests
    /// are already being handled.
    pub fn admit(
        &self,
        method: &'static str,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Admitted, Status> {
        let started = Instant::now();
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admitted {
                _permit: permit,
                _in_flight: self.metrics.as_ref().map(|m| m.in_flight()),
                metrics: self.metrics.clone(),
                method,
                started,
                deadline: grpc_deadline(metadata, self.default_deadline),
                caller_deadline: grpc_deadline(metadata, None),
                default_deadline: self.default_deadline,
                recorded: AtomicBool::new(false),
                record_on_drop: true,
            }),
            Err(_) => {
                let status = Status::from(ApiError::Overloaded(format!(
                    "the server is handling its limit of {} concurrent requests \
                     (--max-concurrent-requests); retry with backoff",
                    self.limit
                )));
                if let Some(m) = &self.metrics {
                    m.request(method, status.code(), started.elapsed(), []);
                }
                Err(status)
            }
        }
    }
}

/// An admitted request: holds its slot until dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _in_flight: Option<InFlight>,
    metrics: Option<Arc<Metrics>>,
    method: &'static str,
    started: Instant,
    deadline: Option<tokio::time::Instant>,
    /// The caller's own `grpc-timeout`, if any.
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
    pub async fn within_deadline<T>(
        &self,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
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
            m.request(self.method, code, started.elapsed(), models);
        }
    }
}

/// The caller's deadline from the `grpc-timeout` header. tonic enforces it by
/// dropping the handler (which cancels queued work), but does not expose it;
/// the batcher needs the instant to drop expired chunks before they run.
pub fn grpc_deadline(
    metadata: &tonic::metadata::MetadataMap,
    default: Option<Duration>,
) -> Option<tokio::time::Instant> {
    let from_header = || -> Option<tokio::time::Instant> {
        let value = metadata.get("grpc-timeout")?.to_str().ok()?;
        let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
        let amount: u64 = digits.parse().ok()?;
        let timeout = match unit {
            "H" => Duration::from_secs(amount.saturating_mul(3600)),
            "M" => Duration::from_secs(amount.saturating_mul(60)),
            "S" => Duration::from_secs(amount),
            "m" => Duration::from_millis(amount),
            "u" => Duration::from_micros(amount),
            "n" => Duration::from_nanos(amount),
            _ => return None,
        };
        Some(tokio::time::Instant::now() + timeout)
    };
    from_header().or_else(|| default.map(|d| tokio::time::Instant::now() + d))
}
