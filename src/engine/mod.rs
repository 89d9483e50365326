//! The scoring engine: backends that turn an encoded `[rows, features]` matrix
//! into scores, and the worker threads that own them.
//!
//! After TEI, the [`Backend`] trait is small and synchronous; each worker thread
//! owns one backend (an `ort::Session::run` needs `&mut self`), and async callers
//! reach workers through the per-version dynamic [`batcher`].

pub mod batcher;
pub mod onnx;
pub mod smartcore;
pub mod stats;
mod worker;

use std::sync::Arc;

use ndarray::ArrayView2;

pub use batcher::{Batcher, BatcherConfig, Reservation};
pub use stats::InferStats;

/// Why an accepted chunk produced no scores.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScoreError {
    #[error("the scoring queue is full ({capacity} chunks waiting); retry with backoff")]
    QueueFull { capacity: usize },
    #[error("the model version is shutting down")]
    Stopped,
    #[error("the request's deadline passed before it was scored")]
    DeadlineExceeded,
    #[error("scoring failed: {0}")]
    Backend(String),
}

/// A loaded model that scores encoded feature rows.
pub trait Backend: Send {
    /// Scores every row of `input` (`[rows, features]`, the model's column order)
    /// and returns [`outputs_per_row`](Self::outputs_per_row) values per row,
    /// row-major.
    fn score(&mut self, input: ArrayView2<'_, f32>) -> Result<Vec<f32>, BackendError>;

    /// Values per scored row: 1 (a probability or a value), or 2 for
    /// clustering (`[cluster id, distance]`). The batcher splits replies by it,
    /// so one generic queue serves every task.
    fn outputs_per_row(&self) -> usize {
        1
    }
}

/// Wraps every serving backend of a version once it has passed validation
/// (golden set, warm-up), before its workers start.
///
/// This is how tests get a model whose latency they control: a wrapper that
/// holds each batch until the test lets it go makes "the worker is busy" an
/// event the test causes, instead of a guess about how long real work takes
/// on this CPU. It is set only through the library API (`EngineArgs` skips
/// it on the command line), so no flag, env var or file reaches it.
#[derive(Clone)]
pub struct BackendWrapper(pub Arc<WrapFn>);

/// `wrap(model_name, backend)`: the backend a version's worker will own.
pub type WrapFn = dyn Fn(&str, Box<dyn Backend>) -> Box<dyn Backend> + Send + Sync;

impl BackendWrapper {
    /// `wrap(model_name, backend)` returns the backend the workers will own.
    pub fn new(
        wrap: impl Fn(&str, Box<dyn Backend>) -> Box<dyn Backend> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(wrap))
    }

    pub fn wrap(&self, model: &str, backend: Box<dyn Backend>) -> Box<dyn Backend> {
        (self.0)(model, backend)
    }
}

impl std::fmt::Debug for BackendWrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendWrapper")
    }
}

/// Why a backend could not be built or could not score.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "ONNX Runtime is not available: {0}. Fix: run `make venv` (installs the pinned onnxruntime \
         wheel into .venv), or set ORT_DYLIB_PATH / --ort-dylib-path to its \
         onnxruntime/capi/libonnxruntime.so.* (ONNX Runtime >= 1.{min_minor})",
        min_minor = ort::MINOR_VERSION
    )]
    RuntimeUnavailable(String),
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
    #[error("model inputs/outputs do not match the manifest: {0}")]
    Signature(String),
    #[error("model file is not a valid smartcore model: {0}")]
    SmartcoreFormat(String),
    #[error("scoring failed: {0}")]
    Inference(String),
}
