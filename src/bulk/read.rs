//! Input readers: CSV (the `csv` crate, record by record) and Parquet (the
//! `parquet` crate's arrow reader, one row group at a time), both cut into
//! chunks of `--batch-rows` rows that carry their position in the input, so
//! nothing ever holds the whole file.
//!
//! A chunk is the unit of sharding and resuming, numbered the same way on
//! every run over the same file and `--batch-rows`: for CSV, chunk `c` is data
//! rows `c*B .. (c+1)*B`; for Parquet, the chunks of row group `g` follow those
//! of every earlier row group, `ceil(rows(g) / B)` each. A cell that cannot be
//! read as its feature's dtype becomes a missing value plus a [`Reject`], so
//! one bad cell costs one row, not the job.

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use arrow_array::{
    cast::AsArray,
    types::{
        Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
        UInt32Type, UInt64Type, UInt8Type,
    },
    Array, ArrayRef,
};
use arrow_schema::DataType;
use parquet::arrow::{
    arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder},
    ProjectionMask,
};

use crate::{
    config::Shard,
    features::{Column, ColumnBuilder, ColumnValues, DType},
};

/// A file format, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    pub fn of(path: &Path) -> anyhow::Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("parquet" | "pq") => Ok(Format::Parquet),
            _ => bail!(
                "{}: unknown format; name it *.csv, *.parquet or *.pq",
                path.display()
            ),
        }
    }
}

/// A row set aside: its 0-based data row index in the input, the column and
/// why. Data, not a log line: it goes to the rejects file only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub row: u64,
    pub column: String,
    pub reason: String,
}

/// One chunk as read, before validation against the models.
#[derive(Debug)]
pub struct RawChunk {
    /// Chunk number in the whole input (see the module doc).
    pub chunk: u64,
    /// Input row index of the chunk's first row.
    pub first_row: u64,
    pub ids: Vec<String>,
    /// Feature columns present in the input (others are imputed or refused by
    /// the models' schemas).
    pub columns: Vec<(String, Column)>,
    /// Cells that could not be read; `row` is the input row index.
    pub bad_cells: Vec<Reject>,
}

/// What to read from the input.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub id_column: String,
    /// Feature name and the dtype every selected model agrees on.
    pub features: Vec<(String, DType)>,
}

/// An opened input: its chunks from `skip_before` on (the ones this shard
/// owns), the feature columns it has, and its row count when known.
pub struct Opened {
    pub chunks: Box<dyn Iterator<Item = anyhow::Result<RawChunk>> + Send>,
    pub present: Vec<String>,
    /// Rows this run will read (this shard, after `skip_before`), when the
    /// format knows it up front (Parquet).
    pub rows_to_read: Option<u64>,
}

pub fn open(
    path: &Path,
    wanted: &Wanted,
    batch_rows: usize,
    shard: Option<Shard>,
    skip_before: u64,
) -> anyhow::Result<Opened> {
    match Format::of(path)? {
        Format::Csv => open_csv(path, wanted, batch_rows, shard, skip_before),
        Format::Parquet => open_parquet(path, wanted, batch_rows, shard, skip_before),
    }
}

fn open_csv(
    path: &Path,
    wanted: &Wanted,
    batch_rows: usize,
    shard: Option<Shard>,
    skip_before: u64,
) -> anyhow::Result<Opened> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        // A short or long row is one bad row (a reject), not a fatal error.
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 20, file));
    let headers = reader
        .headers()
        .with_context(|| format!("{}: reading the header row", path.display()))?
        .clone();
    let id_idx = headers
        .iter()
        .position(|h| h == wanted.id_column)
        .with_context(|| format!("{}: no id column `{}`", path.display(), wanted.id_column))?;
    let features: Vec<(usize, String, DType)> = wanted
        .features
        .iter()
        .filter_map(|(name, dtype)| {
            headers
                .iter()
                .position(|h| h == name)
                .map(|i| (i, name.clone(), *dtype))
        })
        .collect();
    let present = features.iter().map(|(_, n, _)| n.clone()).collect();
    let mut state = CsvChunks {
        path: path.to_path_buf(),
        reader,
        width: headers.len(),
        id_idx,
        features,
        batch_rows: batch_rows as u64,
        shard,
        skip_before,
        next_chunk: 0,
        record: csv::StringRecord::new(),
        skip: csv::ByteRecord::new(),
        done: false,
    };
    let chunks = std::iter::from_fn(move || state.next_chunk().transpose());
    Ok(Opened {
        chunks: Box::new(chunks),
        present,
        rows_to_read: None,
    })
}

