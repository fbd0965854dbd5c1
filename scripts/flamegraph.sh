#!/usr/bin/env bash
# Profiles the broker under one named workload and renders a flamegraph.
#
#   scripts/flamegraph.sh [--workload NAME] [--shards N] [--duration S] [--out OUT.svg]
#                         [--frame-pointers] [-- EXTRA SHARDMQ-BENCH ARGS]
#
# Starts the release broker on free ports with a temp data dir on the real disk, runs
# shardmq-bench with config/bench/NAME.toml (default p2p) plus the extra arguments (e.g.
# `-- --rate 25000` for a fixed rate), and records the broker meanwhile with
# `perf record -e cpu-clock` (hardware counters are often missing on VMs) and DWARF call
# graphs (release builds have no frame pointers; --frame-pointers builds the broker with
# them into target/fp instead and records with -g, which is cheaper per sample). The
# recording skips the first second of warm-up. Renders OUT.svg (default
# target/flamegraph-<workload>-<date>.svg) with inferno, keeps the folded stacks beside it
# and prints the 15 functions with the most self time. Installs linux-perf (apt) and
# inferno (cargo) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

workload=p2p
shards=0
duration=10
out=
frame_pointers=no
while [[ $# -gt 0 ]]; do
    case $1 in
        --workload) workload=$2; shift ;;
        --shards) shards=$2; shift ;;
        --duration) duration=$2; shift ;;
        --out) out=$2; shift ;;
        --frame-pointers) frame_pointers=yes ;;
        --) shift; break ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ -f config/bench/$workload.toml ]] || die "no workload config/bench/$workload.toml"
(( duration >= 2 )) || die "--duration must be at least 2 s"
out=${out:-target/flamegraph-$workload-$(date -u +%Y%m%d-%H%M%S).svg}

command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked

cargo build --release --bins
call_graph=(--call-graph dwarf,16384)
if [[ $frame_pointers == yes ]]; then
    RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release --bin shardmq --target-dir target/fp
    BROKER_BIN=target/fp/release/shardmq
    call_graph=(-g)
fi
trap stop_broker EXIT
(( shards > 0 )) || shards=$(nproc)
start_shardmq "$shards" always

"$BENCH_BIN" --port "$BROKER_PORT" --broker-pid "$BROKER_PID" --workload "config/bench/$workload.toml" \
    --duration-secs "$duration" --warmup-secs 1 --threads "${BENCH_THREADS:-2}" "$@" \
    >"$BROKER_DIR/bench.txt" 2>&1 &
bench=$!
sleep 1.5
perf record -e cpu-clock -F 999 "${call_graph[@]}" -p "$BROKER_PID" -o "$BROKER_DIR/perf.data" \
    -- sleep "$((duration - 1))" 2>/dev/null
wait "$bench" || { cat "$BROKER_DIR/bench.txt" >&2; die "shardmq-bench failed"; }
grep -vE '^\[' "$BROKER_DIR/bench.txt"

mkdir -p "$(dirname "$out")"
perf script -i "$BROKER_DIR/perf.data" 2>/dev/null | inferno-collapse-perf >"${out%.svg}.folded"
inferno-flamegraph --title "shardmq $workload $*" <"${out%.svg}.folded" >"$out"
echo "top self time (share of broker samples):"
awk '{n = $NF; $NF = ""; k = split($0, f, ";"); leaf = f[k]; sub(/ +$/, "", leaf); self[leaf] += n; total += n}
     END {for (s in self) printf "%6.2f%%  %s\n", 100 * self[s] / total, s}' "${out%.svg}.folded" |
    sort -rn | sed -n 1,15p
echo "flamegraph: $out (folded stacks: ${out%.svg}.folded)"
