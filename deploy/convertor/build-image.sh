#!/usr/bin/env bash
# Builds the overlaybd-convertor image as an OCI layout, from the workspace, without Docker and
# without privileges:
#
#   deploy/convertor/build-image.sh OUT_DIR [TAG]     (TAG: latest)
#   skopeo copy oci:OUT_DIR:TAG docker://registry.example.com/tools/overlaybd-convertor:TAG
#
# One layer: the release `overlaybd-convertor`, e2fsprogs' `mke2fs` (layer 0's filesystem),
# erofs-utils' `mkfs.erofs` (`--fs erofs`) when OBD_MKFS_EROFS names one (1.9+, e.g. what
# scripts/lib.sh's need_erofs_utils builds), the shared libraries they link (as `ldd` lists them on the build machine: build on the
# distribution you want, Debian 12 here), the CA certificates, and a passwd entry for nobody.
# The image runs as 65534:65534 in /work with TMPDIR=/work (mount a volume there for large
# images: the work disk is sparse, about the size of the image). The same workspace build
# gives the same image digest (file times, owners and order are pinned).
# CONVERTOR_BIN names a binary to use (default: `cargo build --release` of the workspace's);
# SOURCE_DATE_EPOCH the time stamped in the image (default 2020-01-01). OUT_DIR's index.json
# is rewritten: it names this one image. Needs strip (binutils), gzip, tar, sha256sum.
set -euo pipefail
umask 022
out=${1:?usage: build-image.sh OUT_DIR [TAG]}
tag=${2:-latest}
case $tag in
    *[!A-Za-z0-9_.-]* | "" | [.-]*) echo "build-image.sh: bad tag $tag" >&2; exit 2 ;;
esac
case $(uname -m) in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
esac
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -n "${CONVERTOR_BIN:-}" ]; then
    bin=$CONVERTOR_BIN
else
    cargo build --release --manifest-path "$root/Cargo.toml" -p convertor --bin overlaybd-convertor
    bin=$root/target/release/overlaybd-convertor
fi
command -v strip >/dev/null || { echo "build-image.sh: needs strip (binutils)" >&2; exit 2; }
mke2fs=$(command -v mke2fs || echo /usr/sbin/mke2fs)
epoch=${SOURCE_DATE_EPOCH:-1577836800}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fs=$work/rootfs
mkdir -p "$fs/usr/local/bin" "$fs/usr/sbin" "$fs/etc/ssl/certs" "$fs/tmp" "$fs/work"
chmod 1777 "$fs/tmp" "$fs/work"
cp "$bin" "$fs/usr/local/bin/overlaybd-convertor"
# The release profile keeps debug info (for profiles); the image does not need it.
strip --strip-debug "$fs/usr/local/bin/overlaybd-convertor"
cp "$mke2fs" "$fs/usr/sbin/mke2fs"
tools=("$bin" "$mke2fs")
if [ -n "${OBD_MKFS_EROFS:-}" ]; then
    cp "$OBD_MKFS_EROFS" "$fs/usr/sbin/mkfs.erofs"
    strip --strip-debug "$fs/usr/sbin/mkfs.erofs"
    tools+=("$OBD_MKFS_EROFS")
fi
# The libraries and the dynamic loader, at the paths the binaries ask for.
for lib in $(for t in "${tools[@]}"; do ldd "$t"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
    mkdir -p "$fs$(dirname "$lib")"
    cp -L "$lib" "$fs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$fs/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/work:/usr/sbin/nologin\n' >"$fs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$fs/etc/group"
# Debian 12 merged /usr: /lib64 and /lib are links into /usr in the host, not in the image.
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$fs" -cf "$work/layer.tar" .
gzip -n -9 <"$work/layer.tar" >"$work/layer.tar.gz"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
diff_id=$(sha "$work/layer.tar")
mkdir -p "$out/blobs/sha256"
layer=$(sha "$work/layer.tar.gz")
cp "$work/layer.tar.gz" "$out/blobs/sha256/$layer"
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
printf '{"architecture":"%s","os":"linux","created":"%s","config":{"User":"65534:65534","WorkingDir":"/work","Env":["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/bin","TMPDIR=/work"],"Entrypoint":["/usr/local/bin/overlaybd-convertor"],"Cmd":["--help"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"deploy/convertor/build-image.sh"}]}' \
    "$arch" "$created" "$diff_id" "$created" >"$work/config.json"
config=$(sha "$work/config.json")
cp "$work/config.json" "$out/blobs/sha256/$config"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config" "$(size "$work/config.json")" "$layer" "$(size "$work/layer.tar.gz")" >"$work/manifest.json"
manifest=$(sha "$work/manifest.json")
cp "$work/manifest.json" "$out/blobs/sha256/$manifest"
printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$(size "$work/manifest.json")" "$tag" >"$out/index.json"
echo "oci:$out:$tag sha256:$manifest ($(size "$work/layer.tar.gz") bytes of layer)"
