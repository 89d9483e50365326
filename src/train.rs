//! `segscore train`: the Rust half of training/. Fits a smartcore logistic
//! regression (`--task binary_classification`) or K-Means behavioural
//! clusters (`--task clustering`) on a feature CSV written by the Python
//! pipeline (same feature builder, so names and semantics cannot drift),
//! measures it on the customer-disjoint validation CSV, and writes a
//! `format = "smartcore"` model version: model file, golden set scored by the
//! very backend the server uses, and the manifest last.

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
    cluster::kmeans::KMeansParameters,
    linalg::basic::matrix::DenseMatrix,
    linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters},
};

use crate::{
    engine::{
        smartcore::{
            kmeans_centroids, KMeans, SmartcoreBackend, SmartcoreModel, SmartcoreModelFile,
            Standardizer, FILE_FORMAT,
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

/// `--clusters`: a fixed k or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterCount {
    Auto,
    Fixed(usize),
}

impl std::str::FromStr for ClusterCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(ClusterCount::Auto),
            n => n
                .parse()
                .map(ClusterCount::Fixed)
                .map_err(|_| format!("`{s}`: expected a number of clusters or `auto`")),
        }
    }
}

/// Validation rows the silhouette is computed on (O(n²) distances): a
/// deterministic stride through the file, enough for a stable mean.
const SILHOUETTE_ROWS: usize = 2000;

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Training rows: customer_id, the schema's features, the label column.
    #[arg(long, env = "SEGSCORE_TRAIN")]
    pub train: PathBuf,
    /// Validation rows (no customer shared with --train): metrics and golden set.
    #[arg(long, env = "SEGSCORE_VALID")]
    pub valid: PathBuf,
    /// The feature schema ([[features]] list), e.g. training/features.toml.
    #[arg(
        long,
        env = "SEGSCORE_SCHEMA",
        default_value = "training/features.toml"
    )]
    pub schema: PathBuf,
    /// What to fit: a logistic regression on `--label`, or K-Means clusters.
    #[arg(long, env = "SEGSCORE_TASK", value_enum, default_value_t = TrainTask::BinaryClassification)]
    pub task: TrainTask,
    /// Binary label column (0/1); required for binary_classification.
    #[arg(long, env = "SEGSCORE_LABEL", default_value = "")]
    pub label: String,
    /// Clustering: number of clusters, or `auto` to choose k in
    /// 2..=--clusters-max by the mean silhouette on validation rows (the card
    /// shows the curve).
    #[arg(long, env = "SEGSCORE_CLUSTERS", default_value = "5")]
    pub clusters: ClusterCount,
    /// Clustering with `--clusters auto`: the largest k tried.
    #[arg(long, env = "SEGSCORE_CLUSTERS_MAX", default_value_t = 10)]
    pub clusters_max: usize,
    /// Features the model uses, comma-separated, in this order (default: every
    /// feature of --schema).
    #[arg(long, env = "SEGSCORE_FEATURES", value_delimiter = ',')]
    pub features: Vec<String>,
    /// Seed of K-Means++ initialisation (same seed, same clusters).
    #[arg(long, env = "SEGSCORE_SEED", default_value_t = 20261123)]
    pub seed: u64,
    /// Model name (directory under --model-repository).
    #[arg(long, env = "SEGSCORE_TRAIN_NAME")]
    pub name: String,
    /// Version to write (directory under the model's).
    #[arg(long, env = "SEGSCORE_TRAIN_VERSION")]
    pub version: u64,
    /// Model repository root to write the version into.
    #[arg(
        long,
        env = "SEGSCORE_MODEL_REPOSITORY",
        default_value = "models",
        value_name = "DIR"
    )]
    pub model_repository: PathBuf,
    /// L2 penalty of the logistic regression (0 = unregularised).
    #[arg(long, env = "SEGSCORE_ALPHA", default_value_t = 1.0)]
    pub alpha: f64,
    /// Validation rows copied into golden.csv with their expected scores.
    #[arg(long, env = "SEGSCORE_GOLDEN_ROWS", default_value_t = 200)]
    pub golden_rows: usize,
    /// Replace an existing version directory.
    #[arg(long, env = "SEGSCORE_TRAIN_FORCE")]
    pub force: bool,
}

