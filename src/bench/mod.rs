//! `segscore bench`: the benchmark suite, in one process run on one machine.
//!
//! (a) in-process ONNX Runtime on each shipped ONNX model at 1 / 64 / 1,024 /
//! 16,384 rows per call, one session per worker thread (the limit); (b) the
//! service, started as a child `segscore serve` on 127.0.0.1, driven by a
//! built-in Rust load generator at 1 / 64 / 1,024 rows per request and
//! concurrency 1 / 16 / 64; (c) single-row requests with batching off. Every
//! service figure is reported as a ratio to (a) at the same rows per call. Each
//! case runs for a fixed time, so the whole suite is bounded and stops by
//! itself; traffic only goes to the loopback address.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;
use ndarray::{concatenate, Array2, Axis};
use serde::Serialize;
use tonic::transport::Channel;

mod bulk;

use crate::{
    engine::{
        onnx::{self, OnnxBackend, OnnxSignature},
        Backend,
    },
    features::FeatureSchema,
    proto::{
        oip::{self, grpc_inference_service_client::GrpcInferenceServiceClient},
        pb::{self, scoring_client::ScoringClient},
    },
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
    let mut results = Vec::new();

    // (a) the limit: in-process ORT, one session per thread.
    for (manifest, dir) in &models {
        let input = load_rows(&args.input, manifest)?;
        for rows in IN_PROCESS_ROWS {
            let r = in_process(&args, manifest, dir, &input, rows, workers)?;
            emit(&r);
            results.push(r);
        }
    }

    // (b) and (c): the service over loopback gRPC.
    let (manifest, _) = models
        .iter()
        .find(|(m, _)| m.name == args.service_model)
        .with_context(|| format!("--service-model {}: no such ONNX model", args.service_model))?;
    let base = load_request_matrix(&args.input, manifest)?;
    let encoded = load_rows(&args.input, manifest)?;
    for batching in [true, false] {
        let server = Server::start(&args, workers, batching)?;
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
                    let mut r =
                        service_case(&args, &server, manifest, &base, &encoded, case).await?;
                    r.batching = Some(batching);
                    r.suite = if batching {
                        "service"
                    } else {
                        "service_batching_off"
                    };
                    r.ratio_to_in_process = results
                        .iter()
                        .find(|a| {
                            a.suite == "in_process"
                                && a.model == manifest.name
                                && a.rows_per_call == rows
                        })
                        .map(|a| r.rows_per_second / a.rows_per_second);
                    emit(&r);
                    results.push(r);
                }
            }
        }
        server.stop()?;
    }

    // (d) segment rules: the cost of evaluating them next to the models.
    if args.segments.is_file() {
        let file = crate::segments::RulesFile::read(&args.segments)?;
        let names: Vec<String> = file.segments.iter().map(|s| s.name.clone()).collect();
        let all_models: Vec<String> = scan(&args.model_repository)?.into_keys().collect();
        let server = Server::start_with(&args, workers, true, Some(&args.segments))?;
        let mut without = None;
        for segments in [Vec::new(), names] {
            let case = ServiceCase {
                rows: SEGMENT_CASE_ROWS,
                concurrency: 1,
                protocol: "score",
            };
            let request = pb::ScoreRequest {
                features: Some(request_rows(&base, SEGMENT_CASE_ROWS)),
                models: all_models
                    .iter()
                    .map(|name| pb::ModelRef {
                        name: name.clone(),
                        ..Default::default()
                    })
                    .collect(),
                segments: segments.clone(),
                ..Default::default()
            };
            let eval_cost = if segments.is_empty() {
                None
            } else {
                Some(segment_eval_cost(&args, &server, &file, request.clone()).await?)
            };
            let mut r = service_case_with(
                &args,
                &server,
                manifest,
                &base,
                &encoded,
                case,
                Some(request),
            )
            .await?;
            if let Some((compiled, interpreted)) = eval_cost {
                r.segment_eval_us = Some(compiled);
                r.segment_eval_interpreted_us = Some(interpreted);
            }
            r.suite = "segments";
            r.model = all_models.join("+");
            r.batching = Some(true);
            r.segments = segments;
            match without {
                None => without = Some(r.rows_per_second),
                Some(base) => {
                    r.ratio_to_without_segments = Some(r.rows_per_second / base.max(1e-9))
                }
            }
            emit(&r);
            results.push(r);
        }
        server.stop()?;
    }
    write_report(&args, workers, &results)?;
    Ok(results)
}

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

