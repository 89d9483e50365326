//! `segscore train`: the Rust half of training/. Fits a smartcore logistic
//! regression on a feature CSV written by the Python pipeline (same feature
//! builder, so names and semantics cannot drift), measures it on the
//! customer-disjoint validation CSV, and writes a `format = "smartcore"` model
//! version: model file, golden set scored by the very backend the server uses,
//! and the manifest last.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use clap::Args;
use ndarray::Array2;
use sha2::{Digest, Sha256};
use smartcore::{
    linalg::basic::matrix::DenseMatrix,
    linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters},
};

use crate::{
    engine::{
        smartcore::{
            SmartcoreBackend, SmartcoreModel, SmartcoreModelFile, Standardizer, FILE_FORMAT,
        },
        Backend,
    },
    features::{FeatureSchema, FeatureSpec},
    repository::{
        load::read_csv_batch,
        manifest::{GoldenSpec, ScoreSpec},
        Format, Manifest, Task, MANIFEST_FILE,
    },
};

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Training rows: customer_id, the schema's features, the label column.
    #[arg(long)]
    pub train: PathBuf,
    /// Validation rows (no customer shared with --train): metrics and golden set.
    #[arg(long)]
    pub valid: PathBuf,
    /// The feature schema ([[features]] list), e.g. training/features.toml.
    #[arg(long, default_value = "training/features.toml")]
    pub schema: PathBuf,
    /// Binary label column (0/1).
    #[arg(long)]
    pub label: String,
    /// Model name (directory under --models).
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub version: u64,
    /// Model repository root.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// L2 penalty of the logistic regression (0 = unregularised).
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// Validation rows copied into golden.csv with their expected scores.
    #[arg(long, default_value_t = 200)]
    pub golden_rows: usize,
    /// Replace an existing version directory.
    #[arg(long)]
    pub force: bool,
}

#[derive(serde::Deserialize)]
struct SchemaFile {
    features: Vec<FeatureSpec>,
}

/// Validation metrics of a binary classifier.
#[derive(Debug, Clone, Copy)]
pub struct BinaryMetrics {
    pub roc_auc: f64,
    pub log_loss: f64,
    pub brier: f64,
    pub positive_rate: f64,
}

