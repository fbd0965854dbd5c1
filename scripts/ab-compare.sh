#!/usr/bin/env bash
# Today's shardmq beside an earlier commit of itself, on the same workloads, in one run.
#
#   scripts/ab-compare.sh BASE_REV [--repeats R] [--duration S] [--shards "1 2"]
#                         [--workloads "p2p p2p-qos1 fanout fanin"] [--quick]
#
# Builds the release broker of BASE_REV in a git worktree under target/ab/ (its own
# target dir, so today's build is untouched), then runs the two brokers one after the
# other, each started fresh, on the same workloads and shard counts; the order
# alternates between repeats (default 3). The generator is today's shardmq-bench for both.
# What a change costs or saves is the ratio in one run: the machine is shared and noisy.
#
# Workloads are config/bench/*.toml at maximum rate; p2p-qos1 is p2p at QoS 1 (under
# fsync_policy = always, the default).
#
# Writes target/bench-results/ab-<date>/: runs.csv, peers-medians.csv, peers.md (the
# medians per workload, "shardmq" is today's tree, "shardmq-base" is BASE_REV).
# --quick: 1 repeat of 2 s, p2p only, to prove the script works.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

[[ $# -ge 1 ]] || die "usage: $0 BASE_REV [options] (see --help)"
base_rev=$1
shift
repeats=3
duration=5
shard_counts="1 2"
workloads="p2p p2p-qos1"
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) repeats=1 duration=2 workloads="p2p" ;;
        --repeats) repeats=$2; shift ;;
        --duration) duration=$2; shift ;;
        --shards) shard_counts=$2; shift ;;
        --workloads) workloads=$2; shift ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
(( repeats >= 1 && duration >= 1 )) || die "repeats and duration must be >= 1"

base_sha=$(git rev-parse --verify "$base_rev^{commit}") || die "unknown revision $base_rev"
base_tree=target/ab/$base_sha
if [[ ! -x $base_tree/target/release/shardmq ]]; then
    mkdir -p target/ab
    [[ -d $base_tree ]] || git worktree add --detach "$base_tree" "$base_sha"
    (cd "$base_tree" && cargo build --release --bin shardmq)
fi
base_bin=$PWD/$base_tree/target/release/shardmq
new_bin=$PWD/target/release/shardmq

begin_results ab
meta_lines "$0 $base_rev" >"$out/meta.txt"
echo "base:    $base_sha" >>"$out/meta.txt"

workload_args() {
    case $1 in
        p2p-qos1) echo "--workload config/bench/p2p.toml --qos 1" ;;
        *) echo "--workload config/bench/$1.toml" ;;
    esac
}

for r in $(seq "$repeats"); do
    order="new base"
    (( r % 2 == 0 )) && order="base new"
    for w in $workloads; do
        for s in $shard_counts; do
            for which in $order; do
                system=shardmq
                BROKER_BIN=$new_bin
                if [[ $which == base ]]; then
                    system=shardmq-base
                    BROKER_BIN=$base_bin
                fi
                echo "== repeat $r: $system $w shards=$s"
                start_shardmq "$s"
                # shellcheck disable=SC2046
                run_bench "$csv" "$system" "$w-s$s" max "$r" "$s" -- \
                    $(workload_args "$w") --rate 0 --duration-secs "$duration" \
                    --warmup-secs 1 --threads "${BENCH_THREADS:-2}" ||
                    echo "  (run failed; see $out/failures.txt)" >&2
                stop_broker
            done
        done
    done
done

python3 "$REPORT_PY" peers "$csv" "$out"
echo "results in $out"
