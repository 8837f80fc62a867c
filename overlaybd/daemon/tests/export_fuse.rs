//! The FUSE single-file export and the loop device over it: the raw device equals the image,
//! the ext4 of vector g mounts and holds the tar's files, read-only devices refuse writes, and
//! a writable upper keeps what ext4 wrote across a remount.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use common::{can_mount, run, vector, G_DISK};
use overlaybd_api::ImageConfig;
use overlaybd_daemon::device::{Device, DeviceOptions};
use overlaybd_export::fuse::FuseExport;
use overlaybd_export::loopdev::LoopDevice;
use overlaybd_lsmt::{RwLayer, Uuid};
use sha2::{Digest, Sha256};

fn sha256_of(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

fn g_device(upper: Option<(&Path, &Path)>) -> Arc<Device> {
    let mut cfg = ImageConfig::default();
    cfg.lowers.push(overlaybd_api::LayerConfig {
        file: vector("g.ext4.lz4.bs4.zfile").display().to_string(),
        ..Default::default()
    });
    if let Some((data, index)) = upper {
        cfg.upper.data = data.display().to_string();
        cfg.upper.index = index.display().to_string();
    }
    Arc::new(Device::open("g", &cfg, None, &DeviceOptions::default()).unwrap())
}

/// A new writable upper layer (data, index) in `dir` over vector g.
fn new_upper(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (data, index) = (dir.join("upper.data"), dir.join("upper.index"));
    let lower_uuid: Uuid = "33333333-4444-5555-6666-777777777777".parse().unwrap();
    drop(RwLayer::create(&data, &index, 1 << 30, None, lower_uuid).unwrap());
    (data, index)
}

fn mount(dev: &Path, at: &Path, ro: bool) {
    std::fs::create_dir_all(at).unwrap();
    let opts = if ro { "ro" } else { "rw" };
    run(
        "mount",
        &[
            "-t",
            "ext4",
            "-o",
            opts,
            dev.to_str().unwrap(),
            at.to_str().unwrap(),
        ],
    );
}

fn umount(at: &Path) {
    run("umount", &[at.to_str().unwrap()]);
}

#[test]
fn a_read_only_image_mounts_through_fuse_and_loop() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dev = g_device(None);
    let file = tmp.path().join("g.img");
    let fuse = FuseExport::mount(dev.clone(), &file, 4, false).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 30);
    // Writes to the file of a read-only device are refused by the kernel or by us.
    let w = std::fs::OpenOptions::new().write(true).open(&file);
    assert!(w.is_err(), "opened a read-only device's file for writing");

    let lo = LoopDevice::attach(&file, true, true).unwrap();
    assert!(lo.read_only());
    assert!(lo.direct_io(), "loop device without direct I/O");
    assert_eq!(lo.backing_file().unwrap(), file);
    // The raw block device equals the image.
    assert_eq!(sha256_of(lo.path()), G_DISK);
    // A read-only loop device refuses writes (EPERM), at open or at write.
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(lo.path()) {
        let w = f.write_all(&[1u8; 4096]).and_then(|_| f.sync_all());
        assert!(w.is_err(), "wrote to a read-only loop device");
    }
    assert_eq!(
        sha256_of(lo.path()),
        G_DISK,
        "a write reached a read-only device"
    );

    let mnt = tmp.path().join("mnt");
    mount(lo.path(), &mnt, true);
    let expected = common::g_tree(tmp.path());
    let r = std::panic::catch_unwind(|| common::assert_same_tree(&expected, &mnt));
    umount(&mnt);
    lo.detach().unwrap();
    fuse.unmount().unwrap();
    r.unwrap();
    assert!(dev.stats().reads.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(
        dev.stats()
            .read_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_writable_upper_keeps_what_ext4_wrote() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, index) = new_upper(tmp.path());
    let file = tmp.path().join("g.img");
    let mnt = tmp.path().join("mnt");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for round in 0..2 {
        let dev = g_device(Some((&data, &index)));
        assert!(!dev.read_only());
        let fuse = FuseExport::mount(dev.clone(), &file, 4, false).unwrap();
        let lo = LoopDevice::attach(&file, false, true).unwrap();
        assert!(!lo.read_only());
        mount(lo.path(), &mnt, false);
        let r = std::panic::catch_unwind(|| {
            if round == 0 {
                std::fs::write(mnt.join("etc/new-file"), &payload).unwrap();
                std::fs::remove_file(mnt.join("etc/motd")).unwrap();
            } else {
                assert_eq!(std::fs::read(mnt.join("etc/new-file")).unwrap(), payload);
                assert!(!mnt.join("etc/motd").exists());
                assert_eq!(std::fs::read(mnt.join("etc/hostname")).unwrap().len(), 17);
            }
        });
        umount(&mnt);
        lo.detach().unwrap();
        fuse.unmount().unwrap();
        r.unwrap();
        assert!(
            dev.stats()
                .writes
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
                || round == 1
        );
        drop(dev);
    }
    // The lower layer is untouched: a device without the upper is still vector g.
    let dev = g_device(None);
    let mut buf = vec![0u8; 1 << 20];
    let mut h = Sha256::new();
    let mut off = 0;
    while off < dev.size() {
        dev.read(off, &mut buf).unwrap();
        h.update(&buf);
        off += buf.len() as u64;
    }
    assert_eq!(hex::encode(h.finalize()), G_DISK);
}

#[test]
fn fuse_over_io_uring_serves_reads_and_writes_where_the_kernel_offers_it() {
    if !can_mount() {
        return;
    }
    let Some(param) = common::UringParam::required() else {
        return;
    };
    assert!(overlaybd_export::fuse::io_uring_enabled());
    let tmp = tempfile::tempdir().unwrap();
    let (data, index) = new_upper(tmp.path());
    let dev = g_device(Some((&data, &index)));
    let file = tmp.path().join("g.img");
    let fuse = FuseExport::mount(dev.clone(), &file, 4, true).unwrap();
    let r = std::panic::catch_unwind(|| {
        // The whole device through the loop device (its reads come in parallel).
        let lo = LoopDevice::attach(&file, true, true).unwrap();
        let sum = sha256_of(lo.path());
        lo.detach().unwrap();
        assert_eq!(sum, G_DISK);
        // A write through the ring (its data arrives in the payload buffer), read back.
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        // Page-aligned buffers: the kernel then splits a direct write at 1 MiB, in whole
        // blocks (the device takes whole 512-byte sectors).
        let len = 300 * 4096;
        let (mut wbuf, mut rbuf) = (vec![0u8; len + 4096], vec![0u8; len + 4096]);
        let w = wbuf.as_ptr().align_offset(4096);
        let r = rbuf.as_ptr().align_offset(4096);
        let (payload, back) = (&mut wbuf[w..w + len], &mut rbuf[r..r + len]);
        for (i, b) in payload.iter_mut().enumerate() {
            *b = (i * 13 % 251) as u8;
        }
        f.write_all_at(payload, 700 << 20).unwrap();
        f.read_exact_at(back, 700 << 20).unwrap();
        assert!(back == payload, "read back other bytes than written");
        // A read past the end is short, as for a file.
        let mut tail = [0u8; 8192];
        assert_eq!(f.read_at(&mut tail, (1 << 30) - 100).unwrap(), 100);
    });
    let through_ring = fuse.ring_requests();
    fuse.unmount().unwrap();
    drop(param);
    r.unwrap();
    assert!(
        through_ring > 100,
        "only {through_ring} requests went through io_uring"
    );
}
