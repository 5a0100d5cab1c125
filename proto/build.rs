//! Generates the `fanout.v1` types and the tonic service with the vendored protoc, so a
//! fresh machine needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Payloads stay `bytes::Bytes`: one copy out of librdkafka, none after.
        .bytes(".fanout.v1")
        .compile_with_config(config, &["fanout/v1/fanout.proto"], &["."])?;
    println!("cargo:rerun-if-changed=fanout/v1/fanout.proto");
    Ok(())
}
