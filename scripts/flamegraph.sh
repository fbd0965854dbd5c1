#!/usr/bin/env bash
# Profiles the broker under a load and renders a flamegraph.
#
#   scripts/flamegraph.sh [OUT.svg] [-- LOAD COMMAND ...]
#
# Starts the release broker on free ports with a temp data dir on the real disk, records
# it with `perf record -e cpu-clock --call-graph dwarf` (hardware counters are often
# missing on VMs) while LOAD runs, and renders OUT.svg (default
# target/flamegraph-<date>.svg) with inferno. LOAD gets $SHARDMQ_PORT in its
# environment; without one, shardmq-bench runs config/bench/p2p.toml for 10 s.
# Installs linux-perf (apt) and inferno (cargo) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

out="target/flamegraph-$(date +%Y%m%d-%H%M%S).svg"
if [[ $# -gt 0 && $1 != "--" ]]; then out=$1; shift; fi
[[ ${1:-} == "--" ]] && shift

command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked

cargo build --release --bins
source scripts/lib-broker.sh
start_broker flame
export SHARDMQ_PORT=$port

perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$broker" -o "$data/perf.data" 2>/dev/null &
perf_pid=$!
sleep 0.5
if [[ $# -gt 0 ]]; then
    "$@"
else
    target/release/shardmq-bench --port "$port" --workload config/bench/p2p.toml --duration-secs 10
fi
kill -INT "$perf_pid"; wait "$perf_pid" || true
perf script -i "$data/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph > "$out"
echo "flamegraph: $out"
