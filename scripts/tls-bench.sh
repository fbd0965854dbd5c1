#!/usr/bin/env bash
# MQTT over TLS against plain TCP: p2p QoS 0 throughput and the broker's CPU per delivery.
#
#   scripts/tls-bench.sh [--repeats R] [--duration S] [--shards N] [--quick]
#
# One broker configuration with both listeners (mqtts_listen with a P-256 certificate
# made here by openssl, TLS 1.3 negotiated); the same workload (config/bench/p2p.toml:
# 4 publishers -> 4 subscribers, 256 B, unlimited rate) runs once against the plain port
# ("shardmq") and once against the TLS port ("shardmq-tls", shardmq-bench --tls-ca),
# each on a fresh broker, in alternating order per repeat (default 3). When mosquitto is
# installed (apt-get install mosquitto), the same pair runs against it too ("mosquitto",
# "mosquitto-tls": one plain and one TLS listener with the same certificate; --no-mosquitto
# leaves it out). The machine is shared and noisy: compare the ratios within one run.
#
# Writes target/bench-results/tls-<date>/: runs.csv, peers-medians.csv, peers.md and the
# raw JSON reports. --quick: 1 repeat of 2 s, to prove the script works.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

args="$*"
repeats=3
duration=5
shards=2
peers=mosquitto
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) repeats=1 duration=2 ;;
        --no-mosquitto) peers= ;;
        --repeats) repeats=$2; shift ;;
        --duration) duration=$2; shift ;;
        --shards) shards=$2; shift ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
(( repeats >= 1 && duration >= 1 )) || die "repeats and duration must be >= 1"
command -v openssl >/dev/null || die "openssl makes the test certificates: apt-get install openssl"
if [[ -n $peers ]] && ! command -v mosquitto >/dev/null; then
    echo "mosquitto is not installed: measuring shardmq only (apt-get install mosquitto)" >&2
    peers=
fi

begin_results tls
meta_lines "$0 $args" >"$out/meta.txt"

pki=$PWD/$out/pki
mkdir -p "$pki"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$pki/ca.key" -out "$pki/ca.pem" -days 2 \
    -subj /CN=shardmq-bench-ca 2>/dev/null
openssl req "${ec[@]}" -keyout "$pki/server.key" -out "$pki/server.csr" \
    -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$pki/server.ext"
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
    -CAcreateserial -out "$pki/server.pem" -days 2 -extfile "$pki/server.ext" 2>/dev/null
# A throwaway key: mosquitto started as root reads it after dropping to its own user.
chmod 644 "$pki/server.key"
export SHARDMQ_MQTTS_LISTEN=127.0.0.1:0
export SHARDMQ_TLS_CERT_FILE=$pki/server.pem SHARDMQ_TLS_KEY_FILE=$pki/server.key

# mosquitto with a plain listener on $BROKER_PORT and a TLS one on $TLS_PORT.
start_mosquitto_tls() {
    new_broker_dir mosquitto
    BROKER_PORT=$(free_port)
    TLS_PORT=$(free_port)
    cat >"$BROKER_DIR/mosquitto.conf" <<CONF
allow_anonymous true
set_tcp_nodelay true
persistence false
log_dest stderr
log_type error
listener $BROKER_PORT 127.0.0.1
listener $TLS_PORT 127.0.0.1
certfile $pki/server.pem
keyfile $pki/server.key
CONF
    mosquitto -c "$BROKER_DIR/mosquitto.conf" >"$BROKER_DIR/broker.log" 2>&1 &
    BROKER_PID=$!
    wait_port "$BROKER_PORT"
    wait_port "$TLS_PORT"
}

for r in $(seq "$repeats"); do
    order="shardmq:plain shardmq:tls"
    [[ -n $peers ]] && order+=" mosquitto:plain mosquitto:tls"
    (( r % 2 == 0 )) && order=$(tr ' ' '\n' <<<"$order" | tac | tr '\n' ' ')
    for run in $order; do
        broker=${run%%:*} which=${run##*:}
        tls=()
        if [[ $broker == shardmq ]]; then
            start_shardmq "$shards"
            TLS_PORT=$(grep -o '"mqtts_listen":"[^"]*"' "$BROKER_DIR/broker.log" | head -1 |
                sed 's/.*:\([0-9]*\)"$/\1/')
        else
            start_mosquitto_tls
        fi
        system=$broker
        if [[ $which == tls ]]; then
            system=$broker-tls
            BROKER_PORT=$TLS_PORT
            tls=(--tls-ca "$pki/ca.pem")
        fi
        echo "== repeat $r: $system p2p shards=$shards"
        run_bench "$csv" "$system" p2p max "$r" "$shards" -- \
            --workload config/bench/p2p.toml --rate 0 --duration-secs "$duration" \
            --warmup-secs 1 --threads "${BENCH_THREADS:-2}" "${tls[@]}" ||
            echo "  (run failed; see $out/failures.txt)" >&2
        stop_broker
    done
done

python3 "$REPORT_PY" peers "$csv" "$out"
echo "results in $out"
