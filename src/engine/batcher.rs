//! The dynamic batcher of one model version (after TEI and Triton).
//!
//! Callers queue encoded chunks ([`Batcher::submit`]); one async batcher task
//! forms batches and hands them to the worker threads that own the backends.
//! The batcher only forms a batch when a worker is free (a semaphore with one
//! permit per worker), so while every worker is busy the queue keeps filling and
//! the next batch is larger: under load, single-row requests are merged into
//! one model call without any fixed wait. `max_queue_delay` can add a wait for
//! stragglers on top. With batching off, each chunk is its own model call (the
//! baseline the benchmark compares against).
//!
//! Entries whose caller went away (cancelled RPC, dropped receiver) or whose
//! deadline has passed are dropped before they reach a model, and the queue is
//! bounded: a request that does not fit is refused whole, at once. "At once"
//! means before its rows are converted and encoded: a front end
//! [`reserve`](Batcher::reserve)s the request's chunks as soon as it knows
//! the row count, and a million-row request that cannot be queued is refused
//! in microseconds instead of after seconds of encoding.
//!
//! Running a batch on a backend is the worker module's job.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use ndarray::Array2;
use parking_lot::Mutex;
use tokio::{
    sync::{oneshot, Notify, Semaphore},
    time::Instant,
};

// The worker owns the unit of work and runs it; the batcher only queues
// entries and forms batches, so the dependency goes batcher -> worker only.
pub use super::worker::Reply;
use super::{
    worker::{self, Batch, Entry},
    Backend, InferStats, ScoreError,
};
use crate::metrics::VersionMetrics;

/// How one model version batches.
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Most rows per model call; larger requests arrive already split.
    pub max_batch_rows: usize,
    /// Extra time a partly full batch may wait for more rows (0 = none: batch
    /// only what queued while the workers were busy).
    pub max_queue_delay: Duration,
    /// Chunks that may wait; a request that would exceed it is refused.
    pub queue_capacity: usize,
    /// Merge chunks of different requests into one model call.
    pub batching: bool,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    rows: usize,
    /// Slots held by [`Reservation`]s whose chunks are still being encoded;
    /// they count against `queue_capacity` like queued chunks.
    reserved: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    notify: Notify,
    config: BatcherConfig,
    metrics: Option<VersionMetrics>,
    /// What ModelStatistics reports; the workers add to it.
    stats: Arc<InferStats>,
}

impl Shared {
    /// Publishes the queue depth (called with the queue lock held, so the
    /// gauge never goes backwards in time).
    fn publish_depth(&self, q: &Queue) {
        if let Some(m) = &self.metrics {
            m.queue_depth.set(q.entries.len() as i64);
        }
    }
}

/// The queue and batcher of one model version. Dropping it closes the queue:
/// what is queued is still scored, then the batcher and workers exit.
pub struct Batcher {
    shared: Arc<Shared>,
}

