//! Drift of a model version's inputs and score: its reference
//! distributions ([`reference`], `reference.json`) and the live
//! distributions of one model version over a sliding
//! window of scored rows, compared with its reference on demand.
//!
//! The window is a ring of row buckets: rows are counted into the current
//! bucket, and when it holds its share of the window the oldest bucket is
//! cleared and becomes the current one. The window therefore covers the
//! last `window_rows` rows (between (B−1)/B and all of it); it advances
//! with rows, never with time, so a test drives it by scoring rows.
//!
//! The hot path ([`VersionDrift::observe`]) only bins values and adds to
//! counters that were sized when the version loaded: per feature, the
//! counts go into a stack buffer and reach the shared atomics once per bin
//! per request, with no allocation and no string built.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use parking_lot::Mutex;

pub mod reference;

use self::reference::{bin_of, feature_psi, psi, Cell, Reference, MAX_BINS};
use crate::features::FeatureBatch;

/// The window's shape (`serve --drift-window-rows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Rows the window covers.
    pub rows: u64,
    /// Buckets it advances by (each holds rows / buckets).
    pub buckets: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            rows: 100_000,
            buckets: 10,
        }
    }
}

/// Which rows of a request one version scored.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    All,
    /// Every row but these (ascending): the canary's rows went elsewhere.
    Except(&'a [u32]),
    /// Only these (ascending): the canary's own rows.
    Only(&'a [u32]),
}

impl Rows<'_> {
    fn for_each(self, n: usize, mut f: impl FnMut(usize)) {
        match self {
            Rows::All => (0..n).for_each(f),
            Rows::Only(rows) => rows.iter().for_each(|&r| f(r as usize)),
            Rows::Except(skip) => {
                let mut skip = skip.iter().peekable();
                for r in 0..n {
                    if skip.peek().is_some_and(|&&s| s as usize == r) {
                        skip.next();
                    } else {
                        f(r);
                    }
                }
            }
        }
    }
}

/// One version's counters.
pub struct VersionDrift {
    reference: Reference,
    config: WindowConfig,
    /// Offset of each feature's bins in a bucket; its missing count follows
    /// its bins.
    offsets: Vec<usize>,
    /// Offset of the score bins in a bucket.
    score_offset: usize,
    /// Counters per bucket.
    width: usize,
    /// `buckets × width` counters.
    counts: Vec<AtomicU64>,
    /// Rows counted per bucket.
    rows: Vec<AtomicU64>,
    /// Buckets started so far; the current one is `current % buckets`.
    current: AtomicUsize,
    /// Held while a full bucket hands over to the next (rare).
    rotate: Mutex<()>,
}

/// A feature's counts over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureWindow {
    pub name: String,
    pub counts: Vec<u64>,
    pub missing: u64,
    /// Present rows + missing rows.
    pub rows: u64,
    /// Against the reference, missing values as one more bin; None before
    /// any row.
    pub psi: Option<f64>,
    pub reference_missing: f64,
}

impl FeatureWindow {
    pub fn missing_ratio(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.missing as f64 / self.rows as f64)
    }
}

/// The window of one version, summed over its buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftWindow {
    pub rows: u64,
    pub features: Vec<FeatureWindow>,
    pub score_counts: Vec<u64>,
    pub score_edges: Vec<f64>,
    pub score_reference: Vec<f64>,
    pub score_psi: Option<f64>,
}

