//! Output: numbered part files under `<output>.parts/`, a checkpoint that
//! commits them, and the final assembly into `--output` and the rejects file.
//!
//! Crash safety rests on one rule: a part exists for `--resume` only once the
//! checkpoint (`progress.json`, replaced atomically by write-to-temp, fsync,
//! rename) lists it, and a part is complete on disk (written as `*.tmp`,
//! fsynced, renamed) before the checkpoint that lists it is written. Anything
//! in the staging directory the checkpoint does not list is debris from a
//! crash and is deleted on resume; the checkpoint's `next_chunk` is where the
//! reader starts again. Assembly (concatenating the parts in order into a temp
//! file renamed over `--output`) only reads the staging directory, so it can be
//! repeated after a crash with the same result, and the directory is removed
//! last.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context};
use arrow_array::{ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::{
    arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ArrowWriter},
    basic::Compression,
    file::{metadata::KeyValue, properties::WriterProperties},
};
use serde::{Deserialize, Serialize};

use super::read::{Format, Reject};
use crate::{repository::ModelOutput, segments::Membership};

/// What an output column holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// The input's id column, as text.
    Id,
    /// Model `model`'s score (f32), in `--models` order.
    Score { model: usize },
    /// Clustering model `model`'s cluster id (u32), next to its score (the
    /// distance to the centroid).
    Cluster { model: usize },
    /// Membership of segment `segment` (in `--segments` order): true, false,
    /// or null where the rule could not be evaluated on the row.
    Segment { segment: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputColumn {
    pub name: String,
    pub kind: OutputKind,
}

/// A model that scored the file, for the metadata and the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelId {
    pub name: String,
    pub version: u64,
    pub sha256: String,
}

/// One scored chunk, in input order once the writer has reordered it.
#[derive(Debug)]
pub struct Scored {
    /// Position in this run's dispatch order (dense, from 0).
    pub ordinal: u64,
    /// Chunk number in the input (the checkpoint's unit).
    pub chunk: u64,
    pub rows_read: u64,
    /// Ids of the valid rows, in input order.
    pub ids: Vec<String>,
    /// Per model: one score per valid row (and, clustering, one cluster id).
    pub scores: Vec<ModelOutput>,
    /// Per segment: membership of the valid rows.
    pub segments: Vec<Membership>,
    pub rejects: Vec<Reject>,
}

/// One segment's membership as a column of `rows` values: true for
/// members, null for rows the rule errored on, false otherwise.
fn membership_column(m: &Membership, rows: usize) -> Vec<Option<bool>> {
    let mut column = vec![Some(false); rows];
    for &r in &m.member_rows {
        column[r as usize] = Some(true);
    }
    for (r, _) in &m.errors {
        column[*r as usize] = None;
    }
    column
}

/// What makes a staging directory resumable by this run: the same input
/// file (path, size, mtime), options that change chunking or content, and
/// the same model versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub input: String,
    pub input_bytes: u64,
    pub input_modified_ns: u128,
    pub output_format: Format,
    pub shard: Option<String>,
    pub batch_rows: usize,
    pub id_column: String,
    pub columns: Vec<OutputColumn>,
    pub models: Vec<ModelId>,
}

