//! `segscore bench --bulk-input FILE`: the bulk scoring suite. Three runs
//! over the same rows and the same ONNX model versions: (a) in-process ORT,
//! the limit: the file read and encoded by a reader thread, each chunk scored
//! by every model on `workers` threads that own their sessions, timed as the
//! busiest thread's time inside `Session::run`; (b) `segscore score` embedded,
//! Parquet → Parquet, as a child process; (c) the same against one local
//! `segscore serve` child over ScoreStream. (b) and (c) are reported as ratios
//! to (a), with the peak RSS (VmHWM) of the client and the server.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use ndarray::Array2;
use serde::Serialize;

use super::{ort_signature, report::cpu_model, server::Server, BenchArgs};
use crate::{
    bulk::read::{self, Wanted},
    engine::{
        onnx::{self, OnnxBackend, OnnxSignature},
        Backend,
    },
    features::{FeatureBatch, FeatureSchema},
    repository::Manifest,
};

#[derive(Debug, Clone, Serialize)]
struct BulkResult {
    suite: &'static str,
    case: &'static str,
    rows: u64,
    seconds: f64,
    rows_per_second: f64,
    /// seconds / in-process ORT seconds.
    ratio_to_in_process: Option<f64>,
    client_peak_rss_mib: Option<f64>,
    server_peak_rss_mib: Option<f64>,
}

