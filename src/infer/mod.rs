//! The scoring core: one request, whatever front end it came through.
//!
//! [`Scorer::score`] resolves the models (versions, labels) and the segments
//! a request names, adds the models those segments read, holds queue room for
//! every version before a single value is converted, converts the request's
//! features (through [`Features`], the only thing a wire format supplies),
//! encodes them against each version's schema, splits rows between the
//! default and the canary version, runs them on the engine, merges the split
//! back in row order and evaluates the segments on the domain outputs. The
//! result carries its provenance: every version and sha256 that scored it.
//!
//! segscore.v1 (`Score`, `ScoreStream`), the Open Inference Protocol, the
//! embedded bulk job and the benchmarks call it; each front end only converts
//! its wire format to a [`Request`] and a [`Scored`] back.

mod plan;
pub mod segments;

use std::sync::Arc;

use tokio::time::Instant;

use self::plan::Admitted;
use crate::{
    drift::Rows,
    echo::echo,
    error::ApiError,
    features::{BatchError, FeatureBatch},
    metrics::Metrics,
    monitor::Monitor,
    repository::{LoadedModel, ModelOutput, SharedRepository},
    segments::{Membership, SharedSegments},
};

/// Above this many rows × segments, rules are evaluated on a blocking thread
/// so a whole-user-base request does not hold an async worker for long.
const INLINE_SEGMENT_CELLS: usize = 1 << 16;

/// A model as a request names it: a version, a label, or neither (the
/// default version, with its canary split when entity ids allow one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelRef {
    pub name: String,
    /// 0 = not given.
    pub version: u64,
    /// Empty = not given.
    pub label: String,
}

impl ModelRef {
    /// The default version of `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Default::default()
        }
    }
}

/// A request's features in their wire form. They are converted only after
/// every model has queue room for them: converting a huge request the queue
/// cannot take would spend seconds on work that is thrown away.
pub trait Features {
    /// The rows the request declares, read without converting anything. A
    /// wire format whose claim is not plausible returns 0 (nothing is held)
    /// and lets [`into_batch`](Self::into_batch) give the precise error.
    fn declared_rows(&self) -> Result<usize, ApiError>;
    /// The features as a batch; `first` is the first model resolved (none
    /// when only segments that read no model are asked for), for wire
    /// formats whose tensors are read against a model's inputs.
    fn into_batch(self, first: Option<&LoadedModel>) -> Result<FeatureBatch, ApiError>;
}

impl Features for FeatureBatch {
    fn declared_rows(&self) -> Result<usize, ApiError> {
        Ok(self.rows())
    }

    fn into_batch(self, _first: Option<&LoadedModel>) -> Result<FeatureBatch, ApiError> {
        Ok(self)
    }
}

/// One scoring request, in domain terms.
#[derive(Debug, Default)]
pub struct Request<F> {
    /// The models to score, in answer order; models that the segments read
    /// and that are not listed are added after them, at their default
    /// version.
    pub models: Vec<ModelRef>,
    /// Segments to evaluate, in answer order.
    pub segments: Vec<String>,
    /// One per row or none: they place rows in a canary split stably. They
    /// are personal data and never reach a log.
    pub entity_ids: Vec<String>,
    pub features: F,
}

/// A scored request: every model's outputs in row order, with the versions
/// that produced them, and each segment's membership.
pub struct Scored {
    pub rows: usize,
    /// The request's own, handed back.
    pub entity_ids: Vec<String>,
    /// In the request's order, then the models added for segments.
    pub models: Vec<ModelScores>,
    /// In the request's order.
    pub segments: Vec<SegmentMembership>,
}

/// One model's outputs over a request.
pub struct ModelScores {
    /// The version that scored every row not in `canary`.
    pub model: Arc<LoadedModel>,
    pub output: ModelOutput,
    pub canary: Option<CanaryScores>,
}

/// The canary version of a split request and the rows it scored.
pub struct CanaryScores {
    pub model: Arc<LoadedModel>,
    /// Ascending.
    pub rows: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct SegmentMembership {
    pub name: String,
    pub membership: Membership,
}

/// The core, shared by every front end of one process.
#[derive(Clone)]
pub struct Scorer {
    repository: SharedRepository,
    /// The compiled rules file, swapped on reloads.
    segments: SharedSegments,
    /// Largest accepted request, in rows.
    max_rows: usize,
    /// Segment membership counters (None without --metrics-addr).
    metrics: Option<Arc<Metrics>>,
    /// Drift and segment windows (None: nothing is counted).
    monitor: Option<Arc<Monitor>>,
}

impl Scorer {
    pub fn new(
        repository: SharedRepository,
        segments: SharedSegments,
        max_rows: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            repository,
            segments,
            max_rows,
            metrics,
            monitor: None,
        }
    }

    /// Feeds every scored request to `monitor` (drift, segment windows).
    pub fn with_monitor(mut self, monitor: Arc<Monitor>) -> Self {
        self.monitor = Some(monitor);
        self
    }

    pub fn monitor(&self) -> Option<&Arc<Monitor>> {
        self.monitor.as_ref()
    }

    pub fn repository(&self) -> &SharedRepository {
        &self.repository
    }

    pub fn segments(&self) -> &SharedSegments {
        &self.segments
    }

