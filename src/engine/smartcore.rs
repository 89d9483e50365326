//! The smartcore backend: native Rust models, deserialized from
//! `model.smartcore.json` (written by `segscore train`).
//!
//! The file wraps the smartcore model with the standardisation it was trained
//! with, because smartcore's solvers need scaled inputs and the server must feed
//! the model exactly what training did.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};
use smartcore::{
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

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SmartcoreModel {
    /// Binary classifier; the score is P(label = 1).
    LogisticRegression { model: Logistic },
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
        };
        Ok(Self {
            standardize: file.standardize,
            kind,
        })
    }
}

impl Backend for SmartcoreBackend {
    fn score(&mut self, input: ArrayView2<'_, f32>) -> Result<Vec<f32>, BackendError> {
        let s = &self.standardize;
        match &self.kind {
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
