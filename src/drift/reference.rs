//! A version's reference distributions (`reference.json`): what its inputs
//! and scores looked like on the data it was trained or imported with, so
//! live traffic can be compared with it (population stability index).
//!
//! Per feature: quantile bin edges (numeric, bool) or the category list, the
//! share of present values in each bin, and the share of missing values; for
//! the score: quantile bins and shares. Written by the training pipeline
//! (`training/reference.py`, same format), `segscore models import`,
//! `segscore train` and `segscore models reference`; read at load as
//! untrusted input (size cap, strict JSON, every number checked against the
//! manifest), so a bad file refuses its version with the reason.
//!
//! The binning of one value ([`FeatureReference::cell`]) is the one
//! definition shared by building a reference and counting live rows.

use serde::{Deserialize, Serialize};

use crate::features::{Column, ColumnValues, DType, FeatureBatch, FeatureSpec};

/// The file's name in a version directory.
pub const REFERENCE_FILE: &str = "reference.json";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Quantile bins per numeric feature and for the score.
pub const QUANTILE_BINS: usize = 10;
/// Most bins a feature may have (categories included): the live counters
/// are sized from the file, so this bounds the memory a version takes.
pub const MAX_BINS: usize = 256;
/// Shares are rounded when written; a sum this far from 1 is an error.
const SHARE_SUM_TOLERANCE: f64 = 1e-3;
/// Bins with a zero share on either side are floored at this share, so one
/// empty bin cannot make the index infinite (the usual PSI convention).
const PSI_FLOOR: f64 = 1e-4;

/// `reference.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub format: u32,
    /// Rows the distributions were computed from.
    pub rows: u64,
    /// Where the rows came from (for people).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// In the manifest's feature order.
    pub features: Vec<FeatureReference>,
    /// The score as the manifest's `score` reads it (clustering: the distance).
    pub score: Distribution,
}

/// One feature's reference: numeric features have `edges`, category
/// features `categories`; `shares` has one entry per bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureReference {
    pub name: String,
    /// Bin i holds values v with edges[i-1] <= v < edges[i].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Share of the present values in each bin (sums to 1).
    pub shares: Vec<f64>,
    /// Share of rows where the feature was missing.
    pub missing: f64,
}

/// A distribution over quantile bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distribution {
    pub edges: Vec<f64>,
    pub shares: Vec<f64>,
}

/// Where one row's value of a feature falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Missing,
    Bin(usize),
    /// Not countable (a category outside the list, a column of another
    /// kind): such rows are refused by encoding and never scored.
    Skip,
}

/// The bin of `v` among `edges`.
#[inline]
pub fn bin_of(edges: &[f64], v: f64) -> usize {
    edges.partition_point(|e| *e <= v)
}

impl FeatureReference {
    /// Bins: one per category, or one more than the edges.
    pub fn bins(&self) -> usize {
        self.shares.len()
    }

    /// Where `row` of `column` falls (an absent column is missing).
    #[inline]
    pub fn cell(&self, column: Option<&Column>, row: usize) -> Cell {
        let Some(column) = column else {
            return Cell::Missing;
        };
        if column.is_missing(row) {
            return Cell::Missing;
        }
        if !self.categories.is_empty() {
            return match &column.values {
                ColumnValues::Category(v) => self
                    .categories
                    .iter()
                    .position(|c| *c == v[row])
                    .map_or(Cell::Skip, Cell::Bin),
                _ => Cell::Skip,
            };
        }
        let v = match &column.values {
            ColumnValues::F32(v) => f64::from(v[row]),
            ColumnValues::F64(v) => v[row],
            ColumnValues::I64(v) => v[row] as f64,
            ColumnValues::Bool(v) => f64::from(u8::from(v[row])),
            ColumnValues::Category(_) => return Cell::Skip,
        };
        if v.is_nan() {
            return Cell::Missing;
        }
        Cell::Bin(bin_of(&self.edges, v))
    }
}

