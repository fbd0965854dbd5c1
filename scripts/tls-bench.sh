#!/usr/bin/env bash
# MQTT over TLS against plain TCP: p2p QoS 0 throughput and the broker's CPU per delivery.
#
#   scripts/tls-bench.sh [--repeats R] [--duration S] [--shards N] [--quick]
#
# One broker configuration with both listeners (mqtts_listen with a P-256 certificate
# made here by openssl, TLS 1.3 negotiated); the same workload (config/bench/p2p.toml:
# 4 publishers -> 4 subscribers, 256 B, unlimited rate) runs once against the plain port
# ("shardmq") and once against the TLS port ("shardmq-tls", shardmq-bench --tls-ca),
# each on a fresh broker, in alternating order per repeat (default 3). The machine is
# shared and noisy: compare the ratio within one run.
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
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) repeats=1 duration=2 ;;
        --repeats) repeats=$2; shift ;;
        --duration) duration=$2; shift ;;
        --shards) shards=$2; shift ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
(( repeats >= 1 && duration >= 1 )) || die "repeats and duration must be >= 1"
command -v openssl >/dev/null || die "openssl makes the test certificates: apt-get install openssl"

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
export SHARDMQ_MQTTS_LISTEN=127.0.0.1:0
export SHARDMQ_TLS_CERT_FILE=$pki/server.pem SHARDMQ_TLS_KEY_FILE=$pki/server.key

for r in $(seq "$repeats"); do
    order="plain tls"
    (( r % 2 == 0 )) && order="tls plain"
    for which in $order; do
        start_shardmq "$shards"
        system=shardmq
        tls=()
        if [[ $which == tls ]]; then
            system=shardmq-tls
            BROKER_PORT=$(grep -o '"mqtts_listen":"[^"]*"' "$BROKER_DIR/broker.log" | head -1 |
                sed 's/.*:\([0-9]*\)"$/\1/')
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
