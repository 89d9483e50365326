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
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