/// Quantile edges of `values` (sorted in place): the `QUANTILE_BINS - 1`
/// inner quantiles, duplicates dropped (a discrete feature gets fewer bins).
pub fn quantile_edges(values: &mut [f64]) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = Vec::with_capacity(QUANTILE_BINS);
    if values.is_empty() {
        return edges;
    }
    for i in 1..QUANTILE_BINS {
        // Lower quantile (numpy's "lower" method): a value that occurs in the data.
        let at = (i * (values.len() - 1)) / QUANTILE_BINS;
        let e = values[at];
        if edges.last().is_none_or(|last| e > *last) && e > values[0] {
            edges.push(e);
        }
    }
    edges
}

/// Shares of `counts` (all zero when there are none).
fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| {
            if total == 0 {
                0.0
            } else {
                round6(c as f64 / total as f64)
            }
        })
        .collect()
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

impl Distribution {
    /// The quantile distribution of `values` (non-finite values ignored).
    pub fn of(values: impl Iterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
        let edges = quantile_edges(&mut v);
        let mut counts = vec![0u64; edges.len() + 1];
        for x in &v {
            counts[bin_of(&edges, *x)] += 1;
        }
        Self {
            shares: shares(&counts),
            edges,
        }
    }
}

impl Reference {
    /// The reference of a sample: its feature batch (typed by the
    /// manifest's schema) and the scores the version gave it.
    pub fn of_sample(
        specs: &[FeatureSpec],
        batch: &FeatureBatch,
        scores: &[f32],
        source: &str,
    ) -> Self {
        let rows = batch.rows();
        let features = specs
            .iter()
            .map(|spec| {
                let column = batch.column(&spec.name);
                let mut reference = FeatureReference {
                    name: spec.name.clone(),
                    edges: Vec::new(),
                    categories: Vec::new(),
                    shares: Vec::new(),
                    missing: 0.0,
                };
                if spec.dtype == DType::Category {
                    reference.categories = spec.categories.clone();
                } else {
                    let present = column.map_or_else(Vec::new, |c| {
                        (0..rows)
                            .filter(|&row| !c.is_missing(row))
                            .map(|row| numeric(c, row))
                            .filter(|v| !v.is_nan())
                            .collect()
                    });
                    let mut present = present;
                    reference.edges = quantile_edges(&mut present);
                }
                let bins = if reference.categories.is_empty() {
                    reference.edges.len() + 1
                } else {
                    reference.categories.len()
                };
                reference.shares = vec![0.0; bins];
                let mut counts = vec![0u64; bins];
                let mut missing = 0u64;
                for row in 0..rows {
                    match reference.cell(column, row) {
                        Cell::Bin(b) => counts[b] += 1,
                        Cell::Missing => missing += 1,
                        Cell::Skip => {}
                    }
                }
                reference.shares = shares(&counts);
                reference.missing = if rows == 0 {
                    0.0
                } else {
                    round6(missing as f64 / rows as f64)
                };
                reference
            })
            .collect();
        Self {
            format: FORMAT,
            rows: rows as u64,
            source: source.to_owned(),
            features,
            score: Distribution::of(scores.iter().map(|&s| f64::from(s))),
        }
    }

    /// Parses and checks `bytes` against the version's features: every
    /// problem is named (feature, field), nothing panics.
    pub fn parse(bytes: &[u8], specs: &[FeatureSpec]) -> Result<Self, String> {
        let reference: Reference =
            serde_json::from_slice(bytes).map_err(|e| format!("not a reference file: {e}"))?;
        reference.check(specs)?;
        Ok(reference)
    }

