#!/usr/bin/env bash
# Shard scaling: the release broker at shards = 1..N on the named workloads.
#
#   scripts/shard-scaling.sh [--quick] [--repeats R] [--duration S] [--max-shards N]
#                            [--workloads "p2p fanout fanin"] [--rate-p2p R]
#
# For every repeat (default 3) and workload, runs the broker at each shard count in
# turn (1, 2, ... N; the order alternates between repeats so drift does not favour one
# count), each time on a fresh data dir with shardmq-bench at maximum rate, and records
# delivered msgs/s, broker CPU µs per delivered message (from /proc) and p99 latency.
# With --rate-p2p R (messages/s per publisher) the p2p workload also runs at that fixed
# rate, where CPU per message shows idle overhead rather than saturation.
#
# Writes target/bench-results/shard-scaling-<date>/: runs.csv (one row per run),
# scaling-medians.csv, scaling.md (the table for PERF.md, also printed) and scaling.svg.
# --quick: 1 repeat of 2 s on p2p only, to prove the script works.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

repeats=3
duration=5
max_shards=$(nproc)
workloads="p2p fanout fanin"
rate_p2p=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) repeats=1 duration=2 workloads=p2p ;;
        --repeats) repeats=$2; shift ;;
        --duration) duration=$2; shift ;;
        --max-shards) max_shards=$2; shift ;;
        --workloads) workloads=$2; shift ;;
        --rate-p2p) rate_p2p=$2; shift ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
(( repeats >= 1 && duration >= 1 && max_shards >= 1 )) || die "repeats, duration and max-shards must be >= 1"

begin_results shard-scaling
cmd="scripts/shard-scaling.sh --repeats $repeats --duration $duration --max-shards $max_shards --workloads \"$workloads\""
(( rate_p2p > 0 )) && cmd+=" --rate-p2p $rate_p2p"
meta_lines "$cmd" | tee "$out/meta.txt"

cases=()
for w in $workloads; do
    [[ -f config/bench/$w.toml ]] || die "no workload config/bench/$w.toml"
    cases+=("$w:$w:0")
    [[ $w == p2p && $rate_p2p -gt 0 ]] && cases+=("p2p:p2p-rate$rate_p2p:$rate_p2p")
done

for r in $(seq "$repeats"); do
    counts=$(seq 1 "$max_shards")
    (( r % 2 == 0 )) && counts=$(seq "$max_shards" -1 1)
    for c in "${cases[@]}"; do
        IFS=: read -r w name rate <<<"$c"
        for s in $counts; do
            start_shardmq "$s" always
            run_bench "$csv" shardmq "$name" max "$r" "$s" -- \
                --workload "config/bench/$w.toml" --rate "$rate" \
                --duration-secs "$duration" --warmup-secs 1 --threads "${BENCH_THREADS:-2}" ||
                die "shardmq broke a run; see $out/failures.txt"
            stop_broker
        done
    done
done

python3 "$REPORT_PY" scaling "$csv" "$out"
echo "results: $out"
