//! `segscore models compare`: champion / challenger. Scores a labelled feature
//! file with two versions of a model through the same engine the server uses
//! (validated, golden-checked, worker threads and batcher), joins the scores
//! with the labels by id, and reports for both, side by side, the figures a
//! data scientist needs before moving a label: ROC AUC, log loss, Brier score
//! and a reliability table with its expected calibration error for a binary
//! model; Spearman, MAE, Σpredicted/Σactual and top-decile lift for both
//! kinds.
//!
//! Rows are scored and counted only when both versions accept them and they
//! have a label, so both columns describe the same customers.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::{
    bulk::read::{self, Wanted},
    config::EngineArgs,
    features::{DType, FeatureBatch},
    repository::{load, LoadedModel, Task},
};

/// Equal-width probability bins of the reliability table (and the ECE).
const RELIABILITY_BINS: usize = 10;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Feature rows to score (CSV or Parquet by extension): the id column and
    /// the models' feature columns, as `segscore score` reads them.
    #[arg(long, env = "SEGSCORE_COMPARE_INPUT")]
    pub input: PathBuf,
    /// CSV with the id column and the observed outcome (0/1 for a binary
    /// model, an amount for a regression); may be the --input file itself.
    #[arg(long, env = "SEGSCORE_COMPARE_LABELS")]
    pub labels: PathBuf,
    /// The outcome column of --labels. Default: the champion card's
    /// `label_column`, else the one column besides the id.
    #[arg(long, env = "SEGSCORE_COMPARE_LABEL_COLUMN")]
    pub label_column: Option<String>,
    /// The id column of both files.
    #[arg(long, env = "SEGSCORE_ID_COLUMN", default_value = "customer_id")]
    pub id_column: String,
    /// Model repository root.
    #[arg(
        long,
        env = "SEGSCORE_MODEL_REPOSITORY",
        default_value = "models",
        value_name = "DIR"
    )]
    pub model_repository: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long, env = "SEGSCORE_COMPARE_JSON")]
    pub json: bool,
    /// The champion and the challenger: NAME:VERSION NAME:VERSION.
    #[arg(num_args = 2, required = true, value_name = "NAME:VERSION")]
    pub versions: Vec<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Everything `compare` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Rows scored by both versions and labelled.
    pub rows: usize,
    /// Input rows left out: a value one version rejects, or no label.
    pub rows_skipped: usize,
    pub label_column: String,
    pub models: Vec<VersionReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionReport {
    pub name: String,
    pub version: u64,
    pub sha256: String,
    pub metrics: Metrics,
    /// Binary models: one row per non-empty probability bin.
    pub reliability: Vec<ReliabilityBin>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brier: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
    pub spearman: f64,
    pub mae: f64,
    /// Σpredicted / Σactual: 1 means the totals agree.
    pub sum_ratio: f64,
    /// Mean outcome of the 10% highest scored rows over the mean outcome.
    pub top_decile_lift: f64,
    pub mean_predicted: f64,
    pub mean_actual: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub rows: usize,
    pub mean_predicted: f64,
    pub observed: f64,
}

