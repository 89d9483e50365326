//! The ONNX backend: one `ort::Session` per worker, loaded from the
//! `libonnxruntime.so` of the pinned PyPI wheel (ort's `load-dynamic`), because
//! ort's binary download cannot run here and a system-wide install is not ours
//! to assume.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use ndarray::ArrayView2;
use ort::{
    environment::Environment,
    session::{builder::GraphOptimizationLevel, Session},
    value::{TensorElementType, TensorRef, ValueType},
};

use super::{Backend, BackendError};

/// The process-wide ONNX Runtime environment; ORT allows only one, and the
/// library stays loaded for the life of the process.
static RUNTIME: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime once: from `configured` (`--ort-dylib-path` /
/// `ORT_DYLIB_PATH`) when given, else from the project's `.venv`.
pub fn init_runtime(configured: Option<&Path>) -> Result<&'static Environment, BackendError> {
    let result = RUNTIME.get_or_init(|| {
        let path = locate_dylib(configured)?;
        let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
        builder
            .with_name("segscore")
            .build()
            .map_err(|e| format!("creating the environment from {}: {e}", path.display()))
    });
    result
        .as_ref()
        .map_err(|e| BackendError::RuntimeUnavailable(e.clone()))
}

/// Finds `libonnxruntime.so*` inside a `.venv` next to the working directory, the
/// executable or the source tree (in that order), so `make run`, `cargo test` and
/// a copied binary all work without setting anything.
pub fn locate_dylib(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!(
                "ORT_DYLIB_PATH points to {}, which is not a file",
                path.display()
            ))
        };
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for root in &roots {
        if let Some(found) = find_in_venv(&root.join(".venv")) {
            return Ok(found);
        }
    }
    Err(
        "no libonnxruntime.so found in a .venv beside the working directory, the \
         executable or the source tree"
            .into(),
    )
}

fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let mut found: Vec<PathBuf> = lib
        .flatten()
        .map(|python| python.path().join("site-packages/onnxruntime/capi"))
        .filter_map(|capi| std::fs::read_dir(capi).ok())
        .flat_map(|dir| dir.flatten().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    // Prefer the fully versioned file name: it is the real library, not a link.
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// What the manifest says the ONNX graph must look like.
#[derive(Debug, Clone)]
pub struct OnnxSignature {
    /// Number of feature columns in the encoded matrix.
    pub features: usize,
    /// The output holding the score, and which column of it.
    pub output: String,
    pub column: usize,
    /// How the graph's inputs are filled from the encoded matrix; empty =
    /// one float input that takes the whole matrix (the shipped models).
    pub inputs: Vec<InputBinding>,
    /// Classifiers with declared classes: the score output has this many
    /// columns and every one is returned (see [`Backend::outputs_per_row`]).
    pub classes: Option<usize>,
    /// Clustering: the score output holds each row's distance to every
    /// centroid (`[N, k]`, skl2onnx's KMeans `scores`); the backend returns
    /// `[nearest centroid, its distance]` per row, as smartcore's does.
    pub clustering: bool,
}

/// One graph input: its name, element type and the encoded-matrix columns
/// it takes, in its own column order.
#[derive(Debug, Clone)]
pub struct InputBinding {
    pub name: String,
    pub kind: InputKind,
    pub columns: Vec<usize>,
    /// The graph input's rank: 1 (`[N]`, one column) or 2 (`[N, k]`); set
    /// from the session at load.
    pub rank: usize,
    /// `String` inputs: each column's category names, indexed by the code
    /// the feature schema encoded (the matrix carries codes, the graph
    /// wants the names it was trained on).
    pub categories: Vec<Vec<String>>,
}

/// The element types a graph input can be fed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Float32,
    Float64,
    Int64,
    String,
}

impl InputKind {
    fn element_type(self) -> TensorElementType {
        match self {
            InputKind::Float32 => TensorElementType::Float32,
            InputKind::Float64 => TensorElementType::Float64,
            InputKind::Int64 => TensorElementType::Int64,
            InputKind::String => TensorElementType::String,
        }
    }
}

/// One ONNX Runtime session plus where its score lives.
pub struct OnnxBackend {
    session: Session,
    output: String,
    column: usize,
    inputs: Vec<InputBinding>,
    /// One float32 `[N, k]` input taking every column in order: the encoded
    /// matrix is passed as is, without a copy.
    whole_matrix: bool,
    classes: Option<usize>,
    clustering: bool,
}