struct CsvChunks {
    path: PathBuf,
    reader: csv::Reader<BufReader<File>>,
    width: usize,
    id_idx: usize,
    features: Vec<(usize, String, DType)>,
    batch_rows: u64,
    shard: Option<Shard>,
    skip_before: u64,
    next_chunk: u64,
    record: csv::StringRecord,
    skip: csv::ByteRecord,
    done: bool,
}

impl CsvChunks {
    fn next_chunk(&mut self) -> anyhow::Result<Option<RawChunk>> {
        while !self.done {
            let chunk = self.next_chunk;
            self.next_chunk += 1;
            let first_row = chunk * self.batch_rows;
            let mine = chunk >= self.skip_before && self.shard.is_none_or(|s| s.owns(chunk));
            if !mine {
                // Other shards' rows (or rows already committed) are only
                // framed, not decoded.
                for i in 0..self.batch_rows {
                    if !self
                        .reader
                        .read_byte_record(&mut self.skip)
                        .with_context(|| {
                            format!("{}: data row {}", self.path.display(), first_row + i)
                        })?
                    {
                        self.done = true;
                        break;
                    }
                }
                continue;
            }
            let mut ids = Vec::with_capacity(self.batch_rows as usize);
            let mut builders: Vec<ColumnBuilder> = self
                .features
                .iter()
                .map(|(_, _, d)| ColumnBuilder::new(*d))
                .collect();
            let mut bad_cells = Vec::new();
            for i in 0..self.batch_rows {
                let row = first_row + i;
                if !self
                    .reader
                    .read_record(&mut self.record)
                    .with_context(|| format!("{}: data row {row}", self.path.display()))?
                {
                    self.done = true;
                    break;
                }
                if self.record.len() != self.width {
                    bad_cells.push(Reject {
                        row,
                        column: String::new(),
                        reason: format!(
                            "the row has {} fields, the header has {}",
                            self.record.len(),
                            self.width
                        ),
                    });
                }
                ids.push(self.record.get(self.id_idx).unwrap_or_default().to_string());
                for ((idx, name, _), builder) in self.features.iter().zip(builders.iter_mut()) {
                    let cell = self.record.get(*idx).unwrap_or_default();
                    if let Err(want) = builder.push(cell) {
                        builder.push_missing();
                        bad_cells.push(Reject {
                            row,
                            column: name.clone(),
                            reason: format!("not {want}"),
                        });
                    }
                }
            }
            if ids.is_empty() {
                return Ok(None);
            }
            let columns = self
                .features
                .iter()
                .zip(builders)
                .map(|((_, name, _), b)| (name.clone(), b.finish()))
                .collect();
            return Ok(Some(RawChunk {
                chunk,
                first_row,
                ids,
                columns,
                bad_cells,
            }));
        }
        Ok(None)
    }
}

