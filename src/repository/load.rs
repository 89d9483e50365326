//! Loading one model version: every check the server makes before a version may
//! serve (manifest, sha256, schema against the model's real inputs, golden set,
//! finite in-range outputs). `segscore models validate` runs exactly this.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use ndarray::Array2;

use super::{
    files::{self, Cap, ReadError},
    manifest::{argmax, Format, GraphDtype, Manifest, ScorePicker, Task, MANIFEST_FILE},
};
use crate::{
    drift::{reference::Reference, VersionDrift, WindowConfig},
    engine::{
        onnx::{self, InputBinding, InputKind, OnnxBackend, OnnxSignature},
        smartcore::SmartcoreBackend,
        Backend, BackendError, BackendWrapper, Batcher, BatcherConfig, Reservation, ScoreError,
    },
    features::{ColumnBuilder, FeatureBatch, FeatureError, FeatureSchema, SchemaError},
    metrics::{Metrics, RowScore, ScoreHistogram, VersionMetrics},
};

/// How model versions are run; shared by `serve`, `score` and `models validate`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Worker threads (each with its own backend) per model version.
    pub workers: usize,
    /// ORT intra-op threads per session.
    pub intra_threads: usize,
    /// Batch size, queue bound and delay; `max_batch_rows` also splits big
    /// requests into chunks.
    pub batcher: BatcherConfig,
    pub ort_dylib_path: Option<PathBuf>,
    /// Validation gate: the longest a warm-up batch may take (see
    /// [`WARMUP_ROWS`]); a manifest's `latency_budget_ms` overrides it.
    pub latency_budget: Duration,
    /// Serving versions older than the default kept loaded per model.
    pub keep_versions: usize,
    /// Largest model file read (`--max-model-bytes`): a version directory is
    /// untrusted input, and a model file pointing at `/dev/zero` must not
    /// exhaust memory.
    pub max_model_bytes: u64,
    /// Where versions publish their metrics (`serve --metrics-addr`).
    pub metrics: Option<Arc<Metrics>>,
    /// The sliding window of live drift (`serve --drift-window-rows`).
    pub drift_window: WindowConfig,
    /// Wraps each validated backend before its worker starts (tests only;
    /// see [`BackendWrapper`]).
    pub backend_wrapper: Option<BackendWrapper>,
}

/// Rows in the warm-up batch timed against the latency budget: the size of
/// a typical batch-job request.
pub const WARMUP_ROWS: usize = 1024;

/// Why a version was refused. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("manifest says {field} = `{found}` but the directory says `{expected}`")]
    Mismatch {
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error("feature schema: {0}")]
    Schema(#[from] SchemaError),
    /// The model file was refused before its bytes were used: outside the
    /// version directory, not a regular file, over the cap, unreadable.
    #[error("model file `{file}` {source}")]
    ModelFile { file: String, source: ReadError },
    #[error("sha256 mismatch for {file}: manifest {expected}, file {actual}")]
    Sha256 {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("golden set: {0}")]
    Golden(String),
    #[error("reference distributions: {0}")]
    Reference(String),
    #[error(
        "breaking change against version {previous}: {why} (set `breaking_change = true` in the manifest to allow it)"
    )]
    Breaking { previous: u64, why: String },
    #[error(
        "latency: a warm-up batch of {rows} rows took {took_ms:.1} ms (best of 3), over the budget of {budget_ms:.1} ms ({budget_from})"
    )]
    TooSlow {
        rows: usize,
        took_ms: f64,
        budget_ms: f64,
        budget_from: &'static str,
    },
    #[error("starting workers: {0}")]
    Spawn(std::io::Error),
}

/// What the golden check measured, for `models validate` and the logs.
#[derive(Debug, Clone, Copy)]
pub struct GoldenReport {
    pub rows: usize,
    pub max_abs_diff: f64,
    /// Best of three timed runs of the warm-up batch, in milliseconds.
    pub warmup_ms: f64,
}

