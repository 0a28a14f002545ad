#!/bin/sh
# Where the time of a queue depth's round trip goes, from the kernel's own tracepoints: the
# block layer's request issue and completion on IMAGE's disk, context switches, and the
# eventfd writes and io_submit calls of the threads. For xenpv (`bench block`) and then fio,
# same engine and settings, each traced for SECONDS.
# Usage (root; tracefs mounted at /sys/kernel/tracing; IMAGE on a block device, not tmpfs):
#   Benchmarks/BlockBench/cycle.sh IMAGE [SECONDS] [ENGINE] [RW] [QD]
# (defaults: 2 s, libaio, randread, 32; XENPV and XENPV_ARGS as in run.sh, FIO_ARGS adds fio options).
# A "cycle" starts at the last completion of a burst of at least QD·3/4 completions that came
# together (no other traced event between them; a device that completes a whole queue depth at once, as
# this machine's virtio disk does, makes one burst per round trip) and ends at the next
# burst. Printed: medians, over the cycles, of the time from the burst's last completion to
#   blkback running, blkback's notify to blkfront, blkfront running, blkfront's notify to
#   blkback, blkback running again (when it had slept: the share of cycles in brackets),
#   the first io_submit, the first request issued to the device;
# then the issue span (first to last issue of the cycle), last issue to the next burst, and
# the cycle. fio has only the last four. Each tool's IOPS are from its own report, traced.
set -e
IMG=$1; S=${2:-2}; ENGINE=${3:-libaio}; RW=${4:-randread}; QD=${5:-32}; X=${XENPV:-.build/release/xenpv}
T=/sys/kernel/tracing
[ -f "$IMG" ] || { echo "usage: $0 IMAGE [SECONDS] [ENGINE] [RW] [QD]" >&2; exit 2; }
[ -w "$T/trace" ] || { echo "$0: needs root and tracefs at $T" >&2; exit 2; }
# The disk the file system is on (a partition's events are its disk's), as "MAJOR,MINOR".
DEV=$(python3 - "$IMG" <<'PY'
import os, sys
d = os.stat(sys.argv[1]).st_dev
sysfs = f"/sys/dev/block/{os.major(d)}:{os.minor(d)}"
if not os.path.exists(sysfs): sys.exit(f"{sys.argv[1]} is not on a block device ({os.major(d)}:{os.minor(d)})")
if os.path.exists(f"{sysfs}/partition"): sysfs = os.path.dirname(os.path.realpath(sysfs))
print(open(f"{sysfs}/dev").read().strip().replace(":", ","))
PY
) || exit 2
EVENTS="block/block_rq_issue block/block_rq_complete sched/sched_switch syscalls/sys_enter_io_submit syscalls/sys_enter_io_uring_enter syscalls/sys_enter_write"
OUT=$(mktemp -d)
SIZE=$(cut -d" " -f1 $T/buffer_size_kb); CLOCK=$(sed 's/.*\[\(.*\)\].*/\1/' $T/trace_clock)
restore() {
  echo 0 > $T/tracing_on
  for e in $EVENTS; do [ -e "$T/events/$e/enable" ] && echo 0 > "$T/events/$e/enable"; done
  echo > $T/trace; echo "$SIZE" > $T/buffer_size_kb; echo "$CLOCK" > $T/trace_clock
  rm -rf "$OUT"
}
trap restore EXIT
trap "exit 130" INT TERM   # through the EXIT trap
echo 0 > $T/tracing_on
echo 262144 > $T/buffer_size_kb   # per CPU: a few seconds of these events
echo mono > $T/trace_clock        # one clock for every CPU's events
for e in $EVENTS; do [ -e "$T/events/$e/enable" ] && echo 1 > "$T/events/$e/enable"; done
traced() {  # NAME CMD...: runs CMD with tracing on, keeps the trace in $OUT/NAME
  name=$1; shift
  echo > $T/trace; echo 1 > $T/tracing_on
  "$@" > "$OUT/$name.out"
  echo 0 > $T/tracing_on
  cat $T/trace > "$OUT/$name.trace"
}
traced xenpv $X bench block --image "$IMG" --engine "$ENGINE" --rw "$RW" --bs 4096 --queue-depth "$QD" --seconds "$S" --json $XENPV_ARGS
traced fio fio --name=x --filename="$IMG" --ioengine="$ENGINE" --direct=1 --rw="$RW" --bs=4096 --iodepth="$QD" \
  --runtime="$S" --time_based --output-format=json $FIO_ARGS
