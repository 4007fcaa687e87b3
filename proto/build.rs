//! Generates the Rust types for `proto/apiary.proto` with prost. `protoc` comes from the
//! `protoc-bin-vendored` crate so that no system install is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=proto/apiary.proto");
    println!("cargo:rerun-if-changed=proto/flight_session.proto");
    prost_build::Config::new()
        .protoc_executable(protoc)
        .bytes(["."])
        .compile_protos(
            &["proto/apiary.proto", "proto/flight_session.proto"],
            &["proto/"],
        )?;
    Ok(())
}
