//! The gRPC front ends: segscore.v1 ([`scoring`], [`admin`]) and the KServe
//! V2 Open Inference Protocol ([`inference`]), behind one request [`gate`]
//! (concurrency limit, deadlines, request metrics). Each converts its wire
//! messages to the scoring core's types ([`crate::infer`]) and back; the
//! wire code itself is in [`crate::proto`].

pub mod admin;
pub mod gate;
pub mod inference;
pub mod models;
pub mod scoring;
