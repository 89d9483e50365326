//! segscore.v1 `Scoring`: Score, ScoreStream, ListModels, GetModel.
//!
//! A request is parsed and validated for every requested model before any work
//! is queued, so a bad request changes nothing and costs no model time.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use ndarray::Array2;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info_span, Instrument};

use super::{
    convert::{model_info, model_infos},
    gate::RequestGate,
    pb,
};
use crate::{
    echo::echo,
    engine::Reservation,
    error::ApiError,
    features::{BatchError, FeatureBatch},
    metrics::Metrics,
    repository::{routing, LoadedModel, ModelOutput, Route, SharedRepository, Task},
    segments::{ModelScoresView, RuleInput, Segments, SharedSegments},
};

/// Above this many rows × segments, rules are evaluated on a blocking thread
/// so a whole-user-base request does not hold an async worker for long.
const INLINE_SEGMENT_CELLS: usize = 1 << 16;

/// Per-request limits that protect the machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request, in rows; larger ones get RESOURCE_EXHAUSTED.
    pub max_rows_per_request: usize,
    /// ScoreStream chunks scored concurrently per stream; also bounds the
    /// memory one stream can hold.
    pub stream_in_flight: usize,
}

#[derive(Clone)]
pub struct ScoringService {
    repository: SharedRepository,
    /// The compiled rules file, swapped on reloads.
    segments: SharedSegments,
    limits: Limits,
    gate: Arc<RequestGate>,
    /// Segment membership counters (None without --metrics-addr).
    metrics: Option<Arc<Metrics>>,
    /// Turns true when the server starts draining: open ScoreStreams stop
    /// taking chunks, finish the ones in flight and end with UNAVAILABLE, so
    /// graceful shutdown does not wait on a client that never hangs up.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

/// What a ScoreStream cut short by shutdown ends with: UNAVAILABLE, the code
/// gRPC clients retry on, and where to pick up.
const STREAM_DRAINED: &str = "the server is shutting down: every chunk sent before this was \
                              answered; resume from the next sequence number on another replica";

/// The (model, version) pairs that scored a response, for metrics.
fn scored_by(resp: &pb::ScoreResponse) -> impl Iterator<Item = (&str, u64)> {
    resp.models.iter().flat_map(|m| {
        let canary = (m.canary_version != 0).then_some((m.name.as_str(), m.canary_version));
        std::iter::once((m.name.as_str(), m.version)).chain(canary)
    })
}

impl ScoringService {
    pub fn new(
        repository: SharedRepository,
        segments: SharedSegments,
        limits: Limits,
        gate: Arc<RequestGate>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            repository,
            segments,
            limits,
            gate,
            metrics,
            stopping: None,
        }
    }

