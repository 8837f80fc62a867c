//! Builds the C layer over libext2fs (`csrc/extfs.c`) and links e2fsprogs' libraries
//! (Debian: `libext2fs-dev`).
fn main() {
    println!("cargo:rerun-if-changed=csrc/extfs.c");
    if !std::path::Path::new("/usr/include/ext2fs/ext2fs.h").exists()
        && std::env::var_os("EXT2FS_INCLUDE").is_none()
    {
        println!(
            "cargo:warning=ext2fs/ext2fs.h not found: install libext2fs-dev (scripts/test.sh does)"
        );
    }
    let mut b = cc::Build::new();
    b.file("csrc/extfs.c")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wno-unused-parameter");
    if let Some(dir) = std::env::var_os("EXT2FS_INCLUDE") {
        b.include(dir);
    }
    b.compile("obdextfs");
    println!("cargo:rustc-link-lib=ext2fs");
    println!("cargo:rustc-link-lib=com_err");
}
