//! The job's pipeline, each stage bounded so memory does not grow with the
//! input: a reader thread that cuts and validates chunks, the scorer
//! (embedded or remote), and a writer thread that puts chunks back in input
//! order and commits them as numbered parts.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context};
use tokio::sync::{mpsc, Semaphore};

use super::{
    chunk::{Flow, Prepared},
    progress,
    read::{RawChunk, Reject},
    scorer::Scorer,
    write::{PartWriter, Progress, Scored},
};
use crate::features::{FeatureBatch, FeatureSchema};

/// What the pipeline runs on.
pub(super) struct PipelineParts {
    pub input: PathBuf,
    pub chunks: Box<dyn Iterator<Item = anyhow::Result<RawChunk>> + Send>,
    pub schemas: Vec<(String, FeatureSchema)>,
    pub strict: bool,
    pub scorer: Scorer,
    /// `--segments`, in output column order.
    pub segment_names: Vec<String>,
    pub in_flight: usize,
    pub writer: PartWriter,
    pub reporter: progress::Reporter,
}

/// Reader thread → scorer(s) → writer thread; returns the final checkpoint.
pub(super) async fn pipeline(parts: PipelineParts) -> anyhow::Result<Progress> {
    let PipelineParts {
        input,
        chunks,
        schemas,
        strict,
        scorer,
        segment_names,
        in_flight,
        writer,
        reporter,
    } = parts;
    let servers = scorer.servers();
    // Chunks between dispatch and write: enough to keep every stream full,
    // few enough that the reorder buffer stays small.
    let window = Arc::new(Semaphore::new(2 * in_flight * servers + 2));
    let (prep_tx, mut prep_rx) = mpsc::channel::<Prepared>(2);
    let reader = spawn_reader(input, chunks, schemas, strict, prep_tx)?;
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Scored>();
    let writer_task = spawn_writer(writer, reporter, window.clone(), done_rx);
    let flow = Flow {
        window,
        done: done_tx,
    };
    let scored = scorer
        .score(&segment_names, &mut prep_rx, &flow, in_flight)
        .await;
    drop(flow);
    // The reader may be blocked sending: dropping the receiver frees it.
    drop(prep_rx);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    // The writer's error first: a failed writer also fails the scorer.
    let progress = writer_task.await.context("the writer thread panicked")??;
    read?;
    scored?;
    Ok(progress)
}

/// The reader thread: cuts the input into chunks, validates each, and (with
/// `--strict`) stops the job at the first bad cell.
fn spawn_reader(
    input: PathBuf,
    chunks: Box<dyn Iterator<Item = anyhow::Result<RawChunk>> + Send>,
    schemas: Vec<(String, FeatureSchema)>,
    strict: bool,
    prep_tx: mpsc::Sender<Prepared>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    std::thread::Builder::new()
        .name("bulk-reader".into())
        .spawn(move || -> anyhow::Result<()> {
            for (ordinal, raw) in chunks.enumerate() {
                let prepared = prepare(&input, &schemas, raw?, ordinal as u64)?;
                if strict {
                    if let Some(r) = prepared.rejects.first() {
                        bail!(
                            "{}: row {} column `{}`: {} (--strict; rows are numbered from 0)",
                            input.display(),
                            r.row,
                            r.column,
                            r.reason
                        );
                    }
                }
                if prep_tx.blocking_send(prepared).is_err() {
                    break; // the scorer stopped; its error is the job's
                }
            }
            Ok(())
        })
        .context("starting the reader thread")
}

/// The writer thread: puts scored chunks back in input order, writes them,
/// and returns a window slot for each chunk written.
fn spawn_writer(
    mut writer: PartWriter,
    mut reporter: progress::Reporter,
    window: Arc<Semaphore>,
    mut done_rx: mpsc::UnboundedReceiver<Scored>,
) -> tokio::task::JoinHandle<anyhow::Result<Progress>> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<Progress> {
        let mut order = Reorder::default();
        let result = (|| {
            while let Some(scored) = done_rx.blocking_recv() {
                order.push(scored.ordinal, scored);
                while let Some(s) = order.pop_ready() {
                    let rows = s.rows_read;
                    writer.write(s)?;
                    reporter.advance(rows);
                    window.add_permits(1);
                }
            }
            // Whatever arrived contiguously is complete: commit it, so even
            // a failed run leaves something for --resume.
            writer.commit()
        })();
        reporter.finish();
        if result.is_err() {
            // Unblocks the dispatcher, which waits for window slots that
            // this thread will no longer return.
            window.close();
        }
        result.map(|()| writer.progress)
    })
}

