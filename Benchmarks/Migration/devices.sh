#!/usr/bin/env bash
# Live migration of a guest with a disk between two hypervisor daemons ("hosts") on this
# machine, each with a `xenpv backend` serving the same image file: the guest (256 MiB,
# 65,536 frames) runs `xenpv guest disk write` idle (one 4 KiB write a second) or writing
# (64 KiB chunks 1 ms apart, several requests in flight each), and is migrated a to b
# and back. The cases idle-full and full add a vif echoing 1000-byte frames stop-and-wait
# through the backend (1 ms apart) beside the idle or writing job, and full also
# dirties 2,000 pages a second of 32,768 pages of the guest's memory (issue 18's whole
# guest; its memory is checksummed at each pause and checked after each resume and at
# the end). Prints xenpv migrate's figures and the guest's downtime line: from the pause
# (its suspend call; its devices' quiesce before it) to its devices Connected on the
# destination and the first request answered there (the first response blkfront took on
# its new connection: a write re-issued or queued across the pause, or else the probe, a
# one-sector read issued once every device is Connected, whose own answer is printed too);
# with the echo, the frames that came back and how many were resent; with the dirtier,
# the memory checks. The image is written in full first, as a deployed one is: on a sparse
# file each write would allocate its blocks (ext4 journals the allocation, a direct write
# then takes a few ms and a read of the file waits behind it). Exits non-zero when a hop did not reconnect, a check failed or a process
# crashed (CI runs the full case on the release build).
#
#   Benchmarks/Migration/devices.sh [XENPV] [CASES...]   (default: .build/release/xenpv, cases idle writing;
#                                                         also idle-full full)
#   HOPS=12 Benchmarks/Migration/devices.sh BUILD idle   (hops back and forth, default 2, and each
#                                                         figure's median; run builds in turn to compare;
#                                                         beyond 2 hops the writers write every 3 ms)
set -euo pipefail
XENPV=${1:-.build/release/xenpv}
shift || true
CASES=${*:-idle writing}
HOPS=${HOPS:-2}
DIR=$(mktemp -d /tmp/xenpv-migration-devices.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
FAILED=0
fail() { echo "FAILED: $*" >&2; FAILED=1; }

dd if=/dev/zero of="$DIR/disk.img" bs=1M count=512 conv=fsync status=none
exec 9<> <(:)   # never written: `read -t` on it waits without starting a process
"$XENPV" hypervisor --socket "$DIR/a.sock" >"$DIR/a.log" 2>&1 & PIDS+=($!)
"$XENPV" hypervisor --socket "$DIR/b.sock" >"$DIR/b.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do [[ -S $DIR/a.sock && -S $DIR/b.sock ]] && break; sleep 0.1; done
"$XENPV" backend --connect "$DIR/a.sock" --disk "$DIR/disk.img" >"$DIR/backend-a.log" 2>&1 & PIDS+=($!)
"$XENPV" backend --connect "$DIR/b.sock" --disk "$DIR/disk.img" >"$DIR/backend-b.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do grep -q serving "$DIR/backend-a.log" && grep -q serving "$DIR/backend-b.log" && break; sleep 0.1; done

# The writers' 448 MiB last ~15 s at one chunk a millisecond: enough for two hops; more
# hops space the chunks 3 ms apart, so the job outlasts them.
GAP=$((HOPS > 2 ? 3 : 1))
for case in $CASES; do
    case $case in
        idle) JOB=(--length $((4 << 20)) --chunk 4096 --interval-ms 1000) ;;
        writing) JOB=(--length $((448 << 20)) --chunk 65536 --interval-ms $GAP) ;;
        idle-full) JOB=(--length $((4 << 20)) --chunk 4096 --interval-ms 1000 --echo) ;;
        full) JOB=(--length $((448 << 20)) --chunk 65536 --interval-ms $GAP --echo --dirty-rate 2000 --dirty-pages 32768) ;;
        *) echo "unknown case $case (idle, writing, idle-full or full)" >&2; exit 2 ;;
    esac
    LOG="$DIR/guest-$case.log"
    XENPV_MIGRATION_TRACE=1 "$XENPV" guest disk write --connect "$DIR/a.sock" --frames 65536 --seed 5 --timeout 600 "${JOB[@]}" >"$LOG" 2>&1 &
    GUEST=$!
    PIDS+=($GUEST)
    for _ in $(seq 100); do grep -q "vbd connected" "$LOG" && break; sleep 0.1; done
    DOM=$(sed -n 's/.*joined as dom\([0-9]*\).*/\1/p' "$LOG" | head -1)
    sleep 2
    from=a to=b
    for hop in $(seq "$HOPS"); do
        echo "== $case guest: $from -> $to (written so far: $(grep -c '^written' "$LOG") chunks)"
        "$XENPV" migrate "$DOM" --connect "$DIR/$from.sock" --to "$DIR/$to.sock" | sed 's/^/   /'
        # No process starts while the guest reconnects (a grep or a sleep costs a vCPU
        # millisecond or two of this 2-vCPU machine): a builtin wait first, then the polling.
        read -rt 0.3 -u 9 || true
        for _ in $(seq 300); do [[ $(grep -c "downtime:" "$LOG") -ge $hop ]] && break; sleep 0.1; done
        grep "downtime:" "$LOG" | tail -1 | sed 's/^/   guest: /'
        sleep 1
        set -- "$to" "$from"; from=$1 to=$2
    done
    # Each figure's median over the hops (with HOPS beyond 2, for comparing builds).
    grep "downtime:" "$LOG" | sed 's/.*after the pause: //' | tr ',' '\n' | sed 's/^ *//' \
        | awk '{v=$(NF-1); $NF=""; $(NF-1)=""; k=$0; sub(/ +$/, "", k); n[k]++; x[k, n[k]] = v}
               END {for (k in n) {m = n[k]; for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (x[k, j] < x[k, i]) {t = x[k, i]; x[k, i] = x[k, j]; x[k, j] = t}
                    printf "   medians over %d hops: %s %.2f ms (%.2f-%.2f)\n", m, k, x[k, int((m + 1) / 2)], x[k, 1], x[k, m]}}' | sort
    grep "memory: .*checksum" "$LOG" | sed 's/^/   guest: /' || true
    grep -E "error|failed" "$LOG" | sed 's/^/   guest: /' || true
    # The echo and the dirtier report when the job ends: a shutdown request ends it at
    # the next chunk (the echo after the frame on its way), then the guest leaves.
    if [[ $case == *full ]]; then
        "$XENPV" shutdown "$DOM" --connect "$DIR/a.sock" >/dev/null 2>&1 || true
        for _ in $(seq 300); do kill -0 "$GUEST" 2>/dev/null || break; sleep 0.1; done
        grep -E "frames echoed intact|memory: .* verified|stopped at byte" "$LOG" | sed 's/^/   guest: /' || true
    fi
    kill "$GUEST" 2>/dev/null || true
    wait "$GUEST" 2>/dev/null || true
    # What CI holds a run to: every hop reconnected, nothing unequal or failed, no backend
    # crashed, and with the echo and the dirtier their end reports.
    [[ $(grep -c "downtime:" "$LOG") -ge $HOPS ]] || fail "$case: $(grep -c "downtime:" "$LOG") of $HOPS hops reconnected"
    ! grep -qE "equal=false|error|failed" "$LOG" || fail "$case: the guest reported a failure"
    ! grep -l "crashed" "$DIR"/backend-*.log "$DIR"/[ab].log 2>/dev/null || fail "$case: a process crashed"
    if [[ $case == *full ]]; then
        grep -q "frames echoed intact" "$LOG" || fail "$case: no echo report"
        if [[ $case == full ]]; then grep -q "memory: .* verified" "$LOG" || fail "$case: no memory report"; fi
    fi
done
exit $FAILED
