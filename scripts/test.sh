#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs the format check,
# clippy with warnings denied, and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_rust
# lz4-sys and zstd-sys build their C sources with cc; the LSMT tests check an ext4 image
# with e2fsck and read it with debugfs (no root needed); the registry tests start Debian's
# distribution registry on 127.0.0.1 and make its htpasswd file with apache2-utils; the token
# server signs JWTs and the TLS tests make a CA and certificates with openssl. The daemon's
# API is gRPC (protoc builds it); its exports are tested with real clients: the FUSE file
# through a loop device (losetup, mount), NBD with nbdinfo/nbdcopy (libnbd-bin) and
# qemu-img/qemu-io (qemu-utils). The convertor writes ext4 with e2fsprogs' libext2fs
# (libext2fs-dev) and makes layer 0's filesystem with mke2fs; its tests build images from
# busybox-static and check conversions against skopeo + umoci unpack. The end-to-end tests
# (tests/) run containerd and runc with the daemon and the snapshotter; containerd's API
# protos import protobuf's well-known types (libprotobuf-dev). TurboOCI's gzip index uses the
# system zlib (zlib1g-dev, found with pkg-config): its deflate makes overlaybd's exact bytes.
# A TurboOCI test runs a real Debian image, built with mmdebstrap once into /var/tmp.
need_pkgs gcc:gcc e2fsck:e2fsprogs debugfs:e2fsprogs mke2fs:e2fsprogs \
  /usr/include/ext2fs/ext2fs.h:libext2fs-dev /usr/include/zlib.h:zlib1g-dev pkg-config:pkg-config /bin/busybox:busybox-static skopeo:skopeo \
  umoci:umoci tar:tar docker-registry:docker-registry mmdebstrap:mmdebstrap \
  htpasswd:apache2-utils openssl:openssl protoc:protobuf-compiler fusermount3:fuse3 \
  nbdinfo:libnbd-bin nbdcopy:libnbd-bin qemu-img:qemu-utils qemu-io:qemu-utils \
  losetup:mount diff:diffutils /usr/include/google/protobuf/empty.proto:libprotobuf-dev \
  containerd:containerd runc:runc fio:fio nbdkit:nbdkit
# The end-to-end tests run on containerd 1.6 (Debian 12's) and on containerd 2.x, which Debian
# 12 does not package: its .deb from Debian unstable, unpacked into a private prefix.
need_unstable_deb containerd "${OBD_CONTAINERD2:-$OBD_CONTAINERD2_DEFAULT}"
# Docker Engine 28 with its containerd image store (tests/tests/docker.rs), the same way.
need_unstable_deb docker.io "${OBD_DOCKER:-/opt/overlaybd-test/docker}"
need_unstable_deb docker-cli "${OBD_DOCKER_CLI:-/opt/overlaybd-test/docker-cli}"
# The convertor's EROFS layers need erofs-utils 1.9+ (Debian 12 has 1.5): built from Debian
# unstable's source into a private prefix (about 30 s, once).
erofs_prefix="${OBD_EROFS_UTILS:-/opt/overlaybd-test/erofs-utils}"
need_erofs_utils "$erofs_prefix"
export OBD_MKFS_EROFS="$erofs_prefix/bin/mkfs.erofs"

# A one-shot build gains nothing from incremental state (2.6 GB of it on a clean build).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
