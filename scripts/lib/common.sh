# The helpers of every script in scripts/ (sourced, not run; the caller has cd'ed to the
# repository root).
#
# Starts and stops brokers on loopback (shardmq, mosquitto, nats-server, rumqttd), reads
# the running broker's memory and metrics, runs one shardmq-bench measurement and appends
# it as a CSV row. One broker at a time: it runs in this shell's job table and is stopped
# by its PID ($BROKER_PID); its data dir ($BROKER_DIR) lives under target/ (the real
# disk: tmpfs would silently turn O_DIRECT off) and is removed when it stops.

# BROKER_BIN and BENCH_BIN may name other builds (an A/B run of two commits).
BENCH_BIN=${BENCH_BIN:-target/release/shardmq-bench}
BROKER_BIN=${BROKER_BIN:-target/release/shardmq}
REPORT_PY=scripts/lib/bench_report.py
BROKER_PID=
BROKER_PORT=
BROKER_METRICS=
BROKER_DIR=

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# Prints the calling script's header comment (its usage) and exits, if an argument
# before any `--` is -h or --help. Call it with the script's arguments.
help_if_asked() {
    local arg
    for arg in "$@"; do
        case $arg in
            --) return 0 ;;
            -h|--help)
                awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
                exit 0 ;;
        esac
    done
}

# The lines every results directory's meta.txt starts with: COMMAND, machine, date, commit.
meta_lines() {
    echo "command: $1"
    echo "machine: $(machine_line)"
    echo "date:    $(date -u +%FT%TZ)"
    echo "commit:  $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
}

# A TCP port nobody listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until something accepts TCP connections on 127.0.0.1:$1 (at most 10 s).
wait_port() {
    local port=$1
    for _ in $(seq 100); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
            return 0
        fi
        kill -0 "$BROKER_PID" 2>/dev/null || die "broker exited before listening on $port (log: $BROKER_DIR/broker.log)"
        sleep 0.1
    done
    die "nothing listens on port $port after 10 s (log: $BROKER_DIR/broker.log)"
}

new_broker_dir() {
    mkdir -p target/bench-data
    BROKER_DIR=$(mktemp -d -p target/bench-data "$1-XXXXXX")
}

# start_shardmq [SHARDS [FSYNC_POLICY]]: the release broker on free loopback ports (MQTT
# in $BROKER_PORT, metrics host:port in $BROKER_METRICS) with a fresh data dir; an empty
# or missing argument leaves the broker's default. Other SHARDMQ_* settings come from the
# caller's environment, command-line arguments (e.g. `--config FILE`) from $BROKER_ARGS. Returns once the broker logged that it is ready (at most 20 s).
start_shardmq() {
    local shards=${1:-} policy=${2:-} log
    new_broker_dir shardmq
    log=$BROKER_DIR/broker.log
    : >"$log"
    # env(1) execs the broker, so $! is the broker's PID.
    env SHARDMQ_MQTT_LISTEN=127.0.0.1:0 SHARDMQ_METRICS_LISTEN=127.0.0.1:0 \
        SHARDMQ_DATA_DIR="$BROKER_DIR" SHARDMQ_LOG_FORMAT=json \
        SHARDMQ_LOG_LEVEL="${SHARDMQ_LOG_LEVEL:-info}" \
        ${shards:+SHARDMQ_SHARDS="$shards"} ${policy:+SHARDMQ_FSYNC_POLICY="$policy"} \
        "$BROKER_BIN" ${BROKER_ARGS:-} >"$log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 200); do
        grep -q 'shardmq ready' "$log" && break
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    grep -q 'shardmq ready' "$log" || { cat "$log" >&2; die "shardmq did not start"; }
    BROKER_PORT=$(grep -o '"mqtt_listen":"[^"]*"' "$log" | head -1 | sed 's/.*:\([0-9]*\)"$/\1/')
    BROKER_METRICS=$(grep -o '"metrics_listen":"[^"]*"' "$log" | head -1 | sed 's/.*"\([^"]*\)"$/\1/')
}

# VmRSS of the running broker in KiB.
broker_rss_kib() {
    awk '/^VmRSS:/ {print $2}' "/proc/$BROKER_PID/status"
}

# The running shardmq's /metrics lines matching an extended regex.
broker_metrics() {
    curl -s "http://$BROKER_METRICS/metrics" | grep -E "$1" || true
}

start_mosquitto() {
    new_broker_dir mosquitto
    BROKER_PORT=$(free_port)
    cat >"$BROKER_DIR/mosquitto.conf" <<EOF
listener $BROKER_PORT 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
log_dest stderr
log_type error
EOF
    mosquitto -c "$BROKER_DIR/mosquitto.conf" >"$BROKER_DIR/broker.log" 2>&1 &
    BROKER_PID=$!
    wait_port "$BROKER_PORT"
}

