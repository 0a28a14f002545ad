#!/bin/sh
# Runs each file engine (UringStorage, LibaioStorage) and fio with the same ioengine on the
# same file in one run, alternating, and prints each (CPU µs per operation included: the
# engine's process over the measured interval; fio's usr+sys over its run).
#   Benchmarks/StorageEngine/run.sh IMAGE [rw] [bs] [queue-depth] [seconds]
# IMAGE should hold real data (not a sparse file: holes read without touching the disk),
# e.g. fio --name=fill --filename=IMAGE --rw=write --bs=1M --size=1G --direct=1
# ENGINES="io_uring libaio" picks the engines.
set -eu
image=$1; rw=${2:-randread}; bs=${3:-4096}; qd=${4:-32}; secs=${5:-5}
engines=${ENGINES:-"io_uring libaio"}
benchmarks=$(cd "$(dirname "$0")/.." && pwd)
swift build -c release --package-path "$benchmarks" --product storage-bench >/dev/null
bin=$(swift build -c release --package-path "$benchmarks" --show-bin-path)/storage-bench
for round in 1 2; do
  for e in $engines; do
    "$bin" --image "$image" --engine "$e" --rw "$rw" --bs "$bs" --queue-depth "$qd" --seconds "$secs"
    fio --name=fio --filename="$image" --ioengine="$e" --direct=1 --rw="$rw" --bs="$bs" \
        --iodepth="$qd" --runtime="$secs" --time_based --lat_percentiles=1 --output-format=json |
    python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
side = j["write"] if j["write"]["io_bytes"] > j["read"]["io_bytes"] else j["read"]
p = side["lat_ns"]["percentile"]  # submit to completion, as storage-bench measures
cpu = (j["usr_cpu"] + j["sys_cpu"]) / 100 * j["job_runtime"] / 1000
print(json.dumps({"engine": "fio " + sys.argv[1], "iops": int(side["iops"]), "mib_per_second": round(side["bw_bytes"] / 1048576, 1),
                  "p50_us": p["50.000000"] / 1000, "p99_us": p["99.000000"] / 1000,
                  "cpu_us_per_op": round(cpu * 1e6 / max(1, side["total_ios"]), 2)}))' "$e"
  done
done
