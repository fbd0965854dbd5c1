#!/usr/bin/env bash
# Publish throughput with 1,000 ACL rules against none, on the same workloads, in one run.
#
#   scripts/acl-bench.sh [--repeats R] [--duration S] [--shards N] [--connections C] [--quick]
#
# "shardmq" runs without rules; "shardmq-acl1000" with 1,000 [[acl]] tables that apply to
# the bench clients and acl_default = "deny": 997 `deny other/<i>/#`, `readwrite bench/#`,
# `deny bench/+/never` and `deny $SYS/#`. So every publish is checked (through the
# per-connection verdict cache), and a `bench/#` subscription is only partly readable, so
# each of its deliveries is checked as well:
#   p2p    (config/bench/p2p.toml, subscriptions `bench/<j>`, wholly readable): the cost
#          of the publish check alone;
#   fanin  (config/bench/fanin.toml, one `bench/#` subscriber over 100 topics, more than
#          the cache holds): the per-delivery check with cache misses, the worst case.
# Runs alternate between the two brokers per repeat (default 3); the machine is shared and
# noisy, so compare the ratio within one run.
# Then memory: C idle connections (default 2000, each one a client the 1,000 rules apply
# to) are held against each broker, and the broker's RSS growth per connection printed
# (shardmq-bench --flood; the RSS is read before the connections and while they are held).
#
# Writes target/bench-results/acl-<date>/: runs.csv, peers-medians.csv, peers.md,
# memory.txt and flood-<system>.json.
# --quick: 1 repeat of 2 s, to prove the script works.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

args="$*"
repeats=3
duration=5
shards=2
connections=2000
workloads="p2p fanin"
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) repeats=1 duration=2 ;;
        --repeats) repeats=$2; shift ;;
        --duration) duration=$2; shift ;;
        --shards) shards=$2; shift ;;
        --connections) connections=$2; shift ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
(( repeats >= 1 && duration >= 1 && connections >= 1 )) ||
    die "repeats, duration and connections must be >= 1"

begin_results acl
meta_lines "$0 $args" >"$out/meta.txt"

rules=$out/acl1000.toml
{
    echo 'acl_default = "deny"'
    for i in $(seq 997); do
        printf '\n[[acl]]\ntopic = "other/%d/#"\naccess = "deny"\n' "$i"
    done
    printf '\n[[acl]]\ntopic = "bench/#"\naccess = "readwrite"\n'
    printf '\n[[acl]]\ntopic = "bench/+/never"\naccess = "deny"\n'
    printf '\n[[acl]]\ntopic = "$SYS/#"\naccess = "deny"\n'
} >"$rules"
[[ $(grep -c '^\[\[acl\]\]' "$rules") == 1000 ]] || die "expected 1000 rules in $rules"

# start_for none|acl: a fresh broker without rules or with the 1,000; sets $system, its
# name in the results.
start_for() {
    system=shardmq
    if [[ $1 == acl ]]; then
        system=shardmq-acl1000
        export SHARDMQ_CONFIG=$PWD/$rules
    fi
    start_shardmq "$shards"
    unset SHARDMQ_CONFIG
}

for r in $(seq "$repeats"); do
    order="none acl"
    (( r % 2 == 0 )) && order="acl none"
    for w in $workloads; do
        for which in $order; do
            start_for "$which"
            echo "== repeat $r: $system $w shards=$shards"
            run_bench "$csv" "$system" "$w" max "$r" "$shards" -- \
                --workload "config/bench/$w.toml" --rate 0 --duration-secs "$duration" \
                --warmup-secs 1 --threads "${BENCH_THREADS:-2}" ||
                echo "  (run failed; see $out/failures.txt)" >&2
            [[ $which == acl ]] && broker_metrics 'shardmq_acl_denied_total' >>"$out/acl-denied.txt"
            stop_broker
        done
    done
done

for which in none acl; do
    start_for "$which"
    echo "== memory: $system, $connections idle connections, shards=$shards"
    "$BENCH_BIN" --port "$BROKER_PORT" --broker-pid "$BROKER_PID" --flood 100 \
        --flood-hold "$connections" --hold-secs 3 --threads 2 --json >"$out/flood-$system.json"
    python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))["result"]
held, before, during = r["held"], r["broker_rss_start_bytes"], r["broker_rss_held_bytes"]
per = r["broker_bytes_per_idle_connection"]
print(f"{sys.argv[2]}: {held} idle connections held, broker RSS {before >> 10} KiB before, "
      f"{during >> 10} KiB held: {per} bytes per idle connection")' \
        "$out/flood-$system.json" "$system" | tee -a "$out/memory.txt"
    stop_broker
done

python3 "$REPORT_PY" peers "$csv" "$out"
cat "$out/memory.txt"
echo "results in $out"