# start_relay THREADS CPUS: shardmq-bench's relay mode (`--relay`: the least work that
# passes a QoS 0 publish on as it arrives, a floor under any broker's CPU per delivery) on
# a free port, THREADS threads pinned to CPUS (e.g. 0 or 0,1).
start_relay() {
    new_broker_dir relay
    BROKER_PORT=$(free_port)
    "$BENCH_BIN" --relay "127.0.0.1:$BROKER_PORT" --threads "$1" --cpus "$2" \
        >"$BROKER_DIR/broker.log" 2>&1 &
    BROKER_PID=$!
    wait_port "$BROKER_PORT"
}

# MQTT 3.1.1 and QoS <= 1 only; JetStream holds sessions and QoS 1 messages.
start_nats() {
    new_broker_dir nats
    BROKER_PORT=$(free_port)
    cat >"$BROKER_DIR/nats.conf" <<EOF
server_name: bench
listen: 127.0.0.1:$(free_port)
jetstream { store_dir: "$PWD/$BROKER_DIR/js" }
mqtt { host: 127.0.0.1, port: $BROKER_PORT }
EOF
    nats-server -c "$BROKER_DIR/nats.conf" >"$BROKER_DIR/broker.log" 2>&1 &
    BROKER_PID=$!
    wait_port "$BROKER_PORT"
}

# v4 (3.1.1) and v5 listeners on separate ports; BROKER_PORT is the one for $MQTT_VERSION.
start_rumqttd() {
    new_broker_dir rumqttd
    local v4 v5
    v4=$(free_port)
    v5=$(free_port)
    cat >"$BROKER_DIR/rumqttd.toml" <<EOF
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$v4"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
[v5.1]
name = "v5-1"
listen = "127.0.0.1:$v5"
next_connection_delay_ms = 1
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
EOF
    "$RUMQTTD_BIN" -c "$BROKER_DIR/rumqttd.toml" -q >"$BROKER_DIR/broker.log" 2>&1 &
    BROKER_PID=$!
    if [[ ${MQTT_VERSION:-4} == 5 ]]; then BROKER_PORT=$v5; else BROKER_PORT=$v4; fi
    wait_port "$BROKER_PORT"
}

stop_broker() {
    if [[ -n $BROKER_PID ]]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=
    [[ -n $BROKER_DIR ]] && rm -rf "$BROKER_DIR"
    BROKER_DIR=
    BROKER_METRICS=
}

# run_bench CSV SYSTEM WORKLOAD MODE REPEAT SHARDS -- BENCH ARGS...: one measurement
# against the running broker; the JSON report is kept beside the CSV and appended as a row.
# A run the broker breaks (it closes a connection, e.g. a peer cutting off a slow consumer)
# is a result, not a script error: it is listed in failures.txt beside the CSV, warned
# about, and run_bench returns 1.
run_bench() {
    local csv=$1 system=$2 workload=$3 mode=$4 repeat=$5 shards=$6
    shift 7
    local json
    json="$(dirname "$csv")/raw/$system-$workload-$mode-s$shards-r$repeat.json"
    mkdir -p "$(dirname "$json")"
    if ! "$BENCH_BIN" --port "$BROKER_PORT" --broker-pid "$BROKER_PID" --json "$@" \
        >"$json" 2>"${json%.json}.log"; then
        local why
        why=$(tail -1 "${json%.json}.log")
        echo "$system $workload $mode r$repeat shards=$shards: $why" >>"$(dirname "$csv")/failures.txt"
        echo "  WARNING: run failed against $system ($workload, $mode): $why" >&2
        rm -f "$json"
        return 1
    fi
    python3 "$REPORT_PY" row "$json" "$csv" "$system" "$workload" "$mode" "$repeat" "$shards"
}

# Waits (up to $1 s, polling each 30 s) until no process at normal priority uses more than
# 20 % of a CPU (compilers, tests, other brokers; niced fuzzers are allowed), then records
# the busiest processes in $2. Returns anyway after the wait.
wait_for_quiet() {
    local wait_secs=$1 note=$2 waited=0 busy
    while true; do
        busy=$(ps -eo pcpu=,ni=,comm= --sort=-pcpu | awk '$1 > 20 && $2 < 10 && $3 != "ps"' | head -5)
        [[ -z $busy ]] && break
        if (( waited >= wait_secs )); then
            echo "machine still busy after ${wait_secs} s; measuring anyway" >&2
            break
        fi
        echo "waiting for a quiet machine (busy: $(tr '\n' ' ' <<<"$busy"))" >&2
        sleep 30
        waited=$((waited + 30))
    done
    { echo "busiest processes at start ($(date -u +%FT%TZ)):"; ps -eo pcpu,ni,etime,comm --sort=-pcpu | head -8; } >"$note"
}

# begin_results NAME: builds the release binaries, creates target/bench-results/NAME-<date>
# (in $out, with runs.csv in $csv), stops any broker on exit and waits for a quiet machine.
begin_results() {
    cargo build --release --bins
    out=target/bench-results/$1-$(date -u +%Y%m%d-%H%M%S)
    mkdir -p "$out"
    csv=$out/runs.csv
    trap stop_broker EXIT
    wait_for_quiet "${QUIET_WAIT_SECS:-600}" "$out/machine-load.txt"
}

# The machine line every table carries.
machine_line() {
    echo "$(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), $(rustc --version | cut -d' ' -f1-2)"
}
