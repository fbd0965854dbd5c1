#!/usr/bin/env bash
# Kafka door throughput beside the disk's limits and the MQTT path, on this machine.
#
# Usage: scripts/kafka-throughput.sh [RECORDS] [ROUNDS]
#
# For 100 B and 1 KiB records: kcat (librdkafka) produces RECORDS records (default
# 200000) to one partition with acks=all against a 1-shard broker with
# fsync_policy = "always" (librdkafka batches them: linger.ms=5, up to 1 MB per batch),
# then fetches them all back; ROUNDS rounds (default 3), medians reported. Beside it, on
# the same filesystem (the broker's data dir under target/): fio's sequential O_DIRECT
# write bandwidth (1 MiB blocks) and its fdatasync rate (4 KiB writes, each synced), and
# shardmq-bench publishing the same payloads over MQTT QoS 1 to one subscriber (4
# publishers, 64 in flight each). Results: target/bench-results/kafka-throughput-<date>/
# (summary.txt, runs.csv, meta.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

RECORDS=${1:-200000}
ROUNDS=${2:-3}
command -v kcat >/dev/null || die "kcat is missing (apt-get install kcat)"
command -v fio >/dev/null || die "fio is missing (apt-get install fio)"

begin_results kafka-throughput
meta_lines "scripts/kafka-throughput.sh $RECORDS $ROUNDS" >"$out/meta.txt"
echo "system,size,round,what,records_per_s,mb_per_s" >"$csv"

# The disk's limits where the broker writes.
mkdir -p target/bench-data
fio_dir=$(mktemp -d -p target/bench-data fio-XXXXXX)
fio --name=seq --directory="$fio_dir" --rw=write --bs=1M --size=1G --direct=1 \
    --ioengine=psync --output-format=json >"$out/fio-seq.json"
fio --name=sync --directory="$fio_dir" --rw=write --bs=4k --size=64M --fdatasync=1 \
    --ioengine=psync --runtime=20 --time_based=0 --output-format=json >"$out/fio-sync.json"
rm -rf "$fio_dir"
seq_mb=$(python3 -c "import json;j=json.load(open('$out/fio-seq.json'));print(round(j['jobs'][0]['write']['bw_bytes']/1e6,1))")
sync_iops=$(python3 -c "import json;j=json.load(open('$out/fio-sync.json'));print(round(j['jobs'][0]['write']['iops']))")
echo "fio,,,seq_write_1MiB_direct,,$seq_mb" >>"$csv"
echo "fio,,,fdatasync_4KiB_per_s,$sync_iops," >>"$csv"

config=$out/kafka.toml
printf '[[kafka_topics]]\nname = "bench"\npartitions = 1\n' >"$config"

for size in 100 1000; do
    data=$out/records-$size.txt
    python3 -c "
import sys
v = 'x' * ($size - 1)
sys.stdout.write(''.join(v + '\n' for _ in range($RECORDS)))" >"$data"
    for round in $(seq "$ROUNDS"); do
        port=$(free_port)
        SHARDMQ_KAFKA_LISTEN=127.0.0.1:$port BROKER_ARGS="--config $config" \
            start_shardmq 1 always
        t0=$(date +%s.%N)
        kcat -b 127.0.0.1:"$port" -P -t bench -p 0 -X acks=all -X linger.ms=5 \
            -X batch.size=1000000 -X queue.buffering.max.messages=1000000 -l "$data"
        t1=$(date +%s.%N)
        got=$(kcat -b 127.0.0.1:"$port" -C -t bench -p 0 -o beginning -e -q \
            -X fetch.max.bytes=52428800 | wc -l)
        t2=$(date +%s.%N)
        stop_broker
        [[ $got == "$RECORDS" ]] || die "fetched $got of $RECORDS records ($size B)"
        python3 - "$csv" "$size" "$round" "$RECORDS" "$t0" "$t1" "$t2" <<'EOF'
import sys
csv, size, rnd, n, t0, t1, t2 = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), *map(float, sys.argv[5:])
with open(csv, "a") as f:
    for what, secs in (("kafka_produce_acks_all", t1 - t0), ("kafka_fetch", t2 - t1)):
        f.write(f"shardmq,{size},{rnd},{what},{n / secs:.0f},{n * size / secs / 1e6:.1f}\n")
EOF
        # The MQTT path with the same payload: QoS 1, acknowledged once durable.
        start_shardmq 1 always
        json=$out/raw/mqtt-$size-r$round.json
        mkdir -p "$out/raw"
        "$BENCH_BIN" --port "$BROKER_PORT" --broker-pid "$BROKER_PID" --json --qos 1 \
            --publishers 4 --subscribers 1 --topics 1 --filter 'bench/#' --inflight 64 \
            --payload-bytes "$size" --duration-secs 10 >"$json" 2>"${json%.json}.log"
        stop_broker
        python3 - "$csv" "$size" "$round" "$json" <<'EOF'
import json, sys
csv, size, rnd, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rate = json.load(open(path))["result"]["published_msgs_per_sec"]
with open(csv, "a") as f:
    f.write(f"shardmq,{size},{rnd},mqtt_qos1_publish,{rate:.0f},{rate * size / 1e6:.1f}\n")
EOF
    done
    # Up to a gigabyte of generated input: not a result worth keeping.
    rm -f "$data"
done

python3 - "$csv" "$seq_mb" >"$out/summary.txt" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
seq = float(sys.argv[2])
print(f"fio sequential write (1 MiB, O_DIRECT): {seq} MB/s")
for r in rows:
    if r["what"] == "fdatasync_4KiB_per_s":
        print(f"fio fdatasync rate (4 KiB writes): {r['records_per_s']}/s")
print()
print("| records | what | records/s (median) | MB/s (median) | of seq write |")
print("|---|---|---|---|---|")
for size in ("100", "1000"):
    for what in ("kafka_produce_acks_all", "kafka_fetch", "mqtt_qos1_publish"):
        sel = [r for r in rows if r["size"] == size and r["what"] == what]
        if not sel:
            continue
        rps = statistics.median(float(r["records_per_s"]) for r in sel)
        mbs = statistics.median(float(r["mb_per_s"]) for r in sel)
        print(f"| {size} B | {what} | {rps:,.0f} | {mbs:.1f} | {100 * mbs / seq:.0f} % |")
EOF
cat "$out/summary.txt"
echo "results: $out"
