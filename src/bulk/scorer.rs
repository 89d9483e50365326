//! Where chunks are scored: in this process through the scoring core, or
//! over `ScoreStream` against one or more servers.

use tokio::sync::mpsc;

use super::{
    chunk::{Flow, Prepared},
    embedded::Embedded,
    remote::Remote,
};

pub(super) enum Scorer {
    Embedded(Embedded),
    Remote(Vec<Remote>),
}

impl Scorer {
    /// How many servers take chunks at once (the embedded core counts one).
    pub fn servers(&self) -> usize {
        match self {
            Scorer::Embedded(_) => 1,
            Scorer::Remote(r) => r.len(),
        }
    }

    /// Scores every prepared chunk and hands each to the writer through
    /// `flow`, at most `in_flight` at once per server.
    pub async fn score(
        self,
        segment_names: &[String],
        prepared: &mut mpsc::Receiver<Prepared>,
        flow: &Flow,
        in_flight: usize,
    ) -> anyhow::Result<()> {
        match self {
            Scorer::Embedded(embedded) => {
                embedded
                    .score(segment_names, prepared, flow, in_flight)
                    .await
            }
            Scorer::Remote(remotes) => {
                super::remote::score(remotes, segment_names, prepared, flow, in_flight).await
            }
        }
    }
}
