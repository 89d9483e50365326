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
    /// Allows this version to change the feature contract incompatibly
    /// (see [`Manifest::incompatibility_with`]); off by default so a retrained
    /// model cannot silently break the callers of the previous version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub breaking_change: bool,
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
    /// Overrides the server's `--latency-budget-ms` for the warm-up batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget_ms: Option<f64>,
}

impl Manifest {
    /// Why requests that work for `previous` could fail with this version,
    /// if they could: a new feature that rejects missing values, a changed
    /// dtype, or a category that disappeared.
    pub fn incompatibility_with(&self, previous: &Manifest) -> Option<String> {
        use crate::features::MissingPolicy;
        for feature in &self.features {
            match previous.features.iter().find(|p| p.name == feature.name) {
                None if feature.missing == MissingPolicy::Reject => {
                    return Some(format!(
                        "new feature `{}` is required (missing = \"reject\") but version {} did not take it",
                        feature.name, previous.version
                    ))
                }
                None => {}
                Some(p) if p.dtype != feature.dtype => {
                    return Some(format!(
                        "feature `{}` changes dtype from {} to {}",
                        feature.name, p.dtype, feature.dtype
                    ))
                }
                Some(p) => {
                    if let Some(gone) = p.categories.iter().find(|c| !feature.categories.contains(c)) {
                        return Some(format!("feature `{}` drops category `{gone}`", feature.name));
                    }
                }
            }
        }
        None
    }

    /// Reads a manifest as untrusted input: a regular file inside its own
    /// version directory, within [`MAX_MANIFEST_BYTES`](super::files::MAX_MANIFEST_BYTES)
    /// (the card is part of it).
    pub fn read(path: &Path) -> Result<Self, String> {
        use super::files::{read_text_in_parent, Cap, MAX_MANIFEST_BYTES};
        let cap = Cap::new(MAX_MANIFEST_BYTES, "the manifest limit");
        let text = read_text_in_parent(path, cap)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))
    }
}
