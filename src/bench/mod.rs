//! `segscore bench`: the benchmark suite, in one process run on one machine.
//!
//! (a) in-process ONNX Runtime on each shipped ONNX model at 1 / 64 / 1,024 /
//! 16,384 rows per call, one session per worker thread (the limit); (b) the
//! service, started as a child `segscore serve` on 127.0.0.1, driven by a
//! built-in Rust load generator at 1 / 64 / 1,024 rows per request and
//! concurrency 1 / 16 / 64; (c) single-row requests with batching off; (d)
//! Score over every model with and without segment rules. Every service
//! figure is reported as a ratio to (a) at the same rows per call. Each case
//! runs for a fixed time, so the whole suite is bounded and stops by itself;
//! traffic only goes to the loopback address.
//!
//! This file holds the options, the result record and the orchestration;
//! each suite lives in its own module: `in_process` (a), `service` (b, c),
//! `segments` (d), `bulk` (`--bulk-input`), with the child server in `server`
//! and the Markdown report in `report`.

use std::{
    path::{Path, PathBuf},
    thread,
};

use anyhow::{bail, Context};
use clap::Args;
use ndarray::{concatenate, Array2, Axis};
use serde::Serialize;

mod bulk;
mod in_process;
mod report;
mod segments;
mod server;
mod service;

use crate::{
    engine::onnx::OnnxSignature,
    features::FeatureSchema,
    proto::pb,
    repository::{load::read_csv_batch, scan, Format, Manifest, MANIFEST_FILE},
};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Model repository to benchmark (its ONNX models).
    #[arg(
        long,
        env = "SEGSCORE_MODEL_REPOSITORY",
        default_value = "models",
        value_name = "DIR"
    )]
    pub model_repository: PathBuf,
    /// Feature rows to score (CSV with the models' features).
    #[arg(
        long,
        env = "SEGSCORE_BENCH_INPUT",
        default_value = "training/sample_users.csv"
    )]
    pub input: PathBuf,
    /// The model the service cases (b, c) call.
    #[arg(long, env = "SEGSCORE_SERVICE_MODEL", default_value = "churn")]
    pub service_model: String,
    /// Seconds each case runs (after a short warm-up).
    #[arg(long, env = "SEGSCORE_BENCH_SECONDS", default_value_t = 2.0)]
    pub seconds: f64,
    /// Worker threads for in-process ORT and for the server (default: cores).
    #[arg(long, env = "SEGSCORE_WORKERS")]
    pub workers: Option<usize>,
    /// Rows per request for the service cases.
    #[arg(long, env = "SEGSCORE_SERVICE_ROWS", value_delimiter = ',', default_values_t = [1, 64, 1024])]
    pub service_rows: Vec<usize>,
    /// Concurrent callers for the service cases.
    #[arg(long, env = "SEGSCORE_CONCURRENCY", value_delimiter = ',', default_values_t = [1, 16, 64])]
    pub concurrency: Vec<usize>,
    /// Client connections the load generator spreads its callers over.
    #[arg(long, env = "SEGSCORE_CONNECTIONS", default_value_t = 4)]
    pub connections: usize,
    /// Write the Markdown report here.
    #[arg(long, env = "SEGSCORE_BENCH_OUTPUT", default_value = "BENCHMARKS.md")]
    pub output: PathBuf,
    /// Segment rules for case (d): Score at 1,024 rows over every model with
    /// and without all the file's segments (skipped if the file is absent).
    #[arg(long, env = "SEGSCORE_SEGMENTS", default_value = "segments.toml")]
    pub segments: PathBuf,
    /// Path to libonnxruntime.so (default: searched in .venv).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// Run the bulk suite instead, on this feature file (`make bulk-data`):
    /// in-process ORT on every row with each shipped ONNX model, then
    /// `segscore score` on the same file embedded and against one local
    /// server; adds a "Bulk scoring" section to --output.
    #[arg(long, env = "SEGSCORE_BULK_INPUT")]
    pub bulk_input: Option<PathBuf>,
    /// Rows per chunk in the bulk suite (in-process calls and --batch-rows).
    #[arg(long, env = "SEGSCORE_BULK_BATCH_ROWS", default_value_t = 8192)]
    pub bulk_batch_rows: usize,
}

