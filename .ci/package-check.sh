#!/usr/bin/env bash
# Package check: build the Debian package (scripts/package.sh), install it with apt,
# start the installed broker with the installed config (systemctl where systemd is PID 1,
# else directly as the shardmq user), send one message through it with
# mosquitto_pub/mosquitto_sub, stop it, and purge the package (PACKAGE_CHECK_KEEP=1
# keeps it installed). Needs root (apt). Every wait is bounded; any failure exits
# non-zero saying what failed.
set -euo pipefail
cd "$(dirname "$0")/.."

STEP_SECS=20
START_SECS=60
MQTT_PORT=1883
METRICS_PORT=9883

fail() {
    echo "package-check: FAIL: $*" >&2
    exit 1
}
[ "$(id -u)" -eq 0 ] || fail "run as root (apt-get install, useradd)"

SYSTEMD=0
[ -d /run/systemd/system ] && SYSTEMD=1
BROKER_PID=""
SUB_PID=""
WORK="$(mktemp -d)"
cleanup() {
    [ -n "$SUB_PID" ] && kill "$SUB_PID" 2>/dev/null || true
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    if [ "$SYSTEMD" = 1 ]; then systemctl stop shardmq 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== build the package"
started=$SECONDS
bash scripts/package.sh
DEB="$(ls -t target/debian/shardmq_*.deb | head -n1)"
[ -f "$DEB" ] || fail "no .deb in target/debian"
echo "built $DEB in $((SECONDS - started)) s"
dpkg-deb --info "$DEB" | sed -n '/Package:/,$p'
dpkg-deb --contents "$DEB"

echo "== install it with apt"
export DEBIAN_FRONTEND=noninteractive
timeout 600 apt-get update -qq || echo "apt-get update failed; installing from the lists at hand"
if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
    timeout 300 apt-get install -y -qq mosquitto-clients
fi
timeout 300 apt-get install -y --reinstall "$PWD/$DEB"

echo "== installed files"
/usr/bin/shardmq --version
getent passwd shardmq || fail "no system user shardmq"
[ "$(stat -c %U /var/lib/shardmq)" = shardmq ] || fail "/var/lib/shardmq is not owned by shardmq"
[ -f /usr/lib/systemd/system/shardmq.service ] || fail "no unit in /usr/lib/systemd/system"
[ "$(stat -c '%U:%G %a' /etc/shardmq/shardmq.toml)" = "root:shardmq 640" ] ||
    fail "/etc/shardmq/shardmq.toml is $(stat -c '%U:%G %a' /etc/shardmq/shardmq.toml), not root:shardmq 640"
dpkg-query -W -f='${Conffiles}\n' shardmq | grep -q /etc/shardmq/shardmq.toml ||
    fail "/etc/shardmq/shardmq.toml is not a conffile"
/usr/bin/shardmq --config /etc/shardmq/shardmq.toml --print-config >"$WORK/effective.toml" ||
    fail "the installed config does not load"
grep -qx 'data_dir = "/var/lib/shardmq"' "$WORK/effective.toml" ||
    fail "the installed config's data_dir is not /var/lib/shardmq"

in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ "$SYSTEMD" = 1 ]; then
    for port in $MQTT_PORT $METRICS_PORT; do
        in_use "$port" && fail "port $port is already in use: the packaged config listens there"
    done
else
    # Run directly, the broker takes its ports from the environment: other programs
    # share this machine, so take ports nobody listens on.
    free_port() {
        local port
        for _ in $(seq 1 100); do
            port=$((20000 + RANDOM % 20000))
            in_use "$port" || { echo "$port"; return 0; }
        done
        fail "no free port found"
    }
    MQTT_PORT=$(free_port)
    METRICS_PORT=$(free_port)
    [ "$MQTT_PORT" != "$METRICS_PORT" ] || METRICS_PORT=$(free_port)
    export SHARDMQ_MQTT_LISTEN="127.0.0.1:$MQTT_PORT" SHARDMQ_METRICS_LISTEN="127.0.0.1:$METRICS_PORT"