/// Items numbered from 0 that arrive in any order, handed out in order:
/// each is held until every earlier one has been handed out.
#[derive(Debug)]
pub(super) struct Reorder<T> {
    next: u64,
    pending: BTreeMap<u64, T>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            next: 0,
            pending: BTreeMap::new(),
        }
    }
}

impl<T> Reorder<T> {
    pub fn push(&mut self, ordinal: u64, item: T) {
        self.pending.insert(ordinal, item);
    }

    /// The next item in order, if it has arrived.
    pub fn pop_ready(&mut self) -> Option<T> {
        let item = self.pending.remove(&self.next)?;
        self.next += 1;
        Some(item)
    }

    /// Items that arrived ahead of a missing earlier one.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.pending.len()
    }
}

/// Validates a chunk against every model: rows with any invalid value are
/// set aside, the rest form the batch that is scored.
pub(super) fn prepare(
    input: &Path,
    schemas: &[(String, FeatureSchema)],
    raw: RawChunk,
    ordinal: u64,
) -> anyhow::Result<Prepared> {
    let n = raw.ids.len();
    let first = raw.first_row;
    // (row, column) → reason; the first reason found wins (a cell that did
    // not parse is also missing, and "not a number" says more).
    let mut bad: BTreeMap<(u64, String), String> = BTreeMap::new();
    for r in raw.bad_cells {
        bad.entry((r.row, r.column)).or_insert(r.reason);
    }
    let batch = FeatureBatch::new(n, raw.columns)
        .with_context(|| format!("{}: rows from {first}", input.display()))?;
    for (model, schema) in schemas {
        let errors = schema.row_errors(&batch).map_err(|e| {
            anyhow::anyhow!(
                "{}: model `{model}`: feature `{}`: {}",
                input.display(),
                e.feature(),
                e.reason()
            )
        })?;
        for e in errors {
            let row = first
                + e.row()
                    .expect("row_errors returns row errors; this is a bug")
                    as u64;
            bad.entry((row, e.feature().to_string()))
                .or_insert_with(|| e.reason());
        }
    }
    let rejects: Vec<Reject> = bad
        .into_iter()
        .map(|((row, column), reason)| Reject {
            row,
            column,
            reason,
        })
        .collect();
    let bad_rows: BTreeSet<usize> = rejects.iter().map(|r| (r.row - first) as usize).collect();
    let (ids, batch) = if bad_rows.is_empty() {
        (raw.ids, Some(batch))
    } else {
        let keep: Vec<usize> = (0..n).filter(|i| !bad_rows.contains(i)).collect();
        let ids = keep.iter().map(|&i| raw.ids[i].clone()).collect();
        (ids, batch.select_rows(&keep).ok())
    };
    Ok(Prepared {
        ordinal,
        chunk: raw.chunk,
        first_row: first,
        rows_read: n as u64,
        ids,
        batch,
        rejects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_that_arrive_out_of_order_are_handed_out_in_order() {
        let mut order = Reorder::default();
        order.push(2, "c");
        order.push(1, "b");
        assert_eq!(order.pop_ready(), None, "chunk 0 has not arrived");
        assert_eq!(order.held(), 2);
        order.push(0, "a");
        let ready: Vec<_> = std::iter::from_fn(|| order.pop_ready()).collect();
        assert_eq!(ready, ["a", "b", "c"]);
        assert_eq!(order.held(), 0);
        order.push(4, "e");
        assert_eq!(order.pop_ready(), None, "chunk 3 is still missing");
        order.push(3, "d");
        assert_eq!(order.pop_ready(), Some("d"));
        assert_eq!(order.pop_ready(), Some("e"));
    }
}
