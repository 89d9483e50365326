//! The wire formats, shared by servers and clients: the generated protobuf and
//! tonic code of segscore.v1 and of the KServe V2 Open Inference Protocol, the
//! codec the servers decode requests with, and the conversions between wire
//! messages and domain types (`TryFrom` at the edge). Nothing here knows how a
//! request is scored.

pub mod codec;
pub mod convert;

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