fi

metrics() {
    exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$1" >&3
    timeout 5 cat <&3
    exec 3<&-
}

echo "== start the installed broker"
if [ "$SYSTEMD" = 1 ]; then
    # Type=notify: systemctl returns once every shard serves (READY=1).
    timeout "$START_SECS" systemctl restart shardmq || {
        journalctl -u shardmq --no-pager -n 50 >&2
        fail "systemctl restart shardmq"
    }
    systemctl is-active --quiet shardmq || fail "shardmq is not active"
    [ "$(ps -o user= -p "$(systemctl show -p MainPID --value shardmq)")" = shardmq ] ||
        fail "the service does not run as shardmq"
else
    echo "(systemd is not PID 1: running /usr/bin/shardmq as the shardmq user)"
    ulimit -l unlimited 2>/dev/null || true
    # setpriv execs the broker itself (no forking wrapper): $! is the broker.
    setpriv --reuid=shardmq --regid=shardmq --init-groups -- \
        /usr/bin/shardmq --config /etc/shardmq/shardmq.toml 2>"$WORK/broker.log" &
    BROKER_PID=$!
    ready=0
    for _ in $(seq 1 $((START_SECS * 10))); do
        grep -q 'shardmq ready' "$WORK/broker.log" && { ready=1; break; }
        kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/broker.log" >&2; fail "broker exited before ready"; }
        sleep 0.1
    done
    [ "$ready" = 1 ] || { cat "$WORK/broker.log" >&2; fail "broker not ready within $START_SECS s"; }
    user="$(ps -o user= -p "$BROKER_PID")"
    [ "$user" = shardmq ] || fail "broker runs as $user, not shardmq"
fi
metrics /health | grep -q '^ok' || fail "/health is not ok"

echo "== one message through it"
timeout "$STEP_SECS" mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -V mqttv5 -i pkg-check-sub \
    -q 1 -t pkg/check -C 1 >"$WORK/received" &
SUB_PID=$!
# Publish once the subscription is in place (the broker counts it).
subscribed=0
for _ in $(seq 1 $((STEP_SECS * 10))); do
    if metrics /metrics | grep '^shardmq_subscriptions_current' | awk '{s += $2} END {exit !(s >= 1)}'; then
        subscribed=1
        break
    fi
    sleep 0.1
done
[ "$subscribed" = 1 ] || fail "mosquitto_sub's subscription never showed in /metrics"
timeout "$STEP_SECS" mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -V mqttv311 -i pkg-check-pub \
    -q 1 -t pkg/check -m "through the package" || fail "mosquitto_pub exited $?"
wait "$SUB_PID" || fail "mosquitto_sub got nothing within $STEP_SECS s"
SUB_PID=""
[ "$(cat "$WORK/received")" = "through the package" ] ||
    fail "received '$(cat "$WORK/received")', sent 'through the package'"
echo "received: $(cat "$WORK/received")"

echo "== stop it"
if [ "$SYSTEMD" = 1 ]; then
    timeout 60 systemctl stop shardmq || fail "systemctl stop shardmq"
else
    kill -TERM "$BROKER_PID"
    status=0
    wait "$BROKER_PID" || status=$?
    BROKER_PID=""
    [ "$status" = 0 ] || { cat "$WORK/broker.log" >&2; fail "broker exited $status on SIGTERM"; }
fi
ls /var/lib/shardmq/shard-0 >/dev/null || fail "no WAL in /var/lib/shardmq"

if [ "${PACKAGE_CHECK_KEEP:-0}" = 1 ]; then
    echo "== kept installed (PACKAGE_CHECK_KEEP=1)"
else
    echo "== purge"
    timeout 300 apt-get purge -y -qq shardmq
    [ ! -e /var/lib/shardmq ] || fail "purge left /var/lib/shardmq"
    [ ! -e /usr/bin/shardmq ] || fail "purge left /usr/bin/shardmq"
fi
echo "package-check: ok in $SECONDS s"
