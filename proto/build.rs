//! Generates the `fanout.v1` types and the tonic service with the vendored protoc, so a
//! fresh machine needs no system protobuf compiler.
//!
//! Two passes over the same file:
//! - `fanout.v1.rs`: every message, the client and the server, for clients and tests.
//! - `encoded/fanout.v1.rs`: the server alone, answering with [`EncodedResponse`] (a
//!   response whose bytes the server writes itself, records encoded once for every
//!   subscription) and reusing the messages of the first pass for everything else.
//!
//! [`EncodedResponse`]: src/lib.rs

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;

    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        // Payloads stay `bytes::Bytes`: one copy out of librdkafka, none after.
        .bytes(".fanout.v1")
        .compile_with_config(config, &["fanout/v1/fanout.proto"], &["."])?;

    let encoded = PathBuf::from(std::env::var("OUT_DIR")?).join("encoded");
    std::fs::create_dir_all(&encoded)?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .out_dir(&encoded)
        .build_client(false)
        // Reserves each response's whole size before writing it (see `encoded::Codec`).
        .codec_path("crate::encoded::Codec")
        // Every message is the first pass's but the response, which prost then skips.
        .extern_path(".fanout.v1", "crate::v1")
        .extern_path(
            ".fanout.v1.SubscribeResponse",
            "crate::encoded::EncodedResponse",
        )
        .compile_with_config(config, &["fanout/v1/fanout.proto"], &["."])?;

    println!("cargo:rerun-if-changed=fanout/v1/fanout.proto");
    Ok(())
}