python3 - "$OUT" "$DEV" "$QD" <<'PY'
import json, re, statistics, sys
out, dev, qd = sys.argv[1], sys.argv[2], int(sys.argv[3])
line = re.compile(r'^\s*(.+?)-\d+\s+\[\d+\]\s+\S+\s+([\d.]+): (\w+)[:(] ?(.*)')
def events(path):
    for l in open(path):
        m = line.match(l)
        if not m: continue
        comm, t, name, rest = m.group(1), float(m.group(2)), m.group(3), m.group(4)
        who = "back" if comm.startswith("blkback") else "front" if comm.startswith("blkfront") else None
        if name in ("block_rq_issue", "block_rq_complete"):
            f = rest.split()
            # Reads and writes of this disk (rwbs R, RS, W, WS, ...), not flushes or readahead.
            if f[0] == dev and f[1][0] in "RW" and "A" not in f[1] and "F" not in f[1]:
                yield t, "I" if name == "block_rq_issue" else "C", who
        elif name == "sched_switch":
            nxt = re.search(r"next_comm=(.+?) next_pid", rest).group(1)
            if nxt.startswith("blkback"): yield t, "in", "back"
            elif nxt.startswith("blkfront"): yield t, "in", "front"
        elif name in ("sys_io_submit", "sys_io_uring_enter"): yield t, "S", who
        elif name == "sys_write" and who: yield t, "W", who
for tool in ("xenpv", "fio"):
    ev = list(events(f"{out}/{tool}.trace"))
    rows, i = [], 0
    while i < len(ev):
        if ev[i][1] != "C": i += 1; continue
        j = i
        while j + 1 < len(ev) and ev[j + 1][1] == "C": j += 1
        burst, last = j - i + 1, ev[j][0]
        k, r = j + 1, {}
        issues = []
        while k < len(ev) and ev[k][1] != "C":
            t, kind, who = ev[k]
            key = {("in", "back"): "blkback runs", ("W", "back"): "blkback notifies", ("in", "front"): "blkfront runs",
                   ("W", "front"): "blkfront notifies"}.get((kind, who))
            if kind == "in" and who == "back" and "blkfront notifies" in r: key = "blkback woken"
            if kind == "S": key = "first submit"
            if key and key not in r: r[key] = t - last
            if kind == "I": issues.append(t)
            k += 1
        if burst >= qd * 3 // 4 and issues and k < len(ev):
            r.update({"first issue": issues[0] - last, "issue span": issues[-1] - issues[0],
                      "last issue to completions": ev[k][0] - issues[-1], "cycle": ev[k][0] - last})
            rows.append(r)
        i = k
    if not rows:
        print(f"{tool}: no burst of {qd * 3 // 4}+ completions (the device does not complete a queue depth together)")
        continue
    text = open(f"{out}/{tool}.out").read()
    doc = json.loads(text[text.index("{"):])
    if tool == "fio":
        job = doc["jobs"][0]
        iops = (job["read"] if job["read"]["io_bytes"] else job["write"])["iops"]
    else:
        iops = doc["iops"]
    parts = []
    for key in ("blkback runs", "blkback notifies", "blkfront runs", "blkfront notifies", "blkback woken",
                "first submit", "first issue", "issue span", "last issue to completions", "cycle"):
        values = [r[key] for r in rows if key in r]
        if not values: continue
        share = "" if len(values) * 10 >= len(rows) * 9 else f" [{len(values) * 100 // len(rows)} %]"
        parts.append(f"{key} {statistics.median(values) * 1e6:.0f}{share}")
    print(f"{tool:5} {iops:8.0f} IOPS traced, {len(rows)} cycles; µs after a burst's last completion: " + ", ".join(parts))
PY
