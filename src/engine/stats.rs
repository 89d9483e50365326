//! Cumulative inference statistics of one model version, what Triton's
//! ModelStatistics reports: request outcomes with their durations, queue and
//! compute time, rows and model calls.
//!
//! Kept apart from the Prometheus histograms because those exist only with
//! `--metrics-addr`, while a Triton client (perf_analyzer) asks for statistics
//! on any server. Plain relaxed atomics: a handful of adds per batch, no lock,
//! and a reader sees each counter consistent on its own, as Triton's are.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A count and the total nanoseconds of what it counts.
#[derive(Debug, Default)]
pub struct DurationTally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationTally {
    fn add(&self, elapsed: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(nanos(elapsed), Ordering::Relaxed);
    }

    /// (count, total nanoseconds).
    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.ns.load(Ordering::Relaxed),
        )
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One model version's counters since it loaded.
#[derive(Debug, Default)]
pub struct InferStats {
    /// Requests this version scored, and their time in the core (from
    /// resolution to the last score), as Triton's `success`.
    pub success: DurationTally,
    /// Requests admitted to this version that failed (bad features, queue
    /// full, deadline, backend error), as Triton's `fail`.
    pub fail: DurationTally,
    /// One per chunk a worker scored: the time it waited in the queue.
    pub queue: DurationTally,
    /// One per chunk a worker scored: the model call it was part of (a
    /// merged batch's duration counts for each of its chunks, as Triton
    /// counts a batch's compute for each of its requests).
    pub compute: DurationTally,
    /// Rows scored.
    inferences: AtomicU64,
    /// Model calls.
    executions: AtomicU64,
    /// Milliseconds since the epoch of the last model call; 0 before one.
    last_inference_ms: AtomicU64,
}

impl InferStats {
    /// Records one model call of `rows` rows over chunks that waited `waits`.
    pub(crate) fn batch(
        &self,
        waits: impl Iterator<Item = Duration>,
        compute: Duration,
        rows: usize,
    ) {
        for wait in waits {
            self.queue.add(wait);
            self.compute.add(compute);
        }
        self.inferences.fetch_add(rows as u64, Ordering::Relaxed);
        self.executions.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.last_inference_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Records the outcome of one request this version took part in.
    pub fn request(&self, ok: bool, elapsed: Duration) {
        if ok {
            self.success.add(elapsed)
        } else {
            self.fail.add(elapsed)
        }
    }

    /// Rows scored.
    pub fn inferences(&self) -> u64 {
        self.inferences.load(Ordering::Relaxed)
    }

    /// Model calls.
    pub fn executions(&self) -> u64 {
        self.executions.load(Ordering::Relaxed)
    }

    /// Milliseconds since the epoch of the last model call; 0 before one.
    pub fn last_inference_ms(&self) -> u64 {
        self.last_inference_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merged_batch_counts_once_per_call_and_once_per_chunk() {
        let stats = InferStats::default();
        let waits = [Duration::from_micros(3), Duration::from_micros(5)];
        stats.batch(waits.into_iter(), Duration::from_micros(10), 7);
        assert_eq!(stats.executions(), 1);
        assert_eq!(stats.inferences(), 7);
        assert_eq!(stats.queue.get(), (2, 8_000));
        assert_eq!(stats.compute.get(), (2, 20_000));
        assert!(stats.last_inference_ms() > 0);
        stats.request(true, Duration::from_micros(30));
        stats.request(false, Duration::from_micros(1));
        assert_eq!(stats.success.get(), (1, 30_000));
        assert_eq!(stats.fail.get(), (1, 1_000));
    }
}
