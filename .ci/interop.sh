#!/usr/bin/env bash
# Interoperability: the Mosquitto command-line clients (an independent MQTT
# implementation) publish and subscribe through shardmq with MQTT 3.1.1 and 5.0.
#
# Usage: .ci/interop.sh [path/to/shardmq]   (default: target/debug/shardmq)
# Every step is bounded by `timeout`; any mismatch exits non-zero saying what differed.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${1:-target/debug/shardmq}"
STEP_SECS=15

fail() {
    echo "interop: FAIL: $*" >&2
    exit 1
}

[ -x "$BIN" ] || fail "no shardmq binary at $BIN (build it first: cargo build)"

if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
    echo "== installing mosquitto-clients"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    timeout 300 $SUDO apt-get update
    timeout 300 $SUDO apt-get install -y mosquitto-clients
fi

# The data dir must be on a real disk (O_DIRECT does not work on tmpfs): keep it next
# to the binary, inside the build directory.
WORK="$(mktemp -d "$(dirname "$BIN")/interop.XXXXXX")"
BROKER_PID=""
SUB_PIDS=()
cleanup() {
    for pid in "${SUB_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== starting $BIN"
env SHARDMQ_SHARDS=2 \
    SHARDMQ_MQTT_LISTEN=127.0.0.1:0 \
    SHARDMQ_METRICS_LISTEN=127.0.0.1:0 \
    SHARDMQ_DATA_DIR="$WORK/data" \
    SHARDMQ_LOG_FORMAT=json \
    SHARDMQ_LOG_LEVEL=info \
    "$BIN" 2>"$WORK/broker.log" &
BROKER_PID=$!

PORT=""
for _ in $(seq 1 200); do
    PORT="$(grep -m1 'shardmq ready' "$WORK/broker.log" 2>/dev/null |
        sed -n 's/.*"mqtt_listen":"[^"]*:\([0-9][0-9]*\)".*/\1/p' || true)"
    [ -n "$PORT" ] && break
    kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/broker.log" >&2; fail "broker exited before ready"; }
    sleep 0.1
done
[ -n "$PORT" ] || { cat "$WORK/broker.log" >&2; fail "broker not ready within 20 s"; }
echo "broker listens on 127.0.0.1:$PORT"

pub() {
    timeout "$STEP_SECS" mosquitto_pub -h 127.0.0.1 -p "$PORT" -V "$1" -i "interop-pub-$RANDOM" "${@:2}" ||
        fail "mosquitto_pub $* exited $?"
}

# The retained message goes first: each subscriber receives it on subscribe, which
# also tells us its subscription is in place before the live messages are sent.
pub mqttv311 -q 1 -r -t interop/retained -m kept

EXPECTED="$(printf '%s\n' \
    "1 1 interop/retained kept" \
    "0 0 interop/q0 zero" \
    "0 1 interop/q1 one" \
    "0 2 interop/q2 two" | sort)"
COUNT="$(printf '%s\n' "$EXPECTED" | wc -l)"

for version in mqttv311 mqttv5; do
    timeout "$STEP_SECS" mosquitto_sub -h 127.0.0.1 -p "$PORT" -V "$version" \
        -i "interop-sub-$version" -q 2 -t 'interop/#' -C "$COUNT" -F '%r %q %t %p' \
        >"$WORK/sub-$version.out" 2>"$WORK/sub-$version.err" &
    SUB_PIDS+=($!)
done

for version in mqttv311 mqttv5; do
    ok=""
    for _ in $(seq 1 100); do
        if grep -q 'interop/retained' "$WORK/sub-$version.out" 2>/dev/null; then
            ok=1
            break
        fi
        sleep 0.1
    done
    [ -n "$ok" ] || fail "$version subscriber got no retained message within 10 s: $(cat "$WORK/sub-$version.err")"
done

pub mqttv5 -q 0 -t interop/q0 -m zero
pub mqttv311 -q 1 -t interop/q1 -m one
pub mqttv5 -q 2 -t interop/q2 -m two

status=0
for i in "${!SUB_PIDS[@]}"; do
    wait "${SUB_PIDS[$i]}" || status=$?
done
SUB_PIDS=()

for version in mqttv311 mqttv5; do
    got="$(sort "$WORK/sub-$version.out")"
    if [ "$got" != "$EXPECTED" ]; then
        echo "expected (retain qos topic payload):" >&2
        echo "$EXPECTED" >&2
        echo "got from $version subscriber:" >&2
        echo "$got" >&2
        cat "$WORK/sub-$version.err" >&2
        fail "$version subscriber saw different messages"
    fi
    echo "$version subscriber: ok ($COUNT messages)"
done
[ "$status" -eq 0 ] || fail "a subscriber exited with status $status"

kill -0 "$BROKER_PID" 2>/dev/null || fail "broker died during the run"
echo "interop: ok"