/// A version that passed validation, with its workers running.
pub struct LoadedModel {
    pub manifest: Manifest,
    pub schema: FeatureSchema,
    pub dir: PathBuf,
    pub golden: GoldenReport,
    /// Live distributions against the version's reference (None without a
    /// `reference.json`): sized at load, filled by `infer::Scorer`.
    drift: Option<VersionDrift>,
    max_batch_rows: usize,
    batcher: Batcher,
}

impl LoadedModel {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    /// The live drift counters, when the version has a reference.
    pub fn drift(&self) -> Option<&VersionDrift> {
        self.drift.as_ref()
    }

    /// Encodes `batch` for this model in chunks of at most `max_batch_rows`
    /// rows; all validation happens here, before any work is queued.
    pub fn encode(&self, batch: &FeatureBatch) -> Result<Vec<Array2<f32>>, FeatureError> {
        let rows = batch.rows();
        (0..rows)
            .step_by(self.max_batch_rows)
            .map(|start| {
                self.schema
                    .encode(batch, start..(start + self.max_batch_rows).min(rows))
            })
            .collect()
    }

    /// Like [`encode`](Self::encode) for a selection of rows (a canary's share).
    pub fn encode_rows(
        &self,
        batch: &FeatureBatch,
        rows: &[usize],
    ) -> Result<Vec<Array2<f32>>, FeatureError> {
        rows.chunks(self.max_batch_rows)
            .map(|chunk| self.schema.encode_rows(batch, chunk.iter().copied()))
            .collect()
    }

    /// Scores encoded chunks through the batcher and returns the outputs in
    /// row order. Chunks not scored by `deadline` are dropped unscored.
    pub async fn run(
        &self,
        chunks: Vec<Array2<f32>>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<ModelOutput, ScoreError> {
        let admitted = self.batcher.reserve(chunks.len())?;
        self.run_admitted(admitted, chunks, deadline).await
    }

    /// Holds queue room for `rows` rows (the chunks [`encode`](Self::encode)
    /// will make of them), or refuses the request with QueueFull before any
    /// conversion or encoding is spent on it.
    pub fn admit(&self, rows: usize) -> Result<Reservation, ScoreError> {
        self.batcher.reserve(rows.div_ceil(self.max_batch_rows))
    }

    /// [`run`](Self::run) in the room an [`admit`](Self::admit) held.
    pub async fn run_admitted(
        &self,
        admitted: Reservation,
        chunks: Vec<Array2<f32>>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<ModelOutput, ScoreError> {
        let total: usize = chunks.iter().map(|c| c.nrows()).sum();
        let receivers = admitted.submit(chunks, deadline)?;
        let clustering = self.manifest.task == Task::Clustering;
        let picker = ScorePicker::of(&self.manifest);
        let mut out = ModelOutput {
            scores: Vec::with_capacity(total),
            cluster_ids: Vec::with_capacity(if clustering { total } else { 0 }),
            ..Default::default()
        };
        for rx in receivers {
            // A dropped reply means the worker died mid-batch.
            let part = rx
                .await
                .map_err(|_| ScoreError::Backend("the worker stopped while scoring".into()))??;
            if clustering {
                out.extend_clustering(&part);
            } else if picker == ScorePicker::Single {
                out.scores.extend(part);
            } else {
                out.extend_classes(&part, picker, &self.manifest.classes);
            }
        }
        Ok(out)
    }

    /// Encode + run, for callers that validated nothing beforehand.
    pub async fn score(&self, batch: &FeatureBatch) -> Result<ModelOutput, LoadModelScoreError> {
        let chunks = self.encode(batch)?;
        Ok(self.run(chunks, None).await?)
    }

    /// This version's cumulative statistics since it loaded.
    pub fn stats(&self) -> &crate::engine::InferStats {
        self.batcher.stats()
    }

    /// Chunks waiting for this version's workers.
    pub fn queued(&self) -> usize {
        self.batcher.queued()
    }
}

impl Drop for LoadedModel {
    fn drop(&mut self) {
        // The last request holding this version finished (or it never served):
        // its workers stop with the batcher.
        tracing::info!(model = %self.manifest.name, version = self.manifest.version, "model version unloaded");
    }
}

/// What one model returned for a set of rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelOutput {
    /// One per row: the probability, the value, or (clustering) the distance
    /// to the assigned centroid in the model's standardised units.
    pub scores: Vec<f32>,
    /// Clustering only: the assigned cluster of each row; empty otherwise.
    pub cluster_ids: Vec<u32>,
    /// Classifiers with declared `classes` only (empty otherwise): every
    /// class's probability, row-major, `classes` wide.
    pub probabilities: Vec<f32>,
    /// Same models: the predicted class of each row (the most probable).
    pub labels: Vec<String>,
}

impl ModelOutput {
    /// Appends a clustering backend's `[cluster id, distance]` pairs.
    fn extend_clustering(&mut self, pairs: &[f32]) {
        for pair in pairs.chunks_exact(2) {
            // Ids are small integers written as f32 by the backend: exact.
            self.cluster_ids.push(pair[0] as u32);
            self.scores.push(pair[1]);
        }
    }

