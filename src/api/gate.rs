//! The front door of the scoring RPCs: a bound on concurrent requests that
//! answers RESOURCE_EXHAUSTED at once above it (after TEI and Ray Serve: a
//! 2-core server that queues without bound only turns overload into
//! timeouts), and the per-request metrics.

use std::{sync::Arc, time::Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};

use crate::metrics::{InFlight, Metrics};

pub struct RequestGate {
    permits: Arc<Semaphore>,
    limit: usize,
    metrics: Option<Arc<Metrics>>,
}

impl RequestGate {
    pub fn new(limit: usize, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            metrics,
        })
    }

    /// Admits one request of `method`, or refuses it when `limit` requests
    /// are already being handled.
    pub fn admit(&self, method: &'static str) -> Result<Admitted, Status> {
        let started = Instant::now();
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admitted {
                _permit: permit,
                _in_flight: self.metrics.as_ref().map(|m| m.in_flight()),
                metrics: self.metrics.clone(),
                method,
                started,
            }),
            Err(_) => {
                let status = Status::resource_exhausted(format!(
                    "the server is handling its limit of {} concurrent requests \
                     (--max-concurrent-requests); retry with backoff",
                    self.limit
                ));
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
}

impl Admitted {
    /// Records one answer (a request, or a ScoreStream chunk) with the model
    /// versions that scored it.
    pub fn record<'a>(&self, code: Code, models: impl IntoIterator<Item = (&'a str, u64)>) {
        if let Some(m) = &self.metrics {
            m.request(self.method, code, self.started.elapsed(), models);
        }
    }

    /// Records a chunk of a stream, timed from `started`.
    pub fn record_since<'a>(
        &self,
        started: Instant,
        code: Code,
        models: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        if let Some(m) = &self.metrics {
            m.request(self.method, code, started.elapsed(), models);
        }
    }
}