/// Which row groups a run reads, as (group, its first chunk, its first row,
/// its rows): those its shard owns that still have chunks at or after
/// `skip_before` (where a resumed run starts); and how many rows that is.
fn row_group_plan(
    group_rows: &[u64],
    batch_rows: usize,
    shard: Option<Shard>,
    skip_before: u64,
) -> (Vec<(usize, u64, u64, u64)>, u64) {
    let b = batch_rows as u64;
    let mut plan = Vec::new();
    let (mut chunk_base, mut row_base) = (0u64, 0u64);
    for (g, &rows) in group_rows.iter().enumerate() {
        let chunks = rows.div_ceil(b);
        let mine = shard.is_none_or(|s| s.owns(g as u64));
        if mine && chunk_base + chunks > skip_before {
            plan.push((g, chunk_base, row_base, rows));
        }
        chunk_base += chunks;
        row_base += rows;
    }
    let rows_to_read = plan
        .iter()
        .map(|&(_, chunk, _, rows)| {
            let done = skip_before.saturating_sub(chunk).min(rows.div_ceil(b));
            rows - (done * b).min(rows)
        })
        .sum();
    (plan, rows_to_read)
}

fn open_parquet(
    path: &Path,
    wanted: &Wanted,
    batch_rows: usize,
    shard: Option<Shard>,
    skip_before: u64,
) -> anyhow::Result<Opened> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let metadata = ArrowReaderMetadata::load(&file, Default::default())
        .with_context(|| format!("{}: reading the Parquet footer", path.display()))?;
    let schema = metadata.schema().clone();
    let field_index = |name: &str| schema.fields().iter().position(|f| f.name() == name);
    let id_idx = field_index(&wanted.id_column)
        .with_context(|| format!("{}: no id column `{}`", path.display(), wanted.id_column))?;
    let features: Vec<(String, DType)> = wanted
        .features
        .iter()
        .filter(|(name, _)| field_index(name).is_some())
        .cloned()
        .collect();
    let mut roots: Vec<usize> = features
        .iter()
        .filter_map(|(n, _)| field_index(n))
        .collect();
    roots.push(id_idx);
    roots.sort_unstable();
    let mask = ProjectionMask::roots(metadata.metadata().file_metadata().schema_descr(), roots);
    let group_rows: Vec<u64> = metadata
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows().max(0) as u64)
        .collect();
    let (plan, rows_to_read) = row_group_plan(&group_rows, batch_rows, shard, skip_before);
    let b = batch_rows as u64;
    let present = features.iter().map(|(n, _)| n.clone()).collect();
    let path = path.to_path_buf();
    let id_column = wanted.id_column.clone();
    let groups = plan
        .into_iter()
        .map(
            move |(g, chunk_base, row_base, rows)| -> anyhow::Result<_> {
                let file = file
                    .try_clone()
                    .with_context(|| format!("reopening {}", path.display()))?;
                let reader =
                    ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
                        .with_row_groups(vec![g])
                        .with_projection(mask.clone())
                        .with_batch_size(batch_rows)
                        .build()
                        .with_context(|| format!("{}: row group {g}", path.display()))?;
                let path = path.clone();
                let id_column = id_column.clone();
                let features = features.clone();
                let batches = reader.enumerate().filter_map(move |(j, batch)| {
                    let chunk = chunk_base + j as u64;
                    let first_row = row_base + j as u64 * b;
                    if chunk < skip_before {
                        return None;
                    }
                    Some((|| {
                        let batch = batch.with_context(|| {
                            format!("{}: row group {g}, rows from {first_row}", path.display())
                        })?;
                        if first_row + batch.num_rows() as u64 > row_base + rows {
                            bail!(
                                "{}: row group {g} yielded more rows than its metadata says",
                                path.display()
                            );
                        }
                        to_chunk(&path, &id_column, &features, &batch, chunk, first_row)
                    })())
                });
                Ok(batches)
            },
        )
        .flat_map(
            |group| -> Box<dyn Iterator<Item = anyhow::Result<RawChunk>> + Send> {
                match group {
                    Ok(batches) => Box::new(batches),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            },
        );
    Ok(Opened {
        chunks: Box::new(groups),
        present,
        rows_to_read: Some(rows_to_read),
    })
}

