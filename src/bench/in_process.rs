//! Case (a), the limit: in-process ONNX Runtime with one session per worker
//! thread and no service around it, so every service figure can be read as
//! a fraction of what the model itself allows on this machine.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use ndarray::Array2;

use super::{
    emit, load_rows, ort_signature, report::summarize, tile, BenchArgs, CaseResult, IN_PROCESS_ROWS,
};
use crate::{
    engine::{
        onnx::{self, OnnxBackend},
        Backend,
    },
    repository::Manifest,
};

/// Every model at every `IN_PROCESS_ROWS` size, in that order.
pub(super) fn suite(
    args: &BenchArgs,
    models: &[(Manifest, PathBuf)],
    workers: usize,
) -> anyhow::Result<Vec<CaseResult>> {
    let mut results = Vec::new();
    for (manifest, dir) in models {
        let input = load_rows(&args.input, manifest)?;
        for rows in IN_PROCESS_ROWS {
            let r = case(args, manifest, dir, &input, rows, workers)?;
            emit(&r);
            results.push(r);
        }
    }
    Ok(results)
}

/// One case: every worker thread calls its own session with the same
/// `rows`-row matrix for `--seconds`, after three unmeasured warm-up calls.
fn case(
    args: &BenchArgs,
    manifest: &Manifest,
    dir: &Path,
    input: &Array2<f32>,
    rows: usize,
    workers: usize,
) -> anyhow::Result<CaseResult> {
    let env = onnx::init_runtime(args.ort_dylib_path.as_deref())?;
    let bytes = std::fs::read(dir.join(&manifest.file))?;
    let signature = ort_signature(manifest);
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