impl VersionDrift {
    pub fn new(reference: Reference, config: WindowConfig) -> Self {
        let buckets = config.buckets.max(1);
        let mut offsets = Vec::with_capacity(reference.features.len());
        let mut width = 0;
        for f in &reference.features {
            offsets.push(width);
            width += f.bins() + 1;
        }
        let score_offset = width;
        width += reference.score.shares.len();
        Self {
            counts: (0..buckets * width).map(|_| AtomicU64::new(0)).collect(),
            rows: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            reference,
            config: WindowConfig { buckets, ..config },
            offsets,
            score_offset,
            width,
            current: AtomicUsize::new(0),
            rotate: Mutex::new(()),
        }
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Counts the rows `rows` of `batch` and their `scores` (indexed like the
    /// batch's rows).
    pub fn observe(&self, batch: &FeatureBatch, rows: Rows<'_>, scores: &[f32]) {
        let n = batch.rows();
        let started = self.current.load(Relaxed);
        let bucket = started % self.config.buckets;
        let base = bucket * self.width;
        // Bins are capped at MAX_BINS by the reference check; +1 for missing.
        let mut local = [0u64; MAX_BINS + 1];
        let mut counted = 0u64;
        for (f, offset) in self.reference.features.iter().zip(&self.offsets) {
            let bins = f.bins();
            local[..=bins].fill(0);
            let column = batch.column(&f.name);
            rows.for_each(n, |r| match f.cell(column, r) {
                Cell::Bin(b) => local[b] += 1,
                Cell::Missing => local[bins] += 1,
                Cell::Skip => {}
            });
            self.add(base + offset, &local[..=bins]);
        }
        let edges = &self.reference.score.edges;
        let bins = edges.len() + 1;
        local[..bins].fill(0);
        rows.for_each(n, |r| {
            counted += 1;
            if let Some(&s) = scores.get(r) {
                if s.is_finite() {
                    local[bin_of(edges, f64::from(s))] += 1;
                }
            }
        });
        self.add(base + self.score_offset, &local[..bins]);
        let filled = self.rows[bucket].fetch_add(counted, Relaxed) + counted;
        let per_bucket = (self.config.rows / self.config.buckets as u64).max(1);
        if filled >= per_bucket {
            self.advance(started);
        }
    }

    fn add(&self, at: usize, counts: &[u64]) {
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 {
                self.counts[at + i].fetch_add(c, Relaxed);
            }
        }
    }

    /// Starts the bucket after `from` (if no other thread has): clears the
    /// oldest bucket first, so no count lands in it before it is cleared.
    fn advance(&self, from: usize) {
        let Some(_held) = self.rotate.try_lock() else {
            return;
        };
        if self.current.load(Relaxed) != from {
            return;
        }
        let next = (from + 1) % self.config.buckets;
        let base = next * self.width;
        for c in &self.counts[base..base + self.width] {
            c.store(0, Relaxed);
        }
        self.rows[next].store(0, Relaxed);
        self.current.store(from + 1, Relaxed);
    }

    /// The counts over the whole window and their drift from the reference.
    pub fn window(&self) -> DriftWindow {
        let mut sums = vec![0u64; self.width];
        for bucket in 0..self.config.buckets {
            let base = bucket * self.width;
            for (s, c) in sums.iter_mut().zip(&self.counts[base..base + self.width]) {
                *s += c.load(Relaxed);
            }
        }
        let rows = self.rows.iter().map(|r| r.load(Relaxed)).sum();
        let features = self
            .reference
            .features
            .iter()
            .zip(&self.offsets)
            .map(|(f, &offset)| {
                let counts = sums[offset..offset + f.bins()].to_vec();
                let missing = sums[offset + f.bins()];
                FeatureWindow {
                    name: f.name.clone(),
                    rows: counts.iter().sum::<u64>() + missing,
                    psi: feature_psi(f, &counts, missing),
                    counts,
                    missing,
                    reference_missing: f.missing,
                }
            })
            .collect();
        let score_counts =
            sums[self.score_offset..self.score_offset + self.reference.score.shares.len()].to_vec();
        DriftWindow {
            rows,
            features,
            score_psi: psi(&self.reference.score.shares, &score_counts),
            score_counts,
            score_edges: self.reference.score.edges.clone(),
            score_reference: self.reference.score.shares.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{Column, ColumnValues, DType, FeatureSpec, MissingPolicy};

    fn setup() -> (FeatureBatch, VersionDrift) {
        let spec = FeatureSpec {
            name: "x".into(),
            description: None,
            dtype: DType::F32,
            min: None,
            max: None,
            categories: Vec::new(),
            missing: MissingPolicy::Reject,
        };
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let batch =
            FeatureBatch::new(100, vec![("x".into(), Column::new(ColumnValues::F32(x)))]).unwrap();
        let scores: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let reference = Reference::of_sample(&[spec], &batch, &scores, "");
        let drift = VersionDrift::new(
            reference,
            WindowConfig {
                rows: 200,
                buckets: 2,
            },
        );
        (batch, drift)
    }

    #[test]
    fn the_window_keeps_the_last_rows_and_forgets_older_ones() {
        let (batch, drift) = setup();
        let scores: Vec<f32> = (0..100).map(|i| i as f32).collect();
        drift.observe(&batch, Rows::All, &scores);
        let w = drift.window();
        assert_eq!(w.rows, 100);
        assert!(w.features[0].psi.unwrap() < 1e-9 && w.score_psi.unwrap() < 1e-9);
        // Two more buckets of shifted rows: the unshifted ones fall out (a
        // full bucket clears the oldest, so the window holds 100..=200 rows).
        let high = vec![1000.0f32; 100];
        for _ in 0..2 {
            drift.observe(&batch, Rows::All, &high);
        }
        let w = drift.window();
        assert_eq!(w.rows, 100);
        assert_eq!(w.score_counts, [0, 0, 0, 0, 0, 0, 0, 0, 0, 100]);
        assert!(w.score_psi.unwrap() > 1.0, "{w:?}");
        assert!(w.features[0].psi.unwrap() < 1e-9);
    }

    #[test]
    fn canary_rows_are_counted_by_their_own_version_only() {
        let (batch, drift) = setup();
        drift.observe(&batch, Rows::Except(&[0, 5, 99]), &[]);
        assert_eq!(drift.window().features[0].rows, 97);
        drift.observe(&batch, Rows::Only(&[0, 5, 99]), &[]);
        let w = drift.window();
        assert_eq!(w.features[0].rows, 100);
        // No scores given: rows counted, score bins empty.
        assert_eq!(w.score_counts.iter().sum::<u64>(), 0);
        assert_eq!(w.score_psi, None);
    }
}