/// The input file encoded for `manifest` (as the server would).
fn load_rows(path: &Path, manifest: &Manifest) -> anyhow::Result<Array2<f32>> {
    let schema = FeatureSchema::new(manifest.features.clone())?;
    let (batch, _) = read_csv_batch(path, &schema, "").map_err(anyhow::Error::msg)?;
    Ok(schema.encode(&batch, 0..batch.rows())?)
}

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

fn in_process(
    args: &BenchArgs,
    manifest: &Manifest,
    dir: &Path,
    input: &Array2<f32>,
    rows: usize,
    workers: usize,
) -> anyhow::Result<CaseResult> {
    let env = onnx::init_runtime(args.ort_dylib_path.as_deref())?;
    let bytes = std::fs::read(dir.join(&manifest.file))?;
    let signature = OnnxSignature {
        features: manifest.features.len(),
        output: manifest.score.output.clone(),
        column: manifest.score.column,
        inputs: Vec::new(),
        classes: None,
        clustering: false,
    };
    let batch = Arc::new(tile(input, rows));
    let duration = Duration::from_secs_f64(args.seconds);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let mut backend = OnnxBackend::load(env, &bytes, &signature, 1)?;
            let batch = batch.clone();
            Ok(thread::spawn(move || {
                let mut latencies = Vec::new();
                for _ in 0..3 {
                    let _ = backend.score(batch.view());
                }
                let start = Instant::now();
                while start.elapsed() < duration {
                    let t = Instant::now();
                    let ok = backend.score(batch.view()).is_ok();
                    latencies.push((t.elapsed(), ok));
                }
                (latencies, start.elapsed())
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut all = Vec::new();
    let mut elapsed = Duration::ZERO;
    for h in handles {
        let (l, e) = h
            .join()
            .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?;
        all.extend(l);
        elapsed = elapsed.max(e);
    }
    Ok(summarize(
        "in_process",
        &manifest.name,
        rows,
        workers,
        all,
        elapsed,
    ))
}

fn summarize(
    suite: &'static str,
    model: &str,
    rows: usize,
    concurrency: usize,
    samples: Vec<(Duration, bool)>,
    elapsed: Duration,
) -> CaseResult {
    let errors = samples.iter().filter(|(_, ok)| !ok).count() as u64;
    let mut micros: Vec<u64> = samples
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(d, _)| d.as_micros() as u64)
        .collect();
    micros.sort_unstable();
    let pct = |p: f64| -> f64 {
        if micros.is_empty() {
            return 0.0;
        }
        let i = ((micros.len() as f64 * p).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    let calls = samples.len() as u64;
    let ok = calls - errors;
    let secs = elapsed.as_secs_f64().max(1e-9);
    CaseResult {
        suite,
        protocol: "ort",
        model: model.into(),
        rows_per_call: rows,
        concurrency,
        batching: None,
        calls,
        errors,
        seconds: secs,
        rows_per_second: (ok as f64 * rows as f64) / secs,
        calls_per_second: ok as f64 / secs,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: micros.last().map_or(0.0, |m| *m as f64 / 1000.0),
        ratio_to_in_process: None,
        server_rss_mib: None,
        segments: Vec::new(),
        ratio_to_without_segments: None,
        segment_eval_us: None,
        segment_eval_interpreted_us: None,
    }
}

/// A `segscore serve` child process on an ephemeral loopback port.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(args: &BenchArgs, workers: usize, batching: bool) -> anyhow::Result<Self> {
        Self::start_with(args, workers, batching, None)
    }

    fn start_with(
        args: &BenchArgs,
        workers: usize,
        batching: bool,
        segments: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["--log-format", "json", "serve", "--addr", "127.0.0.1:0"])
            .arg("--model-repository")
            .arg(&args.model_repository)
            .arg("--workers")
            .arg(workers.to_string())
            .arg("--batching")
            .arg(batching.to_string())
            .env("RUST_LOG", "info,ort=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(p) = &args.ort_dylib_path {
            cmd.arg("--ort-dylib-path").arg(p);
        }
        if let Some(p) = segments {
            cmd.arg("--segments").arg(p);
        }
        let mut child = cmd.spawn().context("starting segscore serve")?;
        let stderr = BufReader::new(child.stderr.take().expect("stderr piped; this is a bug"));
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["fields"]["message"] == "serving" {
                    let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or_default().to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Self {
                child,
                addr: format!("http://{addr}"),
            }),
            Err(_) => {
                let _ = child.kill();
                bail!("segscore serve did not start within 60 s")
            }
        }
    }

    fn rss_mib(&self) -> Option<f64> {
        self.status_mib("VmRSS:")
    }

    /// Peak resident memory so far (VmHWM).
    fn peak_rss_mib(&self) -> Option<f64> {
        self.status_mib("VmHWM:")
    }

    fn status_mib(&self, key: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SIGTERM: the server drains and exits on its own.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        Ok(())
    }
}

