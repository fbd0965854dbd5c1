#!/usr/bin/env bash
# Start-up under load: STARTS consecutive starts of the release broker (2 shards) while
# CPU burners (2 per CPU) keep the host busy. Each start recovers the same WAL (filled
# once with QoS 1 messages for persistent sessions) and is timed from exec to the
# "shardmq ready" log line; starts alternate between a SIGTERM and a kill -9 stop. A start
# not ready within STUCK_MS (default 10,000; the broker's own start_timeout_ms is 120 s)
# is stuck: it is killed, its log kept. Prints the start times (median, p99, max) and the
# stuck count; exits non-zero if any start stuck.
#
#   scripts/start-loop.sh [STARTS] [NAME=BIN ...]     (default: 1000 starts, this tree's
#                                                      target/release/shardmq)
#
# More than one NAME=BIN (e.g. a build of an older commit) are started in turn, start by
# start, so each sees the same load. Results in target/bench-results/start-loop-<date>/.
# Environment: STUCK_MS, BURNERS (default 2 × CPUs), SHARDS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

starts=${1:-1000}
shift || true
[[ $starts =~ ^[0-9]+$ ]] || die "STARTS must be a number, not '$starts'"
cargo build --release --bin shardmq --bin shardmq-bench 2>&1 | grep -E '^(error|warning)' || true
[[ -x $BROKER_BIN && -x $BENCH_BIN ]] || die "the release build failed"
brokers=("$@")
((${#brokers[@]})) || brokers=("shardmq=$BROKER_BIN")

out=target/bench-results/start-loop-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
meta_lines "scripts/start-loop.sh $starts ${brokers[*]}" >"$out/meta.txt"
echo "== start loop: $starts starts of ${brokers[*]}, results in $out"
python3 scripts/lib/start_loop.py --starts "$starts" --out "$out" \
    --stuck-ms "${STUCK_MS:-10000}" --burners "${BURNERS:-$((2 * $(nproc)))}" \
    --shards "${SHARDS:-2}" --bench "$BENCH_BIN" "${brokers[@]}" | tee "$out/report.md"
