//! One model's share of a request, from admission to merged outputs: queue
//! room held before anything is converted, rows encoded against the
//! version's schema, split between the default and the canary version by
//! entity id, run, and put back in row order.

use std::sync::Arc;

use ndarray::Array2;
use tokio::time::Instant;

use super::{CanaryScores, ModelScores};
use crate::{
    engine::Reservation,
    error::ApiError,
    features::FeatureBatch,
    repository::{routing, LoadedModel, ModelOutput, Route},
};

/// Admitted: queue room is held for its chunks; nothing is converted yet.
/// Every row goes to one version, or the rows are split between the default
/// and the canary version by entity id.
pub(super) struct Admitted {
    primary: Arc<LoadedModel>,
    /// The primary's rows when the request is split; `None` means all.
    primary_rows: Option<Vec<usize>>,
    primary_room: Reservation,
    canary: Option<(Arc<LoadedModel>, Vec<usize>, Reservation)>,
}

impl Admitted {
    pub(super) fn new(route: Route, rows: usize, entity_ids: &[String]) -> Result<Self, ApiError> {
        let primary = route.primary;
        // Rows without entity ids cannot be assigned stably: no split.
        let split =
            route
                .canary
                .filter(|_| !entity_ids.is_empty())
                .and_then(|(canary, percent)| {
                    let (canary_rows, primary_rows): (Vec<usize>, Vec<usize>) = (0..rows)
                        .partition(|&r| {
                            routing::in_canary(primary.name(), &entity_ids[r], percent)
                        });
                    (!canary_rows.is_empty()).then_some((canary, canary_rows, primary_rows))
                });
        let Some((canary, canary_rows, primary_rows)) = split else {
            let primary_room = primary
                .admit(rows)
                .map_err(|e| ApiError::score(&primary, e))?;
            return Ok(Self {
                primary,
                primary_rows: None,
                primary_room,
                canary: None,
            });
        };
        let primary_room = primary
            .admit(primary_rows.len())
            .map_err(|e| ApiError::score(&primary, e))?;
        let canary_room = canary
            .admit(canary_rows.len())
            .map_err(|e| ApiError::score(&canary, e))?;
        Ok(Self {
            primary,
            primary_rows: Some(primary_rows),
            primary_room,
            canary: Some((canary, canary_rows, canary_room)),
        })
    }

    /// Every version this share reaches: the primary, and the canary when
    /// the rows are split.
    pub(super) fn versions(&self) -> Vec<Arc<LoadedModel>> {
        std::iter::once(self.primary.clone())
            .chain(self.canary.as_ref().map(|(canary, _, _)| canary.clone()))
            .collect()
    }

    /// The version that scores the rows not split off.
    pub(super) fn primary(&self) -> &LoadedModel {
        &self.primary
    }

    /// Encodes and checks the admitted rows for each version.
    pub(super) fn encode(self, batch: &FeatureBatch) -> Result<Planned, ApiError> {
        let primary = self.primary;
        let primary_chunks = match &self.primary_rows {
            None => primary.encode(batch),
            Some(rows) => primary.encode_rows(batch, rows),
        }
        .map_err(|e| ApiError::feature(&primary, e))?;
        let canary = match self.canary {
            None => None,
            Some((model, rows, room)) => {
                let chunks = model
                    .encode_rows(batch, &rows)
                    .map_err(|e| ApiError::feature(&model, e))?;
                Some(CanaryShare {
                    model,
                    rows,
                    room,
                    chunks,
                })
            }
        };
        Ok(Planned {
            primary,
            primary_room: self.primary_room,
            primary_chunks,
            canary,
        })
    }
}

/// Admitted, encoded and checked: ready to run.
pub(super) struct Planned {
    primary: Arc<LoadedModel>,
    primary_room: Reservation,
    primary_chunks: Vec<Array2<f32>>,
    canary: Option<CanaryShare>,
}

/// The canary version, its rows (ascending), their queue room and encoded
/// chunks.
struct CanaryShare {
    model: Arc<LoadedModel>,
    rows: Vec<usize>,
    room: Reservation,
    chunks: Vec<Array2<f32>>,
}