/// The first `rows` rows of `base` (cycling), as a request matrix.
fn request_rows(base: &pb::FeatureMatrix, rows: usize) -> pb::FeatureMatrix {
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

/// What one service case sends.
#[derive(Clone, Copy)]
struct ServiceCase {
    rows: usize,
    concurrency: usize,
    /// "score" or "oip".
    protocol: &'static str,
}

/// One prepared call of the load generator.
#[derive(Clone)]
enum Call {
    /// segscore.v1 Score with named typed columns.
    Score(pb::ScoreRequest),
    /// OIP ModelInfer with the FP32 matrix as raw little-endian bytes (what
    /// tritonclient sends).
    Infer(oip::ModelInferRequest),
}

async fn service_case(
    args: &BenchArgs,
    server: &Server,
    manifest: &Manifest,
    base: &pb::FeatureMatrix,
    encoded: &Array2<f32>,
    case: ServiceCase,
) -> anyhow::Result<CaseResult> {
    service_case_with(args, server, manifest, base, encoded, case, None).await
}

/// A service case; `request` replaces the default Score request (case d).
async fn service_case_with(
    args: &BenchArgs,
    server: &Server,
    manifest: &Manifest,
    base: &pb::FeatureMatrix,
    encoded: &Array2<f32>,
    case: ServiceCase,
    request: Option<pb::ScoreRequest>,
) -> anyhow::Result<CaseResult> {
    let ServiceCase {
        rows,
        concurrency,
        protocol,
    } = case;
    let mut channels = Vec::new();
    for _ in 0..args.connections.clamp(1, concurrency) {
        channels.push(
            Channel::from_shared(server.addr.clone())?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", server.addr))?,
        );
    }
    let call = if protocol == "oip" {
        let matrix = tile(encoded, rows);
        Call::Infer(oip::ModelInferRequest {
            model_name: manifest.name.clone(),
            model_version: manifest.version.to_string(),
            inputs: vec![oip::model_infer_request::InferInputTensor {
                name: "features".into(),
                datatype: "FP32".into(),
                shape: vec![rows as i64, matrix.ncols() as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![matrix.iter().flat_map(|v| v.to_le_bytes()).collect()],
            ..Default::default()
        })
    } else if let Some(request) = request {
        Call::Score(request)
    } else {
        Call::Score(pb::ScoreRequest {
            features: Some(request_rows(base, rows)),
            models: vec![pb::ModelRef {
                name: manifest.name.clone(),
                version: manifest.version,
                label: String::new(),
            }],
            ..Default::default()
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            let mut score = ScoringClient::new(channel.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let mut infer = GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let call = call.clone();
            let (stop, measuring) = (stop.clone(), measuring.clone());
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
    let mut r = summarize(
        "service",
        &manifest.name,
        rows,
        concurrency,
        samples,
        elapsed,
    );
    r.server_rss_mib = server.rss_mib();
    r.protocol = protocol;
    Ok(r)
}

/// Times the evaluation of `request`'s segments in-process over the scores
/// the server returns for it: (compiled, interpreted) µs per request, best of
/// repeated runs, variable binding included.
async fn segment_eval_cost(
    args: &BenchArgs,
    server: &Server,
    file: &crate::segments::RulesFile,
    request: pb::ScoreRequest,
) -> anyhow::Result<(f64, f64)> {
    use crate::segments::{Catalog, ModelScoresView, RuleInput, Segments};
    let channel = Channel::from_shared(server.addr.clone())?.connect().await?;
    let response = ScoringClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .score(request.clone())
        .await?
        .into_inner();
    let catalog = Catalog::from_directory(&args.model_repository)?;
    let segments = Segments::compile(file, &catalog, None);
    let batch = crate::features::FeatureBatch::try_from(
        request.features.context("the bench request has features")?,
    )?;
    // The server's answer, read as rules read it.
    let scores = response
        .models
        .iter()
        .map(|m| (m.name.as_str(), ModelScoresView::from(m)))
        .collect();
    let input = RuleInput {
        batch: &batch,
        scores,
    };
    let rules: Vec<_> = request
        .segments
        .iter()
        .filter_map(|n| segments.get(n)?.state.as_ref().ok())
        .collect();
    let time = |interpreted: bool| {
        let mut best = f64::INFINITY;
        let until = Instant::now() + Duration::from_secs_f64((args.seconds / 4.0).max(0.2));
        let mut runs = 0;
        while runs < 3 || Instant::now() < until {
            let t = Instant::now();
            let mut evaluation = segments.evaluator(&input);
            for rule in &rules {
                let m = if interpreted {
                    evaluation.evaluate_interpreted(rule)
                } else {
                    evaluation.evaluate(rule)
                };
                std::hint::black_box(m);
            }
            best = best.min(t.elapsed().as_secs_f64() * 1e6);
            runs += 1;
        }
        best
    };
    Ok((time(false), time(true)))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn write_report(args: &BenchArgs, workers: usize, results: &[CaseResult]) -> anyhow::Result<()> {
    use std::fmt::Write;
    let mut md = String::new();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Written by `segscore bench` ({}). Machine: {cores} cores, {}. Workers: {workers} (one ORT session \
         with 1 intra-op thread each). {} s per case after a 0.3 s warm-up. The load generator runs on the \
         same cores as the server.\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        cpu_model(),
        args.seconds
    )?;
    writeln!(
        md,
        "Reproduce: `make bench` (= `./target/release/segscore bench --seconds {}`).\n",
        args.seconds
    )?;
    writeln!(md, "## (a) In-process ONNX Runtime: the limit\n")?;
    writeln!(
        md,
        "| model | rows/call | rows/s | calls/s | p50 ms | p99 ms |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|")?;
    for r in results.iter().filter(|r| r.suite == "in_process") {
        writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3} |",
            r.model, r.rows_per_call, r.rows_per_second, r.calls_per_second, r.p50_ms, r.p99_ms
        )?;
    }
    writeln!(
        md,
        "\n## (b, c) Service over loopback gRPC (`Score` and OIP `ModelInfer`)\n"
    )?;
    writeln!(
        md,
        "| model | batching | rows/req | concurrency | req/s | rows/s | × in-process | p50 ms | p90 ms | p99 ms | max ms | errors | server RSS MiB |"
    )?;
    writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for r in results
        .iter()
        .filter(|r| r.suite != "in_process" && r.suite != "segments")
    {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
            r.model,
            if r.protocol == "oip" { "ModelInfer" } else { "Score" },
            if r.batching == Some(true) {
                "on"
            } else {
                "off"
            },
            r.rows_per_call,
            r.concurrency,
            r.calls_per_second,
            r.rows_per_second,
            r.ratio_to_in_process
                .map_or("-".into(), |x| format!("{x:.2}")),
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.errors,
            r.server_rss_mib.map_or("-".into(), |x| format!("{x:.0}")),
        )?;
    }
    let on = results.iter().find(|r| {
        r.suite == "service" && r.protocol == "score" && r.rows_per_call == 1 && r.concurrency == 64
    });
    let off = results
        .iter()
        .find(|r| r.suite == "service_batching_off" && r.concurrency == 64);
    if let (Some(on), Some(off)) = (on, off) {
        writeln!(
            md,
            "\nSingle-row requests at concurrency 64: batching on / off = {:.2}× requests/s.",
            on.calls_per_second / off.calls_per_second.max(1e-9)
        )?;
    }
    let segment_cases: Vec<&CaseResult> =
        results.iter().filter(|r| r.suite == "segments").collect();
    if !segment_cases.is_empty() {
        writeln!(
            md,
            "\n## (d) Segment rules: Score at {SEGMENT_CASE_ROWS} rows, every model, with and without segments\n"
        )?;
        writeln!(
            md,
            "Same server (`--segments {}`), same requests, concurrency 1; the second row also asks for every segment of the file. \
             Target: rows/s with segments ≥ 0.8 × without (≤ 25% extra time).\n",
            args.segments.display()
        )?;
        writeln!(
            md,
            "| models | segments | rows/s | p50 ms | p99 ms | × without segments | rules in-process µs (compiled / interpreter) |"
        )?;
        writeln!(md, "|---|---|---:|---:|---:|---:|---:|")?;
        for r in segment_cases {
            writeln!(
                md,
                "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {} |",
                r.model,
                if r.segments.is_empty() {
                    "none".to_string()
                } else {
                    r.segments.join(", ")
                },
                r.rows_per_second,
                r.p50_ms,
                r.p99_ms,
                r.ratio_to_without_segments
                    .map_or("-".into(), |x| format!("{x:.3}")),
                match (r.segment_eval_us, r.segment_eval_interpreted_us) {
                    (Some(c), Some(i)) => format!("{c:.0} / {i:.0}"),
                    _ => "-".into(),
                },
            )?;
        }
    }
    // Keep any hand-written analysis below the generated part.
    let analysis = std::fs::read_to_string(&args.output)
        .ok()
        .and_then(|old| old.find("\n## Analysis").map(|i| old[i..].to_string()))
        .unwrap_or_default();
    md.push_str(&analysis);
    std::fs::write(&args.output, md)
        .with_context(|| format!("writing {}", args.output.display()))?;
    Ok(())
}
