#!/bin/sh
# fio --ioengine=nbd against a guest's disk served as an NBD export (xenpv hypervisor,
# xenpv backend --disk IMAGE, xenpv guest disk serve --nbd) and against servers of the same
# image without the PV path: `nbdkit file` (issue 16's yardstick) and `qemu-nbd
# --cache=none --aio=native`, which reads and writes O_DIRECT as blkback does by default. One
# run, all alternating per round, so a shared disk's drift hits each.
# Usage (from the package root, after `swift build -c release`):
#   Benchmarks/NBDExport/run.sh IMAGE [SECONDS] [ROUNDS]
#   BINS="/path/xenpv-before /path/xenpv-after" Benchmarks/NBDExport/run.sh IMAGE [SECONDS] [ROUNDS]
# BINS: several xenpv builds, each with its own three processes, every one of them and
# then nbdkit in each round (before/after in one run); default: XENPV or the release build.
# CACHES="none writeback" (default): an export per build and blkback cache mode (xenpv
# backend --cache): none reads and writes the image O_DIRECT, like qemu-nbd --cache=none;
# writeback goes through the page cache, like nbdkit's file plugin by default.
# YARDSTICKS="nbdkit qemu-nbd" (default) picks the servers to compare with: nbdkit (file
# plugin, page cache), nbdkit-nocache (its cache=none: no O_DIRECT in nbdkit 1.32; each
# write's pages are written back and dropped, so a write waits for the disk much as an
# O_DIRECT one does), qemu-nbd (O_DIRECT, native AIO). The page cache is dropped before
# every side's round (root), so reads start cold and may hit cache within the round.
# IMAGE: a fully written file (dd if=/dev/urandom) on a file system that takes O_DIRECT.
# SPECS="rw:bs:qd ..." picks settings (default: 4 KiB randread/randwrite at QD 1 and 32).
# The load average is printed beside each setting: on two shared cores it decides much.
set -e
IMG=$1; S=${2:-5}; ROUNDS=${3:-3}; BINS=${BINS:-${XENPV:-.build/release/xenpv}}
[ -f "$IMG" ] || { echo "usage: $0 IMAGE [SECONDS] [ROUNDS]" >&2; exit 2; }
OUT=$(mktemp -d)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  for f in "$OUT"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  sleep 0.5; rm -rf "$OUT"
}
YARDSTICKS=${YARDSTICKS:-"nbdkit qemu-nbd"}
trap cleanup EXIT INT TERM
SPECS=${SPECS:-"randread:4096:1 randread:4096:32 randwrite:4096:1 randwrite:4096:32"}
CACHES=${CACHES:-"none writeback"}

wait_for() {  # FILE TEXT: up to 60 s
  i=0
  until grep -q "$2" "$1" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 600 ] && { echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; exit 1; }
    sleep 0.1
  done
}

n=0; b=0; SIDES=""
for X in $BINS; do
  b=$((b + 1))
  for C in $CACHES; do
    n=$((n + 1)); D="$OUT/b$n"; mkdir "$D"; SIDES="$SIDES x$n"
    label="export $C"; [ "$(echo $BINS | wc -w)" -gt 1 ] && label="$label $b"
    echo "$label" > "$OUT/x$n.label"
    $X hypervisor --socket "$D/hv.sock" > "$D/hv.log" 2>&1 & PIDS="$PIDS $!"
    wait_for "$D/hv.log" listening
    $X backend --connect "$D/hv.sock" --disk "$IMG" --cache "$C" > "$D/backend.log" 2>&1 & PIDS="$PIDS $!"
    wait_for "$D/backend.log" serving
    $X guest disk serve --connect "$D/hv.sock" --nbd "unix:$D/guest.sock" > "$D/guest.log" 2>&1 & PIDS="$PIDS $!"
    wait_for "$D/guest.log" "serving xvda"
    echo "xenpv $label ($X): $(grep 'vbd connected' "$D/guest.log")"
  done
