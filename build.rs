//! Compiles the .proto files with protox (pure Rust), so building segscore
//! needs no system protoc.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/segscore/v1/scoring.proto",
        "proto/inference/grpc_predict_v2.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Kept for gRPC reflection: clients can discover the API without the .proto.
    fs::write(out_dir.join("segscore_descriptor.bin"), fds.encode_to_vec())?;
    // Two passes. Messages and servers first, the servers decoding with our
    // codec: bytes a caller sends that are not protobuf are its
    // INVALID_ARGUMENT, not our INTERNAL. Then the clients alone, referring
    // to those messages, with tonic-prost's codec: for a client, a response
    // that does not decode is the server's fault (INTERNAL).
    let servers = out_dir.join("servers");
    let clients = out_dir.join("clients");
    fs::create_dir_all(&servers)?;
    fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .codec_path("crate::proto::codec::RequestCodec")
        .out_dir(&servers)
        .compile_fds(fds.clone())?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .extern_path(".segscore.v1", "crate::proto::pb")
        .extern_path(".inference", "crate::proto::oip")
        .out_dir(&clients)
        .compile_fds(fds)?;
    Ok(())
}
