#!/usr/bin/env bash
# Connection flood against the release broker: N connections (default 10000) opened and
# closed in a burst, then N opened and held idle for HOLD seconds, while a probe client
# times connect + subscribe + publish + receive round trips. Prints the probe latency in
# each phase, the broker's RSS at each step and its memory per idle connection.
#
#   scripts/conn-flood.sh [N] [HOLD_SECS]
#
# If RLIMIT_NOFILE cannot be raised to about N + 300 (the broker's share), fewer are
# held idle and the script says so.
#
# Loopback only. Raises RLIMIT_NOFILE (hard limit too, as root) for itself (the broker and generator inherit it)
# and spreads the generator's connections over 127.0.0.2-9 so that the burst's
# TIME_WAIT ports and the held connections do not exhaust one address's port range.
# The JSON report is written to target/conn-flood-<date>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

n=${1:-10000}
hold=${2:-10}
# The broker holds one descriptor per idle connection plus ~256 of its own (the
# generator, a separate process, needs about as many); a hard limit that cannot be
# raised (no CAP_SYS_RESOURCE) caps what is held.
need=$(( n + 300 ))
(( $(ulimit -Hn) >= need )) || ulimit -Hn "$need" 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
hold_n=$n
if (( $(ulimit -n) < need )); then
    hold_n=$(( $(ulimit -n) - 300 ))
    echo "RLIMIT_NOFILE is $(ulimit -n) and cannot be raised: holding $hold_n idle, not $n"
fi

cargo build --release --bins
trap stop_broker EXIT
start_shardmq
echo "broker pid $BROKER_PID on 127.0.0.1:$BROKER_PORT; RSS $(broker_rss_kib) KiB; nofile $(ulimit -n)"
out=target/conn-flood-$(date -u +%Y%m%d-%H%M%S).json
flood() {
    "$BENCH_BIN" --port "$BROKER_PORT" --flood "$n" --flood-hold "$hold_n" --hold-secs "$hold" \
        --threads 2 --source-ips 8 --broker-pid "$BROKER_PID" "$@"
}
flood
flood --json > "$out"
echo "second run's JSON report: $out"
broker_metrics '^shardmq_(connections_(accepted|refused)_total|limit_hits_total.*connect)' | grep -v ' 0$' || true
