//! `segscore segments stats`: segment sizes in a scored CSV or Parquet file
//! (as `segscore score --segments` writes them) and, with a
//! baseline file, how they changed (size change, members entering and
//! leaving, Jaccard overlap of the member ids).
//!
//! A scored file has an id column and one boolean column per segment named
//! `segment:<name>` (`true`/`false`, `1`/`0`; an empty cell is a row the
//! segment could not be evaluated on and counts as an error, not a member).

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
};

use serde::Serialize;

/// The column prefix of segment membership columns.
pub const COLUMN_PREFIX: &str = "segment:";

/// One file's membership: per segment, the ids of its members.
#[derive(Debug, Default)]
pub struct ScoredFile {
    pub rows: usize,
    pub segments: BTreeMap<String, SegmentColumn>,
}

#[derive(Debug, Default)]
pub struct SegmentColumn {
    pub members: HashSet<String>,
    /// Rows with an empty cell (not evaluated).
    pub errors: usize,
}

/// Per-segment statistics, one JSON line each.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentStats {
    pub segment: String,
    pub rows: usize,
    pub members: usize,
    pub errors: usize,
    /// members / rows.
    pub share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineStats {
    pub rows: usize,
    pub members: usize,
    /// members - baseline members.
    pub change: i64,
    /// change / baseline members (None when the baseline segment is empty).
    pub change_ratio: Option<f64>,
    /// Members in both files.
    pub kept: usize,
    /// Members now but not in the baseline.
    pub entered: usize,
    /// Members in the baseline but not now.
    pub left: usize,
    /// |both| / |either| (1 when both are empty).
    pub jaccard: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("{path}: {source}")]
    Csv { path: String, source: csv::Error },
    #[error("{path}: no column `{column}` (the id column; set --id-column)")]
    NoIdColumn { path: String, column: String },
    #[error("{path}: no `{COLUMN_PREFIX}<name>` columns")]
    NoSegments { path: String },
    #[error("{path} line {line}: column `{column}`: expected true/false/1/0 or empty")]
    BadCell {
        path: String,
        line: u64,
        column: String,
    },
    #[error("{path}: the id column has duplicate ids, so members cannot be matched between files")]
    DuplicateIds { path: String },
    #[error("{path}: {message}")]
    Parquet { path: String, message: String },
}

/// One row's id and segment cells, in column order.
fn add_row(
    out: &mut ScoredFile,
    ids: &mut HashSet<String>,
    names: &[String],
    id: String,
    cells: impl Iterator<Item = Option<bool>>,
) -> bool {
    out.rows += 1;
    if !ids.insert(id.clone()) {
        return false;
    }
    for (segment, cell) in names.iter().zip(cells) {
        let column = out.segments.entry(segment.clone()).or_default();
        match cell {
            Some(true) => {
                column.members.insert(id.clone());
            }
            Some(false) => {}
            None => column.errors += 1,
        }
    }
    true
}

/// Reads the segment columns of a scored Parquet file, one record batch at
/// a time: a string id column and nullable boolean `segment:<name>` columns.
fn read_parquet(path: &Path, id_column: &str) -> Result<ScoredFile, StatsError> {
    use arrow_array::{Array, BooleanArray, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let name = path.display().to_string();
    let bad = |message: String| StatsError::Parquet {
        path: name.clone(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(e.to_string()))?;
    let schema = builder.schema().clone();
    let id = schema
        .index_of(id_column)
        .map_err(|_| StatsError::NoIdColumn {
            path: name.clone(),
            column: id_column.into(),
        })?;
    let columns: Vec<(usize, String)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            f.name()
                .strip_prefix(COLUMN_PREFIX)
                .map(|s| (i, s.to_owned()))
        })
        .collect();
    if columns.is_empty() {
        return Err(StatsError::NoSegments { path: name });
    }
    let names: Vec<String> = columns.iter().map(|(_, n)| n.clone()).collect();
    let mut out = ScoredFile::default();
    for n in &names {
        out.segments.insert(n.clone(), SegmentColumn::default());
    }
    let mut ids = HashSet::new();
    for batch in builder.build().map_err(|e| bad(e.to_string()))? {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let id_values = batch
            .column(id)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| {
                bad(format!(
                    "the id column `{id_column}` is not a string column"
                ))
            })?;
        let cells: Vec<&BooleanArray> = columns
            .iter()
            .map(|(i, n)| {
                batch
                    .column(*i)
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| bad(format!("column `{COLUMN_PREFIX}{n}` is not boolean")))
            })
            .collect::<Result<_, _>>()?;
        for row in 0..batch.num_rows() {
            let row_cells = cells
                .iter()
                .map(|c| (!c.is_null(row)).then(|| c.value(row)));
            if !add_row(
                &mut out,
                &mut ids,
                &names,
                id_values.value(row).to_owned(),
                row_cells,
            ) {
                return Err(StatsError::DuplicateIds { path: name });
            }
        }
    }
    Ok(out)
}

