#!/usr/bin/env bash
# The crash loop: N cycles of QoS 1 load from four publishers, each ended by kill -9 at
# a random moment, with one persistent-session subscriber throughout; then prints
# acknowledged / lost / duplicated and fails if any acknowledged message was lost.
#
#   scripts/crash-loop.sh [CYCLES] [SEED]      (default: 20 cycles, seed from the clock)
#
# Runs tests/crash_loop.rs against a release build (`cargo test` runs the same test with
# 3 cycles in the debug build). The broker uses fsync_policy = "always" and 2 shards; its
# data dir is on the real disk under target/ (O_DIRECT is off on tmpfs).
# scripts/nemesis.sh checks the whole promise (QoS 2, reconnects, re-subscribes, SIGTERM,
# shard count changes, a full disk, order, retained state) under the same kind of faults.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

cycles=${1:-20}
export SHARDMQ_CRASH_CYCLES=$cycles
if [[ -n ${2:-} ]]; then export SHARDMQ_CRASH_SEED=$2; fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== crash loop: $cycles cycles (release build)"
if ! cargo test --release --test crash_loop -- --nocapture 2>&1 | tee "$log" \
    | grep -E '^(crash loop|cycle)'; then
    :
fi
if ! grep -q 'test result: ok' "$log"; then
    echo "crash-loop: FAILED" >&2
    grep -E 'lost|panicked|error' "$log" >&2 || tail -40 "$log" >&2
    exit 1
fi
