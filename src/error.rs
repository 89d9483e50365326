//! The API layer's error and its one mapping to each protocol's status.
//!
//! Layer errors (features, repository, engine) live beside their code; this enum
//! adds which model/version they concern. [`ApiError::code`] is the single place
//! where a failure gets its gRPC code and [`ApiError::http_status`] its HTTP
//! status, both exhaustive, so what a client sees for a kind of failure cannot
//! drift between RPCs or between the gRPC and the HTTP front ends (whose
//! messages are the same `Display`).

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
    /// No accepted bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token whose role may not call this.
    #[error("{0}")]
    PermissionDenied(String),
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

impl ApiError {
    /// The gRPC code of this failure (also the `code` label of the request
    /// metrics, whichever protocol the request came over).
    pub fn code(&self) -> Code {
        match self {
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
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
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
        }
    }

    /// The HTTP status of this failure. It follows the gRPC code, except
    /// that RESOURCE_EXHAUSTED splits in two: a request too large for the
    /// server is 413 (retrying it cannot help), a full server is 429
    /// (retrying later can).
    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self {
            ApiError::Batch(BatchError::TooManyRows { .. }) | ApiError::TooLarge(_) => {
                return S::PAYLOAD_TOO_LARGE
            }
            ApiError::Overloaded(_)
            | ApiError::Score {
                source: ScoreError::QueueFull { .. },
                ..
            } => return S::TOO_MANY_REQUESTS,
            _ => {}
        }
        match self.code() {
            Code::Ok => S::OK,
            Code::InvalidArgument | Code::OutOfRange => S::BAD_REQUEST,
            Code::NotFound => S::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => S::CONFLICT,
            Code::FailedPrecondition => S::PRECONDITION_FAILED,
            Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
            Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
            Code::Unavailable => S::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => S::UNAUTHORIZED,
            Code::PermissionDenied => S::FORBIDDEN,
            Code::Unimplemented => S::NOT_IMPLEMENTED,
            Code::Cancelled => S::REQUEST_TIMEOUT,
            Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

/// The gRPC code an HTTP answer stands for, carried in the response's
/// extensions so the HTTP front end records the same `code` label as gRPC.
#[derive(Debug, Clone, Copy)]
pub struct AnsweredCode(pub Code);

/// `{"error": "…"}` with [`ApiError::http_status`]: the body the KServe V2
/// REST protocol specifies for errors, and the same message gRPC sends.
impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status = self.http_status();
        let code = self.code();
        let mut response = (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        response.extensions_mut().insert(AnsweredCode(code));
        response
    }
}
