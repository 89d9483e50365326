//! `segscore models import`: a foreign ONNX model (skl2onnx, onnxmltools, …)
//! plus a sample CSV becomes the next version of a model, with no hand-written
//! manifest.
//!
//! What is read: the graph's signature from ONNX Runtime's session (inputs,
//! outputs, element types, shapes), the class labels from the graph's
//! classifier node (`classlabels_*` attributes), and the sample's cells. What
//! is inferred, and the rules (also written into the card):
//! - **feature names**: `--features`, else the graph's inputs when it has one
//!   input per column, else the sample's header;
//! - **dtype**: a string graph input is `category` (categories = the values
//!   seen, sorted); an int64 input is `i64`; a float input is `bool` when every
//!   value is `true`/`false`, `i64` when every value is an integer, else `f32`
//!   (`f64` for a double input);
//! - **range**: the observed `[min, max]` widened by half its span on each
//!   side (by 1 when every value is the same), never below 0 when no observed
//!   value is negative, rounded outwards for integers;
//! - **missing**: a feature with an empty (or NaN) cell in the sample imputes
//!   the median (numbers) or the most frequent value (bool, category); one
//!   with none rejects missing values, since the model never saw any;
//! - **task**: a float `[N, C]` output next to a label output (or named
//!   `prob…`) is a classifier: C = 2 is binary with the score in column 1 (the
//!   second class, sklearn's positive class), C > 2 multiclass; one float
//!   output is a regressor; a KMeans graph is clustering (served as the
//!   nearest centroid of its `[N, k]` distance output and that distance).
//!
//! The golden set is the model's output on the first sample rows through the
//! real engine (feature schema encoding + [`OnnxBackend`]); the version is
//! built in a staging directory beside the model's versions, passes the
//! server's own gate ([`load::validate`]), and is then renamed into place, so
//! a server watching the repository never sees half a version and existing
//! versions are never touched.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ort::{
    session::Session,
    value::{TensorElementType, ValueType},
};

use super::{
    files::{self, Cap, MAX_SAMPLE_BYTES},
    load::{self, EngineConfig, ValidateOptions},
    manifest::{
        argmax, Format, GoldenSpec, GraphDtype, GraphInput, Manifest, ScorePicker, ScoreSpec, Task,
        MANIFEST_FILE,
    },
};
use crate::{
    engine::onnx,
    features::{DType, FeatureSchema, FeatureSpec, ImputeValue, MissingPolicy},
};

/// The model file's name inside the version directory.
const MODEL_FILE: &str = "model.onnx";
const GOLDEN_FILE: &str = "golden.csv";
const CARD_FILE: &str = "CARD.md";
/// Sample rows kept as the golden set: enough to catch a wrong column or
/// class order, small enough to check at every load.
pub const GOLDEN_ROWS: usize = 200;
/// Golden tolerance: the same engine computed the expected values, so only
/// run-to-run float noise (none in practice) has to fit.
const GOLDEN_TOLERANCE: f64 = 1e-5;

/// What `models import` was asked to do.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub onnx: PathBuf,
    pub sample: PathBuf,
    pub name: String,
    /// Overrides the detected task.
    pub task: Option<Task>,
    /// The features in the graph's column order, when the sample header or
    /// the graph cannot say.
    pub features: Option<Vec<String>>,
    /// Binary classifiers: the class whose probability is the score, when
    /// it is not the second one (string labels sort alphabetically:
    /// `["churned", "stayed"]` would otherwise score `stayed`).
    pub positive_class: Option<String>,
    pub model_repository: PathBuf,
    /// Build and check everything, write nothing.
    pub dry_run: bool,
}

/// A finished import: the manifest and where the version is (or would be).
#[derive(Debug)]
pub struct Imported {
    pub manifest: Manifest,
    pub manifest_toml: String,
    pub dir: PathBuf,
    pub golden_rows: usize,
}

