//! What a job scores and writes: the models chosen (`--models`, plus the
//! models the `--segments` rules read), one dtype per input column across
//! them, and the output's columns.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{bail, Context};

use super::{
    select::Fallback,
    write::{ModelId, OutputColumn, OutputKind},
};
use crate::features::{DType, FeatureSchema, FeatureSpec, MissingPolicy};

/// A model chosen for the job, with the schema rows are checked against.
pub(super) struct Selected {
    pub id: ModelId,
    pub schema: FeatureSchema,
    /// A clustering model: its output adds a cluster id column.
    pub clustering: bool,
    /// Scored with another version than the one asked for.
    pub fallback: Option<Fallback>,
}

/// A model selection from `--models`: `name` or `name:version`.
pub(super) fn parse_model(spec: &str) -> anyhow::Result<(String, u64)> {
    match spec.split_once(':') {
        None => Ok((spec.trim().to_string(), 0)),
        Some((name, version)) => Ok((
            name.trim().to_string(),
            version
                .trim()
                .parse()
                .with_context(|| format!("--models {spec}: version must be a number"))?,
        )),
    }
}

/// `--models` as (name, version) pairs; blank entries are ignored.
pub(super) fn parse_models(specs: &[String]) -> anyhow::Result<Vec<(String, u64)>> {
    specs
        .iter()
        .filter(|m| !m.trim().is_empty())
        .map(|m| parse_model(m))
        .collect()
}

/// `--segments`, trimmed, blanks dropped, in output column order.
pub(super) fn segment_names(specs: &[String]) -> Vec<String> {
    specs
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `choice` plus, at their default versions, the models segment rules read
/// that it does not name: they are scored, and written, like the others.
pub(super) fn with_models(mut choice: Vec<(String, u64)>, needed: &[String]) -> Vec<(String, u64)> {
    for name in needed {
        if !choice.iter().any(|(n, _)| n == name) {
            choice.push((name.clone(), 0));
        }
    }
    choice
}

/// One dtype per feature name across the selected models; a conflict means
/// one input column cannot feed both models.
pub(super) fn union_dtypes<'a>(
    specs: impl Iterator<Item = &'a FeatureSpec>,
) -> anyhow::Result<BTreeMap<String, DType>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        if let Some(prev) = out.insert(spec.name.clone(), spec.dtype) {
            if prev != spec.dtype {
                bail!(
                    "feature `{}` is {} in one model and {} in another",
                    spec.name,
                    prev,
                    spec.dtype
                );
            }
        }
    }
    Ok(out)
}

/// The output's columns: the id, one score column per model (and a cluster
/// column for clustering models), then one membership column per segment.
pub(super) fn output_columns(
    id_column: &str,
    selected: &[Selected],
    segment_names: &[String],
) -> Vec<OutputColumn> {
    let mut columns = vec![OutputColumn {
        name: id_column.to_string(),
        kind: OutputKind::Id,
    }];
    for (i, s) in selected.iter().enumerate() {
        columns.push(OutputColumn {
            name: s.id.name.clone(),
            kind: OutputKind::Score { model: i },
        });
        if s.clustering {
            columns.push(OutputColumn {
                name: format!("{}_cluster", s.id.name),
                kind: OutputKind::Cluster { model: i },
            });
        }
    }
    columns.extend(
        segment_names
            .iter()
            .enumerate()
            .map(|(i, name)| OutputColumn {
                name: format!("{}{name}", crate::segments::stats::COLUMN_PREFIX),
                kind: OutputKind::Segment { segment: i },
            }),
    );
    columns
}

