#!/usr/bin/env bash
# Seeds every fuzz target's corpus (corpus/<target>/, which git ignores) from the test vectors
# and fuzz/seeds/, the same way each time: run from anywhere, as often as you like (each seed
# has a fixed name, `seed-…`, so a second run rewrites the same files). Needs python3 and gzip.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vec="$here/../tests/support/vectors"
cd "$here"

put() { # put TARGET FILE...: copies the files into corpus/TARGET
    local t=$1
    shift
    mkdir -p "corpus/$t"
    for f in "$@"; do
        cp "$f" "corpus/$t/seed-$(basename "$f")"
    done
}

put zfile_open_read "$vec"/*.zfile
put tar_envelope seeds/tar_envelope/*
put tar_apply seeds/tar_envelope/* "$vec/g.layer.tar"
put lsmt_layer "$vec/d.lsmt" "$vec/f.upper.lsmt" "$vec/e.lz4.bs4.zfile" "$vec/g.ext4.lz4.bs4.zfile"
put registry_config seeds/registry_config/*

# erofs_tree: the test vectors' layer tar as an EROFS image, when erofs-utils 1.9+ is there
# ($OBD_MKFS_EROFS, else where scripts/lib.sh's need_erofs_utils puts it).
mkfs_erofs=${OBD_MKFS_EROFS:-/opt/overlaybd-test/erofs-utils/bin/mkfs.erofs}
if [ -x "$mkfs_erofs" ]; then
  mkdir -p corpus/erofs_tree
  rm -f corpus/erofs_tree/seed-g.erofs
  "$mkfs_erofs" -b4096 --tar=f --quiet -T0 corpus/erofs_tree/seed-g.erofs "$vec/g.layer.tar"
else
  echo "no $mkfs_erofs: erofs_tree not seeded" >&2
fi

# The rest are made: byte layouts the targets' README lines describe.
gzip -n -9 -c "$vec/g.layer.tar" >"$here/.layer.tar.gz"
trap 'rm -f "$here/.layer.tar.gz"' EXIT
python3 - "$vec" "$here/.layer.tar.gz" <<'EOF'
import os, struct, sys
vec, gz = sys.argv[1], sys.argv[2]

def put(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/seed-{name}", "wb") as f:
        f.write(data)

def read(p):
    with open(p, "rb") as f:
        return f.read()

# lsmt_log: the data file's size (u64 LE), then the index log.
for name in ["d", "f.upper"]:
    size = os.path.getsize(f"{vec}/{name}.rw.data")
    put("lsmt_log", name, struct.pack("<Q", size) + read(f"{vec}/{name}.rw.index"))

# nbd_frames: a client's negotiation (flags, OPT_GO for export "d") then one request of each
# command (READ, WRITE with its payload, FLUSH, TRIM, WRITE_ZEROES, DISC), big-endian.
s = struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 7, 7) + bytes([0, 0, 0, 1]) + b"d" + bytes(2)
for cmd in [0, 1, 3, 4, 6, 2]:
    s += struct.pack(">IHHQQI", 0x25609513, 0, cmd, 1, 4096, 512)
    if cmd == 1:
        s += bytes(512)
put("nbd_frames", "session", s)

# trace_file: overlaybd's trace (magic, data size, CRC-32C chained raw over the records).
def crc32c_raw(crc, data):
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc
recs = [(0, 4096, 8192), (1, 65536, 1 << 20), (2, 4096, 0), (0, 1 << 20, 3 << 20)]
body, crc = b"", 0
for layer, count, offset in recs:
    r = struct.pack("<B3xIQq", ord("R"), layer, count, offset)
    crc = crc32c_raw(crc, r)
    body += r
put("trace_file", "four", struct.pack("<I4xQI4x", 0xC2EF1820, len(body), crc) + body)

# p2p_requests: what a node parses from peers and readers.
d = "sha256:" + "0f" * 32
for i, text in enumerate([
    f"http://127.0.0.1:5000/v2/library/app/blobs/{d}",
    "bytes=0-1023",
    f'{{"url":"http://h/v2/r/blobs/{d}","node":"http://n:1","failed":null}}',
    '{"size":1,"parent":null,"depth":1}',
    'role = "agent"\nroots = ["http://r:1"]\n[cache]\nmax_bytes = 4194304\n',
]):
    put("p2p_requests", str(i), text.encode())

# turbooci: first byte 0 = a gzip index (u32 LE length) and its blob; 1 = a gzip blob to index;
# 2 = a TurboOCI meta layer.
blob = read(gz)
for name in ["gz.span64k.meta", "gz.span256k.raw.meta"]:
    ix = read(f"{vec}/turbooci/{name}")
    put("turbooci", name, b"\0" + struct.pack("<I", len(ix)) + ix + blob)
put("turbooci", "layer.tar.gz", b"\1" + blob)
for name in ["ext4.fs.meta", "erofs.meta.lsmt", "erofs.fs.meta"]:
    put("turbooci", name, b"\2" + read(f"{vec}/turbooci/{name}"))

# snapshotter_input: the first byte picks the parser (see the target): 0 our config, 1
# overlaybd's JSON config, 2 filters NUL labels, 3 a reference and labels, 4 `containerd
# --version`, 5 a store record.
conf = read(os.path.join(vec, "..", "..", "..", "deploy", "config", "overlaybd-snapshotter.toml"))
for i, data in enumerate([
    b"\0" + conf,
    b'\1{"root":"/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd","address":"/run/overlaybd-snapshotter/overlaybd.sock","rwMode":"overlayfs","logLevel":"info","autoRemoveDev":false,"exporterConfig":{"enable":false}}',
    b'\2labels."containerd.io/snapshot.ref",kind==committed\nname~=^sha256:[0-9a-f]+$\nparent!=""\0containerd.io/snapshot.ref=sha256:ab\nx=y',
    b"\3127.0.0.1:5000/library/app@sha256:" + b"0f" * 32 + b"\ncontainerd.io/snapshot/overlaybd/fastoci/target-digest=sha256:" + b"1e" * 32,
    b"\4containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7",
    b'\5{"id":3,"kind":"committed","parent":"p","labels":{"a":"b"},"created":1,"updated":2,"storage":"remote","size":4096,"inodes":1}',
]):
    put("snapshotter_input", str(i), data)
EOF
for t in corpus/*/; do
    printf '%-18s %3d files, largest %d bytes\n' "$(basename "$t")" "$(ls "$t" | wc -l)" \
        "$(find "$t" -type f -printf '%s\n' | sort -n | tail -1)"
done
