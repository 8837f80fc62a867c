fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // containerd's Snapshots service: served to containerd (proxy plugin) and used as a
    // client by the tests and `rpull`.
    tonic_build::configure().compile_protos(
        &[
            "proto/containerd/snapshots.proto",
            "proto/containerd/client.proto",
            "proto/containerd/images.proto",
            "proto/containerd/leases.proto",
            "proto/containerd/diff.proto",
        ],
        &["proto", "/usr/include"],
    )?;
    Ok(())
}