    /// Largest accepted request, in rows.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Scores one request end to end; chunks still queued at `deadline` are
    /// dropped unscored. Nothing is queued unless every model and segment
    /// resolves and every version has room for the rows.
    pub async fn score<F: Features>(
        &self,
        request: Request<F>,
        deadline: Option<Instant>,
    ) -> Result<Scored, ApiError> {
        let Request {
            models,
            segments: names,
            entity_ids,
            features,
        } = request;
        let started = std::time::Instant::now();
        if models.is_empty() && names.is_empty() {
            return Err(ApiError::InvalidArgument(
                "the request names no models (set `models`)".into(),
            ));
        }
        // Segments resolve first: a bad name changes nothing and costs nothing.
        let segments = self.segments.load_full();
        let models = segments::with_models_they_read(&segments, &names, models)?;
        let declared = features.declared_rows()?;
        if declared > self.max_rows {
            return Err(BatchError::TooManyRows {
                rows: declared,
                limit: self.max_rows,
            }
            .into());
        }
        if !entity_ids.is_empty() && entity_ids.len() != declared {
            return Err(ApiError::InvalidArgument(format!(
                "{} entity_ids for {declared} rows: send one id per row or none",
                entity_ids.len()
            )));
        }
        let admitted = self.admit(&models, declared, &entity_ids)?;
        // From here on the request counts for each version it reached, as a
        // failure unless it gets to the end (an early return or a caller
        // that went away drops the guard).
        let outcome = Outcome {
            versions: admitted.iter().flat_map(Admitted::versions).collect(),
            started,
            ok: false,
        };
        // Every model has queue room for the request: only now are its rows
        // converted and encoded (the expensive part of a huge request).
        let batch = features.into_batch(admitted.first().map(Admitted::primary))?;
        let rows = batch.rows();
        if rows != declared {
            return Err(ApiError::InvalidArgument(format!(
                "the feature columns hold {rows} rows, not the {declared} declared"
            )));
        }
        let planned = admitted
            .into_iter()
            .map(|a| a.encode(&batch))
            .collect::<Result<Vec<_>, _>>()?;
        let runs = planned.into_iter().map(|plan| plan.run(rows, deadline));
        let scores = futures::future::try_join_all(runs).await?;
        let (scores, memberships, batch) = if names.is_empty() {
            (scores, Vec::new(), batch)
        } else if rows.saturating_mul(names.len()) <= INLINE_SEGMENT_CELLS {
            let memberships = segments::evaluate(&segments, &names, &batch, &scores);
            (scores, memberships, batch)
        } else {
            tokio::task::spawn_blocking(move || {
                let memberships = segments::evaluate(&segments, &names, &batch, &scores);
                (scores, memberships, batch)
            })
            .await
            .map_err(|e| ApiError::Internal(format!("segment evaluation task: {e}")))?
        };
        if let Some(metrics) = &self.metrics {
            for m in &memberships {
                metrics.segment(
                    &m.name,
                    m.membership.member_rows.len(),
                    m.membership.errors.len(),
                );
            }
        }
        if let Some(monitor) = &self.monitor {
            observe(monitor, &batch, &scores, &memberships, &entity_ids);
        }
        outcome.succeeded();
        Ok(Scored {
            rows,
            entity_ids,
            models: scores,
            segments: memberships,
        })
    }

    /// Resolves every model and holds queue room for its rows, refusing the
    /// request before anything is converted when one cannot take them.
    fn admit(
        &self,
        models: &[ModelRef],
        rows: usize,
        entity_ids: &[String],
    ) -> Result<Vec<Admitted>, ApiError> {
        let repository = self.repository.load();
        let mut admitted = Vec::with_capacity(models.len());
        for (i, model) in models.iter().enumerate() {
            // Two versions of one model is a comparison; the same reference
            // twice only doubles the work and the answer. (Models added for
            // segments are never duplicates.)
            if models[..i].contains(model) {
                return Err(ApiError::InvalidArgument(format!(
                    "model `{}` is listed twice with the same version and label",
                    echo(&model.name)
                )));
            }
            if model.version != 0 && !model.label.is_empty() {
                return Err(ApiError::InvalidArgument(format!(
                    "model `{}`: set a version or a label, not both",
                    echo(&model.name)
                )));
            }
            let route = repository.route(&model.name, model.version, &model.label)?;
            admitted.push(Admitted::new(route, rows, entity_ids)?);
        }
        Ok(admitted)
    }
}

/// Counts a scored request in the monitor: each version's rows against its
/// reference (the canary's rows against the canary's), and each segment's
/// membership in its window. The one place every front end's rows pass.
fn observe(
    monitor: &Monitor,
    batch: &FeatureBatch,
    models: &[ModelScores],
    memberships: &[SegmentMembership],
    entity_ids: &[String],
) {
    if monitor.drift() {
        for m in models {
            let scores = &m.output.scores;
            match &m.canary {
                None => {
                    if let Some(d) = m.model.drift() {
                        d.observe(batch, Rows::All, scores);
                    }
                }
                Some(canary) => {
                    if let Some(d) = m.model.drift() {
                        d.observe(batch, Rows::Except(&canary.rows), scores);
                    }
                    if let Some(d) = canary.model.drift() {
                        d.observe(batch, Rows::Only(&canary.rows), scores);
                    }
                }
            }
        }
    }
    for s in memberships {
        monitor
            .segments
            .observe(&s.name, &s.membership, batch.rows(), entity_ids);
    }
}

/// Records one request's outcome in the statistics of every version it
/// reached (Triton's ModelStatistics `success` / `fail`) when dropped.
struct Outcome {
    versions: Vec<Arc<LoadedModel>>,
    started: std::time::Instant,
    ok: bool,
}

impl Outcome {
    fn succeeded(mut self) {
        self.ok = true;
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        for version in &self.versions {
            version.stats().request(self.ok, elapsed);
        }
    }
}