    /// Appends a classifier's rows of class probabilities: the score as
    /// `picker` says, the probabilities, and the most probable class.
    fn extend_classes(&mut self, values: &[f32], picker: ScorePicker, classes: &[String]) {
        let width = picker.width().max(1);
        self.scores.extend(picker.scores(values));
        self.probabilities.extend_from_slice(values);
        for row in values.chunks(width) {
            let label = classes.get(argmax(row)).cloned().unwrap_or_default();
            self.labels.push(label);
        }
    }

    /// Class probabilities per row (0 when the model has none).
    pub fn classes_width(&self) -> usize {
        if self.scores.is_empty() {
            0
        } else {
            self.probabilities.len() / self.scores.len()
        }
    }

    /// Keeps the rows in `rows` (ascending or not), in that order.
    pub fn select(&self, rows: &[usize]) -> ModelOutput {
        let width = self.classes_width();
        ModelOutput {
            scores: rows.iter().map(|&r| self.scores[r]).collect(),
            cluster_ids: if self.cluster_ids.is_empty() {
                Vec::new()
            } else {
                rows.iter().map(|&r| self.cluster_ids[r]).collect()
            },
            probabilities: rows
                .iter()
                .flat_map(|&r| &self.probabilities[r * width..(r + 1) * width])
                .copied()
                .collect(),
            labels: if self.labels.is_empty() {
                Vec::new()
            } else {
                rows.iter().map(|&r| self.labels[r].clone()).collect()
            },
        }
    }
}

/// [`LoadedModel::score`]'s error: bad input or a failed run.
#[derive(Debug, thiserror::Error)]
pub enum LoadModelScoreError {
    #[error(transparent)]
    Feature(#[from] FeatureError),
    #[error(transparent)]
    Score(#[from] ScoreError),
}

/// The checked parts of a version before its workers start.
pub struct Validated {
    pub manifest: Manifest,
    pub schema: FeatureSchema,
    pub backends: Vec<Box<dyn Backend>>,
    pub golden: GoldenReport,
    /// The manifest's `[reference]`, checked.
    pub reference: Option<Reference>,
}

/// Where a version is in the validation gate (ListModels shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the manifest and model file, building sessions.
    Loading,
    /// Golden set and warm-up batch.
    Validating,
}

/// What [`validate`] needs besides the version directory.
pub struct ValidateOptions<'a> {
    /// Backends to build (one per worker).
    pub backends: usize,
    /// The manifest of the version this one replaces, for the breaking-change
    /// check; None for a model's first version.
    pub previous: Option<&'a Manifest>,
    /// Told when validation moves to the next phase.
    pub on_phase: &'a dyn Fn(Phase),
}

/// Runs every check on the version in `dir` and builds the backends: the one
/// gate shared by the server and `segscore models validate`.
pub fn validate(
    dir: &Path,
    config: &EngineConfig,
    options: &ValidateOptions<'_>,
) -> Result<Validated, LoadError> {
    (options.on_phase)(Phase::Loading);
    let manifest = Manifest::read(&dir.join(MANIFEST_FILE)).map_err(LoadError::Manifest)?;
    check_identity(dir, &manifest)?;
    manifest.check_classes().map_err(LoadError::Manifest)?;
    if let Some(previous) = options.previous {
        if let Some(why) = manifest.incompatibility_with(previous) {
            if !manifest.breaking_change {
                return Err(LoadError::Breaking {
                    previous: previous.version,
                    why,
                });
            }
        }
    }
    let schema = FeatureSchema::new(manifest.features.clone())?;
    let cap = Cap::new(config.max_model_bytes, "--max-model-bytes");
    let (bytes, actual) =
        files::read_in_hashed(dir, &manifest.file, cap).map_err(|source| LoadError::ModelFile {
            file: manifest.file.clone(),
            source,
        })?;
    if !actual.eq_ignore_ascii_case(manifest.sha256.trim()) {
        return Err(LoadError::Sha256 {
            file: manifest.file.clone(),
            expected: manifest.sha256.clone(),
            actual,
        });
    }
    let mut built: Vec<Box<dyn Backend>> = Vec::with_capacity(options.backends.max(1));
    for _ in 0..options.backends.max(1) {
        built.push(build_backend(&manifest, &schema, &bytes, config)?);
    }
    // After the model's own checks, so a version whose graph disagrees with
    // its manifest is refused for that (the cause), not for the reference
    // file that disagrees with the same manifest; before the golden run.
    let reference = super::reference::read(dir, &manifest)?;
    (options.on_phase)(Phase::Validating);
    let (golden, encoded) = check_golden(dir, &manifest, &schema, built[0].as_mut())?;
    let warmup_ms = check_latency(&manifest, config, &encoded, built[0].as_mut())?;
    Ok(Validated {
        manifest,
        schema,
        backends: built,
        golden: GoldenReport {
            warmup_ms,
            ..golden
        },
        reference,
    })
}

/// Validates the version in `dir` and starts its workers.
pub fn load(
    dir: &Path,
    config: &EngineConfig,
    previous: Option<&Manifest>,
    on_phase: &dyn Fn(Phase),
) -> Result<Arc<LoadedModel>, LoadError> {
    let options = ValidateOptions {
        backends: config.workers,
        previous,
        on_phase,
    };
    let v = validate(dir, config, &options)?;
    let label = format!("{}-v{}", v.manifest.name, v.manifest.version);
    let metrics = config
        .metrics
        .as_ref()
        .map(|m| version_metrics(m, &v.manifest));
    let backends = match &config.backend_wrapper {
        Some(wrapper) => v
            .backends
            .into_iter()
            .map(|b| wrapper.wrap(&v.manifest.name, b))
            .collect(),
        None => v.backends,
    };
    let batcher =
        Batcher::spawn(&label, backends, config.batcher, metrics).map_err(LoadError::Spawn)?;
    Ok(Arc::new(LoadedModel {
        manifest: v.manifest,
        schema: v.schema,
        dir: dir.to_path_buf(),
        golden: v.golden,
        drift: v
            .reference
            .map(|r| VersionDrift::new(r, config.drift_window)),
        max_batch_rows: config.batcher.max_batch_rows.max(1),
        batcher,
    }))
}

/// A version's metric handles. Metrics takes plain values (it knows nothing
/// of manifests), so the conversion from the manifest happens here: the task
/// picks the score histogram, the declared classes how a row becomes a score.
fn version_metrics(metrics: &Metrics, manifest: &Manifest) -> VersionMetrics {
    let row: Arc<dyn RowScore> = Arc::new(ScorePicker::of(manifest));
    let scores = match manifest.task {
        Task::BinaryClassification | Task::MulticlassClassification => {
            Some(ScoreHistogram::Probability(row))
        }
        Task::Regression => Some(ScoreHistogram::Value(row)),
        Task::Clustering => None,
    };
    metrics.version(&manifest.name, manifest.version, scores)
}

impl RowScore for ScorePicker {
    fn width(&self) -> usize {
        ScorePicker::width(*self)
    }