fn to_chunk(
    path: &Path,
    id_column: &str,
    features: &[(String, DType)],
    batch: &arrow_array::RecordBatch,
    chunk: u64,
    first_row: u64,
) -> anyhow::Result<RawChunk> {
    let column = |name: &str| {
        batch.column_by_name(name).with_context(|| {
            format!(
                "{}: column `{name}` vanished; this is a bug",
                path.display()
            )
        })
    };
    let ids = id_strings(column(id_column)?)
        .with_context(|| format!("{}: id column `{id_column}`", path.display()))?;
    let mut bad_cells = Vec::new();
    let mut columns = Vec::with_capacity(features.len());
    for (name, dtype) in features {
        let col = arrow_column(column(name)?, *dtype, name, first_row, &mut bad_cells)
            .with_context(|| format!("{}: column `{name}`", path.display()))?;
        columns.push((name.clone(), col));
    }
    Ok(RawChunk {
        chunk,
        first_row,
        ids,
        columns,
        bad_cells,
    })
}

fn id_strings(array: &ArrayRef) -> anyhow::Result<Vec<String>> {
    let n = array.len();
    let text = |i: usize, f: &dyn Fn(usize) -> String| {
        if array.is_null(i) {
            String::new()
        } else {
            f(i)
        }
    };
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            (0..n)
                .map(|i| text(i, &|i| a.value(i).to_string()))
                .collect()
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            (0..n)
                .map(|i| text(i, &|i| a.value(i).to_string()))
                .collect()
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            (0..n)
                .map(|i| text(i, &|i| a.value(i).to_string()))
                .collect()
        }
        DataType::Int64 => {
            let a = array.as_primitive::<Int64Type>();
            (0..n)
                .map(|i| text(i, &|i| a.value(i).to_string()))
                .collect()
        }
        DataType::Int32 => {
            let a = array.as_primitive::<Int32Type>();
            (0..n)
                .map(|i| text(i, &|i| a.value(i).to_string()))
                .collect()
        }
        DataType::UInt64 => {
            let a = array.as_primitive::<UInt64Type>();
            (0..n)
                .map(|i| text(i, &|i| a.value(i).to_string()))
                .collect()
        }
        other => bail!("type {other} is not usable as an id (use strings or integers)"),
    })
}

/// Missing rows of an arrow column (its nulls).
fn null_rows(array: &dyn Array) -> Vec<u32> {
    if array.null_count() == 0 {
        return Vec::new();
    }
    (0..array.len())
        .filter(|&i| array.is_null(i))
        .map(|i| i as u32)
        .collect()
}

