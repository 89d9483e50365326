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

pub mod progress;
pub mod read;
pub mod select;
pub mod write;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{bail, Context};
use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::Channel;
use tracing::info;

use self::{
    read::{Format, RawChunk, Reject, Wanted},
    select::{Candidates, Fallback},
    write::{Fingerprint, ModelId, OutputColumn, OutputKind, PartWriter, Progress, Scored},
};
use crate::{
    config::ScoreArgs,
    features::{DType, FeatureBatch, FeatureSchema, FeatureSpec},
    infer,
    proto::pb::{self, scoring_client::ScoringClient},
    repository::{ModelOutput, Repository, Task},
    segments::{Membership, Segments},
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

/// A model selection from `--models`: `name` or `name:version`.
fn parse_model(spec: &str) -> anyhow::Result<(String, u64)> {
    match spec.split_once(':') {
        None => Ok((spec.trim().to_string(), 0)),
        Some((name, version)) => Ok((
            name.trim().to_string(),
            version
                .trim()
                .parse()
                .with_context(|| format!("--models {spec}: version must be a number"))?,
        )),
    }
}

/// Where chunks are scored.
enum Scorer {
    /// In this process, through the scoring core: the models at the versions
    /// chosen for the job, in output order.
    Embedded(infer::Scorer, Vec<infer::ModelRef>),
    Remote(Vec<Remote>),
}

struct Remote {
    addr: String,
    client: ScoringClient<Channel>,
    refs: Vec<pb::ModelRef>,
    /// `--segments`, sent with every chunk.
    segments: Vec<String>,
}

/// A model chosen for the job, with the schema rows are checked against.
struct Selected {
    id: ModelId,
    schema: FeatureSchema,
    /// A clustering model: its output adds a cluster id column.
    clustering: bool,
    /// Scored with another version than the one asked for.
    fallback: Option<Fallback>,
}

/// A validated chunk on its way to a scorer.
struct Prepared {
    ordinal: u64,
    chunk: u64,
    first_row: u64,
    rows_read: u64,
    ids: Vec<String>,
    /// The valid rows; None when every row was rejected.
    batch: Option<FeatureBatch>,
    rejects: Vec<Reject>,
}

impl Prepared {
    fn scored(self, scores: Vec<ModelOutput>, segments: Vec<Membership>) -> Scored {
        Scored {
            ordinal: self.ordinal,
            chunk: self.chunk,
            rows_read: self.rows_read,
            ids: self.ids,
            scores,
            segments,
            rejects: self.rejects,
        }
    }
}

/// Runs the job described by `args`.
pub async fn run(args: ScoreArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let output_format = Format::of(&args.output)?;
    Format::of(&args.input)?;
    let batch_rows = args.batch_rows.max(1);
    let in_flight = args.in_flight.max(1);
    let rejects_path = args.rejects.clone().unwrap_or_else(|| {
        let mut p = args.output.as_os_str().to_os_string();
        p.push(".rejects.csv");
        PathBuf::from(p)
    });
    let choice: Vec<(String, u64)> = args
        .models
        .iter()
        .filter(|m| !m.trim().is_empty())
        .map(|m| parse_model(m))
        .collect::<anyhow::Result<_>>()?;
    let segment_names: Vec<String> = args
        .segments
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let (scorer, selected) = if args.addr.is_empty() {
        embedded(&args, choice, &segment_names).await?
    } else {
        remote(&args.addr, choice, &segment_names, args.allow_fallback).await?
    };
    if selected.is_empty() {
        bail!("no model to score with: none was found (or --models is empty)");
    }
    let models: Vec<ModelId> = selected.iter().map(|s| s.id.clone()).collect();
    let fallbacks: Vec<Fallback> = selected.iter().filter_map(|s| s.fallback.clone()).collect();
    let dtypes = union_dtypes(selected.iter().flat_map(|s| s.schema.specs()))?;
    let mut columns = vec![OutputColumn {
        name: args.id_column.clone(),
        kind: OutputKind::Id,
    }];
    for (i, s) in selected.iter().enumerate() {
        columns.push(OutputColumn {
            name: s.id.name.clone(),
            kind: OutputKind::Score { model: i },
        });
        if s.clustering {
            columns.push(OutputColumn {
                name: format!("{}_cluster", s.id.name),
                kind: OutputKind::Cluster { model: i },
            });
        }
    }
    columns.extend(
        segment_names
            .iter()
            .enumerate()
            .map(|(i, name)| OutputColumn {
                name: format!("{}{name}", crate::segments::stats::COLUMN_PREFIX),
                kind: OutputKind::Segment { segment: i },
            }),
    );

    // The checkpoint: resumed, or a fresh staging directory.
    let input_meta = std::fs::metadata(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    let fingerprint = Fingerprint {
        input: std::path::absolute(&args.input)
            .unwrap_or_else(|_| args.input.clone())
            .display()
            .to_string(),
        input_bytes: input_meta.len(),
        input_modified_ns: input_meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos()),
        output_format,
        shard: args.shard.map(|s| s.to_string()),
        batch_rows,
        id_column: args.id_column.clone(),
        columns: columns.clone(),
        models: models.clone(),
    };
    let staging = write::staging_dir(&args.output);
    let resumed = if args.resume {
        if staging.is_dir() {
            Progress::load_and_clean(&staging)?
        } else {
            None
        }
    } else {
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("removing the stale {}", staging.display()))?;
        }
        None
    };
    let progress = match resumed {
        Some(p) => {
            if let Some(why) = fingerprint.mismatch(&p.fingerprint) {
                bail!(
                    "cannot --resume from {}: {why}; rerun without --resume to start over",
                    staging.display()
                );
            }
            info!(
                parts = p.parts.len(),
                next_chunk = p.next_chunk,
                rows_read = p.rows_read,
                "resuming"
            );
            p
        }
        None => {
            std::fs::create_dir_all(&staging)
                .with_context(|| format!("creating {}", staging.display()))?;
            let p = Progress {
                fingerprint,
                parts: Vec::new(),
                next_chunk: 0,
                rows_read: 0,
                rows_scored: 0,
                rows_rejected: 0,
                segment_members: Vec::new(),
                segment_errors: Vec::new(),
                complete: false,
            };
            p.save(&staging)?;
            p
        }
    };
    let before = (progress.rows_read, progress.complete);

    let final_progress = if progress.complete {
        progress
    } else {
        let wanted = Wanted {
            id_column: args.id_column.clone(),
            features: dtypes.into_iter().collect(),
        };
        let opened = read::open(
            &args.input,
            &wanted,
            batch_rows,
            args.shard,
            progress.next_chunk,
        )?;
        // A column a model rejects when missing must be in the file: that is
        // the whole file's problem, not a row's.
        let present: BTreeSet<&str> = opened.present.iter().map(String::as_str).collect();
        for s in &selected {
            for spec in s.schema.specs() {
                if !present.contains(spec.name.as_str())
                    && matches!(spec.missing, crate::features::MissingPolicy::Reject)
                {
                    bail!(
                        "{}: no column `{}`, which model `{}` requires (missing = \"reject\")",
                        args.input.display(),
                        spec.name,
                        s.id.name
                    );
                }
            }
        }
        let reporter = progress::Reporter::new(opened.rows_to_read);
        let writer = PartWriter::new(
            staging.clone(),
            output_format,
            columns,
            args.part_rows,
            progress,
            args.fail_after_parts,
        );
        let schemas: Vec<(String, FeatureSchema)> = selected
            .iter()
            .map(|s| (s.id.name.clone(), s.schema.clone()))
            .collect();
        let mut progress = pipeline(PipelineParts {
            input: args.input.clone(),
            chunks: opened.chunks,
            schemas,
            strict: args.strict,
            scorer,
            segment_names: segment_names.clone(),
            in_flight,
            writer,
            reporter,
        })
        .await?;
        progress.complete = true;
        progress.save(&staging)?;
        progress
    };

    let mut metadata = serde_json::Map::new();
    metadata.insert("models".into(), serde_json::to_value(&models)?);
    if !fallbacks.is_empty() {
        metadata.insert("fallbacks".into(), serde_json::to_value(&fallbacks)?);
    }
    metadata.insert(
        "columns".into(),
        serde_json::to_value(
            final_progress
                .fingerprint
                .columns
                .iter()
                .map(|c| &c.name)
                .collect::<Vec<_>>(),
        )?,
    );
    metadata.insert(
        "input".into(),
        final_progress.fingerprint.input.clone().into(),
    );
    if let Some(shard) = &final_progress.fingerprint.shard {
        metadata.insert("shard".into(), shard.clone().into());
    }
    metadata.insert("rows_read".into(), final_progress.rows_read.into());
    metadata.insert("rows_scored".into(), final_progress.rows_scored.into());
    metadata.insert("rows_rejected".into(), final_progress.rows_rejected.into());
    metadata.insert("segscore_version".into(), env!("CARGO_PKG_VERSION").into());
    write::assemble(
        &staging,
        &final_progress,
        &args.output,
        &rejects_path,
        &metadata,
    )?;

    let seconds = started.elapsed().as_secs_f64();
    let this_run = if before.1 {
        0
    } else {
        final_progress.rows_read - before.0
    };
    let summary = Summary {
        rows_read: final_progress.rows_read,
        rows_scored: final_progress.rows_scored,
        rows_rejected: final_progress.rows_rejected,
        seconds,
        rows_per_second: this_run as f64 / seconds.max(1e-9),
        models,
        fallbacks,
        segments: segment_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let count = |v: &[u64]| v.get(i).copied().unwrap_or(0);
                (
                    name.clone(),
                    count(&final_progress.segment_members),
                    count(&final_progress.segment_errors),
                )
            })
            .collect(),
        output: args.output.clone(),
        rejects: (final_progress.rows_rejected > 0).then_some(rejects_path),
        peak_rss_mib: peak_rss_mib(),
    };
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
    Ok(summary)
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

