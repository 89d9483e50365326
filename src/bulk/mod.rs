//! `segscore score`: the bulk scoring job. Reads a CSV or Parquet file in
//! chunks of `--batch-rows`, sets invalid rows aside, scores the rest with one
//! or more models (in-process, or over `ScoreStream` against one or more
//! servers) and writes the id plus one score column per model, in input order,
//! to a Parquet or CSV file.
//!
//! The pipeline, each stage bounded so memory does not grow with the input:
//! - a reader thread ([`read`]) cuts the input into chunks and validates every
//!   row against every selected model's feature schema
//!   ([`FeatureSchema::row_errors`], the server's own checks), so each chunk
//!   sent on is all-valid and a bad row becomes a line in the rejects file
//!   (or, with `--strict`, the job's error naming its row and column);
//! - the scorer: embedded, the repository's engine with `--in-flight` chunks
//!   at once; remote, one `ScoreStream` per `--addr`, each pulling the next
//!   chunk from a shared queue whenever it has fewer than `--in-flight` chunks
//!   out, so faster servers take more of the work;
//! - a writer thread ([`write`]) puts chunks back in input order and writes
//!   them into numbered parts committed by an atomic checkpoint, which is what
//!   `--resume` restarts from; at the end the parts are assembled into the
//!   output. A window of chunks between dispatch and write bounds what the
//!   reorder buffer can hold when one server is slow.
//!
//! Rows are numbered from 0 (the first data row after a CSV header), in the
//! whole input whatever `--shard` is. Entity ids and feature values never go
//! to logs; the rejects file is data and holds row numbers, not values.

mod checkpoint;
mod chunk;
mod embedded;
mod pipeline;
mod plan;
pub mod progress;
pub mod read;
mod remote;
mod scorer;
pub mod select;
pub mod write;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::bail;
use tracing::info;

use self::{
    pipeline::PipelineParts,
    plan::Selected,
    read::{Format, Wanted},
    scorer::Scorer,
    select::Fallback,
    write::{ModelId, OutputColumn, PartWriter, Progress},
};
use crate::{
    config::ScoreArgs,
    features::{DType, FeatureSchema},
};

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub rows_read: u64,
    pub rows_scored: u64,
    pub rows_rejected: u64,
    /// This run's wall time (a resumed job counts only its own).
    pub seconds: f64,
    /// Rows this run read, per second.
    pub rows_per_second: f64,
    pub models: Vec<ModelId>,
    /// Models scored with another version than the one asked for
    /// (`--allow-fallback`).
    pub fallbacks: Vec<Fallback>,
    /// Per `--segments` entry: (name, member rows, rows the rule errored on).
    pub segments: Vec<(String, u64, u64)>,
    pub output: PathBuf,
    /// The rejects file; None when no row was rejected (none is written).
    pub rejects: Option<PathBuf>,
    /// The process's peak resident memory (VmHWM), when /proc has it.
    pub peak_rss_mib: Option<f64>,
}