/// Runs the comparison `args` describe.
pub async fn run(args: &CompareArgs) -> anyhow::Result<Comparison> {
    let engine = args.engine.engine_config();
    let mut models = Vec::new();
    for spec in &args.versions {
        let (name, version) = spec
            .split_once(':')
            .and_then(|(n, v)| Some((n.trim().to_string(), v.trim().parse::<u64>().ok()?)))
            .with_context(|| format!("`{spec}`: expected NAME:VERSION, e.g. churn:2"))?;
        let dir = args.model_repository.join(&name).join(version.to_string());
        let engine = engine.clone();
        let model = tokio::task::spawn_blocking(move || load::load(&dir, &engine, None, &|_| {}))
            .await?
            .with_context(|| format!("model `{name}` version {version} cannot be used"))?;
        models.push(model);
    }
    let (a, b) = (&models[0], &models[1]);
    if a.manifest.task != b.manifest.task || a.manifest.task == Task::Clustering {
        bail!(
            "{}:{} is {:?} and {}:{} is {:?}: compare takes two binary classifiers or two regressions",
            a.name(),
            a.version(),
            a.manifest.task,
            b.name(),
            b.version(),
            b.manifest.task
        );
    }
    let label_column = match &args.label_column {
        Some(c) => c.clone(),
        None => default_label_column(&args.labels, &args.id_column, a)?,
    };
    let labels = read_labels(&args.labels, &args.id_column, &label_column)?;
    let binary = a.manifest.task == Task::BinaryClassification;
    if binary {
        if let Some((id, v)) = labels.iter().find(|(_, v)| **v != 0.0 && **v != 1.0) {
            bail!(
                "{}: column `{label_column}` must be 0 or 1 for a binary model; id `{}` has {v}",
                args.labels.display(),
                truncate(id)
            );
        }
    }
    let (actual, scores, skipped) = score_file(args, &models, &labels).await?;
    if actual.is_empty() {
        bail!(
            "{}: no row was both scorable by both versions and labelled in {}",
            args.input.display(),
            args.labels.display()
        );
    }
    let reports = models
        .iter()
        .zip(scores)
        .map(|(m, s)| {
            let (metrics, reliability) = measure(&actual, &s, binary);
            VersionReport {
                name: m.name().to_string(),
                version: m.version(),
                sha256: m.manifest.sha256.clone(),
                metrics,
                reliability,
            }
        })
        .collect();
    Ok(Comparison {
        rows: actual.len(),
        rows_skipped: skipped,
        label_column,
        models: reports,
    })
}

fn truncate(id: &str) -> String {
    id.chars().take(32).collect()
}

/// The card's `label_column` (written by `pipeline.py fit`), else the only
/// column of the labels file besides the id.
fn default_label_column(path: &Path, id: &str, model: &LoadedModel) -> anyhow::Result<String> {
    if let Some(c) = model
        .manifest
        .card
        .get("label_column")
        .and_then(|v| v.as_str())
    {
        return Ok(c.to_string());
    }
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let others: Vec<String> = reader
        .headers()?
        .iter()
        .filter(|h| *h != id)
        .map(str::to_string)
        .collect();
    match others.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "{}: which column is the outcome? pass --label-column (columns: {})",
            path.display(),
            others.join(", ")
        ),
    }
}

fn read_labels(path: &Path, id: &str, column: &str) -> anyhow::Result<HashMap<String, f64>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let find = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no column `{name}`", path.display()))
    };
    let (id_idx, label_idx) = (find(id)?, find(column)?);
    let mut out = HashMap::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {row}", path.display()))?;
        let key = record.get(id_idx).unwrap_or_default().to_string();
        let cell = record.get(label_idx).unwrap_or_default().trim();
        if cell.is_empty() {
            continue; // no outcome observed: not comparable
        }
        let value: f64 = cell.parse().with_context(|| {
            format!(
                "{}: row {row}, column `{column}`: not a number",
                path.display()
            )
        })?;
        if !value.is_finite() {
            bail!(
                "{}: row {row}, column `{column}`: not finite",
                path.display()
            );
        }
        if out.insert(key, value).is_some() {
            bail!(
                "{}: row {row}: id `{}` appears twice",
                path.display(),
                truncate(record.get(id_idx).unwrap_or_default())
            );
        }
    }
    Ok(out)
}