impl Fingerprint {
    /// Why `other` (found on disk) cannot be resumed by this run, if it cannot.
    pub fn mismatch(&self, other: &Fingerprint) -> Option<&'static str> {
        if self.input != other.input
            || self.input_bytes != other.input_bytes
            || self.input_modified_ns != other.input_modified_ns
        {
            Some("the input file changed")
        } else if self.models != other.models || self.columns != other.columns {
            Some("the models or their versions changed")
        } else if self.shard != other.shard
            || self.batch_rows != other.batch_rows
            || self.id_column != other.id_column
            || self.output_format != other.output_format
        {
            Some("--shard, --batch-rows, --id-column or the output format changed")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartRecord {
    pub file: String,
    pub rejects_file: String,
    pub rows: u64,
    /// Rejected rows (not cells: `rejects_file` has a line per bad cell).
    pub rejects: u64,
}

/// The checkpoint: every committed part and where the input continues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub fingerprint: Fingerprint,
    pub parts: Vec<PartRecord>,
    /// The first chunk no committed part holds.
    pub next_chunk: u64,
    pub rows_read: u64,
    pub rows_scored: u64,
    /// Rows with at least one bad cell.
    pub rows_rejected: u64,
    /// Per `--segments` entry: member rows and rows the rule errored on, in
    /// committed parts.
    #[serde(default)]
    pub segment_members: Vec<u64>,
    #[serde(default)]
    pub segment_errors: Vec<u64>,
    /// Every chunk is in a committed part; only assembly is left.
    pub complete: bool,
}

pub const PROGRESS_FILE: &str = "progress.json";

/// `<output>.parts`, next to the output so renames stay on one filesystem.
pub fn staging_dir(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".parts");
    output.with_file_name(name)
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    sync_dir(path);
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes a rename durable; best effort (not every filesystem allows it).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl Progress {
    /// A job's first checkpoint: nothing read, written or committed yet.
    pub fn fresh(fingerprint: Fingerprint) -> Self {
        Self {
            fingerprint,
            parts: Vec::new(),
            next_chunk: 0,
            rows_read: 0,
            rows_scored: 0,
            rows_rejected: 0,
            segment_members: Vec::new(),
            segment_errors: Vec::new(),
            complete: false,
        }
    }

    /// The checkpoint in `dir`, if any, with every file it does not list
    /// removed (a crash's half-written part).
    pub fn load_and_clean(dir: &Path) -> anyhow::Result<Option<Progress>> {
        let path = dir.join(PROGRESS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let progress: Progress = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a segscore checkpoint", path.display()))?;
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let listed = name == PROGRESS_FILE
                || progress
                    .parts
                    .iter()
                    .any(|p| p.file == name || p.rejects_file == name);
            if !listed {
                fs::remove_file(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        for part in &progress.parts {
            for file in [&part.file, &part.rejects_file] {
                if !dir.join(file).is_file() {
                    bail!(
                        "{}: committed part {file} is missing; rerun without --resume",
                        dir.display()
                    );
                }
            }
        }
        Ok(Some(progress))
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("plain struct serializes; this is a bug");
        write_atomic(&dir.join(PROGRESS_FILE), &json)
    }
}

/// The arrow schema of the output (without metadata).
pub fn arrow_schema(columns: &[OutputColumn]) -> SchemaRef {
    let fields: Vec<Field> = columns
        .iter()
        .map(|c| match c.kind {
            OutputKind::Id => Field::new(&c.name, DataType::Utf8, false),
            OutputKind::Score { .. } => Field::new(&c.name, DataType::Float32, false),
            OutputKind::Cluster { .. } => Field::new(&c.name, DataType::UInt32, false),
            OutputKind::Segment { .. } => Field::new(&c.name, DataType::Boolean, true),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn parquet_props(metadata: Option<Vec<KeyValue>>) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_key_value_metadata(metadata)
        .build()
}

/// One part being written.
enum PartSink {
    Parquet(ArrowWriter<File>),
    Csv(csv::Writer<BufWriter<File>>),
}

struct OpenPart {
    index: usize,
    sink: PartSink,
    rejects: csv::Writer<BufWriter<File>>,
    rows: u64,
    /// Rejected rows.
    reject_count: u64,
    /// The chunk after the last one written into this part.
    next_chunk: u64,
    rows_read: u64,
    /// Per segment: (members, errors) in this part.
    segment_counts: Vec<(u64, u64)>,
}

impl OpenPart {
    /// Adds a written chunk to the part's counts, checking that every row
    /// read was either scored or rejected.
    fn count(&mut self, chunk: &Scored) -> anyhow::Result<()> {
        let n = chunk.ids.len() as u64;
        self.rows += n;
        // Rows, not cells: a row with two bad cells is one rejected row
        // (and two lines in the rejects file).
        let rejected_rows = chunk
            .rejects
            .iter()
            .map(|r| r.row)
            .collect::<BTreeSet<_>>()
            .len() as u64;
        if n + rejected_rows != chunk.rows_read {
            bail!(
                "chunk {}: {} rows read, but {n} scored and {rejected_rows} rejected; this is a bug",
                chunk.chunk,
                chunk.rows_read
            );
        }
        self.reject_count += rejected_rows;
        if self.segment_counts.len() < chunk.segments.len() {
            self.segment_counts.resize(chunk.segments.len(), (0, 0));
        }
        for (count, m) in self.segment_counts.iter_mut().zip(&chunk.segments) {
            count.0 += m.member_rows.len() as u64;
            count.1 += m.errors.len() as u64;
        }
        self.rows_read += chunk.rows_read;
        self.next_chunk = chunk.chunk + 1;
        Ok(())
    }
}

/// Writes scored chunks, in order, into parts and commits them.
pub struct PartWriter {
    dir: PathBuf,
    format: Format,
    columns: Vec<OutputColumn>,
    schema: SchemaRef,
    part_rows: u64,
    pub progress: Progress,
    open: Option<OpenPart>,
    /// Test hook (`--fail-after-parts`): parts committed before a simulated crash.
    fail_after_parts: Option<usize>,
    committed_this_run: usize,
}

impl PartWriter {
    pub fn new(
        dir: PathBuf,
        format: Format,
        columns: Vec<OutputColumn>,
        part_rows: usize,
        progress: Progress,
        fail_after_parts: Option<usize>,
    ) -> Self {
        let schema = arrow_schema(&columns);
        Self {
            dir,
            format,
            columns,
            schema,
            part_rows: part_rows.max(1) as u64,
            progress,
            open: None,
            fail_after_parts,
            committed_this_run: 0,
        }
    }

    fn file_names(&self, index: usize) -> (String, String) {
        let ext = match self.format {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        };
        (
            format!("part-{index:06}.{ext}"),
            format!("rejects-{index:06}.csv"),
        )
    }

    fn open_part(&mut self) -> anyhow::Result<&mut OpenPart> {
        if self.open.is_none() {
            let index = self.progress.parts.len();
            let (file, rejects) = self.file_names(index);
            let create = |name: &str| -> anyhow::Result<BufWriter<File>> {
                let path = tmp_path(&self.dir.join(name));
                Ok(BufWriter::with_capacity(
                    1 << 20,
                    File::create(&path).with_context(|| format!("creating {}", path.display()))?,
                ))
            };
            let sink = match self.format {
                Format::Parquet => {
                    let path = tmp_path(&self.dir.join(&file));
                    let f = File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    PartSink::Parquet(ArrowWriter::try_new(
                        f,
                        self.schema.clone(),
                        Some(parquet_props(None)),
                    )?)
                }
                Format::Csv => PartSink::Csv(
                    csv::WriterBuilder::new()
                        .has_headers(false)
                        .from_writer(create(&file)?),
                ),
            };
            let rejects = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(create(&rejects)?);
            self.open = Some(OpenPart {
                index,
                sink,
                rejects,
                rows: 0,
                reject_count: 0,
                next_chunk: self.progress.next_chunk,
                rows_read: 0,
                segment_counts: Vec::new(),
            });
        }
        Ok(self.open.as_mut().expect("just opened; this is a bug"))
    }

    /// Appends one chunk (the next in input order) to the open part, and
    /// commits the part when it is full.
    pub fn write(&mut self, chunk: Scored) -> anyhow::Result<()> {
        let crash_now =
            self.committed_this_run > 0 && Some(self.committed_this_run) == self.fail_after_parts;
        let part_rows = self.part_rows;
        check_shape(&chunk)?;
        let n = chunk.ids.len();
        let (columns, schema) = (self.columns.clone(), self.schema.clone());
        let part = self.open_part()?;
        if n > 0 {
            match &mut part.sink {
                PartSink::Parquet(w) => w.write(&record_batch(&columns, schema, &chunk)?)?,
                PartSink::Csv(w) => write_csv_rows(w, &columns, &chunk)?,
            }
        }
        for r in &chunk.rejects {
            part.rejects
                .write_record([r.row.to_string().as_str(), &r.column, &r.reason])?;
        }
        part.count(&chunk)?;
        if crash_now {
            // Flush what there is, so the crash leaves a real half part.
            if let PartSink::Csv(w) = &mut part.sink {
                let _ = w.flush();
            }
            eprintln!("--fail-after-parts: exiting as a crash would");
            std::process::exit(3);
        }
        if part.rows >= part_rows {
            self.commit()?;
        }
        Ok(())
    }

    /// Completes the open part on disk, then records it in the checkpoint.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        let Some(part) = self.open.take() else {
            return Ok(());
        };
        let (file, rejects_file) = self.file_names(part.index);
        match part.sink {
            PartSink::Parquet(w) => {
                let f = w.into_inner()?;
                f.sync_all()?;
            }
            PartSink::Csv(w) => {
                let f = w
                    .into_inner()
                    .map_err(|e| anyhow::anyhow!("{}", e.error()))?
                    .into_inner()?;
                f.sync_all()?;
            }
        }
        let rejects = part
            .rejects
            .into_inner()
            .map_err(|e| anyhow::anyhow!("{}", e.error()))?
            .into_inner()?;
        rejects.sync_all()?;
        for name in [&file, &rejects_file] {
            let path = self.dir.join(name);
            fs::rename(tmp_path(&path), &path)
                .with_context(|| format!("committing {}", path.display()))?;
        }
        sync_dir(&self.dir.join(&file));
        let p = &mut self.progress;
        p.parts.push(PartRecord {
            file,
            rejects_file,
            rows: part.rows,
            rejects: part.reject_count,
        });
        p.next_chunk = part.next_chunk;
        p.rows_read += part.rows_read;
        p.rows_scored += part.rows;
        p.rows_rejected += part.reject_count;
        for (i, (members, errors)) in part.segment_counts.iter().enumerate() {
            if p.segment_members.len() <= i {
                p.segment_members.resize(i + 1, 0);
                p.segment_errors.resize(i + 1, 0);
            }
            p.segment_members[i] += members;
            p.segment_errors[i] += errors;
        }
        p.save(&self.dir)?;
        self.committed_this_run += 1;
        Ok(())
    }
}

/// Concatenates the committed parts into `output` and `rejects` (each via a
/// temp file and a rename; `rejects` only when a row was rejected, else a
/// stale one is removed), writes the metadata, and removes the staging
/// directory.
pub fn assemble(
    dir: &Path,
    progress: &Progress,
    output: &Path,
    rejects: &Path,
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let fp = &progress.fingerprint;
    let tmp = tmp_path(output);
    match fp.output_format {
        Format::Parquet => {
            let kv: Vec<KeyValue> = metadata
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    KeyValue::new(format!("segscore.{k}"), text)
                })
                .collect();
            let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let mut w =
                ArrowWriter::try_new(f, arrow_schema(&fp.columns), Some(parquet_props(Some(kv))))?;
            for part in &progress.parts {
                let path = dir.join(&part.file);
                let reader = ParquetRecordBatchReaderBuilder::try_new(
                    File::open(&path).with_context(|| format!("opening {}", path.display()))?,
                )?
                .with_batch_size(64 * 1024)
                .build()?;
                for batch in reader {
                    w.write(&batch.with_context(|| format!("reading {}", path.display()))?)?;
                }
            }
            w.into_inner()?.sync_all()?;
        }
        Format::Csv => {
            let mut out = BufWriter::new(
                File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
            );
            let mut header = csv::Writer::from_writer(Vec::new());
            header.write_record(fp.columns.iter().map(|c| c.name.as_str()))?;
            out.write_all(
                &header
                    .into_inner()
                    .map_err(|e| anyhow::anyhow!("{}", e.error()))?,
            )?;
            for part in &progress.parts {
                let path = dir.join(&part.file);
                std::io::copy(
                    &mut File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?,
                    &mut out,
                )?;
            }
            out.into_inner()
                .map_err(|e| anyhow::anyhow!("{}", e.error()))?
                .sync_all()?;
            let mut sidecar = output.as_os_str().to_os_string();
            sidecar.push(".meta.json");
            let json =
                serde_json::to_vec_pretty(metadata).expect("a JSON map serializes; this is a bug");
            write_atomic(Path::new(&sidecar), &json)?;
        }
    }
    fs::rename(&tmp, output).with_context(|| format!("renaming to {}", output.display()))?;
    if progress.rows_rejected > 0 {
        write_rejects(dir, progress, rejects)?;
    } else {
        // No rejects file when nothing was rejected, and none left over from
        // an earlier run of the same output either: a rejects file next to
        // the output always describes that output.
        match fs::remove_file(rejects) {
            Ok(()) => sync_dir(rejects),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing the stale {}", rejects.display()))
            }
        }
    }
    sync_dir(output);
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}

/// The rejects file: a header, then every part's lines (one per bad cell).
fn write_rejects(dir: &Path, progress: &Progress, rejects: &Path) -> anyhow::Result<()> {
    let rejects_tmp = tmp_path(rejects);
    let mut out = BufWriter::new(
        File::create(&rejects_tmp)
            .with_context(|| format!("creating {}", rejects_tmp.display()))?,
    );
    out.write_all(b"row,column,reason\n")?;
    for part in &progress.parts {
        let path = dir.join(&part.rejects_file);
        std::io::copy(
            &mut File::open(&path).with_context(|| format!("opening {}", path.display()))?,
            &mut out,
        )?;
    }
    out.into_inner()
        .map_err(|e| anyhow::anyhow!("{}", e.error()))?
        .sync_all()?;
    fs::rename(&rejects_tmp, rejects)
        .with_context(|| format!("renaming to {}", rejects.display()))?;
    Ok(())
}

/// Every model answered every row, and every member or error row is one of
/// the chunk's rows.
fn check_shape(chunk: &Scored) -> anyhow::Result<()> {
    let n = chunk.ids.len();
    if chunk
        .scores
        .iter()
        .any(|s| s.scores.len() != n || !(s.cluster_ids.is_empty() || s.cluster_ids.len() == n))
        || chunk.segments.iter().any(|m| {
            m.member_rows.iter().any(|&r| r as usize >= n)
                || m.errors.iter().any(|(r, _)| *r as usize >= n)
        })
    {
        bail!(
            "chunk {}: the scorer returned a score count that differs from the rows sent",
            chunk.chunk
        );
    }
    Ok(())
}

/// A scored chunk as one Arrow record batch, column by column.
fn record_batch(
    columns: &[OutputColumn],
    schema: SchemaRef,
    chunk: &Scored,
) -> anyhow::Result<RecordBatch> {
    let n = chunk.ids.len();
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|c| -> ArrayRef {
            match c.kind {
                OutputKind::Id => Arc::new(StringArray::from_iter_values(&chunk.ids)),
                OutputKind::Score { model } => {
                    Arc::new(Float32Array::from(chunk.scores[model].scores.clone()))
                }
                OutputKind::Cluster { model } => {
                    Arc::new(UInt32Array::from(chunk.scores[model].cluster_ids.clone()))
                }
                OutputKind::Segment { segment } => Arc::new(BooleanArray::from(membership_column(
                    &chunk.segments[segment],
                    n,
                ))),
            }
        })
        .collect();
    Ok(RecordBatch::try_new(schema, arrays)?)
}

