//! Compiles `depot/*.proto` with protox (a protobuf compiler in Rust), so building Depot needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["depot/agent.proto", "depot/registry.proto", "depot/brpb.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // File bytes as `Bytes`: decoded without a copy out of the receive buffer, and handed
        // to the hashing and writing threads by reference count.
        .bytes(".depot.agent.v1.FileChunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