/// `--task`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum TrainTask {
    BinaryClassification,
    Clustering,
}

/// The smartcore model file inside a version directory.
const MODEL_FILE: &str = "model.smartcore.json";

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

/// Trains the model `args` describe and returns a one-line summary.
pub fn run(args: &TrainArgs) -> anyhow::Result<String> {
    let specs = read_specs(args)?;
    match args.task {
        TrainTask::BinaryClassification => {
            let m = train_logistic(args, specs)?;
            Ok(format!(
                "trained {} v{}: validation roc_auc {:.4}, log_loss {:.4}, brier {:.4}",
                args.name, args.version, m.roc_auc, m.log_loss, m.brier
            ))
        }
        TrainTask::Clustering => {
            let sizes = train_kmeans(args, specs)?;
            Ok(format!(
                "trained {} v{}: {} clusters, validation shares {:?}",
                args.name,
                args.version,
                sizes.len(),
                sizes
            ))
        }
    }
}

/// The schema's features, narrowed to `--features` (in that order) if given.
fn read_specs(args: &TrainArgs) -> anyhow::Result<Vec<FeatureSpec>> {
    let text = fs::read_to_string(&args.schema)
        .with_context(|| format!("reading {}", args.schema.display()))?;
    let file: SchemaFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", args.schema.display()))?;
    if args.features.is_empty() {
        return Ok(file.features);
    }
    args.features
        .iter()
        .map(|name| {
            file.features
                .iter()
                .find(|s| s.name == *name)
                .cloned()
                .with_context(|| {
                    format!("--features: `{name}` is not in {}", args.schema.display())
                })
        })
        .collect()
}