struct PipelineParts {
    input: PathBuf,
    chunks: Box<dyn Iterator<Item = anyhow::Result<RawChunk>> + Send>,
    schemas: Vec<(String, FeatureSchema)>,
    strict: bool,
    scorer: Scorer,
    /// `--segments`, in output column order.
    segment_names: Vec<String>,
    in_flight: usize,
    writer: PartWriter,
    reporter: progress::Reporter,
}

/// Reader thread → scorer(s) → writer thread; returns the final checkpoint.
async fn pipeline(parts: PipelineParts) -> anyhow::Result<Progress> {
    let PipelineParts {
        input,
        chunks,
        schemas,
        strict,
        scorer,
        segment_names,
        in_flight,
        mut writer,
        mut reporter,
    } = parts;
    let servers = match &scorer {
        Scorer::Embedded(..) => 1,
        Scorer::Remote(r) => r.len(),
    };
    // Chunks between dispatch and write: enough to keep every stream full,
    // few enough that the reorder buffer stays small.
    let window = Arc::new(Semaphore::new(2 * in_flight * servers + 2));

    let (prep_tx, mut prep_rx) = mpsc::channel::<Prepared>(2);
    let reader = std::thread::Builder::new()
        .name("bulk-reader".into())
        .spawn(move || -> anyhow::Result<()> {
            for (ordinal, raw) in chunks.enumerate() {
                let prepared = prepare(&input, &schemas, raw?, ordinal as u64)?;
                if strict {
                    if let Some(r) = prepared.rejects.first() {
                        bail!(
                            "{}: row {} column `{}`: {} (--strict; rows are numbered from 0)",
                            input.display(),
                            r.row,
                            r.column,
                            r.reason
                        );
                    }
                }
                if prep_tx.blocking_send(prepared).is_err() {
                    break; // the scorer stopped; its error is the job's
                }
            }
            Ok(())
        })
        .context("starting the reader thread")?;

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Scored>();
    let writer_window = window.clone();
    let writer_task = tokio::task::spawn_blocking(move || -> anyhow::Result<Progress> {
        let mut next = 0u64;
        let mut pending = BTreeMap::new();
        let result = (|| {
            while let Some(scored) = done_rx.blocking_recv() {
                pending.insert(scored.ordinal, scored);
                while let Some(s) = pending.remove(&next) {
                    let rows = s.rows_read;
                    writer.write(s)?;
                    reporter.advance(rows);
                    writer_window.add_permits(1);
                    next += 1;
                }
            }
            // Whatever arrived contiguously is complete: commit it, so even
            // a failed run leaves something for --resume.
            writer.commit()
        })();
        reporter.finish();
        if result.is_err() {
            // Unblocks the dispatcher, which waits for window slots that
            // this thread will no longer return.
            writer_window.close();
        }
        result.map(|()| writer.progress)
    });

    let scoring = async {
        match scorer {
            Scorer::Embedded(scorer, models) => {
                let window = window.clone();
                let scored = futures::stream::poll_fn(|cx| prep_rx.poll_recv(cx))
                    .then(|p| {
                        let window = window.clone();
                        async move {
                            // Closed only when the writer failed; the send
                            // below then fails and ends the loop.
                            if let Ok(permit) = window.acquire().await {
                                permit.forget();
                            }
                            p
                        }
                    })
                    .map(|mut p| {
                        let (scorer, models) = (&scorer, &models);
                        let names = &segment_names;
                        async move {
                            let Some(batch) = p.batch.take() else {
                                return anyhow::Ok(p.scored(
                                    vec![ModelOutput::default(); models.len()],
                                    vec![Membership::default(); names.len()],
                                ));
                            };
                            let request = infer::Request {
                                models: models.clone(),
                                segments: names.clone(),
                                entity_ids: Vec::new(),
                                features: batch,
                            };
                            let scored = scorer.score(request, None).await?;
                            let scores = scored.models.into_iter().map(|m| m.output).collect();
                            let memberships =
                                scored.segments.into_iter().map(|s| s.membership).collect();
                            anyhow::Ok(p.scored(scores, memberships))
                        }
                    })
                    .buffered(in_flight);
                let mut scored = std::pin::pin!(scored);
                while let Some(s) = scored.next().await {
                    if done_tx.send(s?).is_err() {
                        break;
                    }
                }
                Ok(())
            }
            Scorer::Remote(remotes) => {
                let (work_tx, work_rx) = mpsc::channel::<Prepared>(1);
                let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
                let model_count = remotes.first().map_or(0, |r| r.refs.len());
                let dispatch = async {
                    while let Some(p) = prep_rx.recv().await {
                        let Ok(permit) = window.acquire().await else {
                            break; // the writer failed
                        };
                        permit.forget();
                        if p.batch.is_none() {
                            let _ = done_tx.send(p.scored(
                                vec![ModelOutput::default(); model_count],
                                vec![Membership::default(); segment_names.len()],
                            ));
                        } else if work_tx.send(p).await.is_err() {
                            break;
                        }
                    }
                    drop(work_tx);
                    anyhow::Ok(())
                };
                let streams = remotes
                    .into_iter()
                    .map(|r| stream_to(r, work_rx.clone(), done_tx.clone(), in_flight));
                let (dispatched, _) =
                    futures::future::try_join(dispatch, futures::future::try_join_all(streams))
                        .await?;
                Ok(dispatched)
            }
        }
    };
    let scored: anyhow::Result<()> = scoring.await;
    drop(done_tx);
    // The reader may be blocked sending: dropping the receiver frees it.
    drop(prep_rx);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    // The writer's error first: a failed writer also fails the scorer.
    let progress = writer_task.await.context("the writer thread panicked")??;
    read?;
    scored?;
    Ok(progress)
}