impl Batcher {
    /// Starts one worker thread per backend and the batcher task on the
    /// current tokio runtime.
    pub fn spawn(
        name: &str,
        backends: Vec<Box<dyn Backend>>,
        config: BatcherConfig,
        metrics: Option<VersionMetrics>,
    ) -> std::io::Result<Self> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| {
            std::io::Error::other(format!("the batcher needs a tokio runtime: {e}"))
        })?;
        let (tx, rx) = crossbeam_channel::unbounded::<Batch>();
        let permits = Arc::new(Semaphore::new(backends.len().max(1)));
        let stats = Arc::new(InferStats::default());
        for (i, backend) in backends.into_iter().enumerate() {
            worker::spawn(
                format!("{name}-w{i}"),
                backend,
                rx.clone(),
                metrics.clone(),
                stats.clone(),
            )?;
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            config,
            metrics,
            stats,
        });
        handle.spawn(batcher_task(shared.clone(), permits, move |batch| {
            tx.send(batch).is_ok()
        }));
        Ok(Self { shared })
    }

    /// Builds a batcher whose batches go to `sink` instead of worker threads
    /// (tests drive formation with paused time this way).
    #[cfg(test)]
    pub(crate) fn with_sink(
        config: BatcherConfig,
        workers: usize,
        sink: impl FnMut(Batch) -> bool + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            config,
            metrics: None,
            stats: Arc::default(),
        });
        tokio::spawn(batcher_task(
            shared.clone(),
            Arc::new(Semaphore::new(workers)),
            sink,
        ));
        Self { shared }
    }

    /// This version's cumulative statistics (Triton's ModelStatistics).
    pub fn stats(&self) -> &InferStats {
        &self.shared.stats
    }

    /// Holds `chunks` queue slots for one request, or refuses it whole when
    /// the queue cannot take them. Cheap: call it before the expensive work
    /// (conversion, encoding) so a request that cannot be queued costs
    /// nothing. The slots are released when the reservation is dropped.
    pub fn reserve(&self, chunks: usize) -> Result<Reservation, ScoreError> {
        let mut q = self.shared.queue.lock();
        if q.closed {
            return Err(ScoreError::Stopped);
        }
        let capacity = self.shared.config.queue_capacity;
        if q.entries.len() + q.reserved + chunks > capacity {
            return Err(ScoreError::QueueFull { capacity });
        }
        q.reserved += chunks;
        Ok(Reservation {
            shared: self.shared.clone(),
            chunks,
        })
    }

    /// Queues every chunk of one request, or none of them: the request is
    /// refused whole when the queue cannot take all its chunks.
    pub fn submit(
        &self,
        chunks: Vec<Array2<f32>>,
        deadline: Option<Instant>,
    ) -> Result<Vec<oneshot::Receiver<Reply>>, ScoreError> {
        self.reserve(chunks.len())?.submit(chunks, deadline)
    }

    /// Chunks waiting for a worker.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().entries.len()
    }
}

/// Queue slots held for one request between admission and submission
/// ([`Batcher::reserve`]).
pub struct Reservation {
    shared: Arc<Shared>,
    chunks: usize,
}

