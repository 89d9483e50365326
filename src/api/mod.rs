//! gRPC services. [`convert`] parses protobuf messages into domain types at the
//! edge; [`scoring`] implements segscore.v1.

pub mod admin;
pub mod codec;
pub mod convert;
pub mod gate;
pub mod inference;
pub mod scoring;

/// Generated protobuf and tonic code for segscore.v1: messages and servers
/// (decoding with [`codec::RequestCodec`]), then clients (tonic-prost's
/// codec; see build.rs).
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/servers/segscore.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/clients/segscore.v1.rs"));
}

/// Generated code for the KServe V2 Open Inference Protocol, built as [`pb`].
pub mod oip {
    include!(concat!(env!("OUT_DIR"), "/servers/inference.rs"));
    include!(concat!(env!("OUT_DIR"), "/clients/inference.rs"));
}

/// The encoded descriptor set of both APIs, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("segscore_descriptor");