impl Planned {
    /// Scores the plan and puts every row's outputs back at its index.
    pub(super) async fn run(
        self,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<ModelScores, ApiError> {
        let primary = self.primary;
        let primary_run = async {
            primary
                .run_admitted(self.primary_room, self.primary_chunks, deadline)
                .await
                .map_err(|e| ApiError::score(&primary, e))
        };
        let Some(CanaryShare {
            model: canary,
            rows: canary_rows,
            room: canary_room,
            chunks: canary_chunks,
        }) = self.canary
        else {
            let output = primary_run.await?;
            return Ok(ModelScores {
                model: primary,
                output,
                canary: None,
            });
        };
        let canary_run = async {
            canary
                .run_admitted(canary_room, canary_chunks, deadline)
                .await
                .map_err(|e| ApiError::score(&canary, e))
        };
        let (primary_out, canary_out) = futures::try_join!(primary_run, canary_run)?;
        let output = merge_split(rows, &canary_rows, primary_out, canary_out);
        Ok(ModelScores {
            model: primary,
            output,
            canary: Some(CanaryScores {
                model: canary,
                rows: canary_rows.iter().map(|&r| r as u32).collect(),
            }),
        })
    }
}

/// Puts a split request's outputs back in row order: `canary_rows`
/// (ascending) came from `canary`, every other row, in order, from `primary`.
fn merge_split(
    rows: usize,
    canary_rows: &[usize],
    primary: ModelOutput,
    canary: ModelOutput,
) -> ModelOutput {
    let clustering = !primary.cluster_ids.is_empty() || !canary.cluster_ids.is_empty();
    // Class outputs survive the merge only when both versions have the same
    // number of classes; otherwise rows would not line up.
    let width = primary.classes_width();
    let classes =
        !primary.labels.is_empty() && !canary.labels.is_empty() && width == canary.classes_width();
    let mut out = ModelOutput {
        scores: Vec::with_capacity(rows),
        cluster_ids: Vec::with_capacity(if clustering { rows } else { 0 }),
        ..Default::default()
    };
    let (mut p, mut c) = (0, 0);
    for row in 0..rows {
        let (from, i) = if canary_rows.get(c) == Some(&row) {
            c += 1;
            (&canary, c - 1)
        } else {
            p += 1;
            (&primary, p - 1)
        };
        out.scores.push(from.scores[i]);
        if clustering {
            out.cluster_ids.push(from.cluster_ids[i]);
        }
        if classes {
            out.labels.push(from.labels[i].clone());
            out.probabilities
                .extend_from_slice(&from.probabilities[i * width..(i + 1) * width]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_is_merged_back_in_row_order_with_cluster_ids() {
        let primary = ModelOutput {
            scores: vec![0.0, 2.0, 3.0],
            cluster_ids: vec![10, 12, 13],
            ..Default::default()
        };
        let canary = ModelOutput {
            scores: vec![1.0, 4.0],
            cluster_ids: vec![21, 24],
            ..Default::default()
        };
        let merged = merge_split(5, &[1, 4], primary, canary);
        assert_eq!(merged.scores, [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(merged.cluster_ids, [10, 21, 12, 13, 24]);

        let plain = merge_split(
            3,
            &[0],
            ModelOutput {
                scores: vec![5.0, 6.0],
                cluster_ids: vec![],
                ..Default::default()
            },
            ModelOutput {
                scores: vec![4.0],
                cluster_ids: vec![],
                ..Default::default()
            },
        );
        assert_eq!(plain.scores, [4.0, 5.0, 6.0]);
        assert!(plain.cluster_ids.is_empty());
        assert!(plain.labels.is_empty() && plain.probabilities.is_empty());
    }

    #[test]
    fn a_split_keeps_class_probabilities_and_labels_in_row_order() {
        let classes = |labels: &[&str], p: &[f32]| ModelOutput {
            scores: labels.iter().map(|_| 0.0).collect(),
            probabilities: p.to_vec(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        };
        let merged = merge_split(
            3,
            &[1],
            classes(&["a", "c"], &[0.9, 0.1, 0.2, 0.8]),
            classes(&["b"], &[0.4, 0.6]),
        );
        assert_eq!(merged.labels, ["a", "b", "c"]);
        assert_eq!(merged.probabilities, [0.9, 0.1, 0.4, 0.6, 0.2, 0.8]);
    }
}
