#!/usr/bin/env bash
# The layer formats on their own: overlaybd's ZFile layer format, written byte-compatible
# with overlaybd, wrapped as a tar layer, verified block by block against a BLAKE3 root, and
# read back; LSMT layers on overlaybd's own files. (`scripts/demo.sh` is the product's demo.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust
need_pkgs gcc:gcc python3:python3 e2fsck:e2fsprogs debugfs:e2fsprogs

echo "== building obdctl (release)"
cargo build --release --locked -q -p obdctl
OBD=$(realpath "${CARGO_TARGET_DIR:-target}")/release/obdctl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "== 64 MiB of mixed content (overlaybd's vector generator)"
python3 "$OLDPWD/tests/support/vectors/gen_input.py" 67108864 3 input.bin

echo "== compress as overlaybd's convertor would (lz4, 4 KiB blocks, tar envelope) + integrity table"
$OBD zfile compress --tar --integrity --threads 2 input.bin layer.tar | tee compress.log
root=$(awk '/^integrity root:/{print $3}' compress.log)
echo
$OBD zfile info layer.tar
echo
echo "== the blob is an ordinary one-member tar layer"
tar tvf layer.tar
echo
echo "== verify every block against the trusted root"
$OBD zfile verify layer.tar --root "$root"
echo
echo "== decompress and compare"
$OBD zfile decompress layer.tar output.bin
cmp input.bin output.bin && echo "identical: $(stat -c %s output.bin) bytes"
echo
echo "== flip one byte in the middle of the blob: the damaged block is named, the read refused"
python3 - <<'PY'
d = bytearray(open("layer.tar", "rb").read())
d[len(d) // 2] ^= 0x01
open("tampered.tar", "wb").write(d)
PY
if $OBD zfile verify tampered.tar --root "$root"; then
  echo "tampering went unnoticed" >&2
  exit 1
fi
echo
echo "== overlaybd's own test vector reads here (written by overlaybd-zfile)"
$OBD zfile verify "$OLDPWD/tests/support/vectors/a.lz4.bs4.zfile"
echo
echo "== LSMT: overlaybd's writable layer d.rw.*, committed by us, is byte-identical to overlaybd-commit's output"
V="$OLDPWD/tests/support/vectors"
cp "$V/d.rw.data" "$V/d.rw.index" . && chmod u+w d.rw.*
$OBD layer commit -z --uuid 11111111-2222-3333-4444-555555555555 d.rw.data d.rw.index ours.zfile
cmp ours.zfile "$V/e.lz4.bs4.zfile" && echo "identical to e.lz4.bs4.zfile (overlaybd-commit -z)"
echo
echo "== a two-layer stack (lower + upper, both ZFile-compressed) flattened to a 1 GiB sparse disk image"
$OBD layer cat --check-chain "$V/e.lz4.bs4.zfile" "$V/f.upper.lz4.bs4.zfile" -o stack.img
echo "sha256 $(sha256sum stack.img | cut -c1-16)…, expected 3efabb3cc212a818… (vectors README)"
echo
echo "== an ext4 layer made by overlaybd's convertor: flattened, checked by e2fsck, listed by debugfs"
$OBD layer info "$V/g.ext4.lz4.bs4.zfile"
$OBD layer cat "$V/g.ext4.lz4.bs4.zfile" -o ext4.img
echo "(overlaybd's tool leaves free counts unrefreshed and an HTREE note on lost+found; e2fsck reports"
echo " exactly those and nothing else: the image is the one overlaybd built, byte for byte)"
e2fsck -fn ext4.img || true
debugfs -R 'ls -l /' ext4.img 2>/dev/null
echo
echo "demo done"
