fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // containerd's Snapshots service: served to containerd (proxy plugin) and used as a
    // client by the tests and `rpull`.
    tonic_build::configure().compile_protos(
        &["proto/containerd/snapshots.proto"],
        &["proto", "/usr/include"],
    )?;
    Ok(())
}