/// The version directory, emptied (with --force) and created.
fn version_dir(args: &TrainArgs) -> anyhow::Result<PathBuf> {
    let dir = args
        .model_repository
        .join(&args.name)
        .join(args.version.to_string());
    if dir.exists() {
        if !args.force {
            bail!("{} exists; pass --force to replace it", dir.display());
        }
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Standardises a row-major matrix with a standardizer fitted on it.
fn standardized(x: &Array2<f32>) -> (Standardizer, Vec<f64>) {
    let (rows, cols) = x.dim();
    let raw: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let standardize = Standardizer::fit(rows, cols, &raw);
    let scaled = raw
        .chunks_exact(cols)
        .flat_map(|row| {
            row.iter()
                .enumerate()
                .map(|(j, &v)| standardize.apply(j, v))
                .collect::<Vec<_>>()
        })
        .collect();
    (standardize, scaled)
}

fn trained_at() -> toml::Value {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .into()
}

fn train_logistic(args: &TrainArgs, specs: Vec<FeatureSpec>) -> anyhow::Result<BinaryMetrics> {
    if args.label.is_empty() {
        bail!("--label is required for --task binary_classification");
    }
    let schema = FeatureSchema::new(specs.clone())?;

    let (x_train, y_train) = load_xy(&args.train, &schema, &args.label)?;
    let (x_valid, y_valid) = load_xy(&args.valid, &schema, &args.label)?;
    let (rows, cols) = x_train.dim();
    let (standardize, scaled) = standardized(&x_train);
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

    let dir = version_dir(args)?;
    fs::write(dir.join(MODEL_FILE), &bytes)?;
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
    put("trained_at", trained_at());
    let mut m = toml::Table::new();
    m.insert("roc_auc".into(), round(metrics.roc_auc).into());
    m.insert("log_loss".into(), round(metrics.log_loss).into());
    m.insert("brier".into(), round(metrics.brier).into());
    m.insert("positive_rate".into(), round(metrics.positive_rate).into());
    card.insert("metrics".into(), m.into());

    write_manifest(
        args,
        &dir,
        Task::BinaryClassification,
        "probability",
        &bytes,
        specs,
        card,
    )?;
    Ok(metrics)
}

/// Fits K-Means on the standardised features and writes the version; returns
/// each cluster's share of the validation rows.
fn train_kmeans(args: &TrainArgs, specs: Vec<FeatureSpec>) -> anyhow::Result<Vec<f64>> {
    let candidates: Vec<usize> = match args.clusters {
        ClusterCount::Fixed(k) if k < 2 => bail!("--clusters must be at least 2"),
        ClusterCount::Fixed(k) => vec![k],
        ClusterCount::Auto if args.clusters_max < 3 => {
            bail!("--clusters-max must be at least 3 for --clusters auto")
        }
        ClusterCount::Auto => (2..=args.clusters_max).collect(),
    };
    let schema = FeatureSchema::new(specs.clone())?;
    let x_train = load_x(&args.train, &schema)?;
    let x_valid = load_x(&args.valid, &schema)?;
    let (rows, cols) = x_train.dim();
    let (standardize, scaled) = standardized(&x_train);
    let x = DenseMatrix::new(rows, cols, scaled, false).map_err(|e| anyhow::anyhow!("{e}"))?;
    let fit = |k: usize| -> anyhow::Result<KMeans> {
        let mut params = KMeansParameters::default().with_k(k).with_max_iter(300);
        params.seed = Some(args.seed);
        KMeans::fit(&x, params).map_err(|e| anyhow::anyhow!("fitting k = {k}: {e}"))
    };
    // Validation rows in standardised units (the training mean and scale).
    let stride = x_valid.nrows().div_ceil(SILHOUETTE_ROWS).max(1);
    let sample: Vec<Vec<f64>> = x_valid
        .rows()
        .into_iter()
        .step_by(stride)
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, &v)| standardize.apply(j, f64::from(v)))
                .collect()
        })
        .collect();
    let mut curve = Vec::new();
    let mut best: Option<(f64, KMeans)> = None;
    for &k in &candidates {
        let model = fit(k)?;
        if candidates.len() == 1 {
            best = Some((f64::NAN, model));
            break;
        }
        let score = silhouette(&sample, &kmeans_centroids(&model)?);
        curve.push((k, score));
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, model));
        }
    }
    let (_, model) = best.expect("at least one k was tried; this is a bug");
    let centroids = kmeans_centroids(&model)?;
    let file = SmartcoreModelFile {
        format: FILE_FORMAT.into(),
        standardize: standardize.clone(),
        model: SmartcoreModel::KMeans { model },
    };
    let bytes = serde_json::to_vec(&file)?;
    let mut backend = SmartcoreBackend::load(&bytes, schema.len())?;
    let train_out = backend.score(x_train.view())?;
    let valid_out = backend.score(x_valid.view())?;
    let k = centroids.len();
    let count = |out: &[f32]| {
        let mut sizes = vec![0usize; k];
        for pair in out.chunks_exact(2) {
            sizes[pair[0] as usize] += 1;
        }
        sizes
    };
    let train_sizes = count(&train_out);
    let valid_sizes = count(&valid_out);
    let valid_rows = x_valid.nrows().max(1) as f64;
    let valid_shares: Vec<f64> = valid_sizes
        .iter()
        .map(|&n| round(n as f64 / valid_rows))
        .collect();
    let mean_distance = valid_out
        .chunks_exact(2)
        .map(|p| f64::from(p[1]))
        .sum::<f64>()
        / valid_rows;

    let dir = version_dir(args)?;
    fs::write(dir.join(MODEL_FILE), &bytes)?;
    write_golden(
        &args.valid,
        &schema,
        &mut backend,
        args.golden_rows,
        &dir.join("golden.csv"),
    )?;

    let mut card = toml::Table::new();
    card.insert("description".into(), format!("{}: behavioural clusters of customers (smartcore K-Means, k = {k}); the score is the distance to the assigned centroid in standard deviations, `cluster_ids` the cluster", args.name).into());
    card.insert("intended_use".into(), "segment rules (`scores.clusters == N`) and audience exploration; cluster ids are only stable within one version".into());
    card.insert("algorithm".into(), format!("smartcore 0.7 KMeans (k-means++, seed {}, at most 300 iterations) on standardised features after the manifest's imputation", args.seed).into());
    card.insert(
        "data".into(),
        format!(
            "train: {rows} rows from {}; validation: {} rows from {}",
            args.train.display(),
            x_valid.nrows(),
            args.valid.display()
        )
        .into(),
    );
    card.insert("trained_at".into(), trained_at());
    if !curve.is_empty() {
        let mut selection = toml::Table::new();
        selection.insert("method".into(), format!("--clusters auto: the k in {}..={} with the highest mean silhouette (Euclidean, standardised units) on {} validation rows", candidates[0], candidates[candidates.len() - 1], sample.len()).into());
        selection.insert("chosen".into(), (k as i64).into());
        selection.insert(
            "k".into(),
            curve
                .iter()
                .map(|&(k, _)| k as i64)
                .collect::<Vec<_>>()
                .into(),
        );
        selection.insert(
            "silhouette".into(),
            curve
                .iter()
                .map(|&(_, s)| round(s))
                .collect::<Vec<_>>()
                .into(),
        );
        card.insert("k_selection".into(), selection.into());
    }
    let mut metrics = toml::Table::new();
    metrics.insert("mean_distance_valid".into(), round(mean_distance).into());
    metrics.insert("cluster_shares_valid".into(), valid_shares.clone().into());
    card.insert("metrics".into(), metrics.into());
    let clusters: Vec<toml::Value> = centroids
        .iter()
        .enumerate()
        .map(|(id, c)| {
            let mut t = toml::Table::new();
            t.insert("id".into(), (id as i64).into());
            t.insert("label".into(), cluster_label(&specs, c).into());
            t.insert("train_rows".into(), (train_sizes[id] as i64).into());
            t.insert("valid_share".into(), valid_shares[id].into());
            let mut centroid = toml::Table::new();
            for (j, spec) in specs.iter().enumerate() {
                // Back to the feature's own units: what a marketer can read.
                let v = c[j] * standardize.scale[j] + standardize.mean[j];
                centroid.insert(spec.name.clone(), ((v * 100.0).round() / 100.0).into());
            }
            t.insert("centroid".into(), centroid.into());
            t.into()
        })
        .collect();
    card.insert("clusters".into(), clusters.into());

    write_manifest(
        args,
        &dir,
        Task::Clustering,
        "distance",
        &bytes,
        specs,
        card,
    )?;
    Ok(valid_shares)
}

