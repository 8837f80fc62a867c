fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/daemon.proto");
    tonic_prost_build::configure().compile_protos(&["proto/daemon.proto"], &["proto"])?;
    Ok(())
}
