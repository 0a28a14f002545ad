#!/usr/bin/env bash
# Re-captures the xs_wire fixtures: Xen's own xenstore-* tools (libxenstore) talk to
# `xenpv xenstored` through a recording proxy, which saves each tool's request bytes
# and the replies as NAME.request / NAME.reply here. CapturedWireTests replays them.
#   Fixtures/xs-wire/capture.sh        (needs xenstore-utils and a built xenpv)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
xenpv=${XENPV:-$here/../../.build/debug/xenpv}
tmp=$(mktemp -d)
trap 'kill $daemon 2>/dev/null; rm -rf "$tmp"' EXIT
"$xenpv" xenstored --socket "$tmp/xs.sock" >/dev/null 2>&1 & daemon=$!
for _ in $(seq 100); do [ -S "$tmp/xs.sock" ] && break; sleep 0.05; done
capture() {
    local name=$1; shift
    python3 - "$tmp" "$name" "$here" <<'PY' & local proxy=$!
import os, socket, sys, threading
tmp, name, out = sys.argv[1:4]
listener = socket.socket(socket.AF_UNIX); listener.bind(tmp + "/proxy.sock"); listener.listen(1)
client, _ = listener.accept()
server = socket.socket(socket.AF_UNIX); server.connect(tmp + "/xs.sock")
request, reply = bytearray(), bytearray()
def pump(source, sink, record):
    while data := source.recv(65536):
        record += data; sink.sendall(data)
    try: sink.shutdown(socket.SHUT_WR)
    except OSError: pass
threads = [threading.Thread(target=pump, args=a) for a in ((client, server, request), (server, client, reply))]
for t in threads: t.start()
for t in threads: t.join(timeout=5)
open(f"{out}/{name}.request", "wb").write(request)
open(f"{out}/{name}.reply", "wb").write(reply)
os.unlink(tmp + "/proxy.sock")
PY
    for _ in $(seq 100); do [ -S "$tmp/proxy.sock" ] && break; sleep 0.05; done
    XENSTORED_PATH=$tmp/proxy.sock "$@" >/dev/null || true
    wait $proxy
}
capture write xenstore-write /local/domain/1/name guest1 /local/domain/1/memory/target 524288
capture read xenstore-read /local/domain/1/name
capture list xenstore-ls /local/domain/1
capture chmod xenstore-chmod /local/domain/1/name r1
capture exists xenstore-exists /local/domain/1/nothing
capture rm xenstore-rm /local/domain/1/memory