/// Why an import was refused. Messages name the file, input, feature or row,
/// never a feature value.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("model name `{0}` is not valid: use letters, digits, `_` and `-`, not starting with `.` or `-`")]
    BadName(String),
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: files::ReadError,
    },
    #[error("{0}: not a usable ONNX model: {1}")]
    Onnx(PathBuf, String),
    #[error("sample {0}: {1}")]
    Sample(PathBuf, String),
    #[error("sample {file}: wrong header: {why}")]
    Header { file: PathBuf, why: String },
    #[error("sample {file} has no column `{feature}` (its columns are: {columns})")]
    MissingFeature {
        file: PathBuf,
        feature: String,
        columns: String,
    },
    #[error("the graph's input `{input}` takes {graph} columns but {what} {got}{hint}")]
    Width {
        input: String,
        graph: i64,
        what: &'static str,
        got: usize,
        hint: &'static str,
    },
    #[error("the graph's input `{input}` has {what}, which import cannot feed (float, double, int64 and string tensors of shape [N] or [N, k] can be)")]
    UnsupportedInput { input: String, what: String },
    #[error("feature `{feature}`: {why}")]
    Feature { feature: String, why: String },
    #[error("task: {0}")]
    Task(String),
    #[error("running the model on the sample: {0}")]
    Engine(String),
    #[error("the imported version failed the server's checks: {0}")]
    Validate(#[from] load::LoadError),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One graph input or output as ONNX Runtime reports it.
#[derive(Debug, Clone)]
struct Tensor {
    name: String,
    ty: Option<TensorElementType>,
    shape: Vec<i64>,
}

impl Tensor {
    fn of(name: &str, dtype: &ValueType) -> Self {
        match dtype {
            ValueType::Tensor { ty, shape, .. } => Tensor {
                name: name.into(),
                ty: Some(*ty),
                shape: shape.to_vec(),
            },
            _ => Tensor {
                name: name.into(),
                ty: None,
                shape: Vec::new(),
            },
        }
    }

    /// Columns per row: `[N]` → 1, `[N, k]` → k (-1 when dynamic).
    fn width(&self) -> Option<i64> {
        match self.shape.len() {
            1 => Some(1),
            2 => Some(self.shape[1]),
            _ => None,
        }
    }
}

/// The sample, as text cells.
struct Sample {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Imports per `request`; see the module documentation for every rule.
pub fn import(request: &ImportRequest, engine: &EngineConfig) -> Result<Imported, ImportError> {
    check_name(&request.name)?;
    let model_cap = Cap::new(engine.max_model_bytes, "--max-model-bytes");
    let (model, sha256) =
        files::read_named_hashed(&request.onnx, model_cap).map_err(|source| ImportError::Read {
            file: request.onnx.clone(),
            source,
        })?;
    let sample_cap = Cap::new(MAX_SAMPLE_BYTES, "the sample limit (64 MiB)");
    let (sample_bytes, _) =
        files::read_named_hashed(&request.sample, sample_cap).map_err(|source| {
            ImportError::Read {
                file: request.sample.clone(),
                source,
            }
        })?;
    let sample = parse_sample(&request.sample, &sample_bytes)?;

    let onnx_error = |e: String| ImportError::Onnx(request.onnx.clone(), e);
    let env = onnx::init_runtime(engine.ort_dylib_path.as_deref())
        .map_err(|e| ImportError::Engine(e.to_string()))?;
    let session = Session::builder(env)
        .and_then(|mut b| b.commit_from_memory(&model))
        .map_err(|e| onnx_error(e.to_string()))?;
    let inputs: Vec<Tensor> = session
        .inputs()
        .iter()
        .map(|i| Tensor::of(i.name(), i.dtype()))
        .collect();
    let outputs: Vec<Tensor> = session
        .outputs()
        .iter()
        .map(|o| Tensor::of(o.name(), o.dtype()))
        .collect();
    drop(session);
    let graph = graph::summary(&model).map_err(onnx_error)?;
    let producer = format!("{} {}", graph.producer_name, graph.producer_version);
    let producer = Some(producer.trim()).filter(|p| !p.is_empty());

    let graph_inputs = bind_features(request, &inputs, &sample)?;
    let features = infer_features(&request.sample, &graph_inputs, &sample)?;
    let (task, mut score, classes) = detect_task(request.task, &outputs, &graph)?;
    if let Some(positive) = &request.positive_class {
        if task != Task::BinaryClassification {
            return Err(ImportError::Task(format!(
                "--positive-class is for binary classifiers; this model is {task:?}"
            )));
        }
        score.column = classes.iter().position(|c| c == positive).ok_or_else(|| {
            ImportError::Task(format!(
                "--positive-class `{positive}` is not one of the model's classes {classes:?}"
            ))
        })?;
    }

    let version = next_version(&request.model_repository.join(&request.name))?;
    let golden_rows = sample.rows.len().min(GOLDEN_ROWS);
    let mut manifest = Manifest {
        name: request.name.clone(),
        version,
        task,
        format: Format::Onnx,
        file: MODEL_FILE.into(),
        sha256,
        score,
        features,
        golden: GoldenSpec {
            file: GOLDEN_FILE.into(),
            tolerance: GOLDEN_TOLERANCE,
            latency_budget_ms: None,
        },
        breaking_change: false,
        card: toml::Table::new(),
        classes,
        inputs: graph_inputs,
        reference: None,
    };
    manifest.check_classes().map_err(ImportError::Task)?;
    manifest.card = card(request, &manifest, producer, sample.rows.len());
    let golden = golden_csv(&manifest, &model, &sample, golden_rows, engine)?;
    let manifest_toml =
        toml::to_string(&manifest).map_err(|e| ImportError::Engine(e.to_string()))?;
    let dir = request
        .model_repository
        .join(&request.name)
        .join(version.to_string());
    if !request.dry_run {
        write_version(request, &manifest, &manifest_toml, &model, &golden, engine)?;
    }
    Ok(Imported {
        manifest,
        manifest_toml,
        dir,
        golden_rows,
    })
}

/// Model names become directory names and metric labels.
fn check_name(name: &str) -> Result<(), ImportError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ImportError::BadName(name.into()))
    }
}