impl Reservation {
    /// Queues the request's chunks in the reserved slots. More chunks than
    /// reserved (a caller whose row count grew) still need free capacity;
    /// unused slots are released.
    pub fn submit(
        mut self,
        chunks: Vec<Array2<f32>>,
        deadline: Option<Instant>,
    ) -> Result<Vec<oneshot::Receiver<Reply>>, ScoreError> {
        let now = Instant::now();
        let mut receivers = Vec::with_capacity(chunks.len());
        {
            let mut q = self.shared.queue.lock();
            if q.closed {
                return Err(ScoreError::Stopped);
            }
            let capacity = self.shared.config.queue_capacity;
            let extra = chunks.len().saturating_sub(self.chunks);
            if extra > 0 && q.entries.len() + q.reserved + extra > capacity {
                return Err(ScoreError::QueueFull { capacity });
            }
            q.reserved -= self.chunks;
            self.chunks = 0;
            for input in chunks {
                let (reply, rx) = oneshot::channel();
                q.rows += input.nrows();
                q.entries.push_back(Entry {
                    input,
                    reply,
                    deadline,
                    enqueued: now,
                });
                receivers.push(rx);
            }
            self.shared.publish_depth(&q);
        }
        self.shared.notify.notify_one();
        Ok(receivers)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.chunks > 0 {
            self.shared.queue.lock().reserved -= self.chunks;
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.notify.notify_one();
    }
}

/// Forms batches while the batcher lives; exits once it is closed and drained.
async fn batcher_task(
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut sink: impl FnMut(Batch) -> bool + Send + 'static,
) {
    let config = shared.config;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Wait for work.
        let first_enqueued = loop {
            {
                let q = shared.queue.lock();
                if let Some(first) = q.entries.front() {
                    break first.enqueued;
                }
                if q.closed {
                    return;
                }
            }
            shared.notify.notified().await;
        };
        // Optionally wait for the batch to fill.
        if config.batching && !config.max_queue_delay.is_zero() {
            let until = first_enqueued + config.max_queue_delay;
            loop {
                {
                    let q = shared.queue.lock();
                    if q.rows >= config.max_batch_rows || q.closed {
                        break;
                    }
                }
                tokio::select! {
                    _ = shared.notify.notified() => {}
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
        }
        let entries = take_batch(&shared, &config);
        if entries.is_empty() {
            continue; // everything queued was cancelled or expired
        }
        if !sink(Batch {
            entries,
            _permit: permit,
        }) {
            return; // workers are gone
        }
    }
}

/// Pops live entries up to `max_batch_rows` rows (one entry with batching off);
/// answers expired ones and forgets cancelled ones on the way.
fn take_batch(shared: &Shared, config: &BatcherConfig) -> Vec<Entry> {
    let now = Instant::now();
    let mut q = shared.queue.lock();
    let mut batch = Vec::new();
    let mut rows = 0;
    while let Some(front) = q.entries.front() {
        let n = front.input.nrows();
        let live = !front.reply.is_closed() && front.deadline.is_none_or(|d| d > now);
        if live && !batch.is_empty() && (!config.batching || rows + n > config.max_batch_rows) {
            break;
        }
        let entry = q.entries.pop_front().expect("front exists; this is a bug");
        q.rows -= n;
        if entry.reply.is_closed() {
            continue;
        }
        if !live {
            let _ = entry.reply.send(Err(ScoreError::DeadlineExceeded));
            continue;
        }
        rows += n;
        batch.push(entry);
    }
    shared.publish_depth(&q);
    batch
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    fn rows(n: usize, value: f32) -> Array2<f32> {
        Array2::from_elem((n, 2), value)
    }

    fn config(batching: bool, delay_ms: u64) -> BatcherConfig {
        BatcherConfig {
            max_batch_rows: 8,
            max_queue_delay: Duration::from_millis(delay_ms),
            queue_capacity: 16,
            batching,
        }
    }

    /// A sink that records batch sizes (in rows per entry) and holds each
    /// batch's permit until released, like a busy worker.
    type Seen = Arc<StdMutex<Vec<(Vec<usize>, Duration)>>>;

    fn recording(
        start: Instant,
    ) -> (
        Seen,
        Arc<StdMutex<Vec<Batch>>>,
        impl FnMut(Batch) -> bool + Send + 'static,
    ) {
        let seen: Seen = Arc::default();
        let held: Arc<StdMutex<Vec<Batch>>> = Arc::default();
        let (s, h) = (seen.clone(), held.clone());
        let sink = move |batch: Batch| {
            let sizes = batch.entries.iter().map(|e| e.input.nrows()).collect();
            s.lock().unwrap().push((sizes, start.elapsed()));
            h.lock().unwrap().push(batch);
            true
        };
        (seen, held, sink)
    }

    /// Answers every held batch with row values as scores, freeing the workers.
    fn finish(held: &Arc<StdMutex<Vec<Batch>>>) {
        for batch in held.lock().unwrap().drain(..) {
            for e in batch.entries {
                let _ = e.reply.send(Ok(e.input.column(0).to_vec()));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_merge_while_workers_are_busy() {
        let start = Instant::now();
        let (seen, held, sink) = recording(start);
        let b = Batcher::with_sink(config(true, 0), 1, sink);
        let _r1 = b.submit(vec![rows(1, 1.0)], None).unwrap();
        tokio::task::yield_now().await;
        // The only worker is busy with the first request: the next three wait
        // and then go out together.
        let _r2 = b.submit(vec![rows(1, 2.0)], None).unwrap();
        let _r3 = b.submit(vec![rows(2, 3.0)], None).unwrap();
        let _r4 = b.submit(vec![rows(3, 4.0)], None).unwrap();
        tokio::task::yield_now().await;
        assert_eq!(seen.lock().unwrap().len(), 1);
        finish(&held);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
            vec![vec![1], vec![1, 2, 3]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_by_size_or_by_delay() {
        let start = Instant::now();
        let (seen, held, sink) = recording(start);
        let b = Batcher::with_sink(config(true, 5), 2, sink);
        // 3 rows wait for the 5 ms delay...
        let _a = b.submit(vec![rows(3, 1.0)], None).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(seen.lock().unwrap().is_empty(), "closed before the delay");
        tokio::time::sleep(Duration::from_millis(4)).await;
        assert_eq!(seen.lock().unwrap()[0], (vec![3], Duration::from_millis(5)));
        // ...while 8 rows (the maximum) leave at once, and a ninth row waits
        // for the next batch rather than overflowing this one.
        let _b = b.submit(vec![rows(5, 2.0)], None).unwrap();
        let _c = b.submit(vec![rows(3, 3.0)], None).unwrap();
        let _d = b.submit(vec![rows(1, 4.0)], None).unwrap();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let seen_now = seen.lock().unwrap().clone();
        assert_eq!(seen_now[1], (vec![5, 3], Duration::from_millis(6)));
        finish(&held);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(seen.lock().unwrap()[2].0, vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn batching_off_sends_one_chunk_per_call() {
        let (seen, held, sink) = recording(Instant::now());
        let b = Batcher::with_sink(config(false, 5), 1, sink);
        let _r: Vec<_> = (0..3)
            .map(|i| b.submit(vec![rows(1, i as f32)], None).unwrap())
            .collect();
        for _ in 0..3 {
            tokio::task::yield_now().await;
            finish(&held);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let sizes: Vec<Vec<usize>> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
        assert_eq!(sizes, vec![vec![1], vec![1], vec![1]]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_and_expired_callers_are_skipped() {
        let (seen, held, sink) = recording(Instant::now());
        let b = Batcher::with_sink(config(true, 0), 1, sink);
        let _busy = b.submit(vec![rows(1, 0.0)], None).unwrap();
        tokio::task::yield_now().await;
        let cancelled = b.submit(vec![rows(2, 1.0)], None).unwrap();
        let expired = b
            .submit(
                vec![rows(3, 2.0)],
                Some(Instant::now() + Duration::from_millis(1)),
            )
            .unwrap();
        let live = b.submit(vec![rows(4, 3.0)], None).unwrap();
        drop(cancelled);
        tokio::time::sleep(Duration::from_millis(2)).await;
        finish(&held);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let sizes: Vec<Vec<usize>> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
        assert_eq!(
            sizes,
            vec![vec![1], vec![4]],
            "only live rows reach a model"
        );
        let expired = expired.into_iter().next().unwrap().await.unwrap();
        assert!(matches!(expired, Err(ScoreError::DeadlineExceeded)));
        finish(&held);
        let scores = live.into_iter().next().unwrap().await.unwrap().unwrap();
        assert_eq!(scores, vec![3.0; 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_the_whole_request() {
        let (_seen, _held, sink) = recording(Instant::now());
        let mut c = config(true, 0);
        c.queue_capacity = 3;
        let b = Batcher::with_sink(c, 1, sink);
        let _busy = b.submit(vec![rows(1, 0.0)], None).unwrap();
        tokio::task::yield_now().await; // taken by the worker: queue empty
        let _two = b.submit(vec![rows(1, 1.0), rows(1, 2.0)], None).unwrap();
        let refused = b.submit(vec![rows(1, 3.0), rows(1, 4.0)], None);
        assert!(matches!(
            refused,
            Err(ScoreError::QueueFull { capacity: 3 })
        ));
        assert_eq!(b.queued(), 2, "nothing of the refused request was queued");
        assert!(b.submit(vec![rows(1, 5.0)], None).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn reserved_slots_count_against_capacity_until_used_or_dropped() {
        let (_seen, _held, sink) = recording(Instant::now());
        let mut c = config(true, 0);
        c.queue_capacity = 4;
        let b = Batcher::with_sink(c, 1, sink);
        let _busy = b.submit(vec![rows(1, 0.0)], None).unwrap();
        tokio::task::yield_now().await; // taken by the worker: queue empty
                                        // A big request is admitted before it is encoded...
        let big = b.reserve(3).unwrap();
        // ...so a second one that would not fit beside it is refused at once.
        assert!(matches!(
            b.reserve(2),
            Err(ScoreError::QueueFull { capacity: 4 })
        ));
        let small = b.reserve(1).unwrap();
        // Fewer chunks than reserved: the rest is released on submit.
        let _queued = big.submit(vec![rows(1, 1.0)], None).unwrap();
        assert_eq!(b.queued(), 1);
        let two_more = b.reserve(2).unwrap();
        // An admitted request that was abandoned gives its slots back.
        drop(small);
        drop(two_more);
        let three = b.reserve(3).unwrap();
        // More chunks than reserved need free capacity of their own.
        assert!(matches!(
            three.submit(vec![rows(1, 2.0); 4], None),
            Err(ScoreError::QueueFull { capacity: 4 })
        ));
        assert_eq!(b.queued(), 1, "nothing of the refused request was queued");
        assert!(b.reserve(3).is_ok(), "the refused reservation was released");
    }
}