/// Runs the job described by `args`.
pub async fn run(args: ScoreArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let output_format = Format::of(&args.output)?;
    Format::of(&args.input)?;
    let batch_rows = args.batch_rows.max(1);
    let choice = plan::parse_models(&args.models)?;
    let segment_names = plan::segment_names(&args.segments);
    let (scorer, selected) = if args.addr.is_empty() {
        let (embedded, selected) = embedded::open(&args, choice, &segment_names).await?;
        (Scorer::Embedded(embedded), selected)
    } else {
        let (remotes, selected) =
            remote::open(&args.addr, choice, &segment_names, args.allow_fallback).await?;
        (Scorer::Remote(remotes), selected)
    };
    if selected.is_empty() {
        bail!("no model to score with: none was found (or --models is empty)");
    }
    let models: Vec<ModelId> = selected.iter().map(|s| s.id.clone()).collect();
    let fallbacks: Vec<Fallback> = selected.iter().filter_map(|s| s.fallback.clone()).collect();
    let dtypes = plan::union_dtypes(selected.iter().flat_map(|s| s.schema.specs()))?;
    let columns = plan::output_columns(&args.id_column, &selected, &segment_names);

    // The checkpoint: resumed, or a fresh staging directory.
    let fingerprint = checkpoint::fingerprint(&args, output_format, batch_rows, &columns, &models)?;
    let staging = write::staging_dir(&args.output);
    let progress = checkpoint::open(&staging, args.resume, fingerprint)?;
    let before = (progress.rows_read, progress.complete);
    let progress = if progress.complete {
        progress
    } else {
        let job = Job {
            scorer,
            selected: &selected,
            segment_names: &segment_names,
            columns,
            dtypes,
            batch_rows,
        };
        score_rest(&args, &staging, progress, job).await?
    };

    let metadata = checkpoint::metadata(&progress, &models, &fallbacks)?;
    let rejects_path = checkpoint::rejects_path(&args);
    write::assemble(&staging, &progress, &args.output, &rejects_path, &metadata)?;
    let seconds = started.elapsed().as_secs_f64();
    let this_run = if before.1 {
        0
    } else {
        progress.rows_read - before.0
    };
    let summary = Summary {
        rows_read: progress.rows_read,
        rows_scored: progress.rows_scored,
        rows_rejected: progress.rows_rejected,
        seconds,
        rows_per_second: this_run as f64 / seconds.max(1e-9),
        models,
        fallbacks,
        segments: segment_counts(&segment_names, &progress),
        output: args.output.clone(),
        rejects: (progress.rows_rejected > 0).then_some(rejects_path),
        peak_rss_mib: peak_rss_mib(),
    };
    log_summary(&summary);
    Ok(summary)
}

/// What scoring the rest of the input needs, decided before the checkpoint.
struct Job<'a> {
    scorer: Scorer,
    selected: &'a [Selected],
    segment_names: &'a [String],
    columns: Vec<OutputColumn>,
    /// One dtype per input column the models read.
    dtypes: BTreeMap<String, DType>,
    batch_rows: usize,
}

/// Reads the input from the checkpoint's next chunk, scores and writes the
/// rest, and returns the completed checkpoint.
async fn score_rest(
    args: &ScoreArgs,
    staging: &Path,
    progress: Progress,
    job: Job<'_>,
) -> anyhow::Result<Progress> {
    let wanted = Wanted {
        id_column: args.id_column.clone(),
        features: job.dtypes.into_iter().collect(),
    };
    let opened = read::open(
        &args.input,
        &wanted,
        job.batch_rows,
        args.shard,
        progress.next_chunk,
    )?;
    plan::check_required_columns(&args.input, &opened.present, job.selected)?;
    let reporter = progress::Reporter::new(opened.rows_to_read);
    let writer = PartWriter::new(
        staging.to_path_buf(),
        progress.fingerprint.output_format,
        job.columns,
        args.part_rows,
        progress,
        args.fail_after_parts,
    );
    let schemas: Vec<(String, FeatureSchema)> = job
        .selected
        .iter()
        .map(|s| (s.id.name.clone(), s.schema.clone()))
        .collect();
    let mut progress = pipeline::pipeline(PipelineParts {
        input: args.input.clone(),
        chunks: opened.chunks,
        schemas,
        strict: args.strict,
        scorer: job.scorer,
        segment_names: job.segment_names.to_vec(),
        in_flight: args.in_flight.max(1),
        writer,
        reporter,
    })
    .await?;
    progress.complete = true;
    progress.save(staging)?;
    Ok(progress)
}

/// Per `--segments` entry: (name, member rows, rows the rule errored on).
fn segment_counts(names: &[String], progress: &Progress) -> Vec<(String, u64, u64)> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let count = |v: &[u64]| v.get(i).copied().unwrap_or(0);
            (
                name.clone(),
                count(&progress.segment_members),
                count(&progress.segment_errors),
            )
        })
        .collect()
}

/// The job's summary as log lines: counts, speed and versions, never ids.
fn log_summary(summary: &Summary) {
    let versions: Vec<String> = summary
        .models
        .iter()
        .map(|m| format!("{}:{}", m.name, m.version))
        .collect();
    info!(
        rows_read = summary.rows_read,
        rows_scored = summary.rows_scored,
        rows_rejected = summary.rows_rejected,
        seconds = summary.seconds,
        rows_per_second = summary.rows_per_second.round(),
        peak_rss_mib = summary.peak_rss_mib,
        models = versions.join(","),
        "scored"
    );
    for (segment, members, errors) in &summary.segments {
        info!(segment, members, errors, "segment rows");
    }
}

/// This process's peak resident set (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