    fn score(&self, row: &[f32]) -> f32 {
        ScorePicker::score(*self, row)
    }
}

/// Times a warm-up batch of [`WARMUP_ROWS`] rows (the golden rows repeated)
/// and refuses a version slower than its budget: a model that would blow the
/// serving latency is caught before it takes traffic. Best of three runs
/// after one untimed run, so a noisy neighbour does not refuse a good model.
fn check_latency(
    manifest: &Manifest,
    config: &EngineConfig,
    golden: &Array2<f32>,
    backend: &mut dyn Backend,
) -> Result<f64, LoadError> {
    let (budget_ms, budget_from) = match manifest.golden.latency_budget_ms {
        Some(ms) => (ms, "the manifest's latency_budget_ms"),
        None => (
            config.latency_budget.as_secs_f64() * 1000.0,
            "the server's --latency-budget-ms",
        ),
    };
    let rows: Vec<usize> = (0..WARMUP_ROWS).map(|i| i % golden.nrows()).collect();
    let batch = golden.select(ndarray::Axis(0), &rows);
    backend.score(batch.view())?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        backend.score(batch.view())?;
        best = best.min(started.elapsed().as_secs_f64() * 1000.0);
    }
    if best > budget_ms {
        return Err(LoadError::TooSlow {
            rows: WARMUP_ROWS,
            took_ms: best,
            budget_ms,
            budget_from,
        });
    }
    Ok(best)
}

