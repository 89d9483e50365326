//! Segments in a request: which models their rules read, and their
//! membership over the request's features and the domain outputs of those
//! models. The same code decides membership for the server, the embedded
//! bulk job and the benchmarks.

use std::collections::HashMap;

use super::{ModelRef, ModelScores, SegmentMembership};
use crate::{
    echo::echo,
    error::ApiError,
    features::FeatureBatch,
    segments::{CompiledRule, Membership, ModelScoresView, RuleInput, Segments},
};

/// The ready rules of `names`, in order: an unknown, refused or repeated
/// name is the request's error.
pub fn rules<'s>(
    segments: &'s Segments,
    names: &[String],
) -> Result<Vec<&'s CompiledRule>, ApiError> {
    let mut rules = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(ApiError::InvalidArgument(format!(
                "segment `{}` is listed twice",
                echo(name)
            )));
        }
        let segment = segments.get(name).ok_or_else(|| ApiError::UnknownSegment {
            name: name.clone(),
            known: match segments.names() {
                names if names.is_empty() => {
                    "none: the server has no segments file (--segments)".into()
                }
                names => names.join(", "),
            },
        })?;
        let rule = segment
            .state
            .as_ref()
            .map_err(|reason| ApiError::SegmentFailed {
                name: name.clone(),
                reason: reason.clone(),
            })?;
        rules.push(rule);
    }
    Ok(rules)
}

/// `models` plus, at their default versions, the models that the rules of
/// `names` read and `models` does not name. A model the caller listed is
/// read as the caller asked for it (its first listing).
pub fn with_models_they_read(
    segments: &Segments,
    names: &[String],
    mut models: Vec<ModelRef>,
) -> Result<Vec<ModelRef>, ApiError> {
    for rule in rules(segments, names)? {
        for model in rule.models() {
            if !models.iter().any(|m| m.name == *model) {
                models.push(ModelRef::named(model.clone()));
            }
        }
    }
    Ok(models)
}

/// How rules read one model's domain outputs.
pub fn view(scores: &ModelScores) -> ModelScoresView<'_> {
    ModelScoresView {
        task: scores.model.manifest.task,
        scores: &scores.output.scores,
        cluster_ids: &scores.output.cluster_ids,
        labels: &scores.output.labels,
        version: scores.model.version(),
        canary_version: scores.canary.as_ref().map_or(0, |c| c.model.version()),
        canary_rows: scores.canary.as_ref().map_or(&[], |c| &c.rows),
    }
}

/// Membership of each of `names` over `batch` and the scores in `models`
/// (a model listed twice is read at its first listing). Names that are not
/// ready segments (checked by [`rules`] before anything ran) are empty.
pub fn evaluate(
    segments: &Segments,
    names: &[String],
    batch: &FeatureBatch,
    models: &[ModelScores],
) -> Vec<SegmentMembership> {
    let mut scores = HashMap::new();
    for m in models {
        scores.entry(m.model.name()).or_insert_with(|| view(m));
    }
    let input = RuleInput { batch, scores };
    let mut evaluation = segments.evaluator(&input);
    names
        .iter()
        .map(|name| SegmentMembership {
            name: name.clone(),
            membership: match segments.get(name).map(|s| &s.state) {
                Some(Ok(rule)) => evaluation.evaluate(rule),
                _ => Membership::default(),
            },
        })
        .collect()
}
