//! Layer 0's filesystem: e2fsprogs' `mke2fs` on the work disk's file (no root needed: it is a
//! regular file), with overlaybd's parameters and every source of randomness pinned so that the
//! same input gives the same bytes.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// overlaybd's `make_extfs` features (`reference/overlaybd.md` §7.1): 4 KiB blocks, 256-byte
/// inodes, one inode per 16 KiB, 5% reserved, no journal, one group per flex group.
pub const FEATURES: &str = "sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr,\
                            64bit,dir_nlink,huge_file,flex_bg,extent,extra_isize";

/// mke2fs's configuration: none of the host's `/etc/mke2fs.conf` applies.
const CONFIG: &str = "[defaults]\n\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n\tdefault_mntopts = acl,user_xattr\n\tenable_periodic_fsck = 0\n\tblocksize = 4096\n\tinode_size = 256\n\tinode_ratio = 16384\n\treserved_ratio = 5.0\n\tlazy_itable_init = true\n\n[fs_types]\n";

/// Makes the filesystem on `image` (a sparse file of the virtual size). `uuid` is the
/// filesystem UUID and directory hash seed; `now` stamps every time mke2fs writes.
pub fn mkfs(image: &Path, uuid: &str, now: i64, work: &Path) -> Result<()> {
    let conf = work.join("mke2fs.conf");
    std::fs::write(&conf, CONFIG).map_err(|e| Error::io("write", &conf, e))?;
    let out = Command::new("mke2fs")
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", now.to_string())
        .env_remove("MKE2FS_DEVICE_SECTSIZE")
        .env_remove("MKE2FS_DEVICE_PHYS_SECTSIZE")
        .args([
            "-q", "-F", "-b", "4096", "-I", "256", "-i", "16384", "-m", "5", "-G", "1",
        ])
        .args(["-O", FEATURES])
        .args(["-U", uuid])
        .args(["-E", &format!("hash_seed={uuid},root_owner=0:0,discard")])
        .args(["-L", ""])
        .arg(image)
        .output()
        .map_err(|e| Error::Tool(format!("run mke2fs (install e2fsprogs): {e}")))?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "mke2fs failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}
