//! `model.toml`: what a model version is, how to check it, and how to read its
//! score. Parsing is strict (unknown keys are errors) so a typo in a manifest
//! fails validation instead of silently changing behaviour.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::features::FeatureSpec;

/// The manifest's file name; a version directory without it is not a candidate
/// (the manifest is written last, so its presence means the copy is complete).
pub const MANIFEST_FILE: &str = "model.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Must equal the model directory's name.
    pub name: String,
    /// Must equal the version directory's name.
    pub version: u64,
    pub task: Task,
    pub format: Format,
    /// The model file, relative to the version directory.
    pub file: String,
    /// Hex sha256 of `file`; a mismatch refuses the version.
    pub sha256: String,
    pub score: ScoreSpec,
    /// Input columns in the model's order.
    pub features: Vec<FeatureSpec>,
    pub golden: GoldenSpec,
    /// Free-form model card for people (data, metrics, intended use).
    #[serde(default)]
    pub card: toml::Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    BinaryClassification,
    Regression,
    Clustering,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Onnx,
    Smartcore,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Smartcore => "smartcore",
        }
    }
}

/// Which output (and column of it) is "the score".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    pub output: String,
    #[serde(default)]
    pub column: usize,
}

/// The golden set checked before a version may serve.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSpec {
    pub file: String,
    /// A score passes when |got - expected| <= tolerance * max(1, |expected|):
    /// absolute for probabilities, relative for large regression values.
    pub tolerance: f64,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))
    }
}