fn parse_sample(path: &Path, bytes: &[u8]) -> Result<Sample, ImportError> {
    let sample_error = |m: String| ImportError::Sample(path.to_path_buf(), m);
    let header_error = |why: String| ImportError::Header {
        file: path.to_path_buf(),
        why,
    };
    let mut reader = csv::ReaderBuilder::new().from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| sample_error(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if header.iter().all(|h| h.is_empty()) {
        return Err(sample_error(
            "it is empty: the first line must name the columns".into(),
        ));
    }
    if let Some(i) = header.iter().position(String::is_empty) {
        return Err(header_error(format!("column {} has no name", i + 1)));
    }
    if header.iter().all(|h| h.parse::<f64>().is_ok()) {
        return Err(header_error(
            "the first line holds numbers, not column names: add a header line naming the columns"
                .into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = header.iter().find(|h| !seen.insert(h.as_str())) {
        return Err(header_error(format!("column `{dup}` appears twice")));
    }
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| sample_error(format!("row {i}: {e}")))?;
        if record.len() != header.len() {
            return Err(sample_error(format!(
                "row {i} has {} fields, the header {}",
                record.len(),
                header.len()
            )));
        }
        rows.push(record.iter().map(|c| c.trim().to_owned()).collect());
    }
    if rows.is_empty() {
        return Err(sample_error("it has a header but no rows".into()));
    }
    Ok(Sample { header, rows })
}

fn graph_dtype(input: &Tensor) -> Result<GraphDtype, ImportError> {
    let unsupported = |what: String| ImportError::UnsupportedInput {
        input: input.name.clone(),
        what,
    };
    let dtype = match input.ty {
        Some(TensorElementType::Float32) => GraphDtype::Float32,
        Some(TensorElementType::Float64) => GraphDtype::Float64,
        Some(TensorElementType::Int64) => GraphDtype::Int64,
        Some(TensorElementType::String) => GraphDtype::String,
        Some(other) => return Err(unsupported(format!("element type {other:?}"))),
        None => return Err(unsupported("a non-tensor type".into())),
    };
    if input.width().is_none() {
        return Err(unsupported(format!("shape {:?}", input.shape)));
    }
    Ok(dtype)
}

/// Which features feed which graph input, in order.
fn bind_features(
    request: &ImportRequest,
    inputs: &[Tensor],
    sample: &Sample,
) -> Result<Vec<GraphInput>, ImportError> {
    if inputs.is_empty() {
        return Err(ImportError::UnsupportedInput {
            input: String::new(),
            what: "no inputs at all".into(),
        });
    }
    let dtypes: Vec<GraphDtype> = inputs.iter().map(graph_dtype).collect::<Result<_, _>>()?;
    let widths: Vec<i64> = inputs.iter().map(|i| i.width().unwrap_or(-1)).collect();
    let names: Vec<String> = match &request.features {
        Some(features) => features.clone(),
        None if inputs.len() > 1 => {
            // One input per column: the inputs name the features.
            if let Some(i) = widths.iter().position(|w| *w > 1) {
                return Err(ImportError::Width {
                    input: inputs[i].name.clone(),
                    graph: widths[i],
                    what: "its columns have no names in the graph:",
                    got: 0,
                    hint: " (pass --features with every feature, in the graph's input order)",
                });
            }
            inputs.iter().map(|i| i.name.clone()).collect()
        }
        None if widths[0] == 1 && sample.header.contains(&inputs[0].name) => {
            vec![inputs[0].name.clone()]
        }
        None => sample.header.clone(),
    };
    if names.is_empty() {
        return Err(ImportError::Feature {
            feature: String::new(),
            why: "--features is empty".into(),
        });
    }
    for name in &names {
        if !sample.header.contains(name) {
            return Err(ImportError::MissingFeature {
                file: request.sample.clone(),
                feature: name.clone(),
                columns: sample.header.join(", "),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(ImportError::Feature {
            feature: dup.clone(),
            why: "is named twice".into(),
        });
    }
    // Inputs take features in order; a dynamic width takes what is left
    // (only possible for the last, or only, input).
    let known: i64 = widths.iter().filter(|w| **w > 0).sum();
    let dynamic = widths.iter().filter(|w| **w < 0).count();
    let total = names.len() as i64;
    let what = if request.features.is_some() {
        "--features names"
    } else {
        "the sample has"
    };
    let hint = if request.features.is_some() {
        ""
    } else {
        " columns (pass --features to pick the model's columns, in order)"
    };
    if dynamic == 0 && known != total || dynamic > 0 && (known >= total || dynamic > 1) {
        let (input, graph) = if inputs.len() == 1 {
            (inputs[0].name.clone(), widths[0])
        } else {
            ("(all inputs)".to_string(), known)
        };
        return Err(ImportError::Width {
            input,
            graph,
            what,
            got: names.len(),
            hint,
        });
    }
    let mut next = names.into_iter();
    Ok(inputs
        .iter()
        .zip(dtypes)
        .zip(widths)
        .map(|((input, dtype), width)| {
            let take = if width < 0 {
                (total - known) as usize
            } else {
                width as usize
            };
            GraphInput {
                name: input.name.clone(),
                dtype,
                features: next.by_ref().take(take).collect(),
            }
        })
        .collect())
}

/// Every feature's spec from its sample column and the graph input it feeds.
fn infer_features(
    path: &Path,
    graph_inputs: &[GraphInput],
    sample: &Sample,
) -> Result<Vec<FeatureSpec>, ImportError> {
    let mut specs = Vec::new();
    for input in graph_inputs {
        for name in &input.features {
            let idx = sample
                .header
                .iter()
                .position(|h| h == name)
                .expect("bind_features checked every feature is in the header; this is a bug");
            let cells: Vec<&str> = sample.rows.iter().map(|r| r[idx].as_str()).collect();
            specs.push(infer_feature(path, name, input.dtype, &cells)?);
        }
    }
    Ok(specs)
}

fn is_missing(cell: &str) -> bool {
    cell.is_empty() || cell.eq_ignore_ascii_case("nan")
}

/// One feature's dtype, range and missing policy from its sample cells.
fn infer_feature(
    path: &Path,
    name: &str,
    input: GraphDtype,
    cells: &[&str],
) -> Result<FeatureSpec, ImportError> {
    let fail = |why: String| ImportError::Feature {
        feature: name.into(),
        why,
    };
    let present: Vec<&str> = cells.iter().copied().filter(|c| !is_missing(c)).collect();
    if present.is_empty() {
        return Err(fail(format!(
            "every value in sample {} is missing: nothing to infer a type or range from",
            path.display()
        )));
    }
    let has_missing = present.len() < cells.len();
    let mut spec = FeatureSpec {
        name: name.into(),
        description: None,
        dtype: DType::F32,
        min: None,
        max: None,
        categories: Vec::new(),
        missing: MissingPolicy::Reject,
    };
    if input == GraphDtype::String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &present {
            *counts.entry(c).or_default() += 1;
        }
        spec.dtype = DType::Category;
        spec.categories = counts.keys().map(|c| c.to_string()).collect();
        if has_missing {
            spec.missing = MissingPolicy::Impute(ImputeValue::Text(most_frequent(&counts).into()));
        }
        return Ok(spec);
    }
    let bools: Option<Vec<bool>> = present
        .iter()
        .map(|c| match c.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
        .collect();
    if let Some(bools) = bools.filter(|_| input != GraphDtype::Int64) {
        spec.dtype = DType::Bool;
        if has_missing {
            let trues = bools.iter().filter(|b| **b).count();
            spec.missing = MissingPolicy::Impute(ImputeValue::Bool(trues * 2 > bools.len()));
        }
        return Ok(spec);
    }
    let mut values = Vec::with_capacity(present.len());
    for (row, c) in cells.iter().enumerate() {
        if is_missing(c) {
            continue;
        }
        match c.parse::<f64>() {
            Ok(v) if v.is_finite() => values.push(v),
            _ => {
                return Err(fail(format!(
                    "row {row} of the sample is not a number, but the graph's input is {}",
                    input.as_str()
                )))
            }
        }
    }
    let integers = values.iter().all(|v| v.fract() == 0.0 && v.abs() < 9.0e15);
    spec.dtype = match input {
        GraphDtype::Int64 if !integers => {
            return Err(fail(
                "the graph's input is int64 but the sample holds fractional values".into(),
            ))
        }
        GraphDtype::Int64 => DType::I64,
        _ if integers => DType::I64,
        GraphDtype::Float64 => DType::F64,
        _ => DType::F32,
    };
    let (min, max) = widened_range(&values, spec.dtype == DType::I64);
    spec.min = Some(min);
    spec.max = Some(max);
    if has_missing {
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        spec.missing = MissingPolicy::Impute(ImputeValue::Number(median));
    }
    Ok(spec)
}

fn most_frequent<'a>(counts: &BTreeMap<&'a str, usize>) -> &'a str {
    // Ties go to the first in sorted order, so the choice is reproducible.
    let mut best = ("", 0);
    for (value, count) in counts {
        if *count > best.1 {
            best = (*value, *count);
        }
    }
    best.0
}

/// The documented widening rule: half the observed span on each side (1 when
/// the span is 0), not below 0 when nothing observed was negative, integers
/// rounded outwards. f32 features keep f32-representable bounds so the
/// manifest's range is what the encoded values are checked against.
pub fn widened_range(values: &[f64], integer: bool) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = max - min;
    let pad = if span > 0.0 { span / 2.0 } else { 1.0 };
    let mut lo = min - pad;
    let hi = max + pad;
    if min >= 0.0 {
        lo = lo.max(0.0);
    }
    if integer {
        return (lo.floor(), hi.ceil());
    }
    // Outwards to three significant digits of the padding, so the manifest
    // reads `max = 106.7`, not `106.69999999999999`.
    let digits = (2 - pad.log10().floor() as i32).clamp(0, 12) as usize;
    let step = 10f64.powi(-(digits as i32));
    let round = |v: f64, f: fn(f64) -> f64| -> f64 {
        format!("{:.digits$}", f(v / step) * step)
            .parse()
            .unwrap_or(v)
    };
    (round(lo, f64::floor).min(lo), round(hi, f64::ceil).max(hi))
}

/// Task, score spec and classes from the graph's outputs.
fn detect_task(
    forced: Option<Task>,
    outputs: &[Tensor],
    graph: &graph::Summary,
) -> Result<(Task, ScoreSpec, Vec<String>), ImportError> {
    let float = |t: &&Tensor| t.ty == Some(TensorElementType::Float32);
    let label = outputs.iter().find(|t| {
        matches!(
            t.ty,
            Some(TensorElementType::Int64 | TensorElementType::String)
        ) && t.shape.len() == 1
    });
    let probabilities = outputs
        .iter()
        .filter(float)
        .find(|t| t.shape.len() == 2 && t.name.to_ascii_lowercase().contains("prob"))
        .or_else(|| {
            label
                .and(outputs.iter().filter(float).find(|t| t.shape.len() == 2))
                .filter(|_| graph.classes.is_some())
        });
    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    if graph.zipmap && probabilities.is_none() {
        return Err(ImportError::Task(format!(
            "the classifier's probabilities {names:?} are a ZipMap (a list of dicts), not a \
             tensor: export it without ZipMap (skl2onnx: options={{id(model): {{'zipmap': False}}}}, \
             onnxmltools: zipmap=False)"
        )));
    }
    if forced == Some(Task::Clustering) || forced.is_none() && graph.clustering {
        // skl2onnx's KMeans: `label` [N] and `scores` [N, k], each row's
        // distance to every centroid; the backend takes the nearest.
        let distances = outputs
            .iter()
            .filter(float)
            // One column would be one centroid: nothing to assign.
            .find(|t| t.shape.len() == 2 && t.shape[1] != 1)
            .ok_or_else(|| {
                ImportError::Task(format!(
                    "a clustering model needs a float [N, clusters] output of distances to \
                     the centroids (skl2onnx KMeans: `scores`); the graph's outputs are {names:?}"
                ))
            })?;
        return Ok((
            Task::Clustering,
            ScoreSpec {
                output: distances.name.clone(),
                column: 0,
            },
            Vec::new(),
        ));
    }
    let classifier = match forced {
        Some(Task::BinaryClassification | Task::MulticlassClassification) => true,
        Some(_) => false,
        None => probabilities.is_some(),
    };
    if classifier {
        let Some(output) = probabilities else {
            return Err(ImportError::Task(format!(
                "no float [N, classes] probability output among the graph's outputs {names:?}; \
                 export the classifier without ZipMap (skl2onnx: options={{id(model): {{'zipmap': False}}}}, \
                 onnxmltools: zipmap=False)"
            )));
        };
        let width = match (&graph.classes, output.shape[1]) {
            (Some(c), _) => c.len() as i64,
            (None, w) => w,
        };
        if width > 0 && output.shape[1] > 0 && width != output.shape[1] {
            return Err(ImportError::Task(format!(
                "the graph declares {width} classes but output `{}` has {} columns",
                output.name, output.shape[1]
            )));
        }
        let classes: Vec<String> = match &graph.classes {
            Some(c) => c.clone(),
            None if width > 0 => (0..width).map(|i| i.to_string()).collect(),
            None => {
                return Err(ImportError::Task(format!(
                    "output `{}` has a dynamic number of columns and the graph names no classes",
                    output.name
                )))
            }
        };
        let task = match (forced, classes.len()) {
            (Some(Task::MulticlassClassification), _) => Task::MulticlassClassification,
            (_, 2) => Task::BinaryClassification,
            (Some(Task::BinaryClassification), n) => {
                return Err(ImportError::Task(format!(
                    "--task binary_classification, but the model has {n} classes"
                )))
            }
            (_, 1) => {
                return Err(ImportError::Task(format!(
                    "output `{}` has one class: nothing to classify",
                    output.name
                )))
            }
            _ => Task::MulticlassClassification,
        };
        // Binary: the second class, sklearn's `classes_[1]` (1, True, the
        // larger label): what "probability of the positive class" means there.
        let column = if task == Task::BinaryClassification {
            1
        } else {
            0
        };
        return Ok((
            task,
            ScoreSpec {
                output: output.name.clone(),
                column,
            },
            classes,
        ));
    }
    let value = outputs
        .iter()
        .filter(float)
        .find(|t| t.shape.len() == 1 || t.shape.len() == 2 && t.shape[1] == 1)
        .or_else(|| outputs.iter().find(float))
        .ok_or_else(|| {
            ImportError::Task(format!(
                "no float output among the graph's outputs {names:?} to use as the score"
            ))
        })?;
    Ok((
        Task::Regression,
        ScoreSpec {
            output: value.name.clone(),
            column: 0,
        },
        Vec::new(),
    ))
}

/// One above the highest numeric entry of the model's directory (manifest
/// or not), so an import never lands on a directory someone else is filling.
fn next_version(model_dir: &Path) -> Result<u64, ImportError> {
    let entries = match std::fs::read_dir(model_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(1),
        Err(source) => {
            return Err(ImportError::Io {
                path: model_dir.into(),
                source,
            })
        }
    };
    let highest = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0);
    Ok(highest + 1)
}

/// The card: where the model came from and how its schema was inferred,
/// plus the fields a person must fill in.
fn card(
    request: &ImportRequest,
    manifest: &Manifest,
    producer: Option<&str>,
    sample_rows: usize,
) -> toml::Table {
    let file_name = |p: &Path| {
        p.file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned())
    };
    let mut card = toml::Table::new();
    let mut put = |k: &str, v: String| {
        card.insert(k.into(), toml::Value::String(v));
    };
    put("imported_from", file_name(&request.onnx));
    if let Some(p) = producer.filter(|p| !p.is_empty()) {
        put("producer", p.into());
    }
    put(
        "imported_at",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    );
    put(
        "sample",
        format!("{} ({sample_rows} rows)", file_name(&request.sample)),
    );
    put(
        "schema_inference",
        "dtype, range and missing policy inferred from the sample by `segscore models import`: \
         ranges are the observed range widened by half its span on each side (not below 0 when \
         nothing observed was negative); a feature missing somewhere in the sample imputes its \
         median or most frequent value, otherwise missing values are rejected"
            .into(),
    );
    if manifest.task == Task::BinaryClassification {
        put(
            "score_meaning",
            format!(
                "probability of class `{}` (column {} of `{}`)",
                manifest
                    .classes
                    .get(manifest.score.column)
                    .map_or("1", String::as_str),
                manifest.score.column,
                manifest.score.output
            ),
        );
    }
    put(
        "intended_use",
        "TODO: who may use these scores, for what".into(),
    );
    put("data", "TODO: training data, period, population".into());
    put("metrics", "TODO: validation metrics".into());
    card
}

