//! The API layer's error and its one mapping to `tonic::Status`.
//!
//! Layer errors (features, repository, engine) live beside their code; this enum
//! adds which model/version they concern, and [`From<ApiError> for Status`] is the
//! single place where a failure gets its gRPC code, so the code a client sees for
//! a kind of failure cannot drift between RPCs.

use tonic::{Code, Status};

use crate::{
    echo::echo,
    engine::ScoreError,
    features::{BatchError, FeatureError},
    repository::{lifecycle::LifecycleCommandError, LifecycleError, LoadedModel, ResolveError},
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Batch(#[from] BatchError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("model `{model}` version {version}: {source}")]
    Feature {
        model: String,
        version: u64,
        source: FeatureError,
    },
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("segment `{}` not found (known segments: {known})", echo(.name))]
    UnknownSegment { name: String, known: String },
    #[error("segment `{}` was refused when the rules were loaded: {reason}", echo(.name))]
    SegmentFailed { name: String, reason: String },
    #[error("{0}")]
    TooLarge(String),
    /// The server is at its concurrency limit; the caller should back off.
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// This server is going away (draining); another replica can answer.
    #[error("{0}")]
    Unavailable(String),
    /// The request is valid but the state it needs is not there (a model
    /// reloaded without a version that passed validation).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Lifecycle(#[from] LifecycleCommandError),
    #[error("model `{model}` version {version}: {source}")]
    Score {
        model: String,
        version: u64,
        source: ScoreError,
    },
}

impl ApiError {
    /// A feature error, tagged with the model version it concerns.
    pub fn feature(model: &LoadedModel, source: FeatureError) -> Self {
        ApiError::Feature {
            model: model.name().into(),
            version: model.version(),
            source,
        }
    }

    /// A scoring error, tagged with the model version it concerns.
    pub fn score(model: &LoadedModel, source: ScoreError) -> Self {
        ApiError::Score {
            model: model.name().into(),
            version: model.version(),
            source,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let code = match &err {
            ApiError::Batch(BatchError::TooManyRows { .. })
            | ApiError::TooLarge(_)
            | ApiError::Overloaded(_) => Code::ResourceExhausted,
            ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Batch(_) | ApiError::InvalidArgument(_) | ApiError::Feature { .. } => {
                Code::InvalidArgument
            }
            ApiError::Resolve(_) | ApiError::UnknownSegment { .. } => Code::NotFound,
            ApiError::SegmentFailed { .. } | ApiError::FailedPrecondition(_) => {
                Code::FailedPrecondition
            }
            ApiError::Internal(_) => Code::Internal,
            ApiError::Lifecycle(e) => match e {
                LifecycleCommandError::Resolve(_)
                | LifecycleCommandError::Lifecycle(
                    LifecycleError::UnknownModel(_) | LifecycleError::UnknownVersion { .. },
                ) => Code::NotFound,
                LifecycleCommandError::Lifecycle(LifecycleError::BadLabel(_)) => {
                    Code::InvalidArgument
                }
                LifecycleCommandError::Lifecycle(
                    LifecycleError::NotServing { .. }
                    | LifecycleError::NothingToRollBackTo { .. }
                    | LifecycleError::Reload { .. },
                ) => Code::FailedPrecondition,
                LifecycleCommandError::Lifecycle(LifecycleError::Io { .. })
                | LifecycleCommandError::Internal(_) => Code::Internal,
            },
            ApiError::Score { source, .. } => match source {
                ScoreError::QueueFull { .. } => Code::ResourceExhausted,
                ScoreError::Stopped => Code::Unavailable,
                ScoreError::DeadlineExceeded => Code::DeadlineExceeded,
                ScoreError::Backend(_) => Code::Internal,
            },
        };
        Status::new(code, err.to_string())
    }
}
