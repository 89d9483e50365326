//! gRPC services. [`convert`] parses protobuf messages into domain types at the
//! edge; [`scoring`] implements segscore.v1.

pub mod convert;
pub mod scoring;

/// Generated protobuf and tonic code.
pub mod pb {
    tonic::include_proto!("segscore.v1");

    /// The encoded descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("segscore_descriptor");
}
