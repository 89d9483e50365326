//! What moves between the pipeline's stages: a validated chunk on its way
//! to a scorer, and where a scorer sends it once scored.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use super::{read::Reject, write::Scored};
use crate::{features::FeatureBatch, repository::ModelOutput, segments::Membership};

/// A validated chunk on its way to a scorer.
pub(super) struct Prepared {
    pub ordinal: u64,
    pub chunk: u64,
    pub first_row: u64,
    pub rows_read: u64,
    pub ids: Vec<String>,
    /// The valid rows; None when every row was rejected.
    pub batch: Option<FeatureBatch>,
    pub rejects: Vec<Reject>,
}

impl Prepared {
    pub fn scored(self, scores: Vec<ModelOutput>, segments: Vec<Membership>) -> Scored {
        Scored {
            ordinal: self.ordinal,
            chunk: self.chunk,
            rows_read: self.rows_read,
            ids: self.ids,
            scores,
            segments,
            rejects: self.rejects,
        }
    }
}

/// Where scored chunks go, and the window of chunks between dispatch and
/// write that bounds what the reorder buffer can hold.
pub(super) struct Flow {
    pub window: Arc<Semaphore>,
    pub done: mpsc::UnboundedSender<Scored>,
}

impl Flow {
    /// Waits for room in the window; false when the writer failed (the
    /// window is closed) and the scorer should stop.
    pub async fn room(&self) -> bool {
        match self.window.acquire().await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// A chunk with no valid row: nothing to score, but its rejects and its
    /// place in the output still go to the writer.
    pub fn empty(&self, p: Prepared, models: usize, segments: usize) -> bool {
        self.done
            .send(p.scored(
                vec![ModelOutput::default(); models],
                vec![Membership::default(); segments],
            ))
            .is_ok()
    }
}
