//! Black-box tests by capability: real shipped models, a real gRPC server on
//! 127.0.0.1:0, a real client. One test binary, so the server code and ONNX
//! Runtime are loaded once, the helpers are shared as a module, and every
//! suite (the bad-input corpus and the property tests included) is linked
//! once instead of once per file under tests/.

mod helpers;

mod bad_input;
mod browser;
mod bulk;
mod cli;
mod clustering;
mod corpus;
mod http;
mod inference;
mod lifecycle;
mod metrics;
mod monitor;
mod properties;
mod readme;
mod repository;
mod scoring;
mod security;
mod segments;
mod shutdown;
mod telemetry;
