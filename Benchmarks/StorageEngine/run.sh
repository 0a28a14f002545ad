#!/bin/sh
# Runs LibaioStorage and fio on the same file in one run, alternating, and prints both.
#   Benchmarks/StorageEngine/run.sh IMAGE [rw] [bs] [queue-depth] [seconds]
# IMAGE should hold real data (not a sparse file: holes read without touching the disk),
# e.g. fio --name=fill --filename=IMAGE --rw=write --bs=1M --size=1G --direct=1
set -eu
image=$1; rw=${2:-randread}; bs=${3:-4096}; qd=${4:-32}; secs=${5:-5}
benchmarks=$(cd "$(dirname "$0")/.." && pwd)
swift build -c release --package-path "$benchmarks" --product storage-bench >/dev/null
bin=$(swift build -c release --package-path "$benchmarks" --show-bin-path)/storage-bench
for round in 1 2; do
    "$bin" --image "$image" --rw "$rw" --bs "$bs" --queue-depth "$qd" --seconds "$secs"
    fio --name=fio --filename="$image" --ioengine=libaio --direct=1 --rw="$rw" --bs="$bs" \
        --iodepth="$qd" --runtime="$secs" --time_based --lat_percentiles=1 --output-format=json |
    python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
side = j["write"] if j["write"]["io_bytes"] > j["read"]["io_bytes"] else j["read"]
p = side["lat_ns"]["percentile"]  # submit to completion, as storage-bench measures
print(json.dumps({"engine": "fio", "iops": int(side["iops"]), "mib_per_second": round(side["bw_bytes"] / 1048576, 1),
                  "p50_us": p["50.000000"] / 1000, "p99_us": p["99.000000"] / 1000}))'
done
