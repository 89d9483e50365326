//! gRPC services. [`convert`] parses protobuf messages into domain types at the
//! edge; [`scoring`] implements segscore.v1.

pub mod admin;
pub mod convert;
pub mod gate;
pub mod inference;
pub mod scoring;

/// Generated protobuf and tonic code for segscore.v1.
pub mod pb {
    tonic::include_proto!("segscore.v1");
}

/// Generated code for the KServe V2 Open Inference Protocol.
pub mod oip {
    tonic::include_proto!("inference");
}

/// The encoded descriptor set of both APIs, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("segscore_descriptor");
