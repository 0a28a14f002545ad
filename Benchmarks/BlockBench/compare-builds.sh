#!/bin/sh
# Several xenpv builds (or wrappers setting an environment variable) against fio, in one run:
# each round runs every build, then fio, on the same image with the same settings, so the
# machine's and the disk's drift hit all alike. Prints, per engine and queue depth, each
# build's medians and its paired ratios to fio (IOPS, CPU per I/O) and p50 difference.
# Usage (from the package root):
#   BINS="/path/xenpv-before /path/xenpv-after" Benchmarks/BlockBench/compare-builds.sh IMAGE [SECONDS] [ROUNDS]
# SPECS and ENGINES as in run.sh (default: 4 KiB randread at qd 1 and 32; libaio and io_uring;
# "nbd": every build on the NBD engine and fio --ioengine=nbd, against one `nbdkit file IMAGE`).
# A build that should run with polling off: a two-line wrapper script,
#   XENPV_BLOCK_SPIN_US=0 exec /path/xenpv "$@"
set -e
IMG=$1; S=${2:-4}; ROUNDS=${3:-3}
HERE=$(dirname "$0")
[ -f "$IMG" ] && [ -n "$BINS" ] || { echo "usage: BINS=\"XENPV...\" $0 IMAGE [SECONDS] [ROUNDS]" >&2; exit 2; }
ENGINES=${ENGINES:-"libaio io_uring"}
SPECS=${SPECS:-"randread:4096:1 randread:4096:32"}
. "$HERE/scratch.sh"
i=0; NAMES=""
for b in $BINS; do i=$((i + 1)); NAMES="$NAMES $i"; done
for spec in $SPECS; do
  set -- $(echo "$spec" | tr : " ")
  r=1
  while [ $r -le "$ROUNDS" ]; do
    for e in $ENGINES; do
      if [ "$e" = nbd ]; then
        XARGS="--image $URI"; FARGS="--ioengine=nbd --uri=$URI"
      else
        XARGS="--image $IMG --engine $e"; FARGS="--filename=$IMG --ioengine=$e --direct=1"
      fi
      i=0
      for b in $BINS; do
        i=$((i + 1))
        uptime | sed 's/.*average: //' > "$OUT/load-$i-$e-$1-$3-$r"
        python3 "$HERE/rusage.py" "$OUT/x-$i-$e-$1-$3-$r" "$OUT/xc-$i-$e-$1-$3-$r" \
          "$b" bench block $XARGS --rw "$1" --bs "$2" --queue-depth "$3" --seconds "$S" --json
      done
      python3 "$HERE/rusage.py" "$OUT/f-$e-$1-$3-$r" "$OUT/fc-$e-$1-$3-$r" \
        fio --name=x $FARGS --rw="$1" --bs="$2" --iodepth="$3" \
            --runtime="$S" --time_based --lat_percentiles=1 --output-format=json
    done
    r=$((r + 1))
  done
done
python3 - "$OUT" "$BINS" <<'PY'
import glob, json, os, statistics, sys
out, bins = sys.argv[1], sys.argv[2].split()
med = statistics.median
rows = {}
for f in sorted(glob.glob(f"{out}/f-*")):
    _, e, rw, qd, r = os.path.basename(f).split("-")
    text = open(f).read()
    j = json.loads(text[text.index("{"):])["jobs"][0]  # fio's nbd engine prints a line first
    d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    fio = {"iops": d["iops"], "p50": d["lat_ns"]["percentile"]["50.000000"] / 1000,
           "cpu": float(open(f"{out}/fc-{e}-{rw}-{qd}-{r}").read()) * 1e6 / max(1, d["total_ios"])}
    for i in range(1, len(bins) + 1):
        x = json.load(open(f"{out}/x-{i}-{e}-{rw}-{qd}-{r}"))
        cpu = float(open(f"{out}/xc-{i}-{e}-{rw}-{qd}-{r}").read()) * 1e6 / x["operations"]
        load = float(open(f"{out}/load-{i}-{e}-{rw}-{qd}-{r}").read().split(",")[0])
        rows.setdefault((rw, int(qd), e, i), []).append((x, cpu, fio, load))
for (rw, qd, e, i), rs in sorted(rows.items()):
    print(f"{rw} qd{qd:<3} {e:8} {bins[i - 1]:28} IOPS {med(x['iops'] for x, *_ in rs):8.0f} "
          f"(fio {med(f['iops'] for _, _, f, _ in rs):8.0f}) p50 {med(x['p50_us'] for x, *_ in rs):7.1f} µs "
          f"(fio {med(f['p50'] for _, _, f, _ in rs):7.1f}) CPU {med(c for _, c, _, _ in rs):6.2f} µs/IO "
          f"(fio {med(f['cpu'] for _, _, f, _ in rs):5.2f}) | paired: IOPS {med(x['iops'] / f['iops'] for x, _, f, _ in rs):.2f}x "
          f"p50 {med(x['p50_us'] - f['p50'] for x, _, f, _ in rs):+.1f} µs CPU/IO {med(c / f['cpu'] for _, c, f, _ in rs):.2f}x "
          f"| sleeps/request front {med(x['frontend_sleeps_per_request'] for x, *_ in rs):.2f} back {med(x['backend_sleeps_per_request'] for x, *_ in rs):.2f} "
          f"| load {min(l for *_, l in rs):.1f}-{max(l for *_, l in rs):.1f}")
PY
