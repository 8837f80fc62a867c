#!/usr/bin/env bash
# Builds overlaybd-rs and installs it on this machine (as root):
#   - the binaries into $PREFIX/bin (overlaybd-daemon, overlaybd-snapshotter, overlaybd-convertor,
#     obdctl, overlaybd-p2p);
#   - example configs into /etc/overlaybd-daemon/config.toml and
#     /etc/overlaybd-snapshotter/config.toml (kept if they exist);
#   - systemd units into /etc/systemd/system (not enabled: docs/getting-started.md says when);
#   - the docs into $PREFIX/share/doc/overlaybd-rs.
#
#   scripts/install.sh [--prefix DIR] [--profile release|dev] [--no-build]
#   (the profile may also come from OBD_INSTALL_PROFILE)
#
# It installs the build's prerequisites with apt-get. The first release build takes about 4
# minutes on a quiet 2-core machine (measured: 203 s); `--profile dev` reuses what
# scripts/test.sh built (optimised dependencies, unoptimised project code).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

prefix=/usr/local
profile=${OBD_INSTALL_PROFILE:-release}
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "install.sh: --profile is release or dev, not $profile" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run it as root (it writes $prefix/bin, /etc and /etc/systemd)" >&2
  exit 1
fi

need_rust
need_pkgs gcc:gcc /usr/include/ext2fs/ext2fs.h:libext2fs-dev /usr/include/zlib.h:zlib1g-dev pkg-config:pkg-config mke2fs:e2fsprogs \
  protoc:protobuf-compiler /usr/include/google/protobuf/empty.proto:libprotobuf-dev \
  fusermount3:fuse3 losetup:mount

bins="overlaybd-daemon overlaybd-snapshotter overlaybd-convertor obdctl overlaybd-p2p"
target=${CARGO_TARGET_DIR:-target}
if [ "$build" = 1 ]; then
  echo "== building ($profile profile; the first release build takes about 4 minutes on 2 cores)"
  args=()
  for b in $bins; do args+=(--bin "$b"); done
  cargo build --profile "$profile" --locked "${args[@]}"
fi

echo "== installing into $prefix/bin"
install -d "$prefix/bin"
for b in $bins; do
  install -m 0755 "$target/$dir/$b" "$prefix/bin/$b"
done

for c in overlaybd-daemon overlaybd-snapshotter; do
  if [ -e "/etc/$c/config.toml" ]; then
    echo "== /etc/$c/config.toml exists: kept (the example is deploy/config/$c.toml)"
  else
    install -D -m 0644 "deploy/config/$c.toml" "/etc/$c/config.toml"
    echo "== /etc/$c/config.toml installed"
  fi
done

install -d /etc/systemd/system
for u in deploy/systemd/*.service deploy/systemd/*.socket; do
  sed "s|/usr/local/bin/|$prefix/bin/|" "$u" > "/etc/systemd/system/$(basename "$u")"
done
echo "== systemd units installed (not enabled): overlaybd-daemon.service overlaybd-snapshotter.service (with its .socket)"
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi

install -d "$prefix/share/doc/overlaybd-rs"
install -m 0644 README.md ARCHITECTURE.md docs/*.md "$prefix/share/doc/overlaybd-rs/"
install -m 0644 deploy/config/containerd-1.x.toml deploy/config/containerd-2.x.toml "$prefix/share/doc/overlaybd-rs/"

echo "== done: $(for b in $bins; do printf '%s ' "$prefix/bin/$b"; done)"
echo "   next: the containerd config and the first lazy pull, docs/getting-started.md"