fn check_identity(dir: &Path, manifest: &Manifest) -> Result<(), LoadError> {
    let version_dir = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let model_dir = dir
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if manifest.name != model_dir {
        return Err(LoadError::Mismatch {
            field: "name",
            found: manifest.name.clone(),
            expected: model_dir.into(),
        });
    }
    if manifest.version.to_string() != version_dir {
        return Err(LoadError::Mismatch {
            field: "version",
            found: manifest.version.to_string(),
            expected: version_dir.into(),
        });
    }
    Ok(())
}

pub(crate) fn build_backend(
    manifest: &Manifest,
    schema: &FeatureSchema,
    bytes: &[u8],
    config: &EngineConfig,
) -> Result<Box<dyn Backend>, LoadError> {
    Ok(match manifest.format {
        Format::Onnx => {
            let env = onnx::init_runtime(config.ort_dylib_path.as_deref())?;
            let signature = OnnxSignature {
                features: schema.len(),
                output: manifest.score.output.clone(),
                column: manifest.score.column,
                inputs: input_bindings(manifest, schema)?,
                classes: (!manifest.classes.is_empty()).then_some(manifest.classes.len()),
                clustering: manifest.task == Task::Clustering,
            };
            Box::new(OnnxBackend::load(
                env,
                bytes,
                &signature,
                config.intra_threads.max(1),
            )?)
        }
        Format::Smartcore => Box::new(SmartcoreBackend::load(bytes, schema.len())?),
    })
}