done
YS=""  # one letter per yardstick: k nbdkit, n nbdkit-nocache, q qemu-nbd
for y in $YARDSTICKS; do
  case $y in
    nbdkit)
      nbdkit --unix "$OUT/k.sock" --pidfile "$OUT/k.pid" file file="$IMG"
      wait_for "$OUT/k.pid" .; YS="$YS k" ;;
    nbdkit-nocache)
      nbdkit --unix "$OUT/n.sock" --pidfile "$OUT/n.pid" file file="$IMG" cache=none
      wait_for "$OUT/n.pid" .; YS="$YS n" ;;
    qemu-nbd)
      qemu-nbd --persistent --shared=8 --socket="$OUT/q.sock" --format=raw --cache=none --aio=native "$IMG" \
        > "$OUT/qemu-nbd.log" 2>&1 & PIDS="$PIDS $!"
      i=0; until [ -S "$OUT/q.sock" ]; do i=$((i + 1)); [ $i -gt 100 ] && { cat "$OUT/qemu-nbd.log" >&2; exit 1; }; sleep 0.1; done
      YS="$YS q" ;;
    *) echo "unknown yardstick $y (nbdkit, nbdkit-nocache, qemu-nbd)" >&2; exit 2 ;;
  esac
done
[ -n "$YS" ] || { echo "YARDSTICKS names no server" >&2; exit 2; }

for spec in $SPECS; do
  spec=$(echo "$spec" | tr : " ")
  set -- $spec
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  r=1
  while [ $r -le "$ROUNDS" ]; do
    for side in $SIDES $YS; do
      case $side in
        x*) sock="$OUT/b${side#x}/guest.sock" ;;
        *) sock="$OUT/$side.sock" ;;
      esac
      sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
      fio --name=$side --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw=$1 --bs=$2 --iodepth=$3 \
          --runtime=$S --time_based --lat_percentiles=1 --output-format=json > "$OUT/$side-$r" 2>"$OUT/$side-$r.err" \
        || { echo "fio failed:" >&2; cat "$OUT/$side-$r.err" >&2; exit 1; }
    done
    r=$((r + 1))
  done
  python3 - "$OUT" "$ROUNDS" "$1 bs=$2 qd=$3" "$n" "load $load_before-$(cut -d' ' -f1 /proc/loadavg)" $YS <<'PY'
import json, statistics, sys
out, rounds, name, exports, load, ys = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6:]
names = {"k": "nbdkit file", "n": "nbdkit-nocache", "q": "qemu-nbd O_DIRECT"}
def load_run(path):
    text = open(path).read()
    j = json.loads(text[text.index("{"):])["jobs"][0]  # fio may print notes before the JSON
    d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    p = d["lat_ns"]["percentile"]  # submission to completion
    return {"iops": d["iops"], "p50_us": p["50.000000"] / 1000, "p99_us": p["99.000000"] / 1000}
runs = lambda side: [load_run(f"{out}/{side}-{r}") for r in range(1, rounds + 1)]
m = lambda rows, k: statistics.median(row[k] for row in rows)
figures = lambda rows: f"{m(rows, 'iops'):8.0f} IOPS p50 {m(rows, 'p50_us'):7.1f} µs p99 {m(rows, 'p99_us'):8.1f} µs"
print(f"{name} ({load})")
yard = {y: runs(y) for y in ys}
for y in ys:
    print(f"  {names[y]:18} {figures(yard[y])}")
for b in range(1, exports + 1):
    xs = runs(f"x{b}")
    label = open(f"{out}/x{b}.label").read().strip()
    # Paired: each round's own ratio and p50 difference, whose medians cancel a drifting disk.
    pairs = []
    for y in ys:
        ratios = " ".join(f"{x['iops'] / k['iops']:.2f}" for x, k in zip(xs, yard[y]))
        ratio = statistics.median(x['iops'] / k['iops'] for x, k in zip(xs, yard[y]))
        p50 = statistics.median(x['p50_us'] - k['p50_us'] for x, k in zip(xs, yard[y]))
        pairs.append(f"÷ {names[y].split()[0]} {ratio:.2f}x (rounds {ratios}), p50 {p50:+.1f} µs")
    print(f"  {label:18} {figures(xs)} | " + " | ".join(pairs))
PY
done
