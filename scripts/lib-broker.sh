# Sourced by the scripts here: starts the release broker on free loopback ports with a
# temp data dir on the real disk (target/, never tmpfs: O_DIRECT is off there).
# Sets $broker (pid), $port (MQTT), $metrics (host:port) and $data; stops the broker and
# removes $data on exit. Extra SHARDMQ_* settings come from the caller's environment.

start_broker() {
    mkdir -p target
    data=$(mktemp -d -p target "$1-data-XXXXXX")
    local log=$data/broker.log
    trap 'kill "${broker:-0}" 2>/dev/null || true; wait "${broker:-0}" 2>/dev/null || true; rm -rf "$data"' EXIT
    SHARDMQ_MQTT_LISTEN=127.0.0.1:0 SHARDMQ_METRICS_LISTEN=127.0.0.1:0 \
    SHARDMQ_DATA_DIR=$data SHARDMQ_LOG_FORMAT=json \
        target/release/shardmq 2>"$log" &
    broker=$!
    for _ in $(seq 200); do grep -q 'shardmq ready' "$log" && break; sleep 0.1; done
    port=$(grep -o '"mqtt_listen":"[^"]*"' "$log" | head -1 | sed 's/.*:\([0-9]*\)"$/\1/')
    metrics=$(grep -o '"metrics_listen":"[^"]*"' "$log" | head -1 | sed 's/.*"\([^"]*\)"$/\1/')
    [[ -n $port ]] || { echo "broker did not start:"; cat "$log"; exit 1; }
}

# VmRSS of the broker in KiB.
broker_rss_kib() {
    awk '/^VmRSS:/ {print $2}' "/proc/$broker/status"
}

# The broker's /metrics lines matching a regex.
broker_metrics() {
    curl -s "http://$metrics/metrics" | grep -E "$1" || true
}