/// Validates a chunk against every model: rows with any invalid value are
/// set aside, the rest form the batch that is scored.
fn prepare(
    input: &Path,
    schemas: &[(String, FeatureSchema)],
    raw: RawChunk,
    ordinal: u64,
) -> anyhow::Result<Prepared> {
    let n = raw.ids.len();
    let first = raw.first_row;
    // (row, column) → reason; the first reason found wins (a cell that did
    // not parse is also missing, and "not a number" says more).
    let mut bad: BTreeMap<(u64, String), String> = BTreeMap::new();
    for r in raw.bad_cells {
        bad.entry((r.row, r.column)).or_insert(r.reason);
    }
    let batch = FeatureBatch::new(n, raw.columns)
        .with_context(|| format!("{}: rows from {first}", input.display()))?;
    for (model, schema) in schemas {
        let errors = schema.row_errors(&batch).map_err(|e| {
            anyhow::anyhow!(
                "{}: model `{model}`: feature `{}`: {}",
                input.display(),
                e.feature(),
                e.reason()
            )
        })?;
        for e in errors {
            let row = first
                + e.row()
                    .expect("row_errors returns row errors; this is a bug")
                    as u64;
            bad.entry((row, e.feature().to_string()))
                .or_insert_with(|| e.reason());
        }
    }
    let rejects: Vec<Reject> = bad
        .into_iter()
        .map(|((row, column), reason)| Reject {
            row,
            column,
            reason,
        })
        .collect();
    let bad_rows: BTreeSet<usize> = rejects.iter().map(|r| (r.row - first) as usize).collect();
    let (ids, batch) = if bad_rows.is_empty() {
        (raw.ids, Some(batch))
    } else {
        let keep: Vec<usize> = (0..n).filter(|i| !bad_rows.contains(i)).collect();
        let ids = keep.iter().map(|&i| raw.ids[i].clone()).collect();
        (ids, batch.select_rows(&keep).ok())
    };
    Ok(Prepared {
        ordinal,
        chunk: raw.chunk,
        first_row: first,
        rows_read: n as u64,
        ids,
        batch,
        rejects,
    })
}