/// Reads the segment columns of a scored file: Parquet (`.parquet`, `.pq`)
/// or CSV.
pub fn read(path: &Path, id_column: &str) -> Result<ScoredFile, StatsError> {
    if matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("parquet" | "pq")
    ) {
        return read_parquet(path, id_column);
    }
    let name = path.display().to_string();
    let csv_err = |source| StatsError::Csv {
        path: name.clone(),
        source,
    };
    let mut reader = csv::Reader::from_path(path).map_err(csv_err)?;
    let headers = reader.headers().map_err(csv_err)?.clone();
    let id = headers
        .iter()
        .position(|h| h == id_column)
        .ok_or_else(|| StatsError::NoIdColumn {
            path: name.clone(),
            column: id_column.into(),
        })?;
    let columns: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.strip_prefix(COLUMN_PREFIX).map(|s| (i, s.to_owned())))
        .collect();
    if columns.is_empty() {
        return Err(StatsError::NoSegments { path: name });
    }
    let mut out = ScoredFile::default();
    for (_, segment) in &columns {
        out.segments
            .insert(segment.clone(), SegmentColumn::default());
    }
    let mut ids = HashSet::new();
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        out.rows += 1;
        let id_value = record.get(id).unwrap_or_default().to_owned();
        if !ids.insert(id_value.clone()) {
            return Err(StatsError::DuplicateIds { path: name });
        }
        for (i, segment) in &columns {
            let cell = record.get(*i).unwrap_or_default().trim();
            let column = out
                .segments
                .get_mut(segment)
                .expect("inserted for every column above; this is a bug");
            match cell {
                "true" | "True" | "TRUE" | "1" => {
                    column.members.insert(id_value.clone());
                }
                "false" | "False" | "FALSE" | "0" => {}
                "" => column.errors += 1,
                _ => {
                    return Err(StatsError::BadCell {
                        path: name,
                        line: record.position().map_or(0, |p| p.line()),
                        column: headers.get(*i).unwrap_or_default().to_owned(),
                    })
                }
            }
        }
    }
    Ok(out)
}

/// Statistics of every segment in `input` (and in `baseline`, if given; a
/// segment in only one file is reported with the other side empty).
pub fn compare(input: &ScoredFile, baseline: Option<&ScoredFile>) -> Vec<SegmentStats> {
    let empty = SegmentColumn::default();
    let mut names: Vec<&String> = input.segments.keys().collect();
    if let Some(b) = baseline {
        names.extend(
            b.segments
                .keys()
                .filter(|n| !input.segments.contains_key(*n)),
        );
    }
    names
        .into_iter()
        .map(|name| {
            let now = input.segments.get(name).unwrap_or(&empty);
            let share = if input.rows == 0 {
                0.0
            } else {
                now.members.len() as f64 / input.rows as f64
            };
            let baseline = baseline.map(|b| {
                let before = b.segments.get(name).unwrap_or(&empty);
                let kept = now.members.intersection(&before.members).count();
                let union = now.members.len() + before.members.len() - kept;
                let change = now.members.len() as i64 - before.members.len() as i64;
                BaselineStats {
                    rows: b.rows,
                    members: before.members.len(),
                    change,
                    change_ratio: (!before.members.is_empty())
                        .then(|| change as f64 / before.members.len() as f64),
                    kept,
                    entered: now.members.len() - kept,
                    left: before.members.len() - kept,
                    jaccard: if union == 0 {
                        1.0
                    } else {
                        kept as f64 / union as f64
                    },
                }
            });
            SegmentStats {
                segment: name.clone(),
                rows: input.rows,
                members: now.members.len(),
                errors: now.errors,
                share,
                baseline,
            }
        })
        .collect()
}

