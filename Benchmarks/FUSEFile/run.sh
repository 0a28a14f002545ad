#!/bin/sh
# fio on a guest's disk shown as a FUSE file (xenpv hypervisor, xenpv backend --disk IMAGE,
# xenpv guest disk mount DIR) against fio on the image itself: the same client, requests and
# O_DIRECT, without FUSE and the PV path. One run, the two alternating per round.
# Usage (from the package root, after `swift build -c release`; root, /dev/fuse):
#   Benchmarks/FUSEFile/run.sh IMAGE [SECONDS] [ROUNDS]
# IMAGE: a fully written file (dd if=/dev/urandom) on a file system that takes O_DIRECT.
# SPECS="rw:bs:qd ..." picks settings (default: 4 KiB randread at QD 1 and 32).
set -e
IMG=$1; S=${2:-5}; ROUNDS=${3:-3}; X=${XENPV:-.build/release/xenpv}
[ -f "$IMG" ] || { echo "usage: $0 IMAGE [SECONDS] [ROUNDS]" >&2; exit 2; }
OUT=$(mktemp -d)
MNT="$OUT/mnt"; mkdir "$MNT"
PIDS=""
cleanup() {
  mountpoint -q "$MNT" && umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$OUT"
}
trap cleanup EXIT INT TERM
SPECS=${SPECS:-"randread:4096:1 randread:4096:32"}

wait_for() {  # FILE TEXT: up to 60 s
  i=0
  until grep -q "$2" "$1" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 600 ] && { echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; exit 1; }
    sleep 0.1
  done
}

$X hypervisor --socket "$OUT/hv.sock" > "$OUT/hv.log" 2>&1 & PIDS="$PIDS $!"
wait_for "$OUT/hv.log" listening
$X backend --connect "$OUT/hv.sock" --disk "$IMG" > "$OUT/backend.log" 2>&1 & PIDS="$PIDS $!"
wait_for "$OUT/backend.log" serving
$X guest disk mount "$MNT" --connect "$OUT/hv.sock" > "$OUT/guest.log" 2>&1 & PIDS="$PIDS $!"
wait_for "$OUT/guest.log" "the vbd is"
echo "xenpv file: $(grep 'vbd connected' "$OUT/guest.log")"

for spec in $SPECS; do
  spec=$(echo "$spec" | tr : " ")
  set -- $spec
  r=1
  while [ $r -le "$ROUNDS" ]; do
    for side in x i; do
      if [ $side = x ]; then file="$MNT/xvda"; else file="$IMG"; fi
      fio --name=$side --filename="$file" --ioengine=libaio --direct=1 --rw=$1 --bs=$2 --iodepth=$3 \
          --runtime=$S --time_based --lat_percentiles=1 --output-format=json > "$OUT/$side$r" 2>"$OUT/$side$r.err" \
        || { echo "fio failed:" >&2; cat "$OUT/$side$r.err" >&2; exit 1; }
    done
    r=$((r + 1))
  done
  python3 - "$OUT" "$ROUNDS" "$1 bs=$2 qd=$3" <<'PY'
import json, statistics, sys
out, rounds, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(path):
    text = open(path).read()
    j = json.loads(text[text.index("{"):])["jobs"][0]  # fio may print notes before the JSON
    d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    p = d["lat_ns"]["percentile"]  # submission to completion
    return {"iops": d["iops"], "p50_us": p["50.000000"] / 1000, "p99_us": p["99.000000"] / 1000}
xs = [load(f"{out}/x{r}") for r in range(1, rounds + 1)]
ks = [load(f"{out}/i{r}") for r in range(1, rounds + 1)]
m = lambda rows, k: statistics.median(row[k] for row in rows)
ratios = " ".join(f"{x['iops'] / k['iops']:.2f}" for x, k in zip(xs, ks))
pair_ratio = statistics.median(x['iops'] / k['iops'] for x, k in zip(xs, ks))
print(f"{name:24} FUSE file {m(xs, 'iops'):8.0f} IOPS p50 {m(xs, 'p50_us'):7.1f} µs p99 {m(xs, 'p99_us'):8.1f} µs | "
      f"image {m(ks, 'iops'):8.0f} IOPS p50 {m(ks, 'p50_us'):7.1f} µs p99 {m(ks, 'p99_us'):8.1f} µs | "
      f"paired median ratio {pair_ratio:.2f}x (rounds {ratios})")
PY
done