    /// Ends open ScoreStreams when `stopping` turns true (see the field).
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// Scores one request end to end; chunks still queued at `deadline` are
    /// dropped unscored.
    pub async fn score_request(
        &self,
        req: pb::ScoreRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::ScoreResponse, ApiError> {
        if req.models.is_empty() && req.segments.is_empty() {
            return Err(ApiError::InvalidArgument(
                "the request names no models (set `models`)".into(),
            ));
        }
        // Segments resolve first: a bad name changes nothing and costs nothing.
        let segments = self.segments.load_full();
        let mut extra_models: Vec<pb::ModelRef> = Vec::new();
        for (i, name) in req.segments.iter().enumerate() {
            if req.segments[..i].contains(name) {
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
            // A model the caller listed is read as the caller asked for it
            // (its first listing); any other is added at its default version.
            for model in rule.models() {
                let listed = req
                    .models
                    .iter()
                    .chain(&extra_models)
                    .any(|m| m.name == *model);
                if !listed {
                    extra_models.push(pb::ModelRef {
                        name: model.clone(),
                        ..Default::default()
                    });
                }
            }
        }
        let matrix = req
            .features
            .ok_or_else(|| ApiError::InvalidArgument("the request has no `features`".into()))?;
        let declared = matrix
            .columns
            .first()
            .map_or(matrix.rows as usize, |c| c.len().max(matrix.rows as usize));
        let limit = self.limits.max_rows_per_request;
        if declared > limit {
            return Err(BatchError::TooManyRows {
                rows: declared,
                limit,
            }
            .into());
        }
        if !req.entity_ids.is_empty() && req.entity_ids.len() != declared {
            return Err(ApiError::InvalidArgument(format!(
                "{} entity_ids for {declared} rows: send one id per row or none",
                req.entity_ids.len()
            )));
        }
        let mut admitted = Vec::with_capacity(req.models.len() + extra_models.len());
        for (i, model_ref) in req.models.iter().chain(&extra_models).enumerate() {
            // Two versions of one model is a comparison; the same reference
            // twice only doubles the work and the answer. (Models added for
            // segments come after the caller's and are never duplicates.)
            if req
                .models
                .get(..i)
                .is_some_and(|earlier| earlier.contains(model_ref))
            {
                return Err(ApiError::InvalidArgument(format!(
                    "model `{}` is listed twice with the same version and label",
                    echo(&model_ref.name)
                )));
            }
            if model_ref.version != 0 && !model_ref.label.is_empty() {
                return Err(ApiError::InvalidArgument(format!(
                    "model `{}`: set a version or a label, not both",
                    echo(&model_ref.name)
                )));
            }
            let route = self.repository.load().route(
                &model_ref.name,
                model_ref.version,
                &model_ref.label,
            )?;
            admitted.push(Admitted::new(route, declared, &req.entity_ids)?);
        }
        // Every model has queue room for the request: only now are its rows
        // converted and encoded (the expensive part of a huge request).
        let batch = FeatureBatch::try_from(matrix)?;
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
        let models = futures::future::try_join_all(runs).await?;
        let (models, memberships) = if req.segments.is_empty() {
            (models, Vec::new())
        } else if rows.saturating_mul(req.segments.len()) <= INLINE_SEGMENT_CELLS {
            let memberships = evaluate_segments(&segments, &req.segments, &batch, &models);
            (models, memberships)
        } else {
            let names = req.segments.clone();
            tokio::task::spawn_blocking(move || {
                let memberships = evaluate_segments(&segments, &names, &batch, &models);
                (models, memberships)
            })
            .await
            .map_err(|e| ApiError::Internal(format!("segment evaluation task: {e}")))?
        };
        if let Some(metrics) = &self.metrics {
            for m in &memberships {
                metrics.segment(&m.name, m.member_rows.len(), m.errors.len());
            }
        }
        Ok(pb::ScoreResponse {
            sequence: req.sequence,
            entity_ids: req.entity_ids,
            rows: rows as u32,
            models,
            segments: memberships,
            error: None,
        })
    }
}

/// Membership of each named (ready) segment over the request's features and
/// the scores in `models` (each model's first entry).
fn evaluate_segments(
    segments: &Segments,
    names: &[String],
    batch: &FeatureBatch,
    models: &[pb::ModelScores],
) -> Vec<pb::SegmentMembership> {
    let mut scores = std::collections::HashMap::new();
    for m in models {
        let task = match pb::Task::try_from(m.task) {
            Ok(pb::Task::Regression) => Task::Regression,
            Ok(pb::Task::Clustering) => Task::Clustering,
            Ok(pb::Task::MulticlassClassification) => Task::MulticlassClassification,
            _ => Task::BinaryClassification,
        };
        scores.entry(m.name.as_str()).or_insert(ModelScoresView {
            task,
            scores: &m.scores,
            cluster_ids: &m.cluster_ids,
            labels: &m.labels,
            version: m.version,
            canary_version: m.canary_version,
            canary_rows: &m.canary_rows,
        });
    }
    let input = RuleInput { batch, scores };
    let mut evaluation = segments.evaluator(&input);
    names
        .iter()
        .filter_map(|name| {
            let rule = segments.get(name)?.state.as_ref().ok()?;
            let membership = evaluation.evaluate(rule);
            Some(pb::SegmentMembership {
                name: name.clone(),
                member_rows: membership.member_rows,
                errors: membership
                    .errors
                    .into_iter()
                    .map(|(row, reason)| pb::RowError { row, reason })
                    .collect(),
            })
        })
        .collect()
}

/// One model's share of a request, admitted (queue room held for its chunks)
/// before anything is converted: every row on one version, or split between
/// the default and the canary version by entity id.
struct Admitted {
    primary: Arc<LoadedModel>,
    /// The primary's rows when the request is split; `None` means all.
    primary_rows: Option<Vec<usize>>,
    primary_room: Reservation,
    canary: Option<(Arc<LoadedModel>, Vec<usize>, Reservation)>,
}

impl Admitted {
    fn new(route: Route, rows: usize, entity_ids: &[String]) -> Result<Self, ApiError> {
        let primary = route.primary;
        // Rows without entity ids cannot be assigned stably: no split.
        let split =
            route
                .canary
                .filter(|_| !entity_ids.is_empty())
                .and_then(|(canary, percent)| {
                    let (canary_rows, primary_rows): (Vec<usize>, Vec<usize>) = (0..rows)
                        .partition(|&r| {
                            routing::in_canary(primary.name(), &entity_ids[r], percent)
                        });
                    (!canary_rows.is_empty()).then_some((canary, canary_rows, primary_rows))
                });
        let Some((canary, canary_rows, primary_rows)) = split else {
            let primary_room = primary
                .admit(rows)
                .map_err(|e| ApiError::score(&primary, e))?;
            return Ok(Self {
                primary,
                primary_rows: None,
                primary_room,
                canary: None,
            });
        };
        let primary_room = primary
            .admit(primary_rows.len())
            .map_err(|e| ApiError::score(&primary, e))?;
        let canary_room = canary
            .admit(canary_rows.len())
            .map_err(|e| ApiError::score(&canary, e))?;
        Ok(Self {
            primary,
            primary_rows: Some(primary_rows),
            primary_room,
            canary: Some((canary, canary_rows, canary_room)),
        })
    }

    /// Encodes and checks the admitted rows for each version.
    fn encode(self, batch: &FeatureBatch) -> Result<Planned, ApiError> {
        let primary = self.primary;
        let primary_chunks = match &self.primary_rows {
            None => primary.encode(batch),
            Some(rows) => primary.encode_rows(batch, rows),
        }
        .map_err(|e| ApiError::feature(&primary, e))?;
        let canary = match self.canary {
            None => None,
            Some((model, rows, room)) => {
                let chunks = model
                    .encode_rows(batch, &rows)
                    .map_err(|e| ApiError::feature(&model, e))?;
                Some(CanaryShare {
                    model,
                    rows,
                    room,
                    chunks,
                })
            }
        };
        Ok(Planned {
            primary,
            primary_room: self.primary_room,
            primary_chunks,
            canary,
        })
    }
}

/// One model's share of a request, admitted, encoded and checked, ready to
/// run.
struct Planned {
    primary: Arc<LoadedModel>,
    primary_room: Reservation,
    primary_chunks: Vec<Array2<f32>>,
    canary: Option<CanaryShare>,
}

/// The canary version, its rows (ascending), their queue room and encoded
/// chunks.
struct CanaryShare {
    model: Arc<LoadedModel>,
    rows: Vec<usize>,
    room: Reservation,
    chunks: Vec<Array2<f32>>,
}

impl Planned {
    /// Scores the plan and puts every row's score back at its index.
    async fn run(
        self,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<pb::ModelScores, ApiError> {
        let primary = &self.primary;
        let primary_run = async {
            primary
                .run_admitted(self.primary_room, self.primary_chunks, deadline)
                .await
                .map_err(|e| ApiError::score(primary, e))
        };
        let mut out = pb::ModelScores {
            name: primary.name().into(),
            version: primary.version(),
            sha256: primary.manifest.sha256.clone(),
            task: pb::Task::from(primary.manifest.task).into(),
            ..Default::default()
        };
        let Some(CanaryShare {
            model: canary,
            rows: canary_rows,
            room: canary_room,
            chunks: canary_chunks,
        }) = self.canary
        else {
            let output = primary_run.await?;
            out.scores = output.scores;
            out.cluster_ids = output.cluster_ids;
            set_classes(&mut out, primary, output.probabilities, output.labels);
            return Ok(out);
        };
        let canary_run = async {
            canary
                .run_admitted(canary_room, canary_chunks, deadline)
                .await
                .map_err(|e| ApiError::score(&canary, e))
        };
        let (primary_out, canary_out) = futures::try_join!(primary_run, canary_run)?;
        let merged = merge_split(rows, &canary_rows, primary_out, canary_out);
        out.scores = merged.scores;
        out.cluster_ids = merged.cluster_ids;
        set_classes(&mut out, primary, merged.probabilities, merged.labels);
        out.canary_version = canary.version();
        out.canary_sha256 = canary.manifest.sha256.clone();
        out.canary_rows = canary_rows.iter().map(|&r| r as u32).collect();
        Ok(out)
    }
}

/// A classifier with declared classes also answers with every class's
/// probability and the predicted label; other models leave these empty, so
/// their responses are unchanged.
fn set_classes(
    out: &mut pb::ModelScores,
    model: &LoadedModel,
    probabilities: Vec<f32>,
    labels: Vec<String>,
) {
    if !labels.is_empty() {
        out.classes = model.manifest.classes.clone();
        out.probabilities = probabilities;
        out.labels = labels;
    }
}

/// Puts a split request's outputs back in row order: `canary_rows`
/// (ascending) came from `canary`, every other row, in order, from `primary`.
fn merge_split(
    rows: usize,
    canary_rows: &[usize],
    primary: ModelOutput,
    canary: ModelOutput,
) -> ModelOutput {
    let clustering = !primary.cluster_ids.is_empty() || !canary.cluster_ids.is_empty();
    // Class outputs survive the merge only when both versions have the same
    // number of classes; otherwise rows would not line up.
    let width = primary.classes_width();
    let classes =
        !primary.labels.is_empty() && !canary.labels.is_empty() && width == canary.classes_width();
    let mut out = ModelOutput {
        scores: Vec::with_capacity(rows),
        cluster_ids: Vec::with_capacity(if clustering { rows } else { 0 }),
        ..Default::default()
    };
    let (mut p, mut c) = (0, 0);
    for row in 0..rows {
        let (from, i) = if canary_rows.get(c) == Some(&row) {
            c += 1;
            (&canary, c - 1)
        } else {
            p += 1;
            (&primary, p - 1)
        };
        out.scores.push(from.scores[i]);
        if clustering {
            out.cluster_ids.push(from.cluster_ids[i]);
        }
        if classes {
            out.labels.push(from.labels[i].clone());
            out.probabilities
                .extend_from_slice(&from.probabilities[i * width..(i + 1) * width]);
        }
    }
    out
}

/// The caller's deadline from the `grpc-timeout` header. tonic enforces it by
/// dropping the handler (which cancels queued work), but does not expose it;
/// the batcher needs the instant to drop expired chunks before they run.
pub(crate) fn grpc_deadline(
    metadata: &tonic::metadata::MetadataMap,
    default: Option<Duration>,
) -> Option<Instant> {
    let from_header = || -> Option<Instant> {
        let value = metadata.get("grpc-timeout")?.to_str().ok()?;
        let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
        let amount: u64 = digits.parse().ok()?;
        let timeout = match unit {
            "H" => Duration::from_secs(amount.saturating_mul(3600)),
            "M" => Duration::from_secs(amount.saturating_mul(60)),
            "S" => Duration::from_secs(amount),
            "m" => Duration::from_millis(amount),
            "u" => Duration::from_micros(amount),
            "n" => Duration::from_nanos(amount),
            _ => return None,
        };
        Some(Instant::now() + timeout)
    };
    from_header().or_else(|| default.map(|d| Instant::now() + d))
}

type ScoreStreamResponse = Pin<Box<dyn Stream<Item = Result<pb::ScoreResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::scoring_server::Scoring for ScoringService {
    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        let admitted = self.gate.admit("Score", request.metadata())?;
        let deadline = admitted.deadline();
        // Model names, versions, row counts and status only: ids and feature
        // values are personal data and never enter a span or a log line.
        let span = info_span!(
            "score",
            models = tracing::field::Empty,
            rows = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        crate::telemetry::link_parent(&span, request.metadata());
        let req = request.into_inner();
        let work = async {
            self.score_request(req, deadline)
                .await
                .map_err(Status::from)
        };
        let result = admitted
            .within_deadline(work)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(resp) => {
                if !span.is_disabled() {
                    let versions: Vec<String> = scored_by(resp)
                        .map(|(name, version)| format!("{name}:{version}"))
                        .collect();
                    span.record("models", versions.join(","));
                    span.record("rows", resp.rows);
                    span.record("status", "OK");
                }
                tracing::debug!(parent: &span, "scored");
                admitted.record(tonic::Code::Ok, scored_by(resp));
            }
            Err(status) => {
                span.record("status", format!("{:?}", status.code()));
                tracing::debug!(parent: &span, error = %status.message(), "score request refused");
                admitted.record(status.code(), []);
            }
        }
        Ok(Response::new(result?))
    }

    type ScoreStreamStream = ScoreStreamResponse;

    async fn score_stream(
        &self,
        request: Request<Streaming<pb::ScoreRequest>>,
    ) -> Result<Response<Self::ScoreStreamStream>, Status> {
        // A stream takes one slot for its whole life; each chunk is recorded.
        let admitted = Arc::new(
            self.gate
                .admit("ScoreStream", request.metadata())?
                .for_stream(),
        );
        let service = self.clone();
        let in_flight = self.limits.stream_in_flight.max(1);
        // `buffered` keeps at most `in_flight` chunks being scored and yields
        // answers in request order; HTTP/2 flow control stops the client when the
        // responses are not read, so memory stays bounded whatever the input size.
        // Set only when shutdown cut the input short (not when the client
        // ended it): then, and only then, the stream ends with UNAVAILABLE.
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let until_stopping = {
            let (stopping, cut) = (self.stopping.clone(), cut.clone());
            async move {
                match stopping {
                    // A dropped sender means the server is gone: stop too.
                    Some(mut stopping) => {
                        let _ = stopping.wait_for(|s| *s).await;
                    }
                    None => std::future::pending().await,
                }
                cut.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        };
        let drained = futures::stream::once(async move {
            cut.load(std::sync::atomic::Ordering::SeqCst)
                .then(|| Err(Status::unavailable(STREAM_DRAINED)))
        })
        .filter_map(std::future::ready);
        let out = request
            .into_inner()
            .take_until(until_stopping)
            .map(move |chunk| {
                let service = service.clone();
                let admitted = admitted.clone();
                async move {
                    let req = chunk?;
                    let sequence = req.sequence;
                    let started = std::time::Instant::now();
                    let deadline = admitted.chunk_deadline();
                    Ok(match service.score_request(req, deadline).await {
                        Ok(resp) => {
                            admitted.record_since(started, tonic::Code::Ok, scored_by(&resp));
                            resp
                        }
                        Err(e) => {
                            let status = Status::from(e);
                            admitted.record_since(started, status.code(), []);
                            pb::ScoreResponse {
                                sequence,
                                error: Some(pb::ChunkError {
                                    code: status.code() as i32,
                                    message: status.message().into(),
                                }),
                                ..Default::default()
                            }
                        }
                    })
                }
            })
            .buffered(in_flight)
            .chain(drained);
        Ok(Response::new(Box::pin(out)))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = model_infos(&self.repository.load());
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn list_segments(
        &self,
        _request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let segments = self.segments.load();
        let infos = segments
            .segments()
            .iter()
            .map(|s| pb::SegmentInfo {
                name: s.name.clone(),
                description: s.description.clone(),
                rule: s.rule.clone(),
                models: s.models().to_vec(),
                state: match &s.state {
                    Ok(_) => pb::SegmentState::Ready,
                    Err(_) => pb::SegmentState::Failed,
                }
                .into(),
                reason: s.reason(),
            })
            .collect();
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: infos,
            source: segments.source.clone().unwrap_or_default(),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        let name = request.into_inner().name;
        let model = model_info(&self.repository.load(), &name)
            .ok_or_else(|| Status::not_found(format!("model `{}` not found", echo(&name))))?;
        Ok(Response::new(pb::GetModelResponse { model: Some(model) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_is_merged_back_in_row_order_with_cluster_ids() {
        let primary = ModelOutput {
            scores: vec![0.0, 2.0, 3.0],
            cluster_ids: vec![10, 12, 13],
            ..Default::default()
        };
        let canary = ModelOutput {
            scores: vec![1.0, 4.0],
            cluster_ids: vec![21, 24],
            ..Default::default()
        };
        let merged = merge_split(5, &[1, 4], primary, canary);
        assert_eq!(merged.scores, [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(merged.cluster_ids, [10, 21, 12, 13, 24]);

        let plain = merge_split(
            3,
            &[0],
            ModelOutput {
                scores: vec![5.0, 6.0],
                cluster_ids: vec![],
                ..Default::default()
            },
            ModelOutput {
                scores: vec![4.0],
                cluster_ids: vec![],
                ..Default::default()
            },
        );
        assert_eq!(plain.scores, [4.0, 5.0, 6.0]);
        assert!(plain.cluster_ids.is_empty());
        assert!(plain.labels.is_empty() && plain.probabilities.is_empty());
    }

    #[test]
    fn a_split_keeps_class_probabilities_and_labels_in_row_order() {
        let classes = |labels: &[&str], p: &[f32]| ModelOutput {
            scores: labels.iter().map(|_| 0.0).collect(),
            probabilities: p.to_vec(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        };
        let merged = merge_split(
            3,
            &[1],
            classes(&["a", "c"], &[0.9, 0.1, 0.2, 0.8]),
            classes(&["b"], &[0.4, 0.6]),
        );
        assert_eq!(merged.labels, ["a", "b", "c"]);
        assert_eq!(merged.probabilities, [0.9, 0.1, 0.4, 0.6, 0.2, 0.8]);
    }
}
