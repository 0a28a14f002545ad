#!/usr/bin/env bash
# Builds the libFuzzer targets (ASan + libFuzzer, debug: at -O an unused result
# can be optimised away) and runs one target, or all of them, for SECONDS each
# on its corpus in Fixtures/fuzz/<target>/, printing libFuzzer's final stats.
#
#   Fuzz/run.sh TARGET SECONDS      e.g. Fuzz/run.sh blkif 60
#   Fuzz/run.sh all SECONDS         every target in turn; CI runs `all 20`
#   Fuzz/run.sh list                the target names
#   Fuzz/run.sh seeds               rewrites the seed-* inputs from the project's encoders
#
# Exits non-zero when a target crashes, leaks, times out or fails to build;
# the crashing input is left in .build-fuzz/artifacts/<target>/. New inputs
# go to a scratch copy of the corpus (.build-fuzz/corpus/<target>), so a run
# never changes the checked-in seeds; FUZZ_MERGE=1 merges what it found back
# into Fixtures/fuzz/<target>/: a greedy set cover of new edges only
# (-set_cover_merge=1 -use_counters=0), which keeps the checked-in corpora to a
# few dozen files per target.
# Extra libFuzzer flags can be passed in FUZZ_FLAGS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scratch="$root/.build-fuzz"
targets=(blkif netif xs-wire xs-engine daemon-wire xenbus migration-stream)

usage() { echo "usage: $0 TARGET|all SECONDS   (targets: ${targets[*]})" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
if [[ $1 == list ]]; then printf '%s\n' "${targets[@]}"; exit 0; fi
build() {
    swift build --package-path Fuzz --scratch-path "$scratch" \
        -Xswiftc -sanitize=fuzzer,address "$@" 2>&1 | grep -v "Cannot export local symbol" >&2
    return "${PIPESTATUS[0]}"
}

# Per-target libFuzzer flags. xenbus drives async code on the Swift concurrency
# pool, which frees after the input returns: libFuzzer would then take every
# input for a possible leak and run a full LeakSanitizer scan (20 runs/s, not 150).
flags_for() {
    case $1 in
        xenbus) echo "-detect_leaks=0" ;;
        *) echo "" ;;
    esac
}

run_one() {
    local name=$1 seconds=$2
    local exe="$scratch/debug/fuzz-$name" seeds="$root/Fixtures/fuzz/$name"
    local corpus="$scratch/corpus/$name" artifacts="$scratch/artifacts/$name"
    mkdir -p "$seeds" "$corpus" "$artifacts"
    cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
    echo "== fuzz-$name for ${seconds}s" >&2
    local log="$scratch/fuzz-$name.log" status=0
    # -rss_limit_mb: ASan's quarantine alone takes a few hundred MB.
    SWIFT_BACKTRACE=enable=no "$exe" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" $(flags_for "$name") ${FUZZ_FLAGS:-} "$corpus" >"$log" 2>&1 || status=$?
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    if [[ $status -ne 0 ]]; then
        echo "fuzz-$name FAILED (exit $status); log $log, input in $artifacts/:" >&2
        grep -E -m 20 'ERROR|Fatal error|Precondition failed|SUMMARY|Test unit written' "$log" >&2 || true
        return 1
    fi
    if [[ ${FUZZ_MERGE:-0} == 1 ]]; then
        SWIFT_BACKTRACE=enable=no "$exe" -set_cover_merge=1 -use_counters=0 $(flags_for "$name") "$seeds" "$corpus" >/dev/null 2>&1
        echo "merged: $(ls "$seeds" | wc -l) seeds in Fixtures/fuzz/$name" >&2
    fi
}

if [[ $1 == seeds ]]; then
    build --product fuzz-seeds
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0 "$scratch/debug/fuzz-seeds" "$root/Fixtures/fuzz"
    exit 0
fi
[[ $# -eq 2 && $2 =~ ^[0-9]+$ ]] || usage

if [[ $1 == all ]]; then
    # Product by product: a plain build would also link the root's xenpv, whose
    # main clashes with libFuzzer's.
    for t in "${targets[@]}"; do build --product "fuzz-$t"; done
    failed=()
    for t in "${targets[@]}"; do run_one "$t" "$2" || failed+=("$t"); done
    if [[ ${#failed[@]} -gt 0 ]]; then echo "crashed: ${failed[*]}" >&2; exit 1; fi
    echo "all ${#targets[@]} targets ran ${2}s each without a crash" >&2
else
    [[ " ${targets[*]} " == *" $1 "* ]] || usage
    build --product "fuzz-$1"
    run_one "$1" "$2"
fi
