#!/bin/sh
# The block path against fio on the same image, same settings, in one run.
# Usage (from the package root, after `swift build -c release`):
#   Benchmarks/BlockBench/run.sh IMAGE [SECONDS]
# IMAGE should be a fully written file (dd if=/dev/urandom) on a file system that takes O_DIRECT.
# Latencies on both sides are whole operations, submission to completion (fio's lat, not clat).
set -e
IMG=$1; S=${2:-5}; X=${XENPV:-.build/release/xenpv}
[ -f "$IMG" ] || { echo "usage: $0 IMAGE [SECONDS]" >&2; exit 2; }
for spec in "randread 4096 1" "randread 4096 32" "randwrite 4096 1" "randwrite 4096 32" "read 131072 1" "read 131072 32"; do
  set -- $spec
  x=$($X bench block --image "$IMG" --rw $1 --bs $2 --queue-depth $3 --seconds $S --json)
  f=$(fio --name=x --filename="$IMG" --ioengine=libaio --direct=1 --rw=$1 --bs=$2 --iodepth=$3 \
        --runtime=$S --time_based --lat_percentiles=1 --output-format=json 2>/dev/null)
  python3 - "$x" "$f" "$1 bs=$2 qd=$3" <<'PY'
import json, sys
x = json.loads(sys.argv[1]); j = json.loads(sys.argv[2])["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
p = d["lat_ns"]["percentile"]  # submission to completion, as xenpv measures
f = {"iops": d["iops"], "p50_us": p["50.000000"] / 1000, "p99_us": p["99.000000"] / 1000, "mean_us": d["lat_ns"]["mean"] / 1000}
print(f"{sys.argv[3]:24} xenpv {x['iops']:9.0f} IOPS p50 {x['p50_us']:7.1f} µs p99 {x['p99_us']:8.1f} µs | "
      f"fio {f['iops']:9.0f} IOPS p50 {f['p50_us']:7.1f} µs p99 {f['p99_us']:8.1f} µs | "
      f"ratio {x['iops'] / f['iops']:.2f}x, p50 +{x['p50_us'] - f['p50_us']:.1f} µs")
PY
done
