//! Cases (b) and (c): the service over loopback gRPC, driven by a built-in
//! load generator. This module builds the requests (segscore.v1 `Score`
//! with typed columns, OIP `ModelInfer` with a raw FP32 tensor), keeps
//! `concurrency` callers busy over a few connections for `--seconds`, and
//! measures only the calls made after the warm-up.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use ndarray::Array2;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::{
    emit, load_request_matrix, load_rows, report::summarize, server::Server, tile, BenchArgs,
    CaseResult,
};
use crate::{
    proto::{
        oip::{self, grpc_inference_service_client::GrpcInferenceServiceClient},
        pb::{self, scoring_client::ScoringClient},
    },
    repository::Manifest,
};

/// The `--service-model` and the input file in both forms the requests are
/// built from; loaded once for every service case.
pub(super) struct ServiceInput<'a> {
    pub(super) manifest: &'a Manifest,
    /// Typed columns, as a Score caller sends them.
    pub(super) base: pb::FeatureMatrix,
    /// Encoded for the model, as an OIP caller sends them.
    pub(super) encoded: Array2<f32>,
}

impl<'a> ServiceInput<'a> {
    pub(super) fn load(path: &Path, manifest: &'a Manifest) -> anyhow::Result<Self> {
        Ok(Self {
            manifest,
            base: load_request_matrix(path, manifest)?,
            encoded: load_rows(path, manifest)?,
        })
    }
}

/// What one service case sends.
#[derive(Clone, Copy)]
pub(super) struct ServiceCase {
    pub(super) rows: usize,
    pub(super) concurrency: usize,
    /// "score" or "oip".
    pub(super) protocol: &'static str,
}

/// One prepared call of the load generator.
#[derive(Clone)]
pub(super) enum Call {
    /// segscore.v1 Score with named typed columns.
    Score(pb::ScoreRequest),
    /// OIP ModelInfer with the FP32 matrix as raw little-endian bytes (what
    /// tritonclient sends).
    Infer(oip::ModelInferRequest),
}

/// One server (batching on: (b), off: (c)) and every case run against it:
/// with batching on, Score and OIP at each `--service-rows` and
/// `--concurrency`; with it off, single-row Score only: (c) measures what
/// batching buys for the smallest requests.
pub(super) async fn suite(
    args: &BenchArgs,
    workers: usize,
    batching: bool,
    input: &ServiceInput<'_>,
    results: &mut Vec<CaseResult>,
) -> anyhow::Result<()> {
    let server = Server::start(args, workers, batching)?;
    let row_sizes: &[usize] = if batching { &args.service_rows } else { &[1] };
    // OIP ModelInfer next to Score, with batching on.
    let protocols: &[&'static str] = if batching {
        &["score", "oip"]
    } else {
        &["score"]
    };
    for &protocol in protocols {
        for &rows in row_sizes {
            for &concurrency in &args.concurrency {
                let case = ServiceCase {
                    rows,
                    concurrency,
                    protocol,
                };
                let call = default_call(input, case);
                let mut r = measure(args, &server, &input.manifest.name, call, case).await?;
                r.batching = Some(batching);
                r.suite = if batching {
                    "service"
                } else {
                    "service_batching_off"
                };
                r.ratio_to_in_process = in_process_rows_per_second(results, &r)
                    .map(|in_process| r.rows_per_second / in_process);
                emit(&r);
                results.push(r);
            }
        }
    }
    server.stop()
}

/// Case (a)'s rows/s for the same model at the same rows per call.
fn in_process_rows_per_second(results: &[CaseResult], r: &CaseResult) -> Option<f64> {
    results
        .iter()
        .find(|a| {
            a.suite == "in_process" && a.model == r.model && a.rows_per_call == r.rows_per_call
        })
        .map(|a| a.rows_per_second)
}

