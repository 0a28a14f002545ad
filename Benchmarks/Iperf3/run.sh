#!/bin/sh
# iperf3 TCP through the drivers against a plain veth pair, single queue (-P 1) and
# multi-queue (2 queues, -P 2), alternating for ROUNDS rounds; each `xenpv bench bridge`
# run measures the vif and the veth pair in the same run (the same minute of a shared
# machine). Prints each run's JSON, then the medians per setting.
# Usage (root, from the package root, after `swift build -c release` and
# `apt-get install -y iperf3`):
#   Benchmarks/Iperf3/run.sh [SECONDS] [ROUNDS]
# SETTINGS="queues:parallel ..." picks the settings (default "1:1 2:2").
set -eu
S=${1:-5}; ROUNDS=${2:-3}; X=${XENPV:-.build/release/xenpv}
SETTINGS=${SETTINGS:-"1:1 2:2"}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT INT TERM
round=1
while [ "$round" -le "$ROUNDS" ]; do
  for s in $SETTINGS; do
    q=${s%%:*}; p=${s##*:}
    "$X" bench bridge --seconds "$S" --queues "$q" --parallel "$p" --json | tee -a "$OUT"
  done
  round=$((round + 1))
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("| queues | iperf3 -P | vif Gbit/s | veth Gbit/s | paired ratio (median) | rounds |")
print("| --- | --- | --- | --- | --- | --- |")
for key in sorted({(r["queues"], r["parallel"]) for r in runs}):
    rs = [r for r in runs if (r["queues"], r["parallel"]) == key]
    med = lambda k: statistics.median(r[k] for r in rs)
    print(f"| {key[0]} | {key[1]} | {med('vif_gbit_per_second'):.2f} | {med('veth_gbit_per_second'):.2f} | {med('ratio'):.2f}× | {len(rs)} |")
PY
