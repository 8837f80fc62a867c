#!/usr/bin/env bash
# Follows docs/getting-started.md from a clean state: runs every ```sh block of it, in order, in
# one shell, inside private mount and PID namespaces in which the paths the guide writes are
# empty directories of their own (the machine's state is not touched; every process the guide
# starts ends with the namespace). The guide's source image is a real one built here: Debian
# bookworm minbase (mmdebstrap) as an OCI layout, since the CI machine cannot reach Docker Hub.
# Root; installs what it needs. Prints the guide's output, and fails on the first failing
# command or check.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
guide=docs/getting-started.md

if [ -z "${OBD_GUIDE_SANDBOX:-}" ]; then
  . scripts/lib.sh
  need_pkgs mmdebstrap:mmdebstrap umoci:umoci unshare:util-linux curl:curl
  work=${OBD_GUIDE_WORK:-$(mktemp -d /tmp/obd-guide-XXXXXX)}
  layout=$work/layout
  if [ ! -e "$layout/index.json" ]; then
    echo "== building the source image: Debian bookworm minbase (mmdebstrap) as an OCI layout"
    mmdebstrap --quiet --variant=minbase --mode=root bookworm "$work/rootfs.tar"
    umoci init --layout "$layout"
    umoci new --image "$layout:bookworm"
    umoci unpack --image "$layout:bookworm" "$work/bundle" >/dev/null
    tar -C "$work/bundle/rootfs" -xf "$work/rootfs.tar"
    umoci repack --image "$layout:bookworm" "$work/bundle"
    umoci config --image "$layout:bookworm" --config.cmd /bin/bash \
      --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    rm -rf "$work/bundle" "$work/rootfs.tar"
  fi
  echo "== following $guide in private mount and PID namespaces"
  exec unshare --mount --propagation private --pid --fork --mount-proc \
    env OBD_GUIDE_SANDBOX=1 OBD_GUIDE_WORK="$work" SRC="oci:$layout:bookworm" "$0" "$@"
fi

# In the sandbox: the paths the guide writes start empty.
sandbox=$OBD_GUIDE_WORK/sandbox
for d in /etc/containerd /etc/overlaybd-daemon /etc/overlaybd-snapshotter /etc/systemd/system \
         /usr/local /var/lib/containerd /var/lib/overlaybd-daemon /var/lib/overlaybd-snapshotter \
         /var/lib/walkthrough-registry /var/cache/overlaybd-daemon /var/log/overlaybd \
         /run/containerd /run/overlaybd-daemon /run/overlaybd-snapshotter /opt/containerd; do
  mkdir -p "$d" "$sandbox$d"
  mount --bind "$sandbox$d" "$d"
done
# The guide's build reuses this checkout's (dev) build; see "How this guide is tested".
export OBD_INSTALL_PROFILE=dev

script=$OBD_GUIDE_WORK/guide.sh
awk '/^```sh$/ { on = 1; n++; print "echo \"== guide block " n "\""; next }
     /^```/ { on = 0; next }
     on { print }' "$guide" > "$script"
out=$OBD_GUIDE_WORK/guide.out

cleanup() {
  # What the guide leaves running: devices first (they hold loop devices outside the
  # namespace), then everything else goes with the namespace.
  ctr --timeout 10s tasks ls -q 2>/dev/null | xargs -r -n1 ctr tasks kill -s KILL 2>/dev/null || true
  for m in $(awk '$2 ~ "^/var/lib/(overlaybd-snapshotter|containerd)" { print $2 }' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  for id in $(overlaybd-daemon ctl list 2>/dev/null | cut -f1); do
    overlaybd-daemon ctl detach "$id" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

cd "$repo"
set +e
bash -euo pipefail "$script" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  echo "== the guide failed (exit $rc); logs:"
  tail -n 30 /var/log/overlaybd/*.log || true
  exit "$rc"
fi

check() {
  if ! grep -qE "$1" "$out"; then
    echo "== check failed: the guide's output has no line matching /$1/ ($2)"
    exit 1
  fi
}
check '1 layers, 1 remote, 0 unpacked' "the pull was lazy"
check '^PRETTY_NAME="Debian GNU/Linux 12 \(bookworm\)"' "the container ran Debian"
check '^overlaybd_fetch_bytes_total\{.*source="registry"\} [1-9]' "the device read from the registry"
check '^1$' "the layer's snapshot is a remote snapshot"
if grep -q "^warning:" "$out"; then
  echo "== check failed: the pull warned"
  exit 1
fi
echo "== the guide ran from a clean state: lazy pull, container output and metrics checked"
