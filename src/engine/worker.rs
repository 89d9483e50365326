//! Worker threads: each owns one backend (an `ort::Session::run` needs
//! `&mut self`, so one session per thread and no lock around it) and runs the
//! batches the batcher sends it until the batcher goes away.
//!
//! The unit of work ([`Batch`] of [`Entry`]s) is defined here, with the code
//! that runs it, so the dependency goes one way: the [`batcher`](super::batcher)
//! queues entries and forms batches, and hands them to this module; nothing
//! here knows how batches were formed.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
    thread,
};

use crossbeam_channel::Receiver;
use ndarray::{concatenate, Array2, ArrayView2, Axis};
use tokio::{
    sync::{oneshot, OwnedSemaphorePermit},
    time::Instant,
};

use super::{Backend, BackendError, InferStats, ScoreError};
use crate::metrics::VersionMetrics;

/// The scores of one chunk, or why there are none.
pub type Reply = Result<Vec<f32>, ScoreError>;

/// One queued chunk of one request.
pub(crate) struct Entry {
    pub input: Array2<f32>,
    pub reply: oneshot::Sender<Reply>,
    pub deadline: Option<Instant>,
    pub enqueued: Instant,
}

/// A batch handed to a worker. The permit travels with it and is released
/// when the worker is done, which is what lets the batcher form the next one.
pub(crate) struct Batch {
    pub entries: Vec<Entry>,
    pub _permit: OwnedSemaphorePermit,
}

/// Starts a thread named `name` that scores batches from `batches` with
/// `backend`. A panic inside the backend fails that batch (its callers get an
/// error), not the thread.
pub(crate) fn spawn(
    name: String,
    mut backend: Box<dyn Backend>,
    batches: Receiver<Batch>,
    metrics: Option<VersionMetrics>,
    stats: Arc<InferStats>,
) -> std::io::Result<()> {
    thread::Builder::new().name(name).spawn(move || {
        while let Ok(batch) = batches.recv() {
            let Batch { entries, _permit } = batch;
            // Entries move into run_batch; if it panics, their reply senders
            // are dropped, so callers see the worker failure instead of hanging.
            let _ = catch_unwind(AssertUnwindSafe(|| {
                run_batch(backend.as_mut(), entries, metrics.as_ref(), &stats)
            }));
        }
    })?;
    Ok(())
}

/// Runs one batch on `backend` and answers every entry with its own rows.
fn run_batch(
    backend: &mut dyn Backend,
    entries: Vec<Entry>,
    metrics: Option<&VersionMetrics>,
    stats: &InferStats,
) {
    // A caller may have gone away while the batch waited for this worker.
    let entries: Vec<Entry> = entries
        .into_iter()
        .filter(|e| !e.reply.is_closed())
        .collect();
    if entries.is_empty() {
        return;
    }
    let started = Instant::now();
    let result = if entries.len() == 1 {
        backend.score(entries[0].input.view())
    } else {
        let views: Vec<ArrayView2<'_, f32>> = entries.iter().map(|e| e.input.view()).collect();
        match concatenate(Axis(0), &views) {
            Ok(input) => backend.score(input.view()),
            Err(e) => Err(BackendError::Inference(format!(
                "assembling the batch: {e}"
            ))),
        }
    };
    let total: usize = entries.iter().map(|e| e.input.nrows()).sum();
    let width = backend.outputs_per_row().max(1);
    match result {
        Ok(scores) if scores.len() == total * width => {
            let compute = started.elapsed();
            stats.batch(entries.iter().map(|e| started - e.enqueued), compute, total);
            if let Some(m) = metrics {
                let waits = entries.iter().map(|e| started - e.enqueued);
                m.batch(waits, compute, total, &scores);
            }
            let mut offset = 0;
            for entry in entries {
                let n = entry.input.nrows() * width;
                let _ = entry.reply.send(Ok(scores[offset..offset + n].to_vec()));
                offset += n;
            }
        }
        Ok(scores) => {
            let message = format!(
                "the model returned {} values for {total} rows ({width} per row expected)",
                scores.len()
            );
            for entry in entries {
                let _ = entry.reply.send(Err(ScoreError::Backend(message.clone())));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for entry in entries {
                let _ = entry.reply.send(Err(ScoreError::Backend(message.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that returns each row's first value, to check reassembly.
    struct Echo;
    impl Backend for Echo {
        fn score(&mut self, input: ArrayView2<'_, f32>) -> Result<Vec<f32>, BackendError> {
            Ok(input.column(0).to_vec())
        }
    }

    #[test]
    fn a_merged_batch_is_split_back_in_order() {
        let mut receivers = Vec::new();
        let entries: Vec<Entry> = (0..4)
            .map(|i| {
                let (reply, rx) = oneshot::channel();
                receivers.push(rx);
                let input = Array2::from_shape_fn((i + 1, 2), |(r, _)| (i * 10 + r) as f32);
                Entry {
                    input,
                    reply,
                    deadline: None,
                    enqueued: Instant::now(),
                }
            })
            .collect();
        run_batch(&mut Echo, entries, None, &InferStats::default());
        for (i, mut rx) in receivers.into_iter().enumerate() {
            let got = rx.try_recv().unwrap().unwrap();
            let want: Vec<f32> = (0..=i).map(|r| (i * 10 + r) as f32).collect();
            assert_eq!(got, want);
        }
    }
}