pub async fn run(
    args: &BenchArgs,
    input: &Path,
    models: &[(Manifest, PathBuf)],
    workers: usize,
) -> anyhow::Result<()> {
    let batch_rows = args.bulk_batch_rows.max(1);
    let names: Vec<String> = models
        .iter()
        .map(|(m, _)| format!("{}:{}", m.name, m.version))
        .collect();
    let mut results = Vec::new();

    let (rows, seconds) = in_process(args, input, models, batch_rows, workers)?;
    let ort = BulkResult {
        suite: "bulk",
        case: "in_process_ort",
        rows,
        seconds,
        rows_per_second: rows as f64 / seconds.max(1e-9),
        ratio_to_in_process: Some(1.0),
        client_peak_rss_mib: super::super::bulk::peak_rss_mib(),
        server_peak_rss_mib: None,
    };
    emit(&ort);
    results.push(ort);

    let out_dir = std::env::temp_dir().join(format!("segscore-bench-bulk-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)?;
    let embedded = score_child(
        args,
        input,
        &out_dir.join("embedded.parquet"),
        &names,
        batch_rows,
        workers,
        None,
    )?;
    let mut r = embedded.result("embedded", seconds);
    r.rows = rows.max(r.rows);
    emit(&r);
    results.push(r);

    let server = Server::start(args, workers, true)?;
    let remote = score_child(
        args,
        input,
        &out_dir.join("remote.parquet"),
        &names,
        batch_rows,
        workers,
        Some(&server.addr),
    );
    let server_peak = server.peak_rss_mib();
    server.stop()?;
    let mut r = remote?.result("remote_one_server", seconds);
    r.server_peak_rss_mib = server_peak;
    emit(&r);
    results.push(r);
    let _ = std::fs::remove_dir_all(&out_dir);

    write_section(args, input, &names, batch_rows, workers, &results)
}

fn emit(r: &BulkResult) {
    println!(
        "{}",
        serde_json::to_string(r).expect("plain struct serializes; this is a bug")
    );
}

/// (a): every row of `input`, every model; returns (rows, seconds of the
/// busiest worker inside ORT).
fn in_process(
    args: &BenchArgs,
    input: &Path,
    models: &[(Manifest, PathBuf)],
    batch_rows: usize,
    workers: usize,
) -> anyhow::Result<(u64, f64)> {
    let env = onnx::init_runtime(args.ort_dylib_path.as_deref())?;
    let schemas: Vec<FeatureSchema> = models
        .iter()
        .map(|(m, _)| FeatureSchema::new(m.features.clone()))
        .collect::<Result<_, _>>()?;
    let wanted = wanted(&schemas);
    let files = model_files(models)?;
    let (tx, rx) = crossbeam_channel::bounded::<Arc<Vec<Array2<f32>>>>(workers * 2);
    let handles: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let mut backends: Vec<OnnxBackend> = files
                .iter()
                .map(|(bytes, sig)| OnnxBackend::load(env, bytes, sig, 1))
                .collect::<Result<_, _>>()?;
            let rx = rx.clone();
            Ok(thread::spawn(move || -> anyhow::Result<Duration> {
                let mut busy = Duration::ZERO;
                for chunk in rx {
                    for (backend, matrix) in backends.iter_mut().zip(chunk.iter()) {
                        let t = Instant::now();
                        backend.score(matrix.view())?;
                        busy += t.elapsed();
                    }
                }
                Ok(busy)
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    drop(rx);
    let opened = read::open(input, &wanted, batch_rows, None, 0)?;
    let mut rows = 0u64;
    for raw in opened.chunks {
        let raw = raw?;
        let n = raw.ids.len();
        let batch = FeatureBatch::new(n, raw.columns)?;
        let encoded = schemas
            .iter()
            .map(|s| s.encode(&batch, 0..n))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: rows from {}", input.display(), raw.first_row))?;
        rows += n as u64;
        if tx.send(Arc::new(encoded)).is_err() {
            break;
        }
    }
    drop(tx);
    let mut busiest = Duration::ZERO;
    for h in handles {
        let busy = h
            .join()
            .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))??;
        busiest = busiest.max(busy);
    }
    Ok((rows, busiest.as_secs_f64()))
}

/// The columns to read: every feature any model uses, once, and the id.
fn wanted(schemas: &[FeatureSchema]) -> Wanted {
    let mut features = std::collections::BTreeMap::new();
    for s in schemas {
        for spec in s.specs() {
            features.insert(spec.name.clone(), spec.dtype);
        }
    }
    Wanted {
        id_column: "customer_id".into(),
        features: features.into_iter().collect(),
    }
}

/// Each model's ONNX bytes and signature, read once so every worker thread
/// loads its own sessions from memory.
fn model_files(models: &[(Manifest, PathBuf)]) -> anyhow::Result<Vec<(Vec<u8>, OnnxSignature)>> {
    models
        .iter()
        .map(|(m, dir)| Ok((std::fs::read(dir.join(&m.file))?, ort_signature(m))))
        .collect()
}

struct ChildRun {
    rows: u64,
    seconds: f64,
    peak_rss_mib: Option<f64>,
}

impl ChildRun {
    fn result(&self, case: &'static str, ort_seconds: f64) -> BulkResult {
        BulkResult {
            suite: "bulk",
            case,
            rows: self.rows,
            seconds: self.seconds,
            rows_per_second: self.rows as f64 / self.seconds.max(1e-9),
            ratio_to_in_process: Some(self.seconds / ort_seconds.max(1e-9)),
            client_peak_rss_mib: self.peak_rss_mib,
            server_peak_rss_mib: None,
        }
    }
}

/// Runs `segscore score` as a child and reads its summary log line.
fn score_child(
    args: &BenchArgs,
    input: &Path,
    output: &Path,
    models: &[String],
    batch_rows: usize,
    workers: usize,
    addr: Option<&str>,
) -> anyhow::Result<ChildRun> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["--log-format", "json", "score", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--model-repository")
        .arg(&args.model_repository)
        .arg("--models")
        .arg(models.join(","))
        .arg("--batch-rows")
        .arg(batch_rows.to_string())
        .arg("--workers")
        .arg(workers.to_string())
        .env("RUST_LOG", "info,ort=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(addr) = addr {
        cmd.arg("--addr").arg(addr);
    }
    if let Some(p) = &args.ort_dylib_path {
        cmd.arg("--ort-dylib-path").arg(p);
    }
    let started = Instant::now();
    let out = cmd.output().context("running segscore score")?;
    let wall = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("segscore score failed: {log}");
    }
    let summary = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "scored")
        .with_context(|| format!("no summary line from segscore score: {log}"))?;
    let f = &summary["fields"];
    Ok(ChildRun {
        rows: f["rows_read"].as_u64().unwrap_or(0),
        // The whole process: start-up (model load) included.
        seconds: wall,
        peak_rss_mib: f["peak_rss_mib"].as_f64(),
    })
}

const SECTION: &str = "\n## Bulk scoring";

fn write_section(
    args: &BenchArgs,
    input: &Path,
    models: &[String],
    batch_rows: usize,
    workers: usize,
    results: &[BulkResult],
) -> anyhow::Result<()> {
    use std::fmt::Write;
    let mut md = String::new();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let rows = results.first().map_or(0, |r| r.rows);
    writeln!(md, "{SECTION} ({rows} rows)\n")?;
    writeln!(
        md,
        "Written by `segscore bench --bulk-input {}` ({}). Machine: {cores} cores, {}. Models: {}; \
         {batch_rows} rows per chunk; {workers} workers (ORT sessions with 1 intra-op thread each) \
         in every case. In-process ORT is the busiest worker's time inside `Session::run` (reading \
         and encoding run on another thread); the `segscore score` cases are the child process's \
         wall time, start-up and model loading included, Parquet in and out. The remote server is \
         a `segscore serve` child on 127.0.0.1 sharing the same cores.\n",
        input.display(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        cpu_model(),
        models.join(", "),
    )?;
    writeln!(
        md,
        "Reproduce: `make bench-bulk ROWS={rows}` (= `make bulk-data ROWS={rows}`, then \
         `./target/release/segscore bench --bulk-input target/bulk/customers-{rows}.parquet`).\n"
    )?;
    writeln!(
        md,
        "| case | rows | seconds | rows/s | × in-process time (target) | client peak RSS MiB | server peak RSS MiB |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|")?;
    for r in results {
        let target = match r.case {
            "embedded" => " (≤ 1.3)",
            "remote_one_server" => " (≤ 2)",
            _ => "",
        };
        writeln!(
            md,
            "| {} | {} | {:.2} | {:.0} | {}{} | {} | {} |",
            r.case,
            r.rows,
            r.seconds,
            r.rows_per_second,
            r.ratio_to_in_process
                .map_or("-".into(), |x| format!("{x:.2}")),
            target,
            r.client_peak_rss_mib
                .map_or("-".into(), |x| format!("{x:.0}")),
            r.server_peak_rss_mib
                .map_or("-".into(), |x| format!("{x:.0}")),
        )?;
    }
    // Replace an earlier bulk section; keep everything else.
    let old = std::fs::read_to_string(&args.output).unwrap_or_default();
    let mut text = match old.find(SECTION) {
        Some(i) => {
            let rest = &old[i + SECTION.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |j| i + SECTION.len() + j);
            format!("{}{}", &old[..i], &old[end..])
        }
        None => old,
    };
    if !text.ends_with('\n') && !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&md);
    std::fs::write(&args.output, text)
        .with_context(|| format!("writing {}", args.output.display()))?;
    Ok(())
}
