//! Worker threads that own backends.
//!
//! Each loaded model version gets `workers` OS threads, each owning its own
//! backend (no lock around a session), fed through one bounded MPMC queue: a full
//! queue is reported at once so the API can answer RESOURCE_EXHAUSTED instead of
//! letting latency grow without bound, and a job whose caller went away is
//! skipped rather than computed for nobody.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    thread,
};

use crossbeam_channel::{bounded, Sender, TrySendError};
use ndarray::Array2;
use tokio::sync::oneshot;

use super::{Backend, BackendError};

/// Sizing of one model version's workers.
#[derive(Debug, Clone, Copy)]
pub struct WorkerPoolConfig {
    /// Threads (and backends) per model version.
    pub workers: usize,
    /// Jobs that may wait for a worker before submissions are refused.
    pub queue_capacity: usize,
}

struct Job {
    input: Array2<f32>,
    reply: oneshot::Sender<Result<Vec<f32>, BackendError>>,
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the scoring queue is full ({capacity} jobs waiting)")]
    QueueFull { capacity: usize },
    #[error("the model's workers have stopped")]
    Stopped,
}

/// The workers of one model version. Dropping it closes the queue; each worker
/// finishes the jobs already queued, then exits and frees its backend.
pub struct WorkerPool {
    tx: Sender<Job>,
    capacity: usize,
}

impl WorkerPool {
    /// Starts one thread per backend. `name` labels the threads for debuggers
    /// and profilers.
    pub fn spawn(
        name: &str,
        backends: Vec<Box<dyn Backend>>,
        queue_capacity: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = bounded::<Job>(queue_capacity.max(1));
        for (i, mut backend) in backends.into_iter().enumerate() {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("{name}-w{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        if job.reply.is_closed() {
                            continue; // the caller gave up: don't compute for nobody
                        }
                        let result =
                            catch_unwind(AssertUnwindSafe(|| backend.score(job.input.view())))
                                .unwrap_or_else(|_| {
                                    Err(BackendError::Inference("the backend panicked".into()))
                                });
                        let _ = job.reply.send(result);
                    }
                })?;
        }
        Ok(Self {
            tx,
            capacity: queue_capacity.max(1),
        })
    }

    /// Queues `input` without waiting; the receiver yields the scores.
    pub fn submit(
        &self,
        input: Array2<f32>,
    ) -> Result<oneshot::Receiver<Result<Vec<f32>, BackendError>>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { input, reply }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(SubmitError::QueueFull {
                capacity: self.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Jobs currently waiting for a worker.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}