/// A scored chunk as CSV records, row by row.
fn write_csv_rows(
    w: &mut csv::Writer<BufWriter<File>>,
    columns: &[OutputColumn],
    chunk: &Scored,
) -> anyhow::Result<()> {
    let n = chunk.ids.len();
    let segments: Vec<Vec<Option<bool>>> = chunk
        .segments
        .iter()
        .map(|m| membership_column(m, n))
        .collect();
    let mut record: Vec<String> = Vec::with_capacity(columns.len());
    // Row-major: each row reads one cell of every column.
    #[allow(clippy::needless_range_loop)]
    for row in 0..n {
        record.clear();
        for c in columns {
            record.push(match c.kind {
                OutputKind::Id => chunk.ids[row].clone(),
                // Display is the shortest text that parses back to the
                // same f32.
                OutputKind::Score { model } => chunk.scores[model].scores[row].to_string(),
                OutputKind::Cluster { model } => chunk.scores[model].cluster_ids[row].to_string(),
                OutputKind::Segment { segment } => match segments[segment][row] {
                    Some(member) => member.to_string(),
                    None => String::new(),
                },
            });
        }
        w.write_record(&record)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<OutputColumn> {
        vec![
            OutputColumn {
                name: "customer_id".into(),
                kind: OutputKind::Id,
            },
            OutputColumn {
                name: "churn".into(),
                kind: OutputKind::Score { model: 0 },
            },
        ]
    }

    fn progress(format: Format) -> Progress {
        Progress::fresh(Fingerprint {
            input: "in.csv".into(),
            input_bytes: 0,
            input_modified_ns: 0,
            output_format: format,
            shard: None,
            batch_rows: 4,
            id_column: "customer_id".into(),
            columns: columns(),
            models: Vec::new(),
        })
    }

    fn reject(row: u64, column: &str) -> Reject {
        Reject {
            row,
            column: column.into(),
            reason: "not a number".into(),
        }
    }

    /// Chunk `chunk` of 4 rows from row `4 * chunk`, `rejects` set aside.
    fn chunk(chunk: u64, rejects: Vec<Reject>) -> Scored {
        let first = 4 * chunk;
        let ids: Vec<String> = (first..first + 4)
            .filter(|row| !rejects.iter().any(|r| r.row == *row))
            .map(|row| format!("C{row}"))
            .collect();
        Scored {
            ordinal: chunk,
            chunk,
            rows_read: 4,
            scores: vec![ModelOutput {
                scores: vec![0.5; ids.len()],
                cluster_ids: Vec::new(),
                ..Default::default()
            }],
            ids,
            segments: Vec::new(),
            rejects,
        }
    }

    fn writer(dir: &Path, format: Format) -> PartWriter {
        PartWriter::new(
            dir.to_path_buf(),
            format,
            columns(),
            4,
            progress(format),
            None,
        )
    }

    #[test]
    fn a_row_with_several_bad_cells_counts_once_and_keeps_a_line_per_cell() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join("out.csv.parts");
        fs::create_dir(&staging).unwrap();
        let mut w = writer(&staging, Format::Csv);
        w.write(chunk(
            0,
            vec![reject(1, "frequency"), reject(1, "tenure_days")],
        ))
        .unwrap();
        w.write(chunk(1, vec![reject(4, "frequency"), reject(6, "region")]))
            .unwrap();
        w.write(chunk(2, Vec::new())).unwrap();
        w.commit().unwrap();
        let p = &w.progress;
        assert_eq!((p.rows_read, p.rows_scored, p.rows_rejected), (12, 9, 3));
        assert_eq!(p.parts.iter().map(|p| p.rejects).sum::<u64>(), 3);
        // The checkpoint on disk (what --resume continues from) agrees.
        let saved = Progress::load_and_clean(&staging).unwrap().unwrap();
        assert_eq!(saved.rows_rejected, 3);

        let output = tmp.path().join("out.csv");
        let rejects = tmp.path().join("out.csv.rejects.csv");
        assemble(&staging, p, &output, &rejects, &serde_json::Map::new()).unwrap();
        assert_eq!(
            fs::read_to_string(&rejects).unwrap(),
            "row,column,reason\n\
             1,frequency,not a number\n\
             1,tenure_days,not a number\n\
             4,frequency,not a number\n\
             6,region,not a number\n"
        );
    }

    #[test]
    fn no_rejects_file_when_no_row_is_rejected_and_a_stale_one_is_removed() {
        for format in [Format::Csv, Format::Parquet] {
            let tmp = tempfile::tempdir().unwrap();
            let staging = tmp.path().join("out.parts");
            fs::create_dir(&staging).unwrap();
            let mut w = writer(&staging, format);
            w.write(chunk(0, Vec::new())).unwrap();
            w.commit().unwrap();
            let output = tmp.path().join("out");
            let rejects = tmp.path().join("out.rejects.csv");
            fs::write(&rejects, "row,column,reason\n3,frequency,not a number\n").unwrap();
            assemble(
                &staging,
                &w.progress,
                &output,
                &rejects,
                &serde_json::Map::new(),
            )
            .unwrap();
            assert!(output.is_file());
            assert!(!rejects.exists(), "{format:?}");
            assert!(!staging.exists());
        }
    }
}
