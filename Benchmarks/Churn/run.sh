#!/usr/bin/env bash
# Soak of the hypervisor daemon (issue 13): guests join and leave, bind and
# unbind, map and unmap, run store transactions, for SECONDS (default 600);
# prints the daemon's RSS, descriptors and threads every 30 s. They must stay flat.
set -euo pipefail
cd "$(dirname "$0")/../.."
swift build -c release --product xenpv >/dev/null
exec .build/release/xenpv bench churn --seconds "${1:-600}" --every 30
