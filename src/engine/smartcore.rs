//! The smartcore backend: native Rust models, deserialized from
//! `model.smartcore.json` (written by `segscore train`).
//!
//! The file wraps the smartcore model with the standardisation it was trained
//! with, because smartcore's solvers need scaled inputs and the server must feed
//! the model exactly what training did.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};
use smartcore::{
    cluster::kmeans::KMeans as SmartKMeans,
    linalg::basic::{arrays::Array, matrix::DenseMatrix},
    linear::logistic_regression::LogisticRegression,
};

use super::{Backend, BackendError};

/// Marks the file layout so a future change is detected, not misread.
pub const FILE_FORMAT: &str = "segscore-smartcore/1";

/// `model.smartcore.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmartcoreModelFile {
    pub format: String,
    /// Per-feature (x - mean) / scale applied before the model.
    pub standardize: Standardizer,
    pub model: SmartcoreModel,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// Fits mean and standard deviation per column of a row-major matrix;
    /// constant columns get scale 1 so they pass through as zeros.
    pub fn fit(rows: usize, cols: usize, values: &[f64]) -> Self {
        let mut mean = vec![0.0; cols];
        let mut sq = vec![0.0; cols];
        for row in values.chunks_exact(cols) {
            for (j, v) in row.iter().enumerate() {
                mean[j] += v;
                sq[j] += v * v;
            }
        }
        let n = rows.max(1) as f64;
        let scale = (0..cols)
            .map(|j| {
                mean[j] /= n;
                let var = sq[j] / n - mean[j] * mean[j];
                if var > 1e-12 {
                    var.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        Self { mean, scale }
    }

    pub fn apply(&self, col: usize, value: f64) -> f64 {
        (value - self.mean[col]) / self.scale[col]
    }
}

pub type Logistic = LogisticRegression<f64, i32, DenseMatrix<f64>, Vec<i32>>;
pub type KMeans = SmartKMeans<f64, i32, DenseMatrix<f64>, Vec<i32>>;

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SmartcoreModel {
    /// Binary classifier; the score is P(label = 1).
    LogisticRegression { model: Logistic },
    /// Clustering; the outputs are the nearest centroid and the distance to
    /// it, both in standardised space.
    KMeans { model: KMeans },
}

/// The centroids of a fitted K-Means model (standardised units). smartcore
/// keeps them private but serialises them, so they are read back through its
/// own serde form rather than re-derived.
pub fn kmeans_centroids(model: &KMeans) -> Result<Vec<Vec<f64>>, BackendError> {
    let bad = |m: String| BackendError::SmartcoreFormat(m);
    let value = serde_json::to_value(model).map_err(|e| bad(e.to_string()))?;
    let centroids = value
        .get("centroids")
        .cloned()
        .ok_or_else(|| bad("the K-Means model has no `centroids`".into()))?;
    serde_json::from_value(centroids).map_err(|e| bad(format!("K-Means centroids: {e}")))
}

/// Index of the nearest centroid and the Euclidean distance to it; ties go to
/// the lowest index, as in smartcore's own `predict`.
pub fn nearest(centroids: &[Vec<f64>], x: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (i, c) in centroids.iter().enumerate() {
        let d: f64 = c.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
        if d < best.1 {
            best = (i, d);
        }
    }
    (best.0, best.1.sqrt())
}

/// A deserialized smartcore model ready to score.
pub struct SmartcoreBackend {
    standardize: Standardizer,
    kind: Kind,
}

enum Kind {
    /// Weights pulled out of the smartcore model once: smartcore only exposes
    /// hard labels for logistic regression, and the score needs P(y = 1).
    Logistic { weights: Vec<f64>, bias: f64 },
    /// Centroids pulled out once: `predict` gives the cluster but not the
    /// distance, and the score is the distance.
    KMeans { centroids: Vec<Vec<f64>> },
}

impl SmartcoreBackend {
    pub fn load(bytes: &[u8], features: usize) -> Result<Self, BackendError> {
        let bad = |m: String| BackendError::SmartcoreFormat(m);
        let file: SmartcoreModelFile =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if file.format != FILE_FORMAT {
            return Err(bad(format!(
                "format `{}`, expected `{FILE_FORMAT}`",
                file.format
            )));
        }
        let s = &file.standardize;
        if s.mean.len() != features || s.scale.len() != features {
            return Err(BackendError::Signature(format!(
                "standardizer has {} columns, the manifest {features} features",
                s.mean.len()
            )));
        }
        // A fitted model predicts; an unfitted one (fields null in the file)
        // returns an error here instead of panicking in the accessors below.
        let probe = DenseMatrix::new(1, features, vec![0.0; features], false)
            .map_err(|e| bad(e.to_string()))?;
        let kind = match file.model {
            SmartcoreModel::LogisticRegression { model } => {
                model.predict(&probe).map_err(|e| bad(e.to_string()))?;
                let coef = model.coefficients();
                if coef.shape() != (1, features) {
                    return Err(BackendError::Signature(format!(
                        "logistic regression has coefficients of shape {:?} (binary with {features} features expected)",
                        coef.shape()
                    )));
                }
                let weights = (0..features).map(|j| *coef.get((0, j))).collect();
                Kind::Logistic {
                    weights,
                    bias: *model.intercept().get((0, 0)),
                }
            }
            SmartcoreModel::KMeans { model } => {
                let centroids = kmeans_centroids(&model)?;
                if centroids.is_empty() || centroids.iter().any(|c| c.len() != features) {
                    return Err(BackendError::Signature(format!(
                        "K-Means has {} centroids of {:?} columns ({features} features expected)",
                        centroids.len(),
                        centroids.first().map(Vec::len)
                    )));
                }
                // The nearest-centroid rule below must agree with smartcore's
                // own predict: checked on the origin and on every centroid.
                let probes: Vec<Vec<f64>> = std::iter::once(vec![0.0; features])
                    .chain(centroids.iter().cloned())
                    .collect();
                let flat: Vec<f64> = probes.iter().flatten().copied().collect();
                let matrix = DenseMatrix::new(probes.len(), features, flat, false)
                    .map_err(|e| bad(e.to_string()))?;
                let predicted = model.predict(&matrix).map_err(|e| bad(e.to_string()))?;
                for (probe, &label) in probes.iter().zip(&predicted) {
                    let (ours, _) = nearest(&centroids, probe);
                    if ours as i32 != label {
                        return Err(bad(format!(
                            "nearest centroid {ours} disagrees with smartcore's prediction {label}"
                        )));
                    }
                }
                Kind::KMeans { centroids }
            }
        };
        Ok(Self {
            standardize: file.standardize,
            kind,
        })
    }
}

impl Backend for SmartcoreBackend {
    fn outputs_per_row(&self) -> usize {
        match self.kind {
            Kind::Logistic { .. } => 1,
            Kind::KMeans { .. } => 2,
        }
    }

    fn score(&mut self, input: ArrayView2<'_, f32>) -> Result<Vec<f32>, BackendError> {
        let s = &self.standardize;
        match &self.kind {
            Kind::KMeans { centroids } => {
                let mut out = Vec::with_capacity(input.nrows() * 2);
                let mut x = vec![0.0; input.ncols()];
                for row in input.rows() {
                    for (j, (&v, slot)) in row.iter().zip(x.iter_mut()).enumerate() {
                        *slot = s.apply(j, f64::from(v));
                    }
                    let (cluster, distance) = nearest(centroids, &x);
                    out.push(cluster as f32);
                    out.push(distance as f32);
                }
                Ok(out)
            }
            Kind::Logistic { weights, bias } => Ok(input
                .rows()
                .into_iter()
                .map(|row| {
                    let z: f64 = row
                        .iter()
                        .enumerate()
                        .map(|(j, &x)| s.apply(j, f64::from(x)) * weights[j])
                        .sum::<f64>()
                        + bias;
                    (1.0 / (1.0 + (-z).exp())) as f32
                })
                .collect()),
        }
    }
}