/// Scores every row both versions accept and that has a label; returns the
/// outcomes, each version's scores (same row order) and the rows skipped.
async fn score_file(
    args: &CompareArgs,
    models: &[Arc<LoadedModel>],
    labels: &HashMap<String, f64>,
) -> anyhow::Result<(Vec<f64>, Vec<Vec<f64>>, usize)> {
    let mut features: Vec<(String, DType)> = Vec::new();
    for m in models {
        for spec in m.schema.specs() {
            match features.iter().find(|(n, _)| *n == spec.name) {
                Some((_, d)) if *d != spec.dtype => bail!(
                    "feature `{}` is {} in one version and {} in the other",
                    spec.name,
                    d.as_str(),
                    spec.dtype.as_str()
                ),
                Some(_) => {}
                None => features.push((spec.name.clone(), spec.dtype)),
            }
        }
    }
    let wanted = Wanted {
        id_column: args.id_column.clone(),
        features,
    };
    let opened = read::open(&args.input, &wanted, 4096, None, 0)?;
    let mut actual = Vec::new();
    let mut scores = vec![Vec::new(); models.len()];
    let mut skipped = 0;
    for chunk in opened.chunks {
        let chunk = chunk?;
        let n = chunk.ids.len();
        let batch = FeatureBatch::new(n, chunk.columns)
            .with_context(|| format!("{}: rows from {}", args.input.display(), chunk.first_row))?;
        let mut bad = vec![false; n];
        for cell in &chunk.bad_cells {
            bad[(cell.row - chunk.first_row) as usize] = true;
        }
        for m in models {
            let errors = m.schema.row_errors(&batch).map_err(|e| {
                anyhow::anyhow!(
                    "{}: model `{}`: feature `{}`: {}",
                    args.input.display(),
                    m.name(),
                    e.feature(),
                    e.reason()
                )
            })?;
            for e in errors {
                if let Some(row) = e.row() {
                    bad[row] = true;
                }
            }
        }
        let keep: Vec<usize> = (0..n)
            .filter(|&i| !bad[i] && labels.contains_key(&chunk.ids[i]))
            .collect();
        skipped += n - keep.len();
        if keep.is_empty() {
            continue;
        }
        let batch = batch.select_rows(&keep)?;
        actual.extend(keep.iter().map(|&i| labels[&chunk.ids[i]]));
        for (m, out) in models.iter().zip(scores.iter_mut()) {
            let scored = m
                .score(&batch)
                .await
                .with_context(|| format!("model `{}` version {}", m.name(), m.version()))?;
            out.extend(scored.scores.iter().map(|&s| f64::from(s)));
        }
    }
    Ok((actual, scores, skipped))
}

/// Average ranks (1-based), ties sharing the mean of their positions: what
/// scipy's `rankdata` and the Mann-Whitney form of the ROC AUC use.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        f64::NAN
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Every figure for one version's scores against the outcomes.
pub fn measure(actual: &[f64], predicted: &[f64], binary: bool) -> (Metrics, Vec<ReliabilityBin>) {
    let n = actual.len() as f64;
    let sum_actual: f64 = actual.iter().sum();
    let sum_predicted: f64 = predicted.iter().sum();
    let mean_actual = sum_actual / n;
    // Top decile: the ⌊n/10⌋ (at least 1) highest scores, ties in input order.
    let k = (actual.len() / 10).max(1);
    let mut order: Vec<usize> = (0..actual.len()).collect();
    order.sort_by(|&a, &b| predicted[b].total_cmp(&predicted[a]));
    let top_mean = order[..k].iter().map(|&i| actual[i]).sum::<f64>() / k as f64;
    let mut metrics = Metrics {
        spearman: pearson(&average_ranks(predicted), &average_ranks(actual)),
        mae: actual
            .iter()
            .zip(predicted)
            .map(|(a, p)| (a - p).abs())
            .sum::<f64>()
            / n,
        sum_ratio: sum_predicted / sum_actual,
        top_decile_lift: top_mean / mean_actual,
        mean_predicted: sum_predicted / n,
        mean_actual,
        ..Metrics::default()
    };
    let mut reliability = Vec::new();
    if binary {
        let positives = sum_actual;
        let negatives = n - positives;
        let ranks = average_ranks(predicted);
        let rank_sum: f64 = ranks
            .iter()
            .zip(actual)
            .filter(|(_, a)| **a == 1.0)
            .map(|(r, _)| r)
            .sum();
        metrics.roc_auc = (positives > 0.0 && negatives > 0.0)
            .then(|| (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives));
        // Clipped to the f64 machine epsilon, as sklearn's log_loss does.
        let eps = f64::EPSILON;
        metrics.log_loss = Some(
            -actual
                .iter()
                .zip(predicted)
                .map(|(a, p)| {
                    let p = p.clamp(eps, 1.0 - eps);
                    a * p.ln() + (1.0 - a) * (1.0 - p).ln()
                })
                .sum::<f64>()
                / n,
        );
        metrics.brier = Some(
            actual
                .iter()
                .zip(predicted)
                .map(|(a, p)| (p - a) * (p - a))
                .sum::<f64>()
                / n,
        );
        let mut bins = vec![(0usize, 0.0, 0.0); RELIABILITY_BINS];
        for (a, p) in actual.iter().zip(predicted) {
            let b = ((p * RELIABILITY_BINS as f64) as usize).min(RELIABILITY_BINS - 1);
            bins[b].0 += 1;
            bins[b].1 += p;
            bins[b].2 += a;
        }
        let mut ece = 0.0;
        for (b, (rows, sp, sa)) in bins.into_iter().enumerate() {
            if rows == 0 {
                continue;
            }
            let (mp, obs) = (sp / rows as f64, sa / rows as f64);
            ece += rows as f64 * (mp - obs).abs();
            reliability.push(ReliabilityBin {
                lower: b as f64 / RELIABILITY_BINS as f64,
                upper: (b + 1) as f64 / RELIABILITY_BINS as f64,
                rows,
                mean_predicted: mp,
                observed: obs,
            });
        }
        metrics.ece = Some(ece / n);
    }
    (metrics, reliability)
}

