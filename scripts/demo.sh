#!/usr/bin/env bash
# The product end to end on one machine: builds the binaries, starts a registry (127.0.0.1),
# containerd (its own root, state and socket), the overlaybd-daemon and the
# overlaybd-snapshotter in a temporary directory; builds a sample image (busybox + 256 MiB of
# data), converts it with overlaybd-convertor, pulls it with `obdctl rpull` and runs it with
# `ctr run`, then prints how many bytes the registry served against the image's size, and
# cleans up. Needs root (mounts, loop devices); installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust
need_pkgs gcc:gcc /usr/include/ext2fs/ext2fs.h:libext2fs-dev /usr/include/zlib.h:zlib1g-dev pkg-config:pkg-config mke2fs:e2fsprogs \
  protoc:protobuf-compiler /usr/include/google/protobuf/empty.proto:libprotobuf-dev \
  containerd:containerd runc:runc docker-registry:docker-registry /bin/busybox:busybox-static \
  fusermount3:fuse3 losetup:mount
modprobe loop 2>/dev/null || true
modprobe fuse 2>/dev/null || true
# Every binary the demo runs, with cargo's progress: about 3.5 minutes from scratch on a quiet
# 2-core machine (measured: 203 s), seconds after that.
echo "== building the demo and the binaries (release; about 4 minutes the first time on 2 cores)"
cargo build --release --locked --bin lazy-pull-demo --bin overlaybd-daemon \
  --bin overlaybd-snapshotter --bin overlaybd-convertor --bin obdctl --bin overlaybd-p2p
exec "${CARGO_TARGET_DIR:-target}/release/lazy-pull-demo" "$@"