impl OnnxBackend {
    /// Builds a session from the model bytes and checks its inputs and outputs
    /// against the manifest before anything is scored with it.
    pub fn load(
        env: &Environment,
        model: &[u8],
        signature: &OnnxSignature,
        intra_threads: usize,
    ) -> Result<Self, BackendError> {
        let session = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(ort::Error::from)?
            // One thread per session: workers already run in parallel, and ORT's
            // default pool (every core per session) oversubscribes the machine.
            .with_intra_threads(intra_threads)
            .map_err(ort::Error::from)?
            .with_inter_threads(1)
            .map_err(ort::Error::from)?
            .commit_from_memory(model)?;
        check_signature(&session, signature)?;
        let mut inputs = signature.inputs.clone();
        for binding in &mut inputs {
            binding.rank = session
                .inputs()
                .iter()
                .find(|i| i.name() == binding.name)
                .and_then(|i| match i.dtype() {
                    ValueType::Tensor { shape, .. } => Some(shape.len()),
                    _ => None,
                })
                .unwrap_or(2);
        }
        let whole_matrix = inputs.is_empty()
            || matches!(&inputs[..], [b] if b.kind == InputKind::Float32
                && b.rank == 2
                && b.columns.iter().copied().eq(0..signature.features));
        Ok(Self {
            session,
            output: signature.output.clone(),
            column: signature.column,
            whole_matrix,
            inputs,
            classes: signature.classes,
            clustering: signature.clustering,
        })
    }
}

fn check_signature(session: &Session, sig: &OnnxSignature) -> Result<(), BackendError> {
    let bad = |m: String| Err(BackendError::Signature(m));
    let inputs = session.inputs();
    if sig.inputs.is_empty() {
        if inputs.len() != 1 {
            return bad(format!(
                "the manifest describes one float input of {} features, the model has {} inputs",
                sig.features,
                inputs.len()
            ));
        }
        let input = &inputs[0];
        match input.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape,
                ..
            } if shape.len() == 2 && (shape[1] == sig.features as i64 || shape[1] < 0) => {}
            other => {
                return bad(format!(
                    "input `{}` is {other:?}; the manifest's {} features need float32 [N, {}]",
                    input.name(),
                    sig.features,
                    sig.features
                ))
            }
        }
    } else {
        check_bindings(session, sig)?;
    }
    let Some(output) = session.outputs().iter().find(|o| o.name() == sig.output) else {
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        return bad(format!(
            "score output `{}` not found; the model's outputs are {names:?}",
            sig.output
        ));
    };
    match output.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => {
            let width = if shape.len() == 2 { shape[1] } else { 1 };
            let fits = shape.len() == 1 && sig.column == 0
                || shape.len() == 2 && (width < 0 || (sig.column as i64) < width);
            if !fits {
                return bad(format!(
                    "score column {} is outside output `{}` of shape {shape:?}",
                    sig.column, sig.output
                ));
            }
            if let Some(classes) = sig.classes {
                if shape.len() != 2 || (width >= 0 && width != classes as i64) {
                    return bad(format!(
                        "output `{}` has shape {shape:?}; the manifest's {classes} classes need [N, {classes}]",
                        sig.output
                    ));
                }
            }
        }
        other => {
            return bad(format!(
                "score output `{}` is {other:?}, not a float32 tensor",
                sig.output
            ))
        }
    }
    Ok(())
}

/// Every graph input is bound exactly once with its own element type and
/// width, and every feature column feeds exactly one input.
fn check_bindings(session: &Session, sig: &OnnxSignature) -> Result<(), BackendError> {
    let bad = |m: String| Err(BackendError::Signature(m));
    let graph = session.inputs();
    let mut used = vec![false; sig.features];
    for binding in &sig.inputs {
        let Some(input) = graph.iter().find(|i| i.name() == binding.name) else {
            let names: Vec<&str> = graph.iter().map(|i| i.name()).collect();
            return bad(format!(
                "input `{}` not found; the model's inputs are {names:?}",
                binding.name
            ));
        };
        let width = binding.columns.len() as i64;
        match input.dtype() {
            ValueType::Tensor { ty, shape, .. }
                if *ty == binding.kind.element_type()
                    && (shape.len() == 2 && (shape[1] == width || shape[1] < 0)
                        || shape.len() == 1 && width == 1) => {}
            other => {
                return bad(format!(
                    "input `{}` is {other:?}; the manifest feeds it {width} column(s) of {:?}",
                    binding.name, binding.kind
                ))
            }
        }
        if binding.kind == InputKind::String && binding.categories.len() != binding.columns.len() {
            return bad(format!(
                "string input `{}` needs category features",
                binding.name
            ));
        }
        for &c in &binding.columns {
            match used.get_mut(c) {
                Some(u) if !*u => *u = true,
                _ => {
                    return bad(format!(
                        "input `{}`: feature column {c} is fed twice or does not exist",
                        binding.name
                    ))
                }
            }
        }
    }
    if let Some(missing) = graph
        .iter()
        .find(|i| !sig.inputs.iter().any(|b| b.name == i.name()))
    {
        return bad(format!(
            "the model's input `{}` is not fed by any manifest `[[inputs]]` entry",
            missing.name()
        ));
    }
    if let Some(unused) = used.iter().position(|u| !u) {
        return bad(format!("feature column {unused} feeds no model input"));
    }
    Ok(())
}