/// One ScoreStream to one server: sends chunks from the shared queue while
/// fewer than `in_flight` are unanswered, hands each answer to the writer.
async fn stream_to(
    remote: Remote,
    work: Arc<tokio::sync::Mutex<mpsc::Receiver<Prepared>>>,
    done: mpsc::UnboundedSender<Scored>,
    in_flight: usize,
) -> anyhow::Result<()> {
    let Remote {
        addr,
        mut client,
        refs,
        segments,
    } = remote;
    let wanted_segments = segments.clone();
    let (req_tx, mut req_rx) = mpsc::channel::<pb::ScoreRequest>(in_flight);
    // Chunks sent and not yet answered, in send order (the server answers a
    // stream in request order).
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Prepared>();
    let slots = Arc::new(Semaphore::new(in_flight));
    let outbound = futures::stream::poll_fn(move |cx| req_rx.poll_recv(cx));
    // No grpc-timeout: the stream lives as long as the job, and the server's
    // default deadline bounds each chunk.
    let request = tonic::Request::new(outbound);
    let send = {
        let slots = slots.clone();
        let refs = refs.clone();
        async move {
            loop {
                slots
                    .acquire()
                    .await
                    .expect("slots are never closed; this is a bug")
                    .forget();
                let next = work.lock().await.recv().await;
                let Some(mut p) = next else { break };
                let batch = p
                    .batch
                    .take()
                    .expect("only chunks with rows are queued; this is a bug");
                let request = pb::ScoreRequest {
                    sequence: p.ordinal,
                    entity_ids: Vec::new(), // ids stay on this side of the wire
                    features: Some(batch.into()),
                    models: refs.clone(),
                    segments: segments.clone(),
                };
                if sent_tx.send(p).is_err() || req_tx.send(request).await.is_err() {
                    break;
                }
            }
            anyhow::Ok(())
        }
    };
    let receive = async {
        let mut responses = client
            .score_stream(request)
            .await
            .map_err(|s| anyhow::anyhow!("{addr}: ScoreStream: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        loop {
            let message = responses.message().await.map_err(|s| {
                anyhow::anyhow!("{addr}: ScoreStream: {:?}: {}", s.code(), s.message())
            })?;
            let Some(resp) = message else { break };
            let p = sent_rx
                .recv()
                .await
                .with_context(|| format!("{addr}: an answer to a chunk that was not sent"))?;
            if resp.sequence != p.ordinal {
                bail!(
                    "{addr}: answer for chunk {} arrived where chunk {} was expected",
                    resp.sequence,
                    p.ordinal
                );
            }
            if let Some(e) = resp.error {
                bail!(
                    "{addr}: the chunk of input rows from {} failed: {:?}: {}",
                    p.first_row,
                    tonic::Code::from_i32(e.code),
                    e.message
                );
            }
            let scores: Vec<ModelOutput> = resp
                .models
                .into_iter()
                .map(|m| ModelOutput {
                    scores: m.scores,
                    cluster_ids: m.cluster_ids,
                    probabilities: m.probabilities,
                    labels: m.labels,
                })
                .collect();
            if scores.len() != refs.len() || scores.iter().any(|s| s.scores.len() != p.ids.len()) {
                bail!("{addr}: a malformed answer for chunk {}", p.chunk);
            }
            // Membership in --segments order, whatever order the server used.
            let memberships = wanted_segments
                .iter()
                .map(|name| {
                    resp.segments
                        .iter()
                        .find(|m| &m.name == name)
                        .map(|m| Membership {
                            member_rows: m.member_rows.clone(),
                            errors: m.errors.iter().map(|e| (e.row, e.reason.clone())).collect(),
                        })
                        .with_context(|| {
                            format!("{addr}: no membership for segment `{name}` in the answer")
                        })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            slots.add_permits(1);
            if done.send(p.scored(scores, memberships)).is_err() {
                bail!("the writer stopped");
            }
        }
        anyhow::Ok(())
    };
    futures::future::try_join(send, receive).await?;
    // Every chunk sent must have been answered.
    if sent_rx.try_recv().is_ok() {
        bail!("{addr}: the stream ended before every chunk was answered");
    }
    Ok(())
}

async fn embedded(
    args: &ScoreArgs,
    choice: Vec<(String, u64)>,
    segment_names: &[String],
) -> anyhow::Result<(Scorer, Vec<Selected>)> {
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
            let candidates = Candidates::from_entry(entry);
            Ok((name, version, candidates))
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
    // A job's own core: its repository and rules are read once, and its
    // chunk size (--batch-rows) is the only row limit.
    let scorer = infer::Scorer::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(repository)),
        Arc::new(arc_swap::ArcSwap::from_pointee(segments)),
        usize::MAX,
        None,
    );
    Ok((Scorer::Embedded(scorer, refs), selected))
}

/// `choice` plus, at their default versions, the models segment rules read
/// that it does not name: they are scored, and written, like the others.
fn with_models(mut choice: Vec<(String, u64)>, needed: &[String]) -> Vec<(String, u64)> {
    for name in needed {
        if !choice.iter().any(|(n, _)| n == name) {
            choice.push((name.clone(), 0));
        }
    }
    choice
}

async fn remote(
    addrs: &[String],
    choice: Vec<(String, u64)>,
    segment_names: &[String],
    allow_fallback: bool,
) -> anyhow::Result<(Scorer, Vec<Selected>)> {
    let mut choice = choice;
    let mut remotes = Vec::new();
    let mut selected: Option<Vec<Selected>> = None;
    for addr in addrs {
        let channel = Channel::from_shared(addr.clone())
            .with_context(|| format!("--addr {addr}: not a URL such as http://127.0.0.1:50051"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let mut client = ScoringClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let listed = client
            .list_models(pb::ListModelsRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("{addr}: ListModels: {:?}: {}", s.code(), s.message()))?
            .into_inner()
            .models;
        if selected.is_none() && !segment_names.is_empty() {
            let listed = client
                .list_segments(pb::ListSegmentsRequest {})
                .await
                .map_err(|s| {
                    anyhow::anyhow!("{addr}: ListSegments: {:?}: {}", s.code(), s.message())
                })?
                .into_inner()
                .segments;
            let mut needed = Vec::new();
            for name in segment_names {
                let info = listed.iter().find(|s| &s.name == name).with_context(|| {
                    format!(
                        "segment `{name}` is not served by {addr} (it has: {})",
                        listed
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                if !info.reason.is_empty() {
                    bail!("{addr}: segment `{name}` was refused: {}", info.reason);
                }
                needed.extend(info.models.iter().cloned());
            }
            if !choice.is_empty() {
                choice = with_models(choice, &needed);
            }
        }
        // The first server decides the versions (the ones it would serve
        // if every version loaded, unless pinned: see `select`); every other
        // server must serve exactly those.
        let pinned: Vec<(String, u64)> = match &selected {
            Some(s) => s
                .iter()
                .map(|m| (m.id.name.clone(), m.id.version))
                .collect(),
            // Every model listed, not only those with a serving version: a
            // model that failed must fail the job, not lose its column.
            None if choice.is_empty() => listed.iter().map(|m| (m.name.clone(), 0)).collect(),
            None => choice.clone(),
        };
        let requests = pinned
            .into_iter()
            .map(|(name, version)| {
                let info = listed.iter().find(|m| m.name == name).with_context(|| {
                    format!(
                        "model `{name}` not found on {addr} (it has: {})",
                        listed
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                let candidates = Candidates::from_info(info, addr);
                Ok((name, version, candidates))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut here = Vec::new();
        for chosen in select::choose(&requests, allow_fallback)? {
            let name = chosen.name;
            let info = listed
                .iter()
                .find(|m| m.name == name)
                .expect("chosen from the listed models; this is a bug");
            // Pin the version the schema came from, so a concurrent deploy
            // cannot pair this schema with another version's model.
            let version = chosen.version;
            let v = info
                .versions
                .iter()
                .find(|v| v.version == version && v.state == pb::VersionState::Serving as i32)
                .with_context(|| {
                    format!("model `{name}` version {version} is not serving on {addr}")
                })?;
            let specs = v
                .features
                .iter()
                .map(FeatureSpec::try_from)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("{addr}: model `{name}`: {e}"))?;
            let schema = FeatureSchema::new(specs)
                .map_err(|e| anyhow::anyhow!("{addr}: model `{name}`: {e}"))?;
            here.push(Selected {
                id: ModelId {
                    name: name.clone(),
                    version,
                    sha256: v.sha256.clone(),
                },
                schema,
                clustering: v.task == pb::Task::Clustering as i32,
                fallback: chosen.fallback,
            });
        }
        if let Some(first) = &selected {
            for (a, b) in first.iter().zip(&here) {
                if a.id != b.id {
                    bail!(
                        "{addr} serves model `{}` version {} with sha256 {}, but {} has {}",
                        b.id.name,
                        b.id.version,
                        b.id.sha256,
                        addrs[0],
                        a.id.sha256
                    );
                }
            }
        }
        let refs = here
            .iter()
            .map(|s| pb::ModelRef {
                name: s.id.name.clone(),
                version: s.id.version,
                label: String::new(),
            })
            .collect();
        remotes.push(Remote {
            addr: addr.clone(),
            client,
            refs,
            segments: segment_names.to_vec(),
        });
        selected.get_or_insert(here);
    }
    Ok((Scorer::Remote(remotes), selected.unwrap_or_default()))
}

/// One dtype per feature name across the selected models; a conflict means
/// one input column cannot feed both models.
fn union_dtypes<'a>(
    specs: impl Iterator<Item = &'a FeatureSpec>,
) -> anyhow::Result<BTreeMap<String, DType>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        if let Some(prev) = out.insert(spec.name.clone(), spec.dtype) {
            if prev != spec.dtype {
                bail!(
                    "feature `{}` is {} in one model and {} in another",
                    spec.name,
                    prev,
                    spec.dtype
                );
            }
        }
    }
    Ok(out)
}
