//! Worker threads: each owns one backend (an `ort::Session::run` needs
//! `&mut self`, so one session per thread and no lock around it) and scores the
//! batches the batcher sends it until the batcher goes away.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    thread,
};

use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::metrics::VersionMetrics;

use super::{
    batcher::{run_batch, Batch},
    Backend, InferStats,
};

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