    /// The checks of [`parse`](Self::parse).
    pub fn check(&self, specs: &[FeatureSpec]) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} is not the supported format {FORMAT}",
                self.format
            ));
        }
        if self.features.len() != specs.len() {
            return Err(format!(
                "{} features, but the manifest has {}",
                self.features.len(),
                specs.len()
            ));
        }
        for (f, spec) in self.features.iter().zip(specs) {
            if f.name != spec.name {
                return Err(format!(
                    "feature `{}` where the manifest has `{}` (same order expected)",
                    crate::echo::echo(&f.name),
                    spec.name
                ));
            }
            let what = |m: String| format!("feature `{}`: {m}", spec.name);
            if spec.dtype == DType::Category {
                if !f.edges.is_empty() || f.categories != spec.categories {
                    return Err(what(
                        "a category feature needs `categories` equal to the manifest's and no `edges`"
                            .into(),
                    ));
                }
                if f.shares.len() != f.categories.len() {
                    return Err(what(format!(
                        "{} shares for {} categories",
                        f.shares.len(),
                        f.categories.len()
                    )));
                }
            } else {
                if !f.categories.is_empty() {
                    return Err(what(
                        "a numeric feature takes `edges`, not `categories`".into(),
                    ));
                }
                check_bins(&f.edges, &f.shares).map_err(what)?;
            }
            if !(0.0..=1.0).contains(&f.missing) {
                return Err(what(format!(
                    "missing share {} is outside [0, 1]",
                    f.missing
                )));
            }
            check_shares(&f.shares, f.missing >= 1.0).map_err(what)?;
        }
        check_bins(&self.score.edges, &self.score.shares).map_err(|m| format!("score: {m}"))?;
        check_shares(&self.score.shares, false).map_err(|m| format!("score: {m}"))?;
        Ok(())
    }
}

fn numeric(column: &Column, row: usize) -> f64 {
    match &column.values {
        ColumnValues::F32(v) => f64::from(v[row]),
        ColumnValues::F64(v) => v[row],
        ColumnValues::I64(v) => v[row] as f64,
        ColumnValues::Bool(v) => f64::from(u8::from(v[row])),
        ColumnValues::Category(_) => f64::NAN,
    }
}

fn check_bins(edges: &[f64], shares: &[f64]) -> Result<(), String> {
    if shares.len() > MAX_BINS {
        return Err(format!(
            "{} bins, over the limit of {MAX_BINS}",
            shares.len()
        ));
    }
    if shares.len() != edges.len() + 1 {
        return Err(format!(
            "{} shares for {} edges (one more share than edges expected)",
            shares.len(),
            edges.len()
        ));
    }
    if let Some(i) = edges.iter().position(|e| !e.is_finite()) {
        return Err(format!("edge {i} is not a finite number"));
    }
    if let Some(i) = edges.windows(2).position(|w| w[0] >= w[1]) {
        return Err(format!("edges {i} and {} are not increasing", i + 1));
    }
    Ok(())
}

fn check_shares(shares: &[f64], may_be_empty: bool) -> Result<(), String> {
    if let Some(i) = shares.iter().position(|s| !(0.0..=1.0).contains(s)) {
        return Err(format!("share {i} ({}) is outside [0, 1]", shares[i]));
    }
    let sum: f64 = shares.iter().sum();
    if (sum - 1.0).abs() > SHARE_SUM_TOLERANCE && !(may_be_empty && sum == 0.0) {
        return Err(format!("the shares sum to {sum:.6}, not 1"));
    }
    Ok(())
}

/// Population stability index of `actual` counts against `expected`
/// shares: Σ (a − e) · ln(a / e), both floored at [`PSI_FLOOR`]. None
/// without any counted value.
pub fn psi(expected: &[f64], actual: &[u64]) -> Option<f64> {
    let total: u64 = actual.iter().sum();
    if total == 0 {
        return None;
    }
    Some(
        expected
            .iter()
            .zip(actual)
            .map(|(&e, &a)| {
                let e = e.max(PSI_FLOOR);
                let a = (a as f64 / total as f64).max(PSI_FLOOR);
                (a - e) * (a / e).ln()
            })
            .sum(),
    )
}

