//! Generates the prost messages and tonic services from proto/shoal/v1/*.proto with
//! protox (a Rust protobuf compiler): no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "objects.proto",
        "control.proto",
        "dispatcher.proto",
        "raft.proto",
        "ca.proto",
    ]
    .map(|f| format!("proto/shoal/v1/{f}"));
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(&files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // its Debug is written by hand, without the password
        .skip_debug([
            "shoal.v1.RegistryCredential",
            "shoal.v1.SecretSpec",
            "shoal.v1.FileVersion",
        ])
        .compile_fds(fds)?;
    Ok(())
}
