//! Parsing at the edge: protobuf messages become domain types that cannot hold
//! an invalid shape (after zero-to-production's `TryFrom` pattern), and domain
//! state becomes protobuf for responses.

use std::collections::{BTreeMap, BTreeSet};

use super::pb;
use crate::{
    echo::echo,
    error::ApiError,
    features::{
        Column, ColumnValues, DType, FeatureBatch, FeatureSpec, ImputeValue, MissingPolicy,
    },
    repository::{ModelEntry, Phase, Repository, Task, VersionStatus},
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

/// Every model ListModels reports: the repository's, plus names that only
/// have versions in the gate or draining.
pub fn model_infos(repository: &Repository) -> Vec<pb::ModelInfo> {
    let transient = Transient::of(repository);
    let mut names: BTreeSet<&str> = repository.models().keys().map(String::as_str).collect();
    names.extend(transient.gate.iter().map(|(n, _, _)| n.as_str()));
    names.extend(transient.draining.iter().map(|(n, _)| n.as_str()));
    names
        .into_iter()
        .filter_map(|n| info_of(repository, n, &transient))
        .collect()
}

/// The tracker's view, read once per ListModels.
struct Transient {
    gate: Vec<(String, u64, Phase)>,
    draining: Vec<(String, u64)>,
}

impl Transient {
    fn of(repository: &Repository) -> Self {
        Self {
            gate: repository.tracker().in_gate(),
            draining: repository.tracker().draining(),
        }
    }
}

/// One model's versions as ListModels/GetModel report them: the snapshot's
/// versions, those still in the validation gate (LOADING, VALIDATING) and
/// those that left it but finish in-flight requests (DRAINING).
pub fn model_info(repository: &Repository, name: &str) -> Option<pb::ModelInfo> {
    info_of(repository, name, &Transient::of(repository))
}

fn info_of(repository: &Repository, name: &str, transient: &Transient) -> Option<pb::ModelInfo> {
    let empty = ModelEntry::default();
    let entry = repository.models().get(name);
    let gate: Vec<(u64, pb::VersionState)> = transient
        .gate
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, v, phase)| {
            let state = match phase {
                Phase::Loading => pb::VersionState::Loading,
                Phase::Validating => pb::VersionState::Validating,
            };
            (*v, state)
        })
        .collect();
    let draining: Vec<u64> = transient
        .draining
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .collect();
    if entry.is_none() && gate.is_empty() && draining.is_empty() {
        return None;
    }
    let entry = entry.unwrap_or(&empty);
    let mut versions: BTreeMap<u64, pb::ModelVersionInfo> = entry
        .versions
        .iter()
        .map(|(&version, status)| {
            let (state, reason, manifest) = match status {
                VersionStatus::Serving(m) => {
                    (pb::VersionState::Serving, String::new(), Some(&m.manifest))
                }
                VersionStatus::Retired { manifest } => (
                    pb::VersionState::Retired,
                    String::new(),
                    Some(manifest.as_ref()),
                ),
                VersionStatus::Failed { reason, manifest } => (
                    pb::VersionState::Failed,
                    reason.clone(),
                    manifest.as_deref(),
                ),
            };
            let mut info = pb::ModelVersionInfo {
                version,
                state: state.into(),
                reason,
                labels: entry.labels_of(version),
                ..Default::default()
            };
            if let Some(m) = manifest {
                info.format = m.format.as_str().into();
                info.task = pb::Task::from(m.task).into();
                info.sha256 = m.sha256.clone();
                info.features = m.features.iter().map(Into::into).collect();
                info.card_json = serde_json::to_string(&m.card).unwrap_or_default();
            }
            (version, info)
        })
        .collect();
    // A version being (re)loaded or draining is reported as such unless the
    // snapshot serves it (a reload of a serving version keeps serving until
    // the new copy passes; a replaced copy drains behind the serving one).
    let transient = gate.into_iter().chain(
        draining
            .into_iter()
            .map(|v| (v, pb::VersionState::Draining)),
    );
    for (version, state) in transient {
        let serving = matches!(
            entry.versions.get(&version),
            Some(VersionStatus::Serving(_))
        );
        if !serving {
            let info = versions
                .entry(version)
                .or_insert_with(|| pb::ModelVersionInfo {
                    version,
                    ..Default::default()
                });
            info.state = state.into();
        }
    }
    Some(pb::ModelInfo {
        name: name.into(),
        default_version: entry.default_version().map_or(0, |m| m.version()),
        versions: versions.into_values().collect(),
        labels: entry.routing.labels.clone().into_iter().collect(),
        loads_succeeded: entry.loads_succeeded,
        loads_failed: entry.loads_failed,
        canary_percent: entry.routing.canary().map_or(0.0, |(_, p)| p),
        label_warnings: entry
            .dangling_labels()
            .into_iter()
            .map(|(_, warning)| warning)
            .collect(),
    })
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
