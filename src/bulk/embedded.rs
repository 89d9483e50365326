//! Embedded mode: the job loads the repository itself and scores chunks
//! through its own scoring core, `--in-flight` chunks at once.

use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{
    chunk::{Flow, Prepared},
    plan::{with_models, Selected},
    select::{self, Candidates},
    write::ModelId,
};
use crate::{
    config::ScoreArgs,
    infer,
    repository::{Repository, Task},
    segments::Segments,
};

/// A job's own scoring core and the models it scores, at the versions
/// chosen for the job, in output order.
pub(super) struct Embedded {
    scorer: infer::Scorer,
    models: Vec<infer::ModelRef>,
}

/// Loads the repository and the rules, and chooses each model's version
/// (`--models`, plus the models the `--segments` rules read; every model
/// when `--models` is empty).
pub(super) async fn open(
    args: &ScoreArgs,
    choice: Vec<(String, u64)>,
    segment_names: &[String],
) -> anyhow::Result<(Embedded, Vec<Selected>)> {
    let engine = args.engine.engine_config();
    let root = args.model_repository.clone();
    let repository = tokio::task::spawn_blocking(move || Repository::load(&root, &engine))
        .await?
        .with_context(|| format!("reading {}", args.model_repository.display()))?;
    let segments = if segment_names.is_empty() {
        Segments::default()
    } else {
        crate::segments::reload::load(&args.segments_file, &repository)?
    };
    let needed: Vec<String> = infer::segments::rules(&segments, segment_names)
        .with_context(|| format!("the segments file {}", args.segments_file.display()))?
        .into_iter()
        .flat_map(|rule| rule.models().iter().cloned())
        .collect();
    // No --models: every model in the repository, not only those that
    // load (a model that fails must fail the job, not lose its column).
    let choice = if choice.is_empty() {
        repository.models().keys().map(|n| (n.clone(), 0)).collect()
    } else {
        with_models(choice, &needed)
    };
    let (refs, selected) = choose(args, &repository, choice)?;
    // A job's own core: its repository and rules are read once, and its
    // chunk size (--batch-rows) is the only row limit.
    let scorer = infer::Scorer::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(repository)),
        Arc::new(arc_swap::ArcSwap::from_pointee(segments)),
        usize::MAX,
        None,
    );
    let embedded = Embedded {
        scorer,
        models: refs,
    };
    Ok((embedded, selected))
}

/// The version of each chosen model (see [`select::choose`]), pinned.
fn choose(
    args: &ScoreArgs,
    repository: &Repository,
    choice: Vec<(String, u64)>,
) -> anyhow::Result<(Vec<infer::ModelRef>, Vec<Selected>)> {
    let requests = choice
        .into_iter()
        .map(|(name, version)| {
            let entry = repository.models().get(&name).with_context(|| {
                format!(
                    "model `{name}` not found in {} (it has: {})",
                    args.model_repository.display(),
                    repository
                        .models()
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            Ok((name, version, Candidates::from_entry(entry)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut refs = Vec::new();
    let mut selected = Vec::new();
    for chosen in select::choose(&requests, args.allow_fallback)? {
        let model = repository.resolve(&chosen.name, chosen.version, "")?;
        selected.push(Selected {
            id: ModelId {
                name: model.name().to_string(),
                version: model.version(),
                sha256: model.manifest.sha256.clone(),
            },
            schema: model.schema.clone(),
            clustering: model.manifest.task == Task::Clustering,
            fallback: chosen.fallback,
        });
        refs.push(infer::ModelRef {
            name: model.name().to_string(),
            version: model.version(),
            label: String::new(),
        });
    }
    Ok((refs, selected))
}

impl Embedded {
    /// Scores every prepared chunk through the core, `in_flight` at once, and
    /// hands them to the writer in input order.
    pub async fn score(
        &self,
        segment_names: &[String],
        prepared: &mut mpsc::Receiver<Prepared>,
        flow: &Flow,
        in_flight: usize,
    ) -> anyhow::Result<()> {
        let (scorer, models) = (&self.scorer, &self.models);
        let scored = futures::stream::poll_fn(|cx| prepared.poll_recv(cx))
            .then(|p| async move {
                // Closed only when the writer failed; the send below then fails
                // and ends the loop.
                flow.room().await;
                p
            })
            .map(|mut p| async move {
                let Some(batch) = p.batch.take() else {
                    return anyhow::Ok(Err(p));
                };
                let request = infer::Request {
                    models: models.to_vec(),
                    segments: segment_names.to_vec(),
                    entity_ids: Vec::new(),
                    features: batch,
                };
                let scored = scorer.score(request, None).await?;
                let scores = scored.models.into_iter().map(|m| m.output).collect();
                let memberships = scored.segments.into_iter().map(|s| s.membership).collect();
                anyhow::Ok(Ok(p.scored(scores, memberships)))
            })
            .buffered(in_flight);
        let mut scored = std::pin::pin!(scored);
        while let Some(s) = scored.next().await {
            let sent = match s? {
                Ok(scored) => flow.done.send(scored).is_ok(),
                Err(empty) => flow.empty(empty, models.len(), segment_names.len()),
            };
            if !sent {
                break;
            }
        }
        Ok(())
    }
}