/// A plain-text table of `stats`.
pub fn table(stats: &[SegmentStats]) -> String {
    let mut out = String::new();
    let with_baseline = stats.iter().any(|s| s.baseline.is_some());
    if with_baseline {
        out.push_str(&format!(
            "{:<28} {:>10} {:>8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8}\n",
            "segment",
            "members",
            "share",
            "baseline",
            "change",
            "change%",
            "entered",
            "left",
            "jaccard"
        ));
    } else {
        out.push_str(&format!(
            "{:<28} {:>10} {:>10} {:>8} {:>8}\n",
            "segment", "rows", "members", "share", "errors"
        ));
    }
    for s in stats {
        match &s.baseline {
            Some(b) => out.push_str(&format!(
                "{:<28} {:>10} {:>7.2}% {:>10} {:>+10} {:>9} {:>9} {:>9} {:>8.4}\n",
                s.segment,
                s.members,
                s.share * 100.0,
                b.members,
                b.change,
                b.change_ratio
                    .map_or("n/a".to_string(), |r| format!("{:+.2}%", r * 100.0)),
                b.entered,
                b.left,
                b.jaccard
            )),
            None => out.push_str(&format!(
                "{:<28} {:>10} {:>10} {:>7.2}% {:>8}\n",
                s.segment,
                s.rows,
                s.members,
                s.share * 100.0,
                s.errors
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn sizes_changes_and_jaccard() {
        let dir = tempfile::tempdir().unwrap();
        let now = write(
            dir.path(),
            "now.csv",
            "customer_id,ltv,segment:a,segment:b\nc1,1,true,false\nc2,2,1,0\nc3,3,false,\nc4,4,true,true\n",
        );
        let before = write(
            dir.path(),
            "before.csv",
            "customer_id,segment:a,segment:c\nc1,true,true\nc3,true,false\nc5,false,true\n",
        );
        let now = read(&now, "customer_id").unwrap();
        let before = read(&before, "customer_id").unwrap();
        assert_eq!(now.rows, 4);
        let stats = compare(&now, Some(&before));
        let names: Vec<&str> = stats.iter().map(|s| s.segment.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let a = &stats[0];
        assert_eq!((a.members, a.errors), (3, 0));
        let ab = a.baseline.as_ref().unwrap();
        // now {c1,c2,c4}, before {c1,c3}: kept 1, union 4.
        assert_eq!(
            (ab.members, ab.change, ab.kept, ab.entered, ab.left),
            (2, 1, 1, 2, 1)
        );
        assert!((ab.jaccard - 0.25).abs() < 1e-12);
        assert_eq!(ab.change_ratio, Some(0.5));
        let b = &stats[1];
        assert_eq!((b.members, b.errors), (1, 1));
        assert_eq!(b.baseline.as_ref().unwrap().change_ratio, None);
        let c = &stats[2];
        assert_eq!(c.members, 0);
        assert_eq!(c.baseline.as_ref().unwrap().left, 2);
        assert!(table(&stats).contains("jaccard"));
        let alone = compare(&now, None);
        assert!(alone.iter().all(|s| s.baseline.is_none()));
        assert!((alone[0].share - 0.75).abs() < 1e-12);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let no_id = write(dir.path(), "a.csv", "id,segment:a\nx,true\n");
        assert!(matches!(
            read(&no_id, "customer_id"),
            Err(StatsError::NoIdColumn { .. })
        ));
        let no_segments = write(dir.path(), "b.csv", "customer_id,ltv\nx,1\n");
        assert!(matches!(
            read(&no_segments, "customer_id"),
            Err(StatsError::NoSegments { .. })
        ));
        let bad = write(dir.path(), "c.csv", "customer_id,segment:a\nx,maybe\n");
        let err = read(&bad, "customer_id").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("segment:a"), "{err}");
        let dup = write(
            dir.path(),
            "d.csv",
            "customer_id,segment:a\nx,true\nx,false\n",
        );
        assert!(matches!(
            read(&dup, "customer_id"),
            Err(StatsError::DuplicateIds { .. })
        ));
    }
}
