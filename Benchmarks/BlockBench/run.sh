#!/bin/sh
# The block path against fio on the same image, same settings, in one run.
# Usage (from the package root, after `swift build -c release`):
#   Benchmarks/BlockBench/run.sh IMAGE [SECONDS] [ROUNDS]
# IMAGE should be a fully written file (dd if=/dev/urandom) on a file system that takes O_DIRECT.
# Each setting runs ROUNDS times (default 3), xenpv and fio alternating, so a shared disk's
# drift hits both; the table shows medians, and the medians of each round's ratio and p50
# difference (paired rounds: the fairer figure on a disk whose speed wanders). Latencies
# on both sides are whole operations, submission to completion (fio's lat, not clat).
# SPECS="rw:bs:qd ..." picks settings (default: the six of the table in the README);
# XENPV_ARGS adds options to xenpv's side (for example --in-place).
set -e
IMG=$1; S=${2:-5}; ROUNDS=${3:-3}; X=${XENPV:-.build/release/xenpv}
[ -f "$IMG" ] || { echo "usage: $0 IMAGE [SECONDS] [ROUNDS]" >&2; exit 2; }
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
SPECS=${SPECS:-"randread:4096:1 randread:4096:32 randwrite:4096:1 randwrite:4096:32 read:131072:1 read:131072:32"}
for spec in $SPECS; do
  spec=$(echo "$spec" | tr : " ")
  set -- $spec
  r=1
  while [ $r -le "$ROUNDS" ]; do
    $X bench block --image "$IMG" --rw $1 --bs $2 --queue-depth $3 --seconds $S --json $XENPV_ARGS > "$OUT/x$r"
    fio --name=x --filename="$IMG" --ioengine=libaio --direct=1 --rw=$1 --bs=$2 --iodepth=$3 \
        --runtime=$S --time_based --lat_percentiles=1 --output-format=json > "$OUT/f$r" 2>/dev/null
    r=$((r + 1))
  done
  python3 - "$OUT" "$ROUNDS" "$1 bs=$2 qd=$3" <<'PY'
import json, statistics, sys
out, rounds, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
xs, fs = [], []
for r in range(1, rounds + 1):
    xs.append(json.load(open(f"{out}/x{r}")))
    j = json.load(open(f"{out}/f{r}"))["jobs"][0]
    d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    p = d["lat_ns"]["percentile"]  # submission to completion, as xenpv measures
    fs.append({"iops": d["iops"], "p50_us": p["50.000000"] / 1000, "p99_us": p["99.000000"] / 1000})
m = lambda rows, k: statistics.median(row[k] for row in rows)
ratios = " ".join(f"{x['iops'] / f['iops']:.2f}" for x, f in zip(xs, fs))
# Paired per round (each xenpv run next to its fio run): robust to the disk's drift.
pair_ratio = statistics.median(x['iops'] / f['iops'] for x, f in zip(xs, fs))
pair_p50 = statistics.median(x['p50_us'] - f['p50_us'] for x, f in zip(xs, fs))
print(f"{name:24} xenpv {m(xs, 'iops'):9.0f} IOPS p50 {m(xs, 'p50_us'):7.1f} µs p99 {m(xs, 'p99_us'):8.1f} µs | "
      f"fio {m(fs, 'iops'):9.0f} IOPS p50 {m(fs, 'p50_us'):7.1f} µs p99 {m(fs, 'p99_us'):8.1f} µs | "
      f"ratio {m(xs, 'iops') / m(fs, 'iops'):.2f}x (rounds {ratios}), p50 {m(xs, 'p50_us') - m(fs, 'p50_us'):+.1f} µs | "
      f"paired medians: ratio {pair_ratio:.2f}x, p50 {pair_p50:+.1f} µs")
PY
done
