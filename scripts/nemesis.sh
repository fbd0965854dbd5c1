#!/usr/bin/env bash
# The nemesis: a seeded, randomized history checker (Jepsen on one machine). CYCLES
# faults — kill -9, SIGTERM with an immediate restart on the same ports, a restart with
# the other `shards` count, a stalled broker (SIGSTOP/SIGCONT), and with --disk a full
# disk — against persistent and clean subscribers and publishers (QoS 1 and 2, MQTT 3.1.1
# and 5.0, rumqttc and the raw test client) that reconnect, take over, re-subscribe,
# unsubscribe, go offline, stop reading, resend QoS 2 with the same packet id and join
# and leave a shared group. Then it checks the recorded history: no acknowledged message
# lost, no QoS 2 message twice, first deliveries in order, retained state last writer
# wins, every restart serving within start_timeout_ms, RSS within the configured bounds.
# Prints the seed and per QoS: acknowledged, required deliveries, delivered, lost,
# duplicates; exits non-zero on any failure.
#
#   scripts/nemesis.sh [--disk] [CYCLES] [SEED]   (default: 200 cycles, seed from the clock)
#
# Runs the `long_run` test of tests/nemesis.rs against a release build (`cargo test` runs
# short fixed-seed runs of the same checker in the debug build). --disk puts the data dir
# on a 256 MiB loop-mounted ext4 file system and adds the full-disk fault (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

if [[ ${1:-} == --disk ]]; then
    export SHARDMQ_NEMESIS_DISK=1
    shift
fi
export SHARDMQ_NEMESIS_CYCLES=${1:-200}
if [[ -n ${2:-} ]]; then export SHARDMQ_NEMESIS_SEED=$2; fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== nemesis: $SHARDMQ_NEMESIS_CYCLES cycles (release build)"
cargo test --release --test nemesis long_run -- --ignored --nocapture 2>&1 | tee "$log" \
    | grep -vE '^\s*$|^running|^test result|^\s+(Finished|Running|Compiling)' || true
if ! grep -q 'test result: ok' "$log"; then
    echo "nemesis: FAILED ($(grep -o 'SHARDMQ_NEMESIS_SEED=[0-9]*' "$log" | head -1))" >&2
    exit 1
fi