/// Resolves the manifest's `[[inputs]]` against the feature schema: each
/// graph input's feature columns, and for a string input the category names
/// its codes stand for.
fn input_bindings(
    manifest: &Manifest,
    schema: &FeatureSchema,
) -> Result<Vec<InputBinding>, LoadError> {
    let specs: Vec<_> = schema.specs().collect();
    manifest
        .inputs
        .iter()
        .map(|input| {
            let mut columns = Vec::with_capacity(input.features.len());
            let mut categories = Vec::new();
            for name in &input.features {
                let Some(j) = specs.iter().position(|s| &s.name == name) else {
                    return Err(LoadError::Manifest(format!(
                        "input `{}` takes feature `{name}`, which is not in [[features]]",
                        input.name
                    )));
                };
                let spec = specs[j];
                let is_category = spec.dtype == crate::features::DType::Category;
                if (input.dtype == GraphDtype::String) != is_category {
                    return Err(LoadError::Manifest(format!(
                        "input `{}` is {} but feature `{name}` is {}: string inputs take category features and only those",
                        input.name,
                        input.dtype.as_str(),
                        spec.dtype
                    )));
                }
                if is_category {
                    categories.push(spec.categories.clone());
                }
                columns.push(j);
            }
            if columns.is_empty() {
                return Err(LoadError::Manifest(format!(
                    "input `{}` takes no features",
                    input.name
                )));
            }
            Ok(InputBinding {
                name: input.name.clone(),
                kind: match input.dtype {
                    GraphDtype::Float32 => InputKind::Float32,
                    GraphDtype::Float64 => InputKind::Float64,
                    GraphDtype::Int64 => InputKind::Int64,
                    GraphDtype::String => InputKind::String,
                },
                columns,
                rank: 2,
                categories,
            })
        })
        .collect()
}

/// Reads a CSV of feature rows into a batch typed by `schema`; returns the batch
/// and the raw text of the `extra` column if asked for.
pub fn read_csv_batch(
    path: &Path,
    schema: &FeatureSchema,
    extra: &str,
) -> Result<(FeatureBatch, Vec<String>), String> {
    let reader = csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
    csv_batch(reader, schema, extra)
}

/// [`read_csv_batch`] over any CSV reader (a golden set already read).
pub(crate) fn csv_batch<R: std::io::Read>(
    mut reader: csv::Reader<R>,
    schema: &FeatureSchema,
    extra: &str,
) -> Result<(FeatureBatch, Vec<String>), String> {
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let mut builders: Vec<(usize, String, ColumnBuilder)> = schema
        .specs()
        .filter_map(|s| {
            let idx = headers.iter().position(|h| h == s.name)?;
            Some((idx, s.name.clone(), ColumnBuilder::new(s.dtype)))
        })
        .collect();
    let extra_idx = headers.iter().position(|h| h == extra);
    let mut extra_values = Vec::new();
    let mut rows = 0;
    for (line, record) in reader.records().enumerate() {
        rows += 1;
        let record = record.map_err(|e| e.to_string())?;
        for (idx, name, builder) in &mut builders {
            builder
                .push(record.get(*idx).unwrap_or(""))
                .map_err(|want| format!("row {line}, column `{name}`: expected {want}"))?;
        }
        if let Some(i) = extra_idx {
            extra_values.push(record.get(i).unwrap_or("").to_owned());
        }
    }
    if extra_idx.is_none() && !extra.is_empty() {
        return Err(format!("no `{extra}` column"));
    }
    let columns = builders
        .into_iter()
        .map(|(_, n, b)| (n, b.finish()))
        .collect();
    let batch = FeatureBatch::new(rows, columns).map_err(|e| e.to_string())?;
    Ok((batch, extra_values))
}