pub fn run(args: &TrainArgs) -> anyhow::Result<BinaryMetrics> {
    let text = fs::read_to_string(&args.schema)
        .with_context(|| format!("reading {}", args.schema.display()))?;
    let file: SchemaFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", args.schema.display()))?;
    let specs = file.features;
    let schema = FeatureSchema::new(specs.clone())?;

    let (x_train, y_train) = load_xy(&args.train, &schema, &args.label)?;
    let (x_valid, y_valid) = load_xy(&args.valid, &schema, &args.label)?;
    let (rows, cols) = x_train.dim();
    let raw: Vec<f64> = x_train.iter().map(|&v| f64::from(v)).collect();
    let standardize = Standardizer::fit(rows, cols, &raw);
    let scaled: Vec<f64> = raw
        .chunks_exact(cols)
        .flat_map(|row| {
            row.iter()
                .enumerate()
                .map(|(j, &v)| standardize.apply(j, v))
                .collect::<Vec<_>>()
        })
        .collect();
    let x = DenseMatrix::new(rows, cols, scaled, false).map_err(|e| anyhow::anyhow!("{e}"))?;
    let y: Vec<i32> = y_train.iter().map(|&v| v as i32).collect();
    let params = LogisticRegressionParameters::default().with_alpha(args.alpha);
    let model =
        LogisticRegression::fit(&x, &y, params).map_err(|e| anyhow::anyhow!("fitting: {e}"))?;
    let file = SmartcoreModelFile {
        format: FILE_FORMAT.into(),
        standardize,
        model: SmartcoreModel::LogisticRegression { model },
    };
    let bytes = serde_json::to_vec(&file)?;
    // Score validation through the serving backend itself: the metrics and the
    // golden set describe exactly what the server will return.
    let mut backend = SmartcoreBackend::load(&bytes, schema.len())?;
    let p_valid = backend.score(x_valid.view())?;
    let metrics = binary_metrics(&p_valid, &y_valid);

    let dir = args.models.join(&args.name).join(args.version.to_string());
    if dir.exists() {
        if !args.force {
            bail!("{} exists; pass --force to replace it", dir.display());
        }
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let model_file = "model.smartcore.json";
    fs::write(dir.join(model_file), &bytes)?;
    write_golden(
        &args.valid,
        &schema,
        &mut backend,
        args.golden_rows,
        &dir.join("golden.csv"),
    )?;

    let mut card = toml::Table::new();
    let mut put = |k: &str, v: toml::Value| {
        card.insert(k.into(), v);
    };
    put("description", format!("{} (label `{}`): smartcore logistic regression, a native-Rust baseline to compare with the ONNX version", args.name, args.label).into());
    put("intended_use", "segmentation scores for marketing audiences; compare against the gradient-boosted ONNX version before pinning it".into());
    put("algorithm", format!("smartcore 0.7 LogisticRegression (L-BFGS, alpha = {}), standardised inputs, manifest imputation", args.alpha).into());
    put(
        "data",
        format!(
            "train: {} rows from {}; validation: {} rows from {}",
            rows,
            args.train.display(),
            x_valid.nrows(),
            args.valid.display()
        )
        .into(),
    );
    put(
        "split",
        "customer-level: no customer in both train and validation (made by training/pipeline.py)"
            .into(),
    );
    put(
        "trained_at",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    let mut m = toml::Table::new();
    m.insert("roc_auc".into(), round(metrics.roc_auc).into());
    m.insert("log_loss".into(), round(metrics.log_loss).into());
    m.insert("brier".into(), round(metrics.brier).into());
    m.insert("positive_rate".into(), round(metrics.positive_rate).into());
    card.insert("metrics".into(), m.into());

    let manifest = Manifest {
        name: args.name.clone(),
        version: args.version,
        task: Task::BinaryClassification,
        format: Format::Smartcore,
        file: model_file.into(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        score: ScoreSpec {
            output: "probability".into(),
            column: 0,
        },
        features: specs,
        golden: GoldenSpec {
            file: "golden.csv".into(),
            tolerance: 1e-5,
            latency_budget_ms: None,
        },
        breaking_change: false,
        card,
    };
    // Written last: its presence is what makes the directory a candidate.
    fs::write(dir.join(MANIFEST_FILE), toml::to_string(&manifest)?)?;
    Ok(metrics)
}

fn round(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

fn load_xy(
    path: &Path,
    schema: &FeatureSchema,
    label: &str,
) -> anyhow::Result<(Array2<f32>, Vec<f64>)> {
    let (batch, labels) = read_csv_batch(path, schema, label).map_err(anyhow::Error::msg)?;
    let y = labels
        .iter()
        .enumerate()
        .map(|(i, v)| match v.trim() {
            "1" | "1.0" | "true" | "True" => Ok(1.0),
            "0" | "0.0" | "false" | "False" => Ok(0.0),
            _ => bail!("{} row {i}: label `{label}` must be 0 or 1", path.display()),
        })
        .collect::<anyhow::Result<Vec<f64>>>()?;
    let x = schema.encode(&batch, 0..batch.rows())?;
    Ok((x, y))
}

/// Copies the first `n` validation rows (raw cells, so missing values stay
/// missing and the server's imputation is exercised) with their scores.
fn write_golden(
    valid: &Path,
    schema: &FeatureSchema,
    backend: &mut SmartcoreBackend,
    n: usize,
    out: &Path,
) -> anyhow::Result<()> {
    let mut reader = csv::Reader::from_path(valid)?;
    let headers = reader.headers()?.clone();
    let mut keep: Vec<usize> = Vec::new();
    if let Some(i) = headers.iter().position(|h| h == "customer_id") {
        keep.push(i);
    }
    for spec in schema.specs() {
        let i = headers
            .iter()
            .position(|h| h == spec.name)
            .with_context(|| format!("{}: no column `{}`", valid.display(), spec.name))?;
        keep.push(i);
    }
    let tmp = out.with_extension("csv.rows");
    {
        let mut w = csv::Writer::from_path(&tmp)?;
        w.write_record(keep.iter().map(|&i| &headers[i]))?;
        for record in reader.records().take(n) {
            let record = record?;
            w.write_record(keep.iter().map(|&i| record.get(i).unwrap_or("")))?;
        }
        w.flush()?;
    }
    let (batch, _) = read_csv_batch(&tmp, schema, "").map_err(anyhow::Error::msg)?;
    let scores = backend.score(schema.encode(&batch, 0..batch.rows())?.view())?;
    let mut reader = csv::Reader::from_path(&tmp)?;
    let mut w = csv::Writer::from_path(out)?;
    let mut header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    header.push("expected".into());
    w.write_record(&header)?;
    for (record, score) in reader.records().zip(scores) {
        let mut row: Vec<String> = record?.iter().map(str::to_owned).collect();
        row.push(score.to_string());
        w.write_record(&row)?;
    }
    w.flush()?;
    fs::remove_file(&tmp)?;
    std::io::stdout().flush()?;
    Ok(())
}

/// ROC AUC (rank statistic, ties averaged), log loss, Brier score.
pub fn binary_metrics(p: &[f32], y: &[f64]) -> BinaryMetrics {
    let n = p.len().min(y.len());
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut ranks = vec![0f64; n];
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && p[idx[j + 1]] == p[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = avg;
        }
        i = j + 1;
    }
    let pos = y.iter().take(n).filter(|&&v| v > 0.5).count() as f64;
    let neg = n as f64 - pos;
    let rank_sum: f64 = (0..n).filter(|&k| y[k] > 0.5).map(|k| ranks[k]).sum();
    let roc_auc = (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg).max(1.0);
    let eps = 1e-15;
    let (mut log_loss, mut brier) = (0.0, 0.0);
    for k in 0..n {
        let q = f64::from(p[k]).clamp(eps, 1.0 - eps);
        log_loss -= y[k] * q.ln() + (1.0 - y[k]) * (1.0 - q).ln();
        brier += (q - y[k]).powi(2);
    }
    let nf = n.max(1) as f64;
    BinaryMetrics {
        roc_auc,
        log_loss: log_loss / nf,
        brier: brier / nf,
        positive_rate: pos / nf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_a_perfect_and_a_reversed_ranking() {
        let y = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(binary_metrics(&[0.1, 0.2, 0.8, 0.9], &y).roc_auc, 1.0);
        assert_eq!(binary_metrics(&[0.9, 0.8, 0.2, 0.1], &y).roc_auc, 0.0);
        assert_eq!(binary_metrics(&[0.5, 0.5, 0.5, 0.5], &y).roc_auc, 0.5);
    }
}
