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
    /// Number of feature columns the single float input takes.
    pub features: usize,
    /// The output holding the score, and which column of it.
    pub output: String,
    pub column: usize,
}

/// One ONNX Runtime session plus where its score lives.
pub struct OnnxBackend {
    session: Session,
    output: String,
    column: usize,
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
        Ok(Self {
            session,
            output: signature.output.clone(),
            column: signature.column,
        })
    }
}

fn check_signature(session: &Session, sig: &OnnxSignature) -> Result<(), BackendError> {
    let bad = |m: String| Err(BackendError::Signature(m));
    let inputs = session.inputs();
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

impl Backend for OnnxBackend {
    fn score(&mut self, input: ArrayView2<'_, f32>) -> Result<Vec<f32>, BackendError> {
        let rows = input.nrows();
        let tensor = TensorRef::from_array_view(input)?;
        let outputs = self.session.run(ort::inputs![tensor])?;
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
        Ok(data
            .iter()
            .skip(self.column)
            .step_by(width)
            .copied()
            .collect())
    }
}
