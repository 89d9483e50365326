//! segscore: a gRPC service that scores customer models (churn, lifetime value,
//! purchase propensity) for segmentation.
//!
//! The modules follow a request: a front end ([`api`] for gRPC, [`bulk`] for
//! files) converts its wire format ([`proto`]) into the scoring core's
//! request; the core ([`infer`]) resolves versions in the [`repository`],
//! encodes [`features`] against each version's schema, runs them on the
//! [`engine`]'s worker threads (ONNX Runtime or smartcore backends) and
//! evaluates [`segments`] (CEL rules) over the features and scores. [`app`]
//! wires the server, [`config`] parses options, [`compare`] is the
//! champion/challenger report, [`train`] the smartcore trainer and [`bench`]
//! the benchmark suite. docs/architecture.md draws the map.

pub mod alloc;
pub mod api;
pub mod app;
pub mod bench;
pub mod bulk;
pub mod cli;
pub mod compare;
pub mod config;
pub mod echo;
pub mod engine;
pub mod error;
pub mod features;
pub mod infer;
pub mod metrics;
pub mod proto;
pub mod repository;
pub mod security;
pub mod segments;
pub mod telemetry;
pub mod train;