/// Builds one graph input's tensor from the encoded matrix.
fn input_value(
    binding: &InputBinding,
    input: ArrayView2<'_, f32>,
) -> Result<ort::value::DynValue, BackendError> {
    let rows = input.nrows();
    let width = binding.columns.len();
    let shape = if binding.rank == 1 {
        vec![rows]
    } else {
        vec![rows, width]
    };
    // Row-major [rows, width] over the bound columns.
    let cells = (0..rows).flat_map(|r| binding.columns.iter().map(move |&c| (r, c)));
    Ok(match binding.kind {
        InputKind::Float32 => {
            let data: Vec<f32> = cells.map(|(r, c)| input[[r, c]]).collect();
            ort::value::Tensor::from_array((shape, data))?.into_dyn()
        }
        InputKind::Float64 => {
            let data: Vec<f64> = cells.map(|(r, c)| f64::from(input[[r, c]])).collect();
            ort::value::Tensor::from_array((shape, data))?.into_dyn()
        }
        InputKind::Int64 => {
            // The schema checked integrality and range before encoding.
            let data: Vec<i64> = cells.map(|(r, c)| input[[r, c]] as i64).collect();
            ort::value::Tensor::from_array((shape, data))?.into_dyn()
        }
        InputKind::String => {
            // Owned: ORT copies the strings anyway and wants 'static data.
            let mut data: Vec<String> = Vec::with_capacity(rows * width);
            for r in 0..rows {
                for (k, &c) in binding.columns.iter().enumerate() {
                    let code = input[[r, c]];
                    let name = binding.categories[k]
                        .get(code as usize)
                        .filter(|_| code >= 0.0 && code.fract() == 0.0)
                        .ok_or_else(|| {
                            BackendError::Inference(format!(
                                "input `{}`: column {k} holds no category code",
                                binding.name
                            ))
                        })?;
                    data.push(name.clone());
                }
            }
            ort::value::Tensor::from_string_array((shape, &data[..]))?.into_dyn()
        }
    })
}

impl Backend for OnnxBackend {
    fn score(&mut self, input: ArrayView2<'_, f32>) -> Result<Vec<f32>, BackendError> {
        let rows = input.nrows();
        let outputs = if self.whole_matrix {
            let tensor = TensorRef::from_array_view(input)?;
            self.session.run(ort::inputs![tensor])?
        } else {
            let mut values = Vec::with_capacity(self.inputs.len());
            for binding in &self.inputs {
                values.push((binding.name.clone(), input_value(binding, input)?));
            }
            self.session.run(values)?
        };
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| BackendError::Inference(format!("no output `{}`", self.output)))?;
        let (shape, data) = value.try_extract_tensor::<f32>()?;
        let width = match shape.len() {
            1 => 1,
            2 => shape[1] as usize,
            _ => {
                return Err(BackendError::Inference(format!(
                    "unexpected output shape {shape:?}"
                )))
            }
        };
        if data.len() != rows * width || self.column >= width {
            return Err(BackendError::Inference(format!(
                "output `{}` has shape {shape:?} for {rows} rows",
                self.output
            )));
        }
        if self.clustering {
            if width == 0 {
                return Err(BackendError::Inference(format!(
                    "output `{}` has no centroid distances",
                    self.output
                )));
            }
            return Ok(data
                .chunks_exact(width)
                .flat_map(|distances| {
                    // The nearest centroid; the first on a tie, as ArgMin.
                    let (cluster, distance) =
                        distances
                            .iter()
                            .enumerate()
                            .fold(
                                (0, f32::INFINITY),
                                |best, (i, &d)| if d < best.1 { (i, d) } else { best },
                            );
                    [cluster as f32, distance]
                })
                .collect());
        }
        if let Some(classes) = self.classes {
            if width != classes {
                return Err(BackendError::Inference(format!(
                    "output `{}` has {width} columns for {classes} classes",
                    self.output
                )));
            }
            return Ok(data.to_vec());
        }
        Ok(data
            .iter()
            .skip(self.column)
            .step_by(width)
            .copied()
            .collect())
    }

    fn outputs_per_row(&self) -> usize {
        if self.clustering {
            2
        } else {
            self.classes.unwrap_or(1)
        }
    }
}