/// One measured case; also its JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub suite: &'static str,
    /// "score" (segscore.v1), "oip" (ModelInfer) or "ort" (in-process).
    pub protocol: &'static str,
    pub model: String,
    pub rows_per_call: usize,
    pub concurrency: usize,
    pub batching: Option<bool>,
    pub calls: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub calls_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// rows/s divided by in-process ORT rows/s at the same rows per call.
    pub ratio_to_in_process: Option<f64>,
    /// Server resident memory after the case (service cases).
    pub server_rss_mib: Option<f64>,
    /// Case (d): segment names evaluated per request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// Case (d) with segments: rows/s divided by the same requests' rows/s
    /// without segments (1.0 = free; the target is >= 0.8, i.e. <= 25% extra time).
    pub ratio_to_without_segments: Option<f64>,
    /// Case (d): in-process time to evaluate the segments over one request
    /// (bindings included), compiled evaluator and cel interpreter, in µs.
    pub segment_eval_us: Option<f64>,
    pub segment_eval_interpreted_us: Option<f64>,
}

const IN_PROCESS_ROWS: [usize; 4] = [1, 64, 1024, 16384];
/// Rows per request of case (d), the size the segments target is set at.
const SEGMENT_CASE_ROWS: usize = 1024;

/// Runs the suites in order, each case's JSON line on stdout as it ends,
/// then writes the report. (a) runs first because (b) and (c) are reported
/// as ratios to it.
pub async fn run(args: BenchArgs) -> anyhow::Result<Vec<CaseResult>> {
    let workers = args
        .workers
        .unwrap_or_else(|| thread::available_parallelism().map_or(2, |n| n.get()));
    let models = onnx_models(&args.model_repository)?;
    if models.is_empty() {
        bail!(
            "{}: no ONNX model to benchmark",
            args.model_repository.display()
        );
    }
    if let Some(input) = &args.bulk_input {
        bulk::run(&args, input, &models, workers).await?;
        return Ok(Vec::new());
    }

    // (a) the limit: in-process ORT, one session per thread.
    let mut results = in_process::suite(&args, &models, workers)?;

    // (b) and (c): the service over loopback gRPC.
    let (manifest, _) = models
        .iter()
        .find(|(m, _)| m.name == args.service_model)
        .with_context(|| format!("--service-model {}: no such ONNX model", args.service_model))?;
    let input = service::ServiceInput::load(&args.input, manifest)?;
    for batching in [true, false] {
        service::suite(&args, workers, batching, &input, &mut results).await?;
    }

    // (d) segment rules: the cost of evaluating them next to the models.
    if args.segments.is_file() {
        segments::suite(&args, workers, &input, &mut results).await?;
    }
    report::write_report(&args, workers, &results)?;
    Ok(results)
}

/// One JSON line per case on stdout, as soon as it is measured, so a long
/// run can be followed and its figures kept even if the report is not.
fn emit(r: &CaseResult) {
    println!(
        "{}",
        serde_json::to_string(r).expect("plain struct serializes; this is a bug")
    );
}

/// The highest ONNX version of each model.
fn onnx_models(root: &Path) -> anyhow::Result<Vec<(Manifest, PathBuf)>> {
    let mut out = Vec::new();
    for (_, versions) in scan(root)? {
        let best = versions.into_iter().rev().find_map(|(_, dir)| {
            let m = Manifest::read(&dir.join(MANIFEST_FILE)).ok()?;
            (m.format == Format::Onnx).then_some((m, dir))
        });
        out.extend(best);
    }
    Ok(out)
}

/// The plain single-score signature both in-process suites load a model
/// with: the manifest's features in, its score column out.
fn ort_signature(manifest: &Manifest) -> OnnxSignature {
    OnnxSignature {
        features: manifest.features.len(),
        output: manifest.score.output.clone(),
        column: manifest.score.column,
        inputs: Vec::new(),
        classes: None,
        clustering: false,
    }
}

/// The input file encoded for `manifest` (as the server would).
fn load_rows(path: &Path, manifest: &Manifest) -> anyhow::Result<Array2<f32>> {
    let schema = FeatureSchema::new(manifest.features.clone())?;
    let (batch, _) = read_csv_batch(path, &schema, "").map_err(anyhow::Error::msg)?;
    Ok(schema.encode(&batch, 0..batch.rows())?)
}

/// The input file as typed request columns (what a Score caller sends).
fn load_request_matrix(path: &Path, manifest: &Manifest) -> anyhow::Result<pb::FeatureMatrix> {
    let schema = FeatureSchema::new(manifest.features.clone())?;
    let (batch, _) = read_csv_batch(path, &schema, "").map_err(anyhow::Error::msg)?;
    Ok(batch.into())
}

/// `rows` rows cut (cycling) from `input`.
fn tile(input: &Array2<f32>, rows: usize) -> Array2<f32> {
    let mut parts = Vec::new();
    let mut left = rows;
    while left > 0 {
        let n = left.min(input.nrows());
        parts.push(input.slice(ndarray::s![..n, ..]));
        left -= n;
    }
    concatenate(Axis(0), &parts).expect("same widths; this is a bug")
}