/// Reads one figure off a version's metrics (None: not defined for its task).
type MetricOf = fn(&Metrics) -> Option<f64>;

/// The side-by-side table `compare` prints.
pub fn table(c: &Comparison) -> String {
    let heads: Vec<String> = c
        .models
        .iter()
        .map(|m| format!("{}:{}", m.name, m.version))
        .collect();
    let mut out = format!(
        "{} labelled rows ({} skipped), outcome `{}`\n{:<18}{:>14}{:>14}{:>12}\n",
        c.rows, c.rows_skipped, c.label_column, "metric", heads[0], heads[1], "change"
    );
    let rows: [(&str, MetricOf); 10] = [
        ("roc_auc", |m| m.roc_auc),
        ("log_loss", |m| m.log_loss),
        ("brier", |m| m.brier),
        ("ece", |m| m.ece),
        ("spearman", |m| Some(m.spearman)),
        ("mae", |m| Some(m.mae)),
        ("sum_ratio", |m| Some(m.sum_ratio)),
        ("top_decile_lift", |m| Some(m.top_decile_lift)),
        ("mean_predicted", |m| Some(m.mean_predicted)),
        ("mean_actual", |m| Some(m.mean_actual)),
    ];
    for (name, get) in rows {
        if let (Some(a), Some(b)) = (get(&c.models[0].metrics), get(&c.models[1].metrics)) {
            out += &format!("{name:<18}{a:>14.6}{b:>14.6}{:>+12.6}\n", b - a);
        }
    }
    for m in c.models.iter().filter(|m| !m.reliability.is_empty()) {
        out += &format!(
            "\nreliability {}:{} (bin, rows, mean predicted, observed)\n",
            m.name, m.version
        );
        for b in &m.reliability {
            out += &format!(
                "  [{:.1}, {:.1}) {:>8} {:>10.4} {:>10.4}\n",
                b.lower, b.upper, b.rows, b.mean_predicted, b.observed
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_average_ties() {
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 2.0]),
            vec![3.5, 1.0, 3.5, 2.0]
        );
    }

    #[test]
    fn auc_counts_ties_as_half() {
        // One positive tied with one negative, above the other negative.
        let (m, _) = measure(&[1.0, 0.0, 0.0], &[0.5, 0.5, 0.1], true);
        assert_eq!(m.roc_auc, Some(0.75));
        let (m, _) = measure(&[1.0, 0.0], &[0.9, 0.1], true);
        assert_eq!(m.roc_auc, Some(1.0));
    }

    #[test]
    fn regression_figures() {
        let (m, bins) = measure(&[0.0, 10.0, 30.0], &[5.0, 10.0, 15.0], false);
        assert!(bins.is_empty() && m.roc_auc.is_none());
        assert!((m.sum_ratio - 0.75).abs() < 1e-12);
        assert!((m.mae - 20.0 / 3.0).abs() < 1e-12);
        assert!((m.spearman - 1.0).abs() < 1e-12);
        // k = max(1, 3/10) = 1: the top row's outcome over the mean.
        assert!((m.top_decile_lift - 30.0 / (40.0 / 3.0)).abs() < 1e-12);
    }
}