/// One column of a CSV as text (the golden set's second expected column).
fn read_column(csv_text: &[u8], name: &str) -> Result<Vec<String>, String> {
    let mut reader = csv::Reader::from_reader(csv_text);
    let idx = reader
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| format!("no `{name}` column"))?;
    reader
        .records()
        .map(|r| {
            r.map(|r| r.get(idx).unwrap_or_default().to_owned())
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// A classifier's golden set may carry `expected_label`: the class each row
/// must be predicted as (a column mix-up in `classes` shows here).
fn check_golden_labels(
    text: &[u8],
    raw: &[f32],
    width: usize,
    classes: &[String],
) -> Result<(), String> {
    let Ok(labels) = read_column(text, "expected_label") else {
        return Ok(());
    };
    for (row, (probabilities, want)) in raw.chunks_exact(width).zip(&labels).enumerate() {
        let got = classes
            .get(argmax(probabilities))
            .map_or("", String::as_str);
        if got != want {
            return Err(format!(
                "row {row}: predicted class `{got}` differs from the expected class `{want}`"
            ));
        }
    }
    Ok(())
}

fn check_golden(
    dir: &Path,
    manifest: &Manifest,
    schema: &FeatureSchema,
    backend: &mut dyn Backend,
) -> Result<(GoldenReport, Array2<f32>), LoadError> {
    let golden = |m: String| LoadError::Golden(m);
    // Read once, under the same rules as the model file; both CSV passes
    // below parse these bytes.
    let cap = Cap::new(files::MAX_GOLDEN_BYTES, "the golden-set limit");
    let file = &manifest.golden.file;
    let text = files::read_in(dir, file, cap).map_err(|e| golden(format!("`{file}` {e}")))?;
    let (batch, expected) =
        csv_batch(csv::Reader::from_reader(&text[..]), schema, "expected").map_err(golden)?;
    let expected: Vec<f64> = expected
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.parse()
                .map_err(|_| golden(format!("row {i}: `expected` is not a number")))
        })
        .collect::<Result<_, _>>()?;
    if batch.rows() == 0 {
        return Err(golden("the golden set has no rows".into()));
    }
    let input = schema
        .encode(&batch, 0..batch.rows())
        .map_err(|e| golden(format!("{e}")))?;
    let raw = backend.score(input.view())?;
    let clustering = manifest.task == Task::Clustering;
    let picker = ScorePicker::of(manifest);
    let width = if clustering { 2 } else { picker.width() };
    if raw.len() != batch.rows() * width {
        return Err(golden(format!(
            "the model returned {} values for {} rows ({width} per row expected)",
            raw.len(),
            batch.rows()
        )));
    }
    // Clustering rows are `[cluster id, distance]`; the score is the distance.
    let got: Vec<f32> = if clustering {
        raw.chunks_exact(width).map(|r| r[width - 1]).collect()
    } else {
        picker.scores(&raw).collect()
    };
    if picker != ScorePicker::Single {
        check_golden_labels(&text, &raw, width, &manifest.classes).map_err(golden)?;
    }
    if clustering {
        let clusters = read_column(&text, "expected_cluster").map_err(golden)?;
        for (row, (pair, want)) in raw.chunks_exact(2).zip(&clusters).enumerate() {
            if want.trim().parse::<u32>().ok() != Some(pair[0] as u32) {
                return Err(golden(format!(
                    "row {row}: cluster {} differs from the expected cluster `{want}`",
                    pair[0]
                )));
            }
        }
    }
    let tolerance = manifest.golden.tolerance;
    let mut max_abs_diff = 0f64;
    for (row, (&g, &e)) in got.iter().zip(&expected).enumerate() {
        let g = f64::from(g);
        if !g.is_finite() {
            return Err(golden(format!(
                "row {row}: the model returned a non-finite score"
            )));
        }
        let probability = matches!(
            manifest.task,
            Task::BinaryClassification | Task::MulticlassClassification
        );
        if probability && !(0.0..=1.0).contains(&g) {
            return Err(golden(format!(
                "row {row}: probability {g} is outside [0, 1]"
            )));
        }
        let diff = (g - e).abs();
        max_abs_diff = max_abs_diff.max(diff);
        if diff > tolerance * e.abs().max(1.0) {
            return Err(golden(format!(
                "row {row}: score {g} differs from the expected {e} by more than the tolerance {tolerance}"
            )));
        }
    }
    let report = GoldenReport {
        rows: got.len(),
        max_abs_diff,
        warmup_ms: 0.0,
    };
    Ok((report, input))
}