/// Writes the version's manifest for the smartcore model file `bytes`:
/// last, because its presence is what makes the directory a candidate.
fn write_manifest(
    args: &TrainArgs,
    dir: &Path,
    task: Task,
    output: &str,
    bytes: &[u8],
    specs: Vec<FeatureSpec>,
    card: toml::Table,
) -> anyhow::Result<()> {
    let mut manifest = Manifest {
        name: args.name.clone(),
        version: args.version,
        task,
        format: Format::Smartcore,
        file: MODEL_FILE.into(),
        sha256: hex::encode(Sha256::digest(bytes)),
        score: ScoreSpec {
            output: output.into(),
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
        classes: Vec::new(),
        inputs: Vec::new(),
        reference: None,
    };
    // The training rows' distributions, scored by the model just written:
    // what live drift is measured against.
    let schema = crate::features::FeatureSchema::new(manifest.features.clone())?;
    let (batch, _) = crate::repository::load::read_csv_batch(&args.train, &schema, "")
        .map_err(anyhow::Error::msg)?;
    let source = args
        .train
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let engine = crate::config::EngineArgs::offline()?.engine_config();
    let reference = crate::repository::reference::compute(
        dir,
        &manifest,
        &batch,
        source.as_deref().unwrap_or_default(),
        &engine,
    )
    .map_err(anyhow::Error::msg)?;
    manifest.reference =
        Some(crate::repository::reference::save(dir, &reference).map_err(anyhow::Error::msg)?);
    fs::write(dir.join(MANIFEST_FILE), toml::to_string(&manifest)?)?;
    Ok(())
}

/// A short name for a cluster from its most distinctive features: the two
/// largest standardised centroid coordinates, e.g. "high checkout_visits_7d,
/// low recency_days"; "typical" when nothing stands out.
fn cluster_label(specs: &[FeatureSpec], centroid: &[f64]) -> String {
    let mut by_size: Vec<(usize, f64)> = centroid.iter().copied().enumerate().collect();
    by_size.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    let words: Vec<String> = by_size
        .iter()
        .take(2)
        .filter(|(_, z)| z.abs() >= 0.5)
        .map(|&(j, z)| format!("{} {}", if z > 0.0 { "high" } else { "low" }, specs[j].name))
        .collect();
    if words.is_empty() {
        "typical".into()
    } else {
        words.join(", ")
    }
}

fn round(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// The feature matrix of a CSV (imputed and encoded as the server does).
/// Mean silhouette of `rows` assigned to their nearest centroid: for each
/// row, (b − a) / max(a, b) with a the mean distance to the other rows of its
/// cluster and b the smallest mean distance to another cluster's rows; 0 for
/// a row alone in its cluster (Rousseeuw 1987, as sklearn's
/// silhouette_score).
fn silhouette(rows: &[Vec<f64>], centroids: &[Vec<f64>]) -> f64 {
    let dist = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
    };
    let label: Vec<usize> = rows
        .iter()
        .map(|r| {
            (0..centroids.len())
                .min_by(|&i, &j| dist(r, &centroids[i]).total_cmp(&dist(r, &centroids[j])))
                .unwrap_or(0)
        })
        .collect();
    let k = centroids.len();
    let mut size = vec![0usize; k];
    for &l in &label {
        size[l] += 1;
    }
    let mut total = 0.0;
    for (i, r) in rows.iter().enumerate() {
        if size[label[i]] <= 1 {
            continue; // contributes 0
        }
        let mut sums = vec![0.0; k];
        for (j, other) in rows.iter().enumerate() {
            if i != j {
                sums[label[j]] += dist(r, other);
            }
        }
        let a = sums[label[i]] / (size[label[i]] - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != label[i] && size[c] > 0)
            .map(|c| sums[c] / size[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            total += (b - a) / a.max(b);
        }
    }
    total / rows.len().max(1) as f64
}

fn load_x(path: &Path, schema: &FeatureSchema) -> anyhow::Result<Array2<f32>> {
    let (batch, _) = read_csv_batch(path, schema, "").map_err(anyhow::Error::msg)?;
    Ok(schema.encode(&batch, 0..batch.rows())?)
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
    // Clustering rows are `[cluster, distance]`: expected_cluster + expected.
    let width = backend.outputs_per_row();
    let mut reader = csv::Reader::from_path(&tmp)?;
    let mut w = csv::Writer::from_path(out)?;
    let mut header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    if width == 2 {
        header.push("expected_cluster".into());
    }
    header.push("expected".into());
    w.write_record(&header)?;
    for (record, out) in reader.records().zip(scores.chunks_exact(width)) {
        let mut row: Vec<String> = record?.iter().map(str::to_owned).collect();
        if width == 2 {
            row.push((out[0] as u32).to_string());
        }
        row.push(out[width - 1].to_string());
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

    #[test]
    fn silhouette_prefers_the_true_number_of_blobs() {
        // Three tight blobs on a line: the right centroids score near 1, two
        // centroids (one straddling two blobs) score lower.
        let rows: Vec<Vec<f64>> = [0.0, 10.0, 20.0]
            .iter()
            .flat_map(|&c| (0..5).map(move |i| vec![c + 0.1 * i as f64, 0.0]))
            .collect();
        let three = silhouette(&rows, &[vec![0.2, 0.0], vec![10.2, 0.0], vec![20.2, 0.0]]);
        let two = silhouette(&rows, &[vec![0.2, 0.0], vec![15.2, 0.0]]);
        assert!(three > 0.95 && two < three, "three {three}, two {two}");
        // sklearn.metrics.silhouette_score on these rows and labels ({0, 1}, {4, 5, 6}).
        let reference = silhouette(
            &[vec![0.0], vec![1.0], vec![4.0], vec![5.0], vec![6.0]],
            &[vec![0.5], vec![5.0]],
        );
        assert!(
            (reference - 0.725_295_815_295_815).abs() < 1e-12,
            "{reference}"
        );
    }

    #[test]
    fn cluster_count_parses_auto_and_numbers() {
        assert_eq!("auto".parse::<ClusterCount>(), Ok(ClusterCount::Auto));
        assert_eq!("7".parse::<ClusterCount>(), Ok(ClusterCount::Fixed(7)));
        assert!("many".parse::<ClusterCount>().is_err());
    }
}
