#!/usr/bin/env bash
# Builds the DocC documentation of every target that has a `.docc` catalog under
# Sources/<layer>/<target>/, in one `generate-documentation` run, and fails on any DocC warning (an
# unresolved ``symbol`` link, a Topics entry that names nothing) or error.
#
# Output: .build/docs/<Target>.doccarchive, one archive per target.
# Usage:  Scripts/build-docs.sh [TARGET ...]   (default: every target with a catalog)
# Needs the swift-docc-plugin dependency declared in Package.swift.
set -euo pipefail
cd "$(dirname "$0")/.."

out=.build/docs
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for catalog in Sources/*/*/*.docc; do
        [ -d "$catalog" ] || continue
        targets+=("$(basename "$(dirname "$catalog")")")
    done
fi
if [ "${#targets[@]}" -eq 0 ]; then
    echo "build-docs: no target has a .docc catalog" >&2
    exit 1
fi

args=()
for t in "${targets[@]}"; do args+=(--target "$t"); done

rm -rf "$out"
mkdir -p "$out"
echo "build-docs: ${targets[*]}"
# --warnings-as-errors: a broken link or an empty Topics entry fails the build.
# With more than one target the plugin puts each archive in $out/<Target>.doccarchive.
swift package --allow-writing-to-directory "$out" generate-documentation \
    "${args[@]}" --output-path "$out" --warnings-as-errors

# A single target's archive is written to $out itself; more than one, to subdirectories.
if [ "${#targets[@]}" -gt 1 ]; then
    for t in "${targets[@]}"; do
        if [ ! -d "$out/$t.doccarchive" ]; then
            echo "build-docs: no archive for $t" >&2
            exit 1
        fi
    done
fi
echo "build-docs: archives in $out"
