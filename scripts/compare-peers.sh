#!/usr/bin/env bash
# shardmq beside mosquitto, rumqttd and nats-server on the same workloads, in one run.
#
#   scripts/compare-peers.sh [--quick] [--repeats R] [--duration S] [--version 4|5]
#                            [--systems "shardmq shardmq-1 mosquitto rumqttd nats"]
#                            [--workloads "p2p fanout fanin p2p-qos1 durable-qos1"]
#
# Installs the peers when missing: mosquitto and nats-server from Debian (apt-get),
# rumqttd 0.20.0 built from the crate source with `metrics` updated (its locked version no
# longer compiles; see PEERS.md), into target/peers/. Brokers run one after another on
# loopback, each started fresh for each run and stopped by PID; the system order
# alternates between repeats (default 3).
#
# Workloads (config/bench/*.toml, MQTT 3.1.1 by default because nats-server speaks nothing
# newer): p2p, fanout and fanin at QoS 0 run at maximum rate; p2p then runs again at half
# of the delivered rate that run reached, for p99 latency (HALF_RATE_ALL=yes does the same
# for fanout and fanin); p2p-qos1 (p2p at QoS 1) and
# durable-qos1 (64 -> 64, QoS 1) run at maximum rate, shardmq with fsync_policy = always
# ("shardmq") and = none ("shardmq-none"). With durable-qos1, fio first measures the
# disk's own 4 KiB O_DIRECT write + fdatasync rate on the filesystem of the data dirs.
# Every run counts delivered messages at the subscribers and reads broker CPU from /proc.
# "shardmq" runs one shard per CPU; add "shardmq-1" to --systems for one shard, the
# per-core comparison with single-threaded mosquitto (the targets table then has rows
# for both).
#
# Writes target/bench-results/compare-peers-<date>/: runs.csv, peers-medians.csv,
# peers.md (the table for PERF.md, also printed), fio.txt, raw/ (every JSON report).
# --quick: 1 repeat of 2 s, p2p and p2p-qos1 only, to prove the script works.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

repeats=3
duration=5
systems="shardmq mosquitto rumqttd nats"
workloads="p2p fanout fanin p2p-qos1 durable-qos1"
MQTT_VERSION=4
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) repeats=1 duration=2 workloads="p2p p2p-qos1" ;;
        --repeats) repeats=$2; shift ;;
        --duration) duration=$2; shift ;;
        --version) MQTT_VERSION=$2; shift ;;
        --systems) systems=$2; shift ;;
        --workloads) workloads=$2; shift ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
(( repeats >= 1 && duration >= 1 )) || die "repeats and duration must be >= 1"
[[ $MQTT_VERSION == 4 || $MQTT_VERSION == 5 ]] || die "--version must be 4 or 5"
if [[ $MQTT_VERSION == 5 && $systems == *nats* ]]; then
    echo "nats-server speaks MQTT 3.1.1 only: leaving it out of a --version 5 run" >&2
    systems=$(sed 's/\bnats\b//' <<<"$systems")
fi

# --- peers ------------------------------------------------------------------------------
RUMQTTD_VERSION=0.20.0
RUMQTTD_BIN=${RUMQTTD_BIN:-$PWD/target/peers/bin/rumqttd}

install_apt_peers() {
    local missing=()
    command -v mosquitto >/dev/null || missing+=(mosquitto)
    command -v nats-server >/dev/null || missing+=(nats-server)
    [[ $workloads == *durable* ]] && ! command -v fio >/dev/null && missing+=(fio)
    if (( ${#missing[@]} )); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    # A packaged broker may have been started as a service; ours run on their own ports,
    # but a busy service would share the CPUs.
    systemctl stop mosquitto nats-server 2>/dev/null || true
}

# rumqttd's locked `metrics` 0.22.1 no longer compiles on current Rust: build the crate's
# own source with `metrics` moved to the next patch release.
install_rumqttd() {
    [[ -x $RUMQTTD_BIN ]] && return 0
    echo "building rumqttd $RUMQTTD_VERSION into target/peers (several minutes)" >&2
    local work=target/peers/src
    rm -rf "$work" && mkdir -p "$work/fetch/src"
    cat >"$work/fetch/Cargo.toml" <<EOF
[package]
name = "fetch-rumqttd"
version = "0.0.0"
edition = "2021"
[dependencies]
rumqttd = "=$RUMQTTD_VERSION"
EOF
    echo 'fn main() {}' >"$work/fetch/src/main.rs"
    (cd "$work/fetch" && cargo fetch -q)
    local crate
    crate=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rumqttd-$RUMQTTD_VERSION | head -1)
    [[ -d $crate ]] || die "rumqttd $RUMQTTD_VERSION source not found in the cargo registry"
    cp -r "$crate" "$work/rumqttd"
    (cd "$work/rumqttd" && cargo update -q -p metrics &&
        nice -n 10 cargo install -q --path . --locked --root "$PWD/../..")
    [[ -x $RUMQTTD_BIN ]] || die "rumqttd build finished without $RUMQTTD_BIN"
}

start_system() {
    case $1 in
        shardmq) start_shardmq "$(nproc)" always ;;
        shardmq-none) start_shardmq "$(nproc)" none ;;
        # One shard: the per-core comparison with single-threaded mosquitto.
        shardmq-1) start_shardmq 1 always ;;
        mosquitto) start_mosquitto ;;
        rumqttd) start_rumqttd ;;
        nats) start_nats ;;
        *) die "unknown system $1" ;;
    esac
}