/// The request a (b) or (c) case sends: `case.rows` rows of the input, to
/// the service model's version, over `case.protocol`.
fn default_call(input: &ServiceInput<'_>, case: ServiceCase) -> Call {
    let manifest = input.manifest;
    if case.protocol == "oip" {
        let matrix = tile(&input.encoded, case.rows);
        Call::Infer(oip::ModelInferRequest {
            model_name: manifest.name.clone(),
            model_version: manifest.version.to_string(),
            inputs: vec![oip::model_infer_request::InferInputTensor {
                name: "features".into(),
                datatype: "FP32".into(),
                shape: vec![case.rows as i64, matrix.ncols() as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![matrix.iter().flat_map(|v| v.to_le_bytes()).collect()],
            ..Default::default()
        })
    } else {
        Call::Score(pb::ScoreRequest {
            features: Some(request_rows(&input.base, case.rows)),
            models: vec![pb::ModelRef {
                name: manifest.name.clone(),
                version: manifest.version,
                label: String::new(),
            }],
            ..Default::default()
        })
    }
}

/// Runs `call` from `case.concurrency` callers against `server`: 0.3 s of
/// warm-up, then `--seconds` measured. A call counts as an error unless its
/// answer has one score per row (and every segment asked for).
pub(super) async fn measure(
    args: &BenchArgs,
    server: &Server,
    model: &str,
    call: Call,
    case: ServiceCase,
) -> anyhow::Result<CaseResult> {
    let ServiceCase {
        rows,
        concurrency,
        protocol,
    } = case;
    let channels = connect(args, server, concurrency).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            caller(channel, call.clone(), rows, stop.clone(), measuring.clone())
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await; // warm-up
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    let mut r = summarize("service", model, rows, concurrency, samples, elapsed);
    r.server_rss_mib = server.rss_mib();
    r.protocol = protocol;
    Ok(r)
}

/// `--connections` channels (at most one per caller) for the callers to
/// share, as a client pool would.
async fn connect(
    args: &BenchArgs,
    server: &Server,
    concurrency: usize,
) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.clamp(1, concurrency) {
        channels.push(
            Channel::from_shared(server.addr.clone())?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", server.addr))?,
        );
    }
    Ok(channels)
}

/// One caller: sends `call` back to back until `stop`, keeping the latency
/// and outcome of the calls made while `measuring`.
fn caller(
    channel: Channel,
    call: Call,
    rows: usize,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> JoinHandle<Vec<(Duration, bool)>> {
    let mut score = ScoringClient::new(channel.clone())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let mut infer = GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let ok = match &call {
                Call::Score(req) => score.score(req.clone()).await.is_ok_and(|r| {
                    let r = r.into_inner();
                    r.segments.len() == req.segments.len()
                        && r.models.first().is_some_and(|m| m.scores.len() == rows)
                }),
                Call::Infer(req) => infer.model_infer(req.clone()).await.is_ok_and(|r| {
                    r.into_inner()
                        .raw_output_contents
                        .first()
                        .is_some_and(|b| b.len() == rows * 4)
                }),
            };
            if measuring.load(Ordering::Relaxed) {
                samples.push((t.elapsed(), ok));
            }
        }
        samples
    })
}

/// The first `rows` rows of `base` (cycling), as a request matrix.
pub(super) fn request_rows(base: &pb::FeatureMatrix, rows: usize) -> pb::FeatureMatrix {
    use pb::feature_column::Values;
    fn cycle<T: Clone>(v: &[T], rows: usize) -> Vec<T> {
        v.iter().cycle().take(rows).cloned().collect()
    }
    let n = base.rows.max(1) as usize;
    let columns = base
        .columns
        .iter()
        .map(|c| pb::FeatureColumn {
            name: c.name.clone(),
            values: c.values.as_ref().map(|v| match v {
                Values::F32(v) => Values::F32(pb::FloatValues {
                    values: cycle(&v.values, rows),
                }),
                Values::F64(v) => Values::F64(pb::DoubleValues {
                    values: cycle(&v.values, rows),
                }),
                Values::I64(v) => Values::I64(pb::Int64Values {
                    values: cycle(&v.values, rows),
                }),
                Values::Bool(v) => Values::Bool(pb::BoolValues {
                    values: cycle(&v.values, rows),
                }),
                Values::Category(v) => Values::Category(pb::StringValues {
                    values: cycle(&v.values, rows),
                }),
            }),
            missing_rows: (0..rows as u32)
                .filter(|r| c.missing_rows.contains(&(r % n as u32)))
                .collect(),
        })
        .collect();
    pb::FeatureMatrix {
        rows: rows as u32,
        columns,
    }
}
