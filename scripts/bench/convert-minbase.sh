#!/usr/bin/env bash
# The convertor side by side with itself on a real rootfs (docs/benchmarks.md, "The convertor
# at scale"): Debian bookworm minbase (mmdebstrap, built once into /var/tmp/overlaybd-test) as a
# one-layer layout (uncompressed tar) and a three-layer gzip layout, each converted into a
# layout with each setting of SETTINGS (default: ext4 with overlaybd's lz4 / 4 KiB, ext4 and
# EROFS with the default zstd / 16 KiB), ROUNDS rounds of the given binaries in turn; prints
# each one's median wall time, its runs, peak RSS and the converted size.
#
#   scripts/bench/convert-minbase.sh [ROUNDS] [BINARY ...]
#
# Default binary: target/release/overlaybd-convertor (build it first). Compare two builds by
# copying each binary aside and naming both.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
need_pkgs mmdebstrap:mmdebstrap python3:python3 /usr/bin/time:time
rounds=${1:-5}
shift || true
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/overlaybd-convertor)
cache=/var/tmp/overlaybd-test
tar=$cache/bookworm-minbase.tar
if [ ! -e "$tar" ]; then
  mkdir -p "$cache"
  mmdebstrap --quiet --variant=minbase --mode=root --format=tar bookworm "$cache/minbase.$$.tar"
  mv "$cache/minbase.$$.tar" "$tar"
fi
work=$(mktemp -d /var/tmp/obd-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 scripts/bench/minbase-layouts.py "$tar" "$work"
settings=${SETTINGS:-ext4:lz4:4096 ext4:zstd:16384 erofs:zstd:16384}
for image in one three; do
  for setting in $settings; do
    IFS=: read -r fs alg bs <<<"$setting"
    for _ in $(seq "$rounds"); do
      for b in "${bins[@]}"; do
        rm -rf "$work/out"
        /usr/bin/time -f "$image $fs/$alg/$bs $b %e %M" "$b" convert -q --fs "$fs" \
          --algorithm "$alg" --block-size "$bs" "oci:$work/$image" "oci:$work/out" \
          2>&1 >/dev/null | tail -1 | tr '\n' ' '
        # The converted layers' size: every blob but the config and manifest (under 64 KiB).
        find "$work/out/blobs" -type f -size +64k -printf '%s\n' | awk '{s += $1} END {print s}'
      done
    done
  done
done | python3 -c '
import sys, statistics
runs, rss, size = {}, {}, {}
for line in sys.stdin:
    image, setting, b, secs, kib, out = line.split()
    k = (image, setting, b)
    runs.setdefault(k, []).append(float(secs))
    rss[k] = max(rss.get(k, 0), int(kib))
    size[k] = int(out)
for k in runs:
    t = runs[k]
    print("%-5s %-16s %-36s median %.2f s (%s) peak RSS %d MiB, %.1f MB" % (*k,
          statistics.median(t), " ".join("%.2f" % x for x in t), rss[k] // 1024, size[k] / 1e6))
'