/// An arrow column as a feature column: typed arrays are taken as they are
/// (the schema checks range and dtype later), strings are parsed cell by cell
/// like CSV, so a string-typed Parquet column behaves like a CSV one.
fn arrow_column(
    array: &ArrayRef,
    dtype: DType,
    name: &str,
    first_row: u64,
    bad: &mut Vec<Reject>,
) -> anyhow::Result<Column> {
    let numeric = matches!(dtype, DType::F32 | DType::F64 | DType::I64);
    macro_rules! ints {
        ($t:ty) => {
            ColumnValues::I64(
                array
                    .as_primitive::<$t>()
                    .values()
                    .iter()
                    .map(|&v| v as i64)
                    .collect(),
            )
        };
    }
    let values = match array.data_type() {
        DataType::Float32 if numeric => {
            ColumnValues::F32(array.as_primitive::<Float32Type>().values().to_vec())
        }
        DataType::Float64 if numeric => {
            ColumnValues::F64(array.as_primitive::<Float64Type>().values().to_vec())
        }
        DataType::Int64 if numeric => ints!(Int64Type),
        DataType::Int32 if numeric => ints!(Int32Type),
        DataType::Int16 if numeric => ints!(Int16Type),
        DataType::Int8 if numeric => ints!(Int8Type),
        DataType::UInt32 if numeric => ints!(UInt32Type),
        DataType::UInt16 if numeric => ints!(UInt16Type),
        DataType::UInt8 if numeric => ints!(UInt8Type),
        DataType::UInt64 if numeric => {
            // Values above i64::MAX are out of any feature's range anyway;
            // f64 keeps them comparable against it.
            ColumnValues::F64(
                array
                    .as_primitive::<UInt64Type>()
                    .values()
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
            )
        }
        DataType::Boolean if dtype == DType::Bool => {
            let a = array.as_boolean();
            ColumnValues::Bool((0..a.len()).map(|i| a.value(i)).collect())
        }
        DataType::Dictionary(_, value_type)
            if matches!(**value_type, DataType::Utf8 | DataType::LargeUtf8) =>
        {
            let dict = array.as_any_dictionary();
            let keys = dict.normalized_keys();
            let strings = id_strings(dict.values())?;
            let cells = keys
                .iter()
                .map(|&k| strings.get(k).map_or("", String::as_str));
            return Ok(parse_cells(cells, array, dtype, name, first_row, bad));
        }
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            let cells = (0..a.len()).map(|i| a.value(i));
            return Ok(parse_cells(cells, array, dtype, name, first_row, bad));
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            let cells = (0..a.len()).map(|i| a.value(i));
            return Ok(parse_cells(cells, array, dtype, name, first_row, bad));
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            let cells = (0..a.len()).map(|i| a.value(i));
            return Ok(parse_cells(cells, array, dtype, name, first_row, bad));
        }
        other => bail!("type {other} cannot feed a {dtype} feature"),
    };
    Ok(Column::new(values).with_missing_rows(&null_rows(array.as_ref()))?)
}

fn parse_cells<'a>(
    cells: impl Iterator<Item = &'a str>,
    array: &ArrayRef,
    dtype: DType,
    name: &str,
    first_row: u64,
    bad: &mut Vec<Reject>,
) -> Column {
    let mut builder = ColumnBuilder::new(dtype);
    for (i, cell) in cells.enumerate() {
        if array.is_null(i) {
            builder.push_missing();
        } else if let Err(want) = builder.push(cell) {
            builder.push_missing();
            bad.push(Reject {
                row: first_row + i as u64,
                column: name.to_string(),
                reason: format!("not {want}"),
            });
        }
    }
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_groups_are_numbered_in_chunks_and_rows_across_the_file() {
        // Groups of 10, 3 and 8 rows in chunks of 4: 3 + 1 + 2 chunks.
        let (plan, rows) = row_group_plan(&[10, 3, 8], 4, None, 0);
        assert_eq!(plan, [(0, 0, 0, 10), (1, 3, 10, 3), (2, 4, 13, 8)]);
        assert_eq!(rows, 21);
    }

    #[test]
    fn a_resumed_run_skips_the_chunks_already_written() {
        // Chunks 0-2 are group 0, chunk 3 group 1, chunks 4-5 group 2.
        let (plan, rows) = row_group_plan(&[10, 3, 8], 4, None, 4);
        assert_eq!(plan, [(2, 4, 13, 8)]);
        assert_eq!(rows, 8);
        // Resuming inside group 0 reads the rest of it.
        let (plan, rows) = row_group_plan(&[10, 3, 8], 4, None, 2);
        assert_eq!(plan.len(), 3);
        assert_eq!(rows, 2 + 3 + 8);
        // Past the end: nothing left.
        assert_eq!(row_group_plan(&[10, 3, 8], 4, None, 6), (Vec::new(), 0));
    }

    #[test]
    fn a_shard_reads_only_the_row_groups_it_owns() {
        let shard = Shard { index: 1, count: 2 };
        let (plan, rows) = row_group_plan(&[10, 3, 8, 5], 4, Some(shard), 0);
        assert_eq!(plan, [(1, 3, 10, 3), (3, 6, 21, 5)]);
        assert_eq!(rows, 8);
    }
}
