#!/usr/bin/env bash
# Light load, side by side: CPU per delivery and latency at fixed offered rates.
#
#   scripts/light-load.sh [--repeats R] [--duration S] [--rates "10000 40000 ... max"]
#                         [--coalesce-us US] [--systems "..."]
#
# p2p (4 publishers -> 4 subscribers on distinct topics, QoS 0, 256 B) at each offered
# rate in all (default 10k, 40k, 100k, 300k msg/s and the unpaced maximum), against:
#   mosquitto        the peer, one thread, pinned to CPU 0
#   shardmq-1        1 shard pinned to CPU 0, wake_coalesce_us = 0
#   shardmq-2        2 shards, wake_coalesce_us = 0
#   shardmq-1-nap    1 shard pinned to CPU 0, wake_coalesce_us = US (default 200)
#   shardmq-2-nap    2 shards, wake_coalesce_us = US
#   relay-1          the floor: shardmq-bench --relay (epoll, one read per ready
#                    connection, one write per subscriber per wait), 1 thread on CPU 0
#   relay-2          the same with 2 threads on CPUs 0 and 1, handing a publish to a
#                    subscriber on the other thread through a queue and an eventfd
# The generator is one thread pinned to CPU 1 (so 1 shard and mosquitto have CPU 0 to
# themselves; 2 shards share CPU 1 with it). Every (rate, system) pair runs on a fresh broker, in an order that rotates
# between repeats (default 3), and the report quotes medians: broker CPU µs per delivery
# (from /proc), p50 and p99 latency, delivered msg/s.
#
# Writes target/bench-results/light-load-<date>/: runs.csv, light.md (the table for
# PERF.md, also printed) and light-load.svg (CPU per delivery and p99 against the rate).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

repeats=3
duration=4
rates="10000 40000 100000 300000 max"
coalesce=200
systems="mosquitto shardmq-1 shardmq-2 shardmq-1-nap shardmq-2-nap relay-1 relay-2"
while [[ $# -gt 0 ]]; do
    case $1 in
        --repeats) repeats=$2; shift ;;
        --duration) duration=$2; shift ;;
        --rates) rates=$2; shift ;;
        --coalesce-us) coalesce=$2; shift ;;
        --systems) systems=$2; shift ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
command -v mosquitto >/dev/null || [[ $systems != *mosquitto* ]] \
    || die "mosquitto is not installed (apt-get install mosquitto)"

begin_results light-load
meta_lines "scripts/light-load.sh --repeats $repeats --duration $duration --rates \"$rates\" --coalesce-us $coalesce" >"$out/meta.txt"
read -ra system_list <<<"$systems"
for repeat in $(seq "$repeats"); do
    # Rotate the order of systems so drift in the machine's load favours none.
    n=${#system_list[@]}
    for rate in $rates; do
        for k in $(seq 0 $((n - 1))); do
            system=${system_list[$(( (k + repeat) % n ))]}
            case $system in
                mosquitto) start_mosquitto; taskset -pc 0 "$BROKER_PID" >/dev/null ;;
                shardmq-1) SHARDMQ_CPUS=0 SHARDMQ_WAKE_COALESCE_US=0 start_shardmq 1 ;;
                shardmq-2) SHARDMQ_WAKE_COALESCE_US=0 start_shardmq 2 ;;
                shardmq-1-nap) SHARDMQ_CPUS=0 SHARDMQ_WAKE_COALESCE_US=$coalesce start_shardmq 1 ;;
                shardmq-2-nap) SHARDMQ_WAKE_COALESCE_US=$coalesce start_shardmq 2 ;;
                relay-1) start_relay 1 0 ;;
                relay-2) start_relay 2 0,1 ;;
                *) die "unknown system $system" ;;
            esac
            args=(--workload config/bench/p2p.toml --duration-secs "$duration" --warmup-secs 1
                  --threads 1 --cpus 1)
            # The workload has 4 publishers; --rate is per publisher.
            [[ $rate != max ]] && args+=(--rate $((rate / 4)))
            run_bench "$csv" "$system" p2p "$rate" "$repeat" 0 -- "${args[@]}" || true
            stop_broker
        done
    done
done
python3 "$REPORT_PY" light "$csv" "$out"
echo "results: $out"
