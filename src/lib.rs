//! segscore: a gRPC service that scores customer models (churn, lifetime value,
//! purchase propensity) for segmentation.
//!
//! The modules follow a request: [`api`] parses protobuf at the edge into
//! [`features`] batches; the [`repository`] resolves the model version; the
//! [`engine`] scores on worker threads that own ONNX Runtime or smartcore
//! backends; [`segments`] evaluates CEL segment rules over the features and
//! scores. [`app`] wires the server, [`config`] parses options, [`bulk`] is the
//! `segscore score` file job, [`compare`] the champion/challenger report,
//! [`train`] the smartcore trainer and [`bench`] the
//! benchmark suite.

pub mod alloc;
pub mod api;
pub mod app;
pub mod bench;
pub mod bulk;
pub mod compare;
pub mod config;
pub mod echo;
pub mod engine;
pub mod error;
pub mod features;
pub mod metrics;
pub mod repository;
pub mod security;
pub mod segments;
pub mod telemetry;
pub mod train;
