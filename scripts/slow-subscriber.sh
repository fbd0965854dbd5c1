#!/usr/bin/env bash
# A subscriber that stops reading while publishers flood, against the release broker
# for SECS seconds (default 60): two QoS 0 publishers at full speed and one QoS 1
# publisher (1024 in flight) each have one healthy subscriber and one stuck one (it
# subscribes, then never reads its socket). Samples the broker's RSS every second and
# fails if the maximum exceeds the bound below; prints the drop and limit counters and
# both generators' reports (the QoS 1 one must show 0 lost for its healthy subscriber).
#
#   scripts/slow-subscriber.sh [SECS]
#
# The bound, from the default limits: the RSS once everything is connected, plus for
# each of the 4 subscriptions its session queue (session_queue_bytes_max, 16 MiB) and
# twice its pending output (connection_out_bytes_max, 1 MiB, one buffer in the writer and
# one filling), plus each mesh link (mesh_link_bytes_max, 16 MiB, 2 links with 2 shards),
# plus 64 MiB for allocator slack and the WAL buffers touched under load.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

secs=${1:-60}
cargo build --release --bins
trap stop_broker EXIT
start_shardmq
bench() {
    "$BENCH_BIN" --port "$BROKER_PORT" --payload-bytes 1024 --topics 1 \
        --subscribers 1 --stuck-subscribers 1 --duration-secs "$secs" "$@"
}
bench --topic-prefix q0 --qos 0 --publishers 2 > "$BROKER_DIR/q0.txt" 2>&1 &
q0=$!
bench --topic-prefix q1 --qos 1 --publishers 1 --inflight 1024 > "$BROKER_DIR/q1.txt" 2>&1 &
q1=$!
sleep 2
baseline=$(broker_rss_kib)
bound=$(( baseline + (4 * (16 + 2 * 1) + 2 * 16 + 64) * 1024 ))
max=$baseline
for _ in $(seq "$secs"); do
    sleep 1
    rss=$(broker_rss_kib)
    (( rss > max )) && max=$rss
    printf '%s rss %d KiB\n' "$(date -u +%T)" "$rss"
done
wait "$q0" "$q1" || true
echo "--- QoS 0 generator"; cat "$BROKER_DIR/q0.txt"
echo "--- QoS 1 generator"; cat "$BROKER_DIR/q1.txt"
echo "--- broker counters"
broker_metrics '^shardmq_(messages_dropped_total|limit_hits_total)' | grep -v ' 0$' || true
echo "broker RSS: baseline $((baseline / 1024)) MiB, max $((max / 1024)) MiB, bound $((bound / 1024)) MiB"
(( max <= bound )) || { echo "FAIL: RSS exceeded the bound"; exit 1; }
echo "ok: RSS stayed under the bound"
