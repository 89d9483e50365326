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
    /// Classifiers: the class labels, in the column order of the score
    /// output (`score.output`, the probabilities). When set, every class's
    /// probability and the predicted label are served (OIP `probabilities`
    /// and `label`), not only `score.column`. Absent in manifests written
    /// before `models import`, which keep their single score.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// How the ONNX graph's own inputs are fed from the features: one entry
    /// per graph input, with the features it takes in order. Absent: the
    /// graph has one float input that takes every feature in manifest order
    /// (the shipped models). Its names are also accepted over OIP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<GraphInput>,
    /// The reference distributions live drift is measured against
    /// (`monitor::reference`); optional: a version without one serves with
    /// no drift gauges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceSpec>,
}

/// `[reference]`: the version's reference distributions file, checked like
/// the model file (inside the version directory, size cap, sha256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSpec {
    pub file: String,
    /// Hex sha256 of `file`; a mismatch refuses the version.
    pub sha256: String,
}

/// One input of the ONNX graph and the features that fill it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphInput {
    /// The graph's input name (`input`, `float_input`, a column name).
    pub name: String,
    /// The graph's element type: the encoded features are converted to it
    /// (category codes become their names for a `string` input).
    pub dtype: GraphDtype,
    /// The features it takes, in its column order: `[N, len]`.
    pub features: Vec<String>,
}

/// Element types a graph input may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphDtype {
    Float32,
    Float64,
    Int64,
    String,
}

impl GraphDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            GraphDtype::Float32 => "float32",
            GraphDtype::Float64 => "float64",
            GraphDtype::Int64 => "int64",
            GraphDtype::String => "string",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    BinaryClassification,
    /// One of several classes: the score is the predicted class's
    /// probability, the label its name (manifest `classes`).
    MulticlassClassification,
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

/// How a backend's values for one row become that row's score: the
/// backend returns one value per row, or, for a classifier with declared
/// `classes`, every class's probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScorePicker {
    /// One value per row (or clustering pairs, handled by the caller).
    Single,
    /// Binary: the positive class's column of `width` probabilities.
    Column { column: usize, width: usize },
    /// Multiclass: the predicted (most probable) class's probability.
    Max { width: usize },
}

impl ScorePicker {
    pub fn of(manifest: &Manifest) -> Self {
        let width = manifest.classes.len();
        match manifest.task {
            _ if width == 0 => ScorePicker::Single,
            Task::MulticlassClassification => ScorePicker::Max { width },
            _ => ScorePicker::Column {
                column: manifest.score.column,
                width,
            },
        }
    }

    /// Values per row the backend returns.
    pub fn width(self) -> usize {
        match self {
            ScorePicker::Single => 1,
            ScorePicker::Column { width, .. } | ScorePicker::Max { width } => width,
        }
    }

    /// The score of one row's [`width`](Self::width) values.
    pub fn score(self, row: &[f32]) -> f32 {
        match self {
            ScorePicker::Single => row[0],
            ScorePicker::Column { column, .. } => row.get(column).copied().unwrap_or(f32::NAN),
            ScorePicker::Max { .. } => row[argmax(row)],
        }
    }

    /// The scores of row-major `values`.
    pub fn scores(self, values: &[f32]) -> impl Iterator<Item = f32> + '_ {
        values
            .chunks(self.width().max(1))
            .map(move |row| self.score(row))
    }
}

/// The index of the largest value (the first on ties, as numpy's argmax);
/// NaN never wins.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
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

    /// `classes`, `inputs` and the task agree: a multiclass model names its
    /// classes, a binary one names two or none, only ONNX classifiers have
    /// classes and only ONNX graphs have `[[inputs]]`.
    pub fn check_classes(&self) -> Result<(), String> {
        let n = self.classes.len();
        match self.task {
            Task::MulticlassClassification if n < 2 => {
                return Err("task multiclass_classification needs `classes` (two or more)".into())
            }
            Task::BinaryClassification if n != 0 && n != 2 => {
                return Err(format!(
                    "task binary_classification has {n} `classes`; it takes two (or none)"
                ))
            }
            Task::Regression | Task::Clustering if n != 0 => {
                return Err("`classes` is only for classification tasks".into())
            }
            _ => {}
        }
        if n > 0 && self.format != Format::Onnx {
            return Err("`classes` needs format = \"onnx\"".into());
        }
        if !self.inputs.is_empty() && self.format != Format::Onnx {
            return Err("`[[inputs]]` needs format = \"onnx\"".into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.classes.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(format!("class `{dup}` is listed twice"));
        }
        if self.score.column >= n.max(1) && n > 0 {
            return Err(format!(
                "score.column {} is outside the {n} classes",
                self.score.column
            ));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str, version: u64) -> Manifest {
        let path = format!(
            "{}/models/{name}/{version}/{MANIFEST_FILE}",
            env!("CARGO_MANIFEST_DIR")
        );
        Manifest::read(path.as_ref()).unwrap()
    }

    #[test]
    fn shipped_manifests_have_no_classes_and_keep_one_score() {
        let m = shipped("churn", 2);
        assert!(m.classes.is_empty() && m.inputs.is_empty());
        assert_eq!(ScorePicker::of(&m), ScorePicker::Single);
        m.check_classes().unwrap();
        // Round trip: the new keys are not written when empty.
        let text = toml::to_string(&m).unwrap();
        assert!(
            !text.contains("classes") && !text.contains("[[inputs]]"),
            "{text}"
        );
    }

    #[test]
    fn classes_must_agree_with_the_task() {
        let mut m = shipped("churn", 2);
        m.classes = vec!["no".into(), "yes".into()];
        m.score.column = 1;
        m.check_classes().unwrap();
        assert_eq!(
            ScorePicker::of(&m),
            ScorePicker::Column {
                column: 1,
                width: 2
            }
        );
        m.score.column = 2;
        assert!(m.check_classes().unwrap_err().contains("score.column 2"));
        m.score.column = 1;
        m.classes.push("maybe".into());
        assert!(m.check_classes().unwrap_err().contains("3 `classes`"));
        m.task = Task::MulticlassClassification;
        m.check_classes().unwrap();
        assert_eq!(ScorePicker::of(&m), ScorePicker::Max { width: 3 });
        m.classes = vec!["a".into(), "a".into()];
        assert!(m.check_classes().unwrap_err().contains("twice"));
        m.classes.clear();
        assert!(m.check_classes().unwrap_err().contains("needs `classes`"));
        m.task = Task::Regression;
        m.classes = vec!["a".into(), "b".into()];
        assert!(m.check_classes().is_err());
    }

    #[test]
    fn picked_scores_follow_the_task() {
        let values = [0.2, 0.8, 0.7, 0.3];
        let column = ScorePicker::Column {
            column: 1,
            width: 2,
        };
        assert_eq!(column.scores(&values).collect::<Vec<_>>(), [0.8, 0.3]);
        let max = ScorePicker::Max { width: 2 };
        assert_eq!(max.scores(&values).collect::<Vec<_>>(), [0.8, 0.7]);
        assert_eq!(argmax(&[0.1, 0.5, 0.5]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.2]), 1);
    }
}