/// golden.csv: the first `rows` sample rows' feature cells plus the scores
/// (and predicted classes) the real engine gives them.
fn golden_csv(
    manifest: &Manifest,
    model: &[u8],
    sample: &Sample,
    rows: usize,
    engine: &EngineConfig,
) -> Result<Vec<u8>, ImportError> {
    let engine_error = |e: String| ImportError::Engine(e);
    let schema = FeatureSchema::new(manifest.features.clone())
        .map_err(|e| engine_error(format!("the inferred schema: {e}")))?;
    let columns: Vec<usize> = schema
        .specs()
        .map(|s| {
            sample
                .header
                .iter()
                .position(|h| *h == s.name)
                .expect("every feature is a sample column; this is a bug")
        })
        .collect();
    let mut features = csv::Writer::from_writer(Vec::new());
    let write_err = |e: csv::Error| engine_error(e.to_string());
    features
        .write_record(schema.specs().map(|s| s.name.as_str()))
        .map_err(write_err)?;
    for row in &sample.rows[..rows] {
        features
            .write_record(columns.iter().map(|&c| row[c].as_str()))
            .map_err(write_err)?;
    }
    let features = features
        .into_inner()
        .map_err(|e| engine_error(e.to_string()))?;
    let (batch, _) = load::csv_batch(csv::Reader::from_reader(&features[..]), &schema, "")
        .map_err(|e| engine_error(format!("the sample rows: {e}")))?;
    let input = schema
        .encode(&batch, 0..batch.rows())
        .map_err(|e| engine_error(format!("the sample rows: {e}")))?;
    let mut backend = load::build_backend(manifest, &schema, model, engine)?;
    let raw = backend
        .score(input.view())
        .map_err(|e| engine_error(e.to_string()))?;
    let picker = ScorePicker::of(manifest);
    // Clustering rows are `[cluster id, distance]`: the score is the distance
    // and the cluster goes in `expected_cluster`, as the server checks it.
    let clustering = manifest.task == Task::Clustering;
    let per_row = if clustering { 2 } else { picker.width() };
    if raw.len() != rows * per_row {
        return Err(engine_error(format!(
            "the model returned {} values for {rows} rows",
            raw.len()
        )));
    }
    let scores: Vec<f32> = if clustering {
        raw.chunks_exact(2).map(|pair| pair[1]).collect()
    } else {
        picker.scores(&raw).collect()
    };
    if let Some(row) = scores.iter().position(|s| !s.is_finite()) {
        return Err(engine_error(format!(
            "row {row}: the model returned a non-finite score"
        )));
    }
    let mut reader = csv::Reader::from_reader(&features[..]);
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = reader
        .headers()
        .map_err(write_err)?
        .iter()
        .map(str::to_owned)
        .collect();
    header.push("expected".into());
    if clustering {
        header.push("expected_cluster".into());
    }
    if picker != ScorePicker::Single {
        header.push("expected_label".into());
    }
    out.write_record(&header).map_err(write_err)?;
    let width = picker.width();
    for (i, record) in reader.records().enumerate() {
        let mut record: Vec<String> = record
            .map_err(write_err)?
            .iter()
            .map(str::to_owned)
            .collect();
        record.push(scores[i].to_string());
        if clustering {
            // Ids are small integers the backend wrote as f32: exact.
            record.push((raw[i * 2] as u32).to_string());
        }
        if picker != ScorePicker::Single {
            let class = argmax(&raw[i * width..(i + 1) * width]);
            record.push(manifest.classes[class].clone());
        }
        out.write_record(&record).map_err(write_err)?;
    }
    out.into_inner().map_err(|e| engine_error(e.to_string()))
}

