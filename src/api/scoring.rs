//! segscore.v1 `Scoring`: Score, ScoreStream, ListModels, GetModel.
//!
//! A request is parsed and validated for every requested model before any work
//! is queued, so a bad request changes nothing and costs no model time.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{
    gate::RequestGate,
    models::{model_info, model_infos},
};
use crate::{
    error::ApiError,
    infer::Scorer,
    proto::pb,
    repository::ResolveError,
    telemetry::{self, Rpc},
};

#[derive(Clone)]
pub struct ScoringService {
    scorer: Scorer,
    /// ScoreStream chunks scored concurrently per stream; also bounds the
    /// memory one stream can hold.
    stream_in_flight: usize,
    gate: Arc<RequestGate>,
    /// Turns true when the server starts draining: open ScoreStreams stop
    /// taking chunks, finish the ones in flight and end with UNAVAILABLE, so
    /// graceful shutdown does not wait on a client that never hangs up.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

/// What a ScoreStream cut short by shutdown ends with: UNAVAILABLE, the code
/// gRPC clients retry on, and where to pick up.
const STREAM_DRAINED: &str = "the server is shutting down: every chunk sent before this was \
                              answered; resume from the next sequence number on another replica";

impl ScoringService {
    pub fn new(scorer: Scorer, stream_in_flight: usize, gate: Arc<RequestGate>) -> Self {
        Self {
            scorer,
            stream_in_flight,
            gate,
            stopping: None,
        }
    }

    /// Ends open ScoreStreams when `stopping` turns true (see the field).
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// Scores one request end to end through the core; chunks still queued
    /// at `deadline` are dropped unscored.
    pub async fn score_request(
        &self,
        req: pb::ScoreRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::ScoreResponse, ApiError> {
        let sequence = req.sequence;
        let scored = self.scorer.score(req.into(), deadline).await?;
        Ok(pb::ScoreResponse::scored(sequence, scored))
    }
}

/// The (model, version) pairs that scored a response, for metrics.
fn scored_by(resp: &pb::ScoreResponse) -> impl Iterator<Item = (&str, u64)> {
    resp.models.iter().flat_map(|m| {
        let canary = (m.canary_version != 0).then_some((m.name.as_str(), m.canary_version));
        std::iter::once((m.name.as_str(), m.version)).chain(canary)
    })
}

/// What a scored response puts on its span: models with versions, rows, OK.
fn record_scored(span: &tracing::Span, resp: &pb::ScoreResponse) {
    if span.is_disabled() {
        return;
    }
    let versions: Vec<String> = scored_by(resp)
        .map(|(name, version)| format!("{name}:{version}"))
        .collect();
    span.record("segscore.models", versions.join(","));
    span.record("segscore.rows", resp.rows as i64);
    telemetry::record_rpc_outcome(span, tonic::Code::Ok, "");
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
        let span = telemetry::rpc_server_span(Rpc::SCORE, request.metadata());
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
                record_scored(&span, resp);
                tracing::debug!(parent: &span, "scored");
                admitted.record(tonic::Code::Ok, scored_by(resp));
            }
            Err(status) => {
                telemetry::record_rpc_outcome(&span, status.code(), status.message());
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
        // The stream's one server span lives as long as the response stream
        // (it is moved into it); each chunk is a child span of its own.
        let stream_span = telemetry::rpc_server_span(Rpc::SCORE_STREAM, request.metadata());
        let chunks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let service = self.clone();
        let in_flight = self.stream_in_flight.max(1);
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
        // Evaluated once the input has ended: the stream's outcome for its span.
        let ended = stream_span.clone();
        let answered = chunks.clone();
        let drained = futures::stream::once(async move {
            // Recorded once, at the end: an exporter keeps every value a
            // field is given, so a running count would export each step.
            let n = answered.load(std::sync::atomic::Ordering::Relaxed);
            ended.record("segscore.chunks", n as i64);
            let cut = cut.load(std::sync::atomic::Ordering::SeqCst);
            let code = if cut {
                tonic::Code::Unavailable
            } else {
                tonic::Code::Ok
            };
            telemetry::record_rpc_outcome(&ended, code, STREAM_DRAINED);
            cut.then(|| Err(ApiError::Unavailable(STREAM_DRAINED.into()).into()))
        })
        .filter_map(std::future::ready);
        let out = request
            .into_inner()
            .take_until(until_stopping)
            .map(move |chunk| {
                let service = service.clone();
                let admitted = admitted.clone();
                let (stream_span, chunks) = (stream_span.clone(), chunks.clone());
                async move {
                    let req = chunk.inspect_err(|status| {
                        telemetry::record_rpc_outcome(&stream_span, status.code(), status.message())
                    })?;
                    let sequence = req.sequence;
                    let span = telemetry::stream_chunk_span(&stream_span, sequence);
                    let started = std::time::Instant::now();
                    let deadline = admitted.chunk_deadline();
                    let result = service
                        .score_request(req, deadline)
                        .instrument(span.clone())
                        .await;
                    chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(match result {
                        Ok(resp) => {
                            record_scored(&span, &resp);
                            admitted.record_since(started, tonic::Code::Ok, scored_by(&resp));
                            resp
                        }
                        Err(e) => {
                            let status = Status::from(e);
                            telemetry::record_rpc_outcome(&span, status.code(), status.message());
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
        let models = model_infos(&self.scorer.repository().load());
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn list_segments(
        &self,
        _request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let segments = self.scorer.segments().load();
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
        let model = model_info(&self.scorer.repository().load(), &name)
            .ok_or(ApiError::Resolve(ResolveError::UnknownModel(name)))?;
        Ok(Response::new(pb::GetModelResponse { model: Some(model) }))
    }
}
