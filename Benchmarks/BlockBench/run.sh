#!/bin/sh
# The block path against fio on the same image, same settings, same engine, in one run.
# Usage (from the package root, after `swift build -c release`):
#   Benchmarks/BlockBench/run.sh IMAGE [SECONDS] [ROUNDS]
# IMAGE should be a fully written file (dd if=/dev/urandom) on a file system that takes O_DIRECT
# (ext4, or tmpfs since Linux 6.6).
# For each setting and each engine of ENGINES (default "io_uring libaio"), xenpv over that
# engine (`--engine`) runs against fio with the same --ioengine. Each round runs every
# pair once, xenpv then fio, ROUNDS times (default 3), so a shared disk's drift hits all;
# the table shows medians, and the medians of each round's ratio and p50 difference
# (paired rounds: the fairer figure on a disk whose speed wanders). Latencies on both
# sides are whole operations, submission to completion (fio's lat, not clat).
# CPU per I/O: user + system time of the whole process (every thread; wait4's rusage of
# the child, start-up included) over the operations it completed, for xenpv and fio alike;
# "in-window" is xenpv's own count over the measured interval only.
# SPECS="rw:bs:qd ..." picks settings (default: the six of the table in the README);
# XENPV_ARGS adds options to xenpv's side (for example --in-place).
# Engine "nbd" (ENGINES="nbd", or with the others): the script serves IMAGE with
# `nbdkit file` on a Unix socket for the whole run; xenpv's block path runs on the NBD
# engine (`--image nbd+unix:///?socket=...`) and fio with --ioengine=nbd (libnbd) on the
# same export. nbdkit's own CPU time is on neither side.
set -e
IMG=$1; S=${2:-5}; ROUNDS=${3:-3}; X=${XENPV:-.build/release/xenpv}
ENGINES=${ENGINES:-"io_uring libaio"}
HERE=$(dirname "$0")
[ -f "$IMG" ] || { echo "usage: $0 IMAGE [SECONDS] [ROUNDS]" >&2; exit 2; }
. "$HERE/scratch.sh"
SPECS=${SPECS:-"randread:4096:1 randread:4096:32 randwrite:4096:1 randwrite:4096:32 read:131072:1 read:131072:32"}
for spec in $SPECS; do
  spec=$(echo "$spec" | tr : " ")
  set -- $spec
  r=1
  while [ $r -le "$ROUNDS" ]; do
    for e in $ENGINES; do
      if [ "$e" = nbd ]; then
        python3 "$HERE/rusage.py" "$OUT/x-$e-$r" "$OUT/xc-$e-$r" \
          $X bench block --image "$URI" --rw $1 --bs $2 --queue-depth $3 --seconds $S --json $XENPV_ARGS
        python3 "$HERE/rusage.py" "$OUT/f-$e-$r" "$OUT/fc-$e-$r" \
          fio --name=x --ioengine=nbd --uri="$URI" --rw=$1 --bs=$2 --iodepth=$3 \
              --runtime=$S --time_based --lat_percentiles=1 --output-format=json
      else
        python3 "$HERE/rusage.py" "$OUT/x-$e-$r" "$OUT/xc-$e-$r" \
          $X bench block --image "$IMG" --engine $e --rw $1 --bs $2 --queue-depth $3 --seconds $S --json $XENPV_ARGS
        python3 "$HERE/rusage.py" "$OUT/f-$e-$r" "$OUT/fc-$e-$r" \
          fio --name=x --filename="$IMG" --ioengine=$e --direct=1 --rw=$1 --bs=$2 --iodepth=$3 \
              --runtime=$S --time_based --lat_percentiles=1 --output-format=json
      fi
    done
    r=$((r + 1))
  done
  for e in $ENGINES; do
  python3 - "$OUT" "$ROUNDS" "$1 bs=$2 qd=$3" "$e" <<'PY'
import json, statistics, sys
out, rounds, name, e = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
xs, fs = [], []
cpu = lambda path: float(open(path).read())
for r in range(1, rounds + 1):
    x = json.load(open(f"{out}/x-{e}-{r}"))
    x["cpu_us"] = cpu(f"{out}/xc-{e}-{r}") * 1e6 / x["operations"]
    xs.append(x)
    text = open(f"{out}/f-{e}-{r}").read()
    j = json.loads(text[text.index("{"):])["jobs"][0]  # fio's nbd engine prints a line first
    d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    p = d["lat_ns"]["percentile"]  # submission to completion, as xenpv measures
    fs.append({"iops": d["iops"], "p50_us": p["50.000000"] / 1000, "p99_us": p["99.000000"] / 1000,
               "cpu_us": cpu(f"{out}/fc-{e}-{r}") * 1e6 / max(1, d["total_ios"])})
m = lambda rows, k: statistics.median(row[k] for row in rows)
ratios = " ".join(f"{x['iops'] / f['iops']:.2f}" for x, f in zip(xs, fs))
# Paired per round (each xenpv run next to its fio run): robust to the disk's drift.
pair_ratio = statistics.median(x['iops'] / f['iops'] for x, f in zip(xs, fs))
pair_p50 = statistics.median(x['p50_us'] - f['p50_us'] for x, f in zip(xs, fs))
pair_cpu = statistics.median(x['cpu_us'] / f['cpu_us'] for x, f in zip(xs, fs))
print(f"{name:22} {e:8} xenpv {m(xs, 'iops'):8.0f} IOPS p50 {m(xs, 'p50_us'):6.1f} µs p99 {m(xs, 'p99_us'):7.1f} µs "
      f"CPU {m(xs, 'cpu_us'):5.2f} µs/IO (in-window {m(xs, 'cpu_us_per_op'):5.2f}) | "
      f"fio {m(fs, 'iops'):8.0f} IOPS p50 {m(fs, 'p50_us'):6.1f} µs p99 {m(fs, 'p99_us'):7.1f} µs CPU {m(fs, 'cpu_us'):5.2f} µs/IO | "
      f"ratio {m(xs, 'iops') / m(fs, 'iops'):.2f}x (rounds {ratios}), p50 {m(xs, 'p50_us') - m(fs, 'p50_us'):+.1f} µs | "
      f"paired medians: IOPS {pair_ratio:.2f}x, p50 {pair_p50:+.1f} µs, CPU/IO {pair_cpu:.2f}x")
PY
  done
done