/// The card stub people fill in; the manifest's `[card]` holds the facts.
fn card_markdown(manifest: &Manifest) -> String {
    format!(
        "# {name} v{version}\n\n\
         Imported by `segscore models import` ({task:?}, {n} features; see `[card]` in \
         model.toml for the source and the inference rules).\n\n\
         ## Intended use\n\nTODO\n\n## Training data\n\nTODO\n\n## Metrics\n\nTODO\n\n\
         ## Caveats\n\nRanges and missing-value policies were inferred from a sample: \
         check them in model.toml before relying on them.\n",
        name = manifest.name,
        version = manifest.version,
        task = manifest.task,
        n = manifest.features.len(),
    )
}

/// Builds the version in `<repo>/<name>/.import-<pid>/<name>/<version>/`
/// (the manifest last), validates it with the server's gate, then renames it
/// to `<repo>/<name>/<version>`. The staging tree is removed whatever
/// happens.
fn write_version(
    request: &ImportRequest,
    manifest: &Manifest,
    manifest_toml: &str,
    model: &[u8],
    golden: &[u8],
    engine: &EngineConfig,
) -> Result<(), ImportError> {
    let model_dir = request.model_repository.join(&request.name);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Io { path, source }
    };
    std::fs::create_dir_all(&model_dir).map_err(io(&model_dir))?;
    // Dot-prefixed: the repository scan skips it.
    let staging = model_dir.join(format!(".import-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(staging.clone());
    let staged = staging
        .join(&request.name)
        .join(manifest.version.to_string());
    std::fs::create_dir_all(&staged).map_err(io(&staged))?;
    for (file, bytes) in [
        (MODEL_FILE, model),
        (GOLDEN_FILE, golden),
        (CARD_FILE, card_markdown(manifest).as_bytes()),
        (MANIFEST_FILE, manifest_toml.as_bytes()),
    ] {
        let path = staged.join(file);
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    // The sample's distributions as this version scores them: live drift
    // is measured against them. Written before the gate, which checks it.
    super::reference::write_from_csv(&staged, &request.sample, engine)
        .map_err(|e| ImportError::Engine(format!("reference distributions: {e}")))?;
    let previous = super::scan(&request.model_repository)
        .ok()
        .and_then(|found| found.get(&request.name).cloned())
        .and_then(|versions| versions.into_values().next_back())
        .and_then(|dir| Manifest::read(&dir.join(MANIFEST_FILE)).ok());
    let no_phase = |_| {};
    let options = ValidateOptions {
        backends: 1,
        previous: previous.as_ref(),
        on_phase: &no_phase,
    };
    load::validate(&staged, engine, &options)?;
    let target = model_dir.join(manifest.version.to_string());
    if target.exists() {
        return Err(ImportError::Io {
            path: target,
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "appeared while importing; run the import again",
            ),
        });
    }
    std::fs::rename(&staged, &target).map_err(io(&target))?;
    Ok(())
}

/// Removes the staging tree when the import ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What import needs from the graph beyond ONNX Runtime's signature: the
/// class labels and whether it is a clustering graph. Read with a minimal
/// prost schema of onnx.proto (only the fields used; prost skips the rest),
/// from bytes already read under the model size cap.
mod graph {
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    struct ModelProto {
        #[prost(string, tag = "2")]
        producer_name: String,
        #[prost(string, tag = "3")]
        producer_version: String,
        #[prost(message, optional, tag = "7")]
        graph: Option<GraphProto>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        node: Vec<NodeProto>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct NodeProto {
        #[prost(string, tag = "4")]
        op_type: String,
        #[prost(message, repeated, tag = "5")]
        attribute: Vec<AttributeProto>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct AttributeProto {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(int64, repeated, tag = "8")]
        ints: Vec<i64>,
        #[prost(bytes = "vec", repeated, tag = "9")]
        strings: Vec<Vec<u8>>,
    }

    /// The facts import reads from the graph's nodes.
    #[derive(Debug, Default)]
    pub struct Summary {
        /// The classifier's labels in probability-column order.
        pub classes: Option<Vec<String>>,
        /// A KMeans-style graph with no classifier node.
        pub clustering: bool,
        /// The probabilities go through ZipMap (a sequence of maps).
        pub zipmap: bool,
        /// Who wrote the file (`skl2onnx 1.20.0`), for the card.
        pub producer_name: String,
        pub producer_version: String,
    }

    /// Classifier ops of the ai.onnx.ml domain that carry class labels.
    const CLASSIFIERS: &[&str] = &[
        "TreeEnsembleClassifier",
        "LinearClassifier",
        "SVMClassifier",
        "ZipMap",
    ];

    pub fn summary(bytes: &[u8]) -> Result<Summary, String> {
        let model = ModelProto::decode(bytes).map_err(|e| e.to_string())?;
        let Some(graph) = model.graph else {
            return Err("the file holds no graph".into());
        };
        let mut summary = Summary {
            producer_name: model.producer_name,
            producer_version: model.producer_version,
            ..Summary::default()
        };
        summary.zipmap = graph.node.iter().any(|n| n.op_type == "ZipMap");
        for node in &graph.node {
            if !CLASSIFIERS.contains(&node.op_type.as_str()) || summary.classes.is_some() {
                continue;
            }
            for attr in &node.attribute {
                match attr.name.as_str() {
                    "classlabels_int64s" if !attr.ints.is_empty() => {
                        summary.classes = Some(attr.ints.iter().map(i64::to_string).collect());
                    }
                    "classlabels_strings" if !attr.strings.is_empty() => {
                        summary.classes = Some(
                            attr.strings
                                .iter()
                                .map(|s| String::from_utf8_lossy(s).into_owned())
                                .collect(),
                        );
                    }
                    _ => {}
                }
            }
        }
        // skl2onnx writes KMeans as distance arithmetic ending in ArgMin,
        // with no classifier node.
        summary.clustering =
            summary.classes.is_none() && graph.node.iter().any(|n| n.op_type == "ArgMin");
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str) -> Result<Sample, ImportError> {
        parse_sample(Path::new("s.csv"), text.as_bytes())
    }

    fn tensor(name: &str, ty: TensorElementType, shape: &[i64]) -> Tensor {
        Tensor {
            name: name.into(),
            ty: Some(ty),
            shape: shape.to_vec(),
        }
    }

    fn request(features: Option<&[&str]>) -> ImportRequest {
        ImportRequest {
            onnx: "m.onnx".into(),
            sample: "s.csv".into(),
            name: "m".into(),
            task: None,
            features: features.map(|f| f.iter().map(|s| s.to_string()).collect()),
            positive_class: None,
            model_repository: "repo".into(),
            dry_run: true,
        }
    }

    #[test]
    fn a_header_of_numbers_is_refused_as_a_missing_header() {
        let err = sample("0.5,1.5\n1,2\n").err().unwrap();
        assert!(err.to_string().contains("wrong header"), "{err}");
        assert!(err.to_string().contains("add a header line"), "{err}");
        let err = sample("a,a\n1,2\n").err().unwrap();
        assert!(err.to_string().contains("`a` appears twice"), "{err}");
        let err = sample("a,b\n").err().unwrap();
        assert!(err.to_string().contains("no rows"), "{err}");
    }

    #[test]
    fn a_matrix_graph_takes_the_header_and_checks_its_width() {
        let s = sample("a,b,c\n1,2,3\n").unwrap();
        let input = [tensor("input", TensorElementType::Float32, &[-1, 3])];
        let bound = bind_features(&request(None), &input, &s).unwrap();
        assert_eq!(bound[0].features, ["a", "b", "c"]);
        let narrow = [tensor("input", TensorElementType::Float32, &[-1, 2])];
        let err = bind_features(&request(None), &narrow, &s).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("input `input` takes 2 columns but the sample has 3"),
            "{text}"
        );
        let picked = bind_features(&request(Some(&["c", "a"])), &narrow, &s).unwrap();
        assert_eq!(picked[0].features, ["c", "a"]);
    }

    #[test]
    fn a_feature_absent_from_the_sample_is_named() {
        let s = sample("a,b\n1,2\n").unwrap();
        let inputs = [
            tensor("a", TensorElementType::Float32, &[-1, 1]),
            tensor("city", TensorElementType::String, &[-1, 1]),
        ];
        let err = bind_features(&request(None), &inputs, &s).unwrap_err();
        assert!(err.to_string().contains("has no column `city`"), "{err}");
    }

    #[test]
    fn dtypes_ranges_and_missing_policies_follow_the_documented_rules() {
        let p = Path::new("s.csv");
        let f = infer_feature(p, "x", GraphDtype::Float32, &["1.5", "3.5", ""]).unwrap();
        assert_eq!((f.dtype, f.min, f.max), (DType::F32, Some(0.5), Some(4.5)));
        assert_eq!(f.missing, MissingPolicy::Impute(ImputeValue::Number(3.5)));
        let n = infer_feature(p, "n", GraphDtype::Float32, &["2", "10", "4"]).unwrap();
        assert_eq!((n.dtype, n.min, n.max), (DType::I64, Some(0.0), Some(14.0)));
        assert_eq!(n.missing, MissingPolicy::Reject);
        let neg = infer_feature(p, "d", GraphDtype::Float64, &["-1.0", "0.5"]).unwrap();
        assert_eq!(
            (neg.dtype, neg.min, neg.max),
            (DType::F64, Some(-1.75), Some(1.25))
        );
        let b = infer_feature(p, "b", GraphDtype::Float32, &["true", "False", "", "TRUE"]).unwrap();
        assert_eq!(b.dtype, DType::Bool);
        assert_eq!(b.missing, MissingPolicy::Impute(ImputeValue::Bool(true)));
        let c = infer_feature(p, "c", GraphDtype::String, &["nyc", "sf", "nyc", ""]).unwrap();
        assert_eq!(c.categories, ["nyc", "sf"]);
        assert_eq!(
            c.missing,
            MissingPolicy::Impute(ImputeValue::Text("nyc".into()))
        );
        let err = infer_feature(p, "t", GraphDtype::Float32, &["1", "oops"]).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        assert!(
            !err.to_string().contains("oops"),
            "values stay out of messages: {err}"
        );
        assert!(infer_feature(p, "e", GraphDtype::Float32, &["", ""]).is_err());
        assert_eq!(widened_range(&[5.0], false), (4.0, 6.0));
        // Outward and short: never narrower than the rule, no float noise.
        let (lo, hi) = widened_range(&[18.3, 79.1], false);
        assert_eq!(lo, 0.0);
        assert!((79.1 + 30.4..=109.6).contains(&hi), "{hi}");
        assert!(format!("{hi}").len() <= 5, "{hi}");
        let (lo, hi) = widened_range(&[0.123_456, 0.2], false);
        assert!(
            lo <= 0.123_456 - 0.038_272 && hi >= 0.2 + 0.038_272,
            "{lo} {hi}"
        );
        assert_eq!(format!("{hi}"), "0.2383");
    }

    #[test]
    fn classifiers_score_the_second_class_and_regressors_their_value() {
        let outputs = [
            tensor("label", TensorElementType::Int64, &[-1]),
            tensor("probabilities", TensorElementType::Float32, &[-1, 2]),
        ];
        let graph = graph::Summary {
            classes: Some(vec!["0".into(), "1".into()]),
            clustering: false,
            ..graph::Summary::default()
        };
        let (task, score, classes) = detect_task(None, &outputs, &graph).unwrap();
        assert_eq!(task, Task::BinaryClassification);
        assert_eq!((score.output.as_str(), score.column), ("probabilities", 1));
        assert_eq!(classes, ["0", "1"]);
        let three = graph::Summary {
            classes: Some(vec!["a".into(), "b".into(), "c".into()]),
            clustering: false,
            ..graph::Summary::default()
        };
        let wide = [
            tensor("label", TensorElementType::String, &[-1]),
            tensor("probabilities", TensorElementType::Float32, &[-1, 3]),
        ];
        let (task, _, classes) = detect_task(None, &wide, &three).unwrap();
        assert_eq!(task, Task::MulticlassClassification);
        assert_eq!(classes, ["a", "b", "c"]);
        let regression = [tensor("variable", TensorElementType::Float32, &[-1, 1])];
        let (task, score, _) = detect_task(None, &regression, &graph::Summary::default()).unwrap();
        assert_eq!(
            (task, score.output.as_str()),
            (Task::Regression, "variable")
        );
        let kmeans = graph::Summary {
            classes: None,
            clustering: true,
            ..graph::Summary::default()
        };
        // A KMeans graph without a [N, k > 1] distance output cannot be served...
        assert!(detect_task(None, &regression, &kmeans).is_err());
        // ...with one (skl2onnx's `scores`), it is clustering on it.
        let km_outputs = [
            tensor("label", TensorElementType::Int64, &[-1]),
            tensor("scores", TensorElementType::Float32, &[-1, 4]),
        ];
        let (task, score, classes) = detect_task(None, &km_outputs, &kmeans).unwrap();
        assert_eq!((task, score.output.as_str()), (Task::Clustering, "scores"));
        assert!(classes.is_empty());
    }

    #[test]
    fn bad_onnx_bytes_are_an_error_not_a_panic() {
        assert!(graph::summary(b"not a model").is_err());
        assert!(graph::summary(&[0xff; 64]).is_err());
        assert!(graph::summary(b"").is_err());
    }

    #[test]
    fn names_that_are_not_directory_names_are_refused() {
        for bad in ["", ".hidden", "../x", "a/b", "-x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("next_offer-2").unwrap();
    }
}
