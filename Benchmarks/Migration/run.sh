#!/usr/bin/env bash
# Live migration between two hypervisor daemons ("hosts") on this machine: a guest with
# 256 MiB (65,536 frames), every page written once, then idle or writing pages at a
# steady rate, migrated a to b and back; prints xenpv migrate's figures (rounds, pages
# per round, stream bytes, total time, downtime = the guest's pause to its process
# joined on the destination).
#
#   Benchmarks/Migration/run.sh [XENPV] [RATES...]     (default: .build/release/xenpv, rates 0 2000 20000 pages/s)
set -euo pipefail
XENPV=${1:-.build/release/xenpv}
shift || true
RATES=${*:-0 2000 20000}
DIR=$(mktemp -d /tmp/xenpv-migration.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

"$XENPV" hypervisor --socket "$DIR/a.sock" >"$DIR/a.log" 2>&1 & PIDS+=($!)
"$XENPV" hypervisor --socket "$DIR/b.sock" >"$DIR/b.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do [[ -S $DIR/a.sock && -S $DIR/b.sock ]] && break; sleep 0.1; done

for rate in $RATES; do
    "$XENPV" guest memory --connect "$DIR/a.sock" --frames 65536 --pages 65000 --rate "$rate" >"$DIR/guest-$rate.log" 2>&1 &
    GUEST=$!
    PIDS+=($GUEST)
    for _ in $(seq 100); do grep -q "joined as dom" "$DIR/guest-$rate.log" && break; sleep 0.1; done
    DOM=$(sed -n 's/.*joined as dom\([0-9]*\).*/\1/p' "$DIR/guest-$rate.log" | head -1)
    sleep 3   # every page written once, then the steady rate
    echo "== guest writing $rate pages/s: a -> b"
    "$XENPV" migrate "$DOM" --connect "$DIR/a.sock" --to "$DIR/b.sock" | sed 's/^/   /'
    sleep 1
    echo "== guest writing $rate pages/s: b -> a"
    "$XENPV" migrate "$DOM" --connect "$DIR/b.sock" --to "$DIR/a.sock" | sed 's/^/   /'
    grep -E "resumed|cancelled" "$DIR/guest-$rate.log" | sed 's/^/   guest: /'
    "$XENPV" shutdown "$DOM" --connect "$DIR/a.sock" --timeout 10 >/dev/null
    wait "$GUEST" || true
done