/// A column a model rejects when missing must be in the file: that is the
/// whole file's problem, not a row's.
pub(super) fn check_required_columns(
    input: &Path,
    present: &[String],
    selected: &[Selected],
) -> anyhow::Result<()> {
    let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    for s in selected {
        for spec in s.schema.specs() {
            if !present.contains(spec.name.as_str())
                && matches!(spec.missing, MissingPolicy::Reject)
            {
                bail!(
                    "{}: no column `{}`, which model `{}` requires (missing = \"reject\")",
                    input.display(),
                    spec.name,
                    s.id.name
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::ImputeValue;

    fn spec(name: &str, dtype: DType, missing: MissingPolicy) -> FeatureSpec {
        FeatureSpec {
            name: name.into(),
            description: None,
            dtype,
            min: None,
            max: None,
            categories: Vec::new(),
            missing,
        }
    }

    fn selected(name: &str, clustering: bool, specs: Vec<FeatureSpec>) -> Selected {
        Selected {
            id: ModelId {
                name: name.into(),
                version: 1,
                sha256: "00".into(),
            },
            schema: FeatureSchema::new(specs).unwrap(),
            clustering,
            fallback: None,
        }
    }

    #[test]
    fn models_are_names_with_an_optional_version_and_blanks_are_skipped() {
        let specs = ["churn", " ltv:2 ", "  "].map(String::from);
        assert_eq!(
            parse_models(&specs).unwrap(),
            [("churn".to_string(), 0), ("ltv".to_string(), 2)]
        );
        let err = parse_models(&["ltv:two".to_string()]).unwrap_err();
        assert!(
            err.to_string().contains("version must be a number"),
            "{err}"
        );
        assert_eq!(
            segment_names(&[" a ".into(), "".into(), "b".into()]),
            ["a", "b"]
        );
    }

    #[test]
    fn models_a_segment_reads_are_added_once_at_their_default_version() {
        let choice = vec![("churn".to_string(), 3)];
        let needed = ["churn", "ltv", "ltv"].map(String::from);
        assert_eq!(
            with_models(choice, &needed),
            [("churn".to_string(), 3), ("ltv".to_string(), 0)]
        );
    }

    #[test]
    fn one_column_cannot_feed_two_models_different_dtypes() {
        let reject = || MissingPolicy::Reject;
        let a = [spec("recency", DType::F32, reject())];
        let b = [spec("recency", DType::I64, reject())];
        let err = union_dtypes(a.iter().chain(&b)).unwrap_err();
        assert!(err.to_string().contains("feature `recency` is"), "{err}");
        let same = union_dtypes(a.iter().chain(&a)).unwrap();
        assert_eq!(
            same.into_iter().collect::<Vec<_>>(),
            [("recency".to_string(), DType::F32)]
        );
    }

    #[test]
    fn output_columns_are_the_id_then_each_model_then_each_segment() {
        let models = [
            selected(
                "churn",
                false,
                vec![spec("x", DType::F32, MissingPolicy::Reject)],
            ),
            selected(
                "clusters",
                true,
                vec![spec("x", DType::F32, MissingPolicy::Reject)],
            ),
        ];
        let columns = output_columns("customer_id", &models, &["vip".to_string()]);
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let prefix = crate::segments::stats::COLUMN_PREFIX;
        assert_eq!(
            names,
            [
                "customer_id",
                "churn",
                "clusters",
                "clusters_cluster",
                &format!("{prefix}vip")
            ]
        );
        assert_eq!(columns[3].kind, OutputKind::Cluster { model: 1 });
        assert_eq!(columns[4].kind, OutputKind::Segment { segment: 0 });
    }

    #[test]
    fn only_a_missing_column_a_model_rejects_fails_the_file() {
        let models = [selected(
            "churn",
            false,
            vec![
                spec("recency", DType::F32, MissingPolicy::Reject),
                spec(
                    "region",
                    DType::F32,
                    MissingPolicy::Impute(ImputeValue::Number(0.0)),
                ),
            ],
        )];
        let input = Path::new("in.csv");
        check_required_columns(input, &["recency".to_string()], &models).unwrap();
        let err = check_required_columns(input, &["region".to_string()], &models).unwrap_err();
        assert!(
            err.to_string()
                .contains("no column `recency`, which model `churn` requires"),
            "{err}"
        );
    }
}
