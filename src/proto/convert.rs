//! Parsing at the edge: protobuf messages become domain types that cannot hold
//! an invalid shape (after zero-to-production's `TryFrom` pattern), and domain
//! state becomes protobuf for responses.

use super::pb;
use crate::{
    echo::echo,
    error::ApiError,
    features::{
        Column, ColumnValues, DType, FeatureBatch, FeatureSpec, ImputeValue, MissingPolicy,
    },
    infer::{self, Features},
    repository::{LoadedModel, Task},
    segments::ModelScoresView,
};

impl pb::FeatureColumn {
    /// Number of values, whichever typed array holds them.
    pub fn len(&self) -> usize {
        use pb::feature_column::Values;
        match &self.values {
            Some(Values::F32(v)) => v.values.len(),
            Some(Values::F64(v)) => v.values.len(),
            Some(Values::I64(v)) => v.values.len(),
            Some(Values::Bool(v)) => v.values.len(),
            Some(Values::Category(v)) => v.values.len(),
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TryFrom<pb::FeatureColumn> for (String, Column) {
    type Error = ApiError;

    fn try_from(col: pb::FeatureColumn) -> Result<Self, ApiError> {
        use pb::feature_column::Values;
        if col.name.is_empty() {
            return Err(ApiError::InvalidArgument(
                "a feature column has an empty name".into(),
            ));
        }
        let values = match col.values {
            Some(Values::F32(v)) => ColumnValues::F32(v.values),
            Some(Values::F64(v)) => ColumnValues::F64(v.values),
            Some(Values::I64(v)) => ColumnValues::I64(v.values),
            Some(Values::Bool(v)) => ColumnValues::Bool(v.values),
            Some(Values::Category(v)) => ColumnValues::Category(v.values),
            None => {
                return Err(ApiError::InvalidArgument(format!(
                    "column `{}` has no values: set one of f32, f64, i64, bool, category",
                    echo(&col.name)
                )))
            }
        };
        let column = Column::new(values)
            .with_missing_rows(&col.missing_rows)
            .map_err(|e| ApiError::InvalidArgument(format!("column `{}`: {e}", echo(&col.name))))?;
        Ok((col.name, column))
    }
}

impl TryFrom<pb::FeatureMatrix> for FeatureBatch {
    type Error = ApiError;

    fn try_from(matrix: pb::FeatureMatrix) -> Result<Self, ApiError> {
        let columns = matrix
            .columns
            .into_iter()
            .map(<(String, Column)>::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FeatureBatch::new(matrix.rows as usize, columns)?)
    }
}

/// A segscore.v1 request's features, converted once the core has admitted
/// them.
impl Features for Option<pb::FeatureMatrix> {
    fn declared_rows(&self) -> Result<usize, ApiError> {
        let matrix = self
            .as_ref()
            .ok_or_else(|| ApiError::InvalidArgument("the request has no `features`".into()))?;
        Ok(matrix
            .columns
            .first()
            .map_or(matrix.rows as usize, |c| c.len().max(matrix.rows as usize)))
    }

    fn into_batch(self, _first: Option<&LoadedModel>) -> Result<FeatureBatch, ApiError> {
        let matrix =
            self.ok_or_else(|| ApiError::InvalidArgument("the request has no `features`".into()))?;
        FeatureBatch::try_from(matrix)
    }
}

impl From<pb::ModelRef> for infer::ModelRef {
    fn from(m: pb::ModelRef) -> Self {
        Self {
            name: m.name,
            version: m.version,
            label: m.label,
        }
    }
}

impl From<&infer::ModelRef> for pb::ModelRef {
    fn from(m: &infer::ModelRef) -> Self {
        Self {
            name: m.name.clone(),
            version: m.version,
            label: m.label.clone(),
        }
    }
}

impl From<pb::ScoreRequest> for infer::Request<Option<pb::FeatureMatrix>> {
    fn from(req: pb::ScoreRequest) -> Self {
        Self {
            models: req.models.into_iter().map(Into::into).collect(),
            segments: req.segments,
            entity_ids: req.entity_ids,
            features: req.features,
        }
    }
}

impl From<infer::ModelScores> for pb::ModelScores {
    fn from(m: infer::ModelScores) -> Self {
        let model = &m.model;
        let mut out = pb::ModelScores {
            name: model.name().into(),
            version: model.version(),
            sha256: model.manifest.sha256.clone(),
            task: pb::Task::from(model.manifest.task).into(),
            scores: m.output.scores,
            cluster_ids: m.output.cluster_ids,
            ..Default::default()
        };
        // A classifier with declared classes also answers with every class's
        // probability and the predicted label; other models leave these
        // empty, so their responses are unchanged.
        if !m.output.labels.is_empty() {
            out.classes = model.manifest.classes.clone();
            out.probabilities = m.output.probabilities;
            out.labels = m.output.labels;
        }
        if let Some(canary) = m.canary {
            out.canary_version = canary.model.version();
            out.canary_sha256 = canary.model.manifest.sha256.clone();
            out.canary_rows = canary.rows;
        }
        out
    }
}

impl From<infer::SegmentMembership> for pb::SegmentMembership {
    fn from(s: infer::SegmentMembership) -> Self {
        Self {
            name: s.name,
            member_rows: s.membership.member_rows,
            errors: s
                .membership
                .errors
                .into_iter()
                .map(|(row, reason)| pb::RowError { row, reason })
                .collect(),
        }
    }
}

impl pb::ScoreResponse {
    /// The answer to the request numbered `sequence`.
    pub fn scored(sequence: u64, scored: infer::Scored) -> Self {
        Self {
            sequence,
            rows: scored.rows as u32,
            entity_ids: scored.entity_ids,
            models: scored.models.into_iter().map(Into::into).collect(),
            segments: scored.segments.into_iter().map(Into::into).collect(),
            error: None,
        }
    }
}

impl From<pb::Task> for Task {
    /// Unknown values read as binary classification, the default task.
    fn from(task: pb::Task) -> Self {
        match task {
            pb::Task::Regression => Task::Regression,
            pb::Task::Clustering => Task::Clustering,
            pb::Task::MulticlassClassification => Task::MulticlassClassification,
            _ => Task::BinaryClassification,
        }
    }
}

impl<'a> From<&'a pb::ModelScores> for ModelScoresView<'a> {
    /// How rules read a model's scores in a server's answer.
    fn from(m: &'a pb::ModelScores) -> Self {
        ModelScoresView {
            task: pb::Task::try_from(m.task).map_or(Task::BinaryClassification, Task::from),
            scores: &m.scores,
            cluster_ids: &m.cluster_ids,
            labels: &m.labels,
            version: m.version,
            canary_version: m.canary_version,
            canary_rows: &m.canary_rows,
        }
    }
}

impl From<(String, Column)> for pb::FeatureColumn {
    fn from((name, column): (String, Column)) -> Self {
        use pb::feature_column::Values;
        let missing_rows = column.missing_rows();
        let values = match column.values {
            ColumnValues::F32(values) => Values::F32(pb::FloatValues { values }),
            ColumnValues::F64(values) => Values::F64(pb::DoubleValues { values }),
            ColumnValues::I64(values) => Values::I64(pb::Int64Values { values }),
            ColumnValues::Bool(values) => Values::Bool(pb::BoolValues { values }),
            ColumnValues::Category(values) => Values::Category(pb::StringValues { values }),
        };
        Self {
            name,
            values: Some(values),
            missing_rows,
        }
    }
}

impl From<FeatureBatch> for pb::FeatureMatrix {
    fn from(batch: FeatureBatch) -> Self {
        Self {
            rows: batch.rows() as u32,
            columns: batch.into_columns().map(Into::into).collect(),
        }
    }
}

impl From<Task> for pb::Task {
    fn from(task: Task) -> Self {
        match task {
            Task::BinaryClassification => pb::Task::BinaryClassification,
            Task::MulticlassClassification => pb::Task::MulticlassClassification,
            Task::Regression => pb::Task::Regression,
            Task::Clustering => pb::Task::Clustering,
        }
    }
}

impl From<&FeatureSpec> for pb::FeatureSpec {
    fn from(spec: &FeatureSpec) -> Self {
        let (missing, impute_value) = match &spec.missing {
            MissingPolicy::Reject => ("reject".to_string(), String::new()),
            MissingPolicy::Impute(v) => ("impute".to_string(), v.to_string()),
        };
        Self {
            name: spec.name.clone(),
            dtype: spec.dtype.as_str().into(),
            min: spec.min,
            max: spec.max,
            categories: spec.categories.clone(),
            missing,
            impute_value,
            description: spec.description.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<&pb::FeatureSpec> for FeatureSpec {
    type Error = String;

    /// The inverse of the conversion above, for clients (the bulk job) that
    /// validate rows against a server's schema before sending them.
    fn try_from(spec: &pb::FeatureSpec) -> Result<Self, String> {
        let dtype = match spec.dtype.as_str() {
            "f32" => DType::F32,
            "f64" => DType::F64,
            "i64" => DType::I64,
            "bool" => DType::Bool,
            "category" => DType::Category,
            other => return Err(format!("feature `{}`: unknown dtype `{other}`", spec.name)),
        };
        let missing = match spec.missing.as_str() {
            "reject" => MissingPolicy::Reject,
            "impute" => {
                let text = spec.impute_value.as_str();
                let value = match dtype {
                    DType::Bool => ImputeValue::Bool(text.parse().map_err(|_| {
                        format!("feature `{}`: impute value is not a bool", spec.name)
                    })?),
                    DType::Category => ImputeValue::Text(text.to_string()),
                    DType::F32 | DType::F64 | DType::I64 => {
                        ImputeValue::Number(text.parse().map_err(|_| {
                            format!("feature `{}`: impute value is not a number", spec.name)
                        })?)
                    }
                };
                MissingPolicy::Impute(value)
            }
            other => {
                return Err(format!(
                    "feature `{}`: unknown missing policy `{other}`",
                    spec.name
                ))
            }
        };
        Ok(FeatureSpec {
            name: spec.name.clone(),
            description: (!spec.description.is_empty()).then(|| spec.description.clone()),
            dtype,
            min: spec.min,
            max: spec.max,
            categories: spec.categories.clone(),
            missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_specs_round_trip_through_the_wire_form() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("training/features.toml"),
        )
        .unwrap();
        #[derive(serde::Deserialize)]
        struct File {
            features: Vec<FeatureSpec>,
        }
        let file: File = toml::from_str(&text).unwrap();
        for spec in &file.features {
            let wire = pb::FeatureSpec::from(spec);
            assert_eq!(&FeatureSpec::try_from(&wire).unwrap(), spec);
        }
        let bad = pb::FeatureSpec {
            name: "x".into(),
            dtype: "f32".into(),
            missing: "drop".into(),
            ..Default::default()
        };
        assert!(FeatureSpec::try_from(&bad).unwrap_err().contains("`x`"));
    }
}