/// PSI of a feature with the missing values as one more bin: a feature that
/// starts arriving empty drifts as much as one whose values move.
pub fn feature_psi(reference: &FeatureReference, counts: &[u64], missing: u64) -> Option<f64> {
    let present = 1.0 - reference.missing;
    let mut expected: Vec<f64> = reference.shares.iter().map(|s| s * present).collect();
    expected.push(reference.missing);
    let mut actual = counts.to_vec();
    actual.push(missing);
    psi(&expected, &actual)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::MissingPolicy;

    fn spec(name: &str, dtype: DType) -> FeatureSpec {
        FeatureSpec {
            name: name.into(),
            description: None,
            dtype,
            min: None,
            max: None,
            categories: if dtype == DType::Category {
                vec!["a".into(), "b".into()]
            } else {
                Vec::new()
            },
            missing: MissingPolicy::Reject,
        }
    }

    fn batch() -> (Vec<FeatureSpec>, FeatureBatch) {
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let c: Vec<String> = (0..100)
            .map(|i| if i % 4 == 0 { "b" } else { "a" }.to_string())
            .collect();
        let batch = FeatureBatch::new(
            100,
            vec![
                (
                    "x".into(),
                    Column::new(ColumnValues::F32(x))
                        .with_missing_rows(&[0, 1, 2, 3, 4])
                        .unwrap(),
                ),
                ("c".into(), Column::new(ColumnValues::Category(c))),
            ],
        )
        .unwrap();
        (
            vec![spec("x", DType::F32), spec("c", DType::Category)],
            batch,
        )
    }

    #[test]
    fn a_sample_gives_deciles_missing_shares_and_categories() {
        let (specs, batch) = batch();
        let scores: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let r = Reference::of_sample(&specs, &batch, &scores, "test");
        r.check(&specs).unwrap();
        assert_eq!(r.features[0].edges.len(), 9);
        assert_eq!(r.features[0].missing, 0.05);
        assert_eq!(r.features[1].shares, [0.75, 0.25]);
        assert_eq!(r.score.shares.len(), 10);
        // The sample against its own reference does not drift.
        let mut counts = vec![0u64; r.features[0].bins()];
        let mut missing = 0;
        for row in 0..100 {
            match r.features[0].cell(batch.column("x"), row) {
                Cell::Bin(b) => counts[b] += 1,
                Cell::Missing => missing += 1,
                Cell::Skip => unreachable!(),
            }
        }
        assert!(feature_psi(&r.features[0], &counts, missing).unwrap() < 1e-6);
        // Every value in one bin does.
        let shifted: Vec<u64> = (0..counts.len())
            .map(|b| if b == counts.len() - 1 { 95 } else { 0 })
            .collect();
        assert!(feature_psi(&r.features[0], &shifted, 5).unwrap() > 1.0);
    }

    #[test]
    fn discrete_values_get_fewer_bins_and_round_trip() {
        let mut v: Vec<f64> = (0..1000).map(|i| f64::from(i % 3)).collect();
        assert_eq!(quantile_edges(&mut v), [1.0, 2.0]);
        let (specs, batch) = batch();
        let r = Reference::of_sample(&specs, &batch, &[0.5; 100], "");
        assert!(r.score.edges.is_empty() && r.score.shares == [1.0]);
        let text = serde_json::to_vec(&r).unwrap();
        assert_eq!(Reference::parse(&text, &specs).unwrap(), r);
    }

    #[test]
    fn bad_files_are_refused_with_the_feature_named() {
        let (specs, batch) = batch();
        let good = Reference::of_sample(&specs, &batch, &[0.5; 100], "");
        let refused = |edit: &dyn Fn(&mut Reference)| {
            let mut r = good.clone();
            edit(&mut r);
            Reference::parse(&serde_json::to_vec(&r).unwrap(), &specs).unwrap_err()
        };
        assert!(refused(&|r| r.features[0].edges.reverse()).contains("feature `x`: edges"));
        assert!(refused(&|r| r.features[0].shares.push(0.0)).contains("one more share"));
        assert!(
            refused(&|r| r.features[1].categories.pop().map(drop).unwrap_or(()))
                .contains("feature `c`")
        );
        assert!(refused(&|r| r.features[1].shares = vec![0.9, 0.9]).contains("sum to"));
        assert!(refused(&|r| r.features[0].missing = 2.0).contains("outside [0, 1]"));
        assert!(refused(&|r| r.features.swap(0, 1)).contains("same order"));
        assert!(refused(&|r| r.format = 7).contains("format 7"));
        assert!(refused(&|r| r.score.edges = vec![f64::MAX; 300]).contains("score:"));
        assert!(
            Reference::parse(b"{\"format\": 1, \"rows\": 1, \"extra\": 0}", &specs)
                .unwrap_err()
                .contains("not a reference file")
        );
        assert!(Reference::parse(b"\xff\xfe", &specs).is_err());
    }
}
