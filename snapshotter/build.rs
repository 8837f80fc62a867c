fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // containerd's Snapshots service, served to containerd as a proxy plugin. The clients of
    // containerd's API (rpull, the tests) use the `containerd-client` crate, which builds no
    // servers.
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(
            &["proto/containerd/snapshots.proto"],
            &["proto", "/usr/include"],
        )?;
    Ok(())
}