# workload name -> "TOML FAN QOS HALF": FAN = deliveries per publish, HALF = run at half rate.
workload_spec() {
    case $1 in
        p2p) echo "p2p 1 0 yes" ;;
        fanout) echo "fanout 100 0 ${HALF_RATE_ALL:-no}" ;;
        fanin) echo "fanin 1 0 ${HALF_RATE_ALL:-no}" ;;
        p2p-qos1) echo "p2p 1 1 no" ;;
        durable-qos1) echo "durable-qos1 1 1 no" ;;
        *) die "unknown workload $1" ;;
    esac
}

# The disk's own sync rate where the brokers' data dirs live: 4 KiB O_DIRECT writes, each
# followed by fdatasync, for 5 s.
measure_fio() {
    mkdir -p target/bench-data
    local dir
    dir=$(mktemp -d -p target/bench-data fio-XXXXXX)
    fio --name=fdatasync --directory="$dir" --rw=write --bs=4k --size=64m --direct=1 \
        --ioengine=sync --fdatasync=1 --runtime=5 --time_based --output-format=json \
        >"$out/fio.json"
    rm -rf "$dir"
    python3 "$REPORT_PY" fio "$out/fio.json" | tee "$out/fio.txt"
}

# --- run --------------------------------------------------------------------------------
install_apt_peers
[[ $systems == *rumqttd* ]] && install_rumqttd
begin_results compare-peers
{
    meta_lines "scripts/compare-peers.sh --repeats $repeats --duration $duration --version $MQTT_VERSION --systems \"$(xargs <<<"$systems")\" --workloads \"$workloads\""
    echo "peers:   mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') (set_tcp_nodelay true, no persistence)," \
        "nats-server $(nats-server --version | awk '{print $2}') (JetStream on)," \
        "rumqttd $RUMQTTD_VERSION"
} | tee "$out/meta.txt"
[[ $workloads == *durable* ]] && measure_fio

for r in $(seq "$repeats"); do
    for w in $workloads; do
        read -r toml fan qos half <<<"$(workload_spec "$w")"
        order=$systems
        [[ $qos == 1 && $order == *shardmq* ]] && order="$order shardmq-none"
        (( r % 2 == 0 )) && order=$(tr ' ' '\n' <<<"$order" | tac | xargs)
        for sys in $order; do
            common=(--workload "config/bench/$toml.toml" --qos "$qos" --version "$MQTT_VERSION"
                    --duration-secs "$duration" --warmup-secs 1 --threads "${BENCH_THREADS:-2}")
            start_system "$sys"
            ok=yes
            run_bench "$csv" "$sys" "$w" max "$r" 0 -- "${common[@]}" --rate 0 || ok=no
            stop_broker
            if [[ $half == yes && $ok == yes ]]; then
                rate=$(python3 "$REPORT_PY" half-rate "$out/raw/$sys-$w-max-s0-r$r.json" "$fan")
                start_system "$sys"
                run_bench "$csv" "$sys" "$w" half "$r" 0 -- "${common[@]}" --rate "$rate" || true
                stop_broker
            fi
        done
    done
done

python3 "$REPORT_PY" peers "$csv" "$out"
if [[ -s $out/failures.txt ]]; then echo "failed runs (not in the medians):"; cat "$out/failures.txt"; fi
echo "results: $out"
