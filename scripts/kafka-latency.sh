#!/usr/bin/env bash
# Kafka door: the maximum acks=all produce rate of one partition, then produce → fetch
# latency at half of it, on this machine.
#
# Usage: scripts/kafka-latency.sh [SECONDS] [ROUNDS] [PARTITIONS] [INFLIGHT]
#
# For 100 B and 1 KiB records, against a 1-shard broker on CPU 0 with fsync_policy =
# "always": shardmq-bench --kafka-topic on CPU 1 (a producer connection per partition
# with up to INFLIGHT requests in flight, default 5 as Kafka producers, and batches
# lingering up to 1 ms while some are; one consumer) first produces as fast as acks=all allows (--rate 0, batches up to 1 MB
# as librdkafka's batch.size) to PARTITIONS partitions (default 1) for SECONDS (default
# 10), then offers half of that rate, open loop, for SECONDS and times every record from
# its due time to its fetch. Each run gets a fresh broker, and the disk settles (sync, 5 s)
# before the next: a run writes gigabytes, and their write-back would land on the next
# run's fdatasyncs. ROUNDS rounds (default 3), medians reported. Beside them, on the
# same filesystem: fio's sequential O_DIRECT write bandwidth with 1 MiB writes, bare
# and each followed by fdatasync (what an acks=all log can at most reach). Results:
# target/bench-results/kafka-latency-<date>/ (summary.txt, runs.csv, raw/, meta.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

SECONDS_RUN=${1:-10}
ROUNDS=${2:-3}
PARTITIONS=${3:-1}
INFLIGHT=${4:-5}
(( $(nproc) >= 2 )) || die "needs 2 CPUs: the broker on CPU 0, the generator on CPU 1"
command -v fio >/dev/null || die "fio is missing (apt-get install fio)"

begin_results kafka-latency
meta_lines "scripts/kafka-latency.sh $SECONDS_RUN $ROUNDS $PARTITIONS $INFLIGHT" >"$out/meta.txt"
echo "size,round,offered_per_s,acked_per_s,acked_mb_per_s,records_per_request,p50_us,p99_us,p999_us,request_p99_us,broker_cpu_us_per_record" >"$csv"
mkdir -p "$out/raw" target/bench-data
fio_dir=$(mktemp -d -p target/bench-data fio-XXXXXX)
for sync in 0 1; do
    fio --name=seq --directory="$fio_dir" --rw=write --bs=1M --size=2G --direct=1 \
        --fdatasync="$sync" --ioengine=psync --output-format=json >"$out/fio-sync$sync.json"
    rm -f "$fio_dir"/*
done
rm -rf "$fio_dir"
fio_mb() {
    python3 -c "import json;j=json.load(open('$out/fio-sync$1.json'));print(round(j['jobs'][0]['write']['bw_bytes']/1e6))"
}
fio_bare=$(fio_mb 0)
fio_synced=$(fio_mb 1)
config=$out/kafka.toml
printf '[[kafka_topics]]\nname = "bench"\npartitions = %s\n' "$PARTITIONS" >"$config"

# One run of the generator against a fresh broker; appends a row, prints acked/s.
measure() {
    local size=$1 round=$2 rate=$3 json port
    json=$out/raw/kafka-$size-r$round-rate$rate.json
    port=$(free_port)
    SHARDMQ_KAFKA_LISTEN=127.0.0.1:$port SHARDMQ_CPUS=0 BROKER_ARGS="--config $config" \
        start_shardmq 1 always
    "$BENCH_BIN" --kafka-topic bench --port "$port" --broker-pid "$BROKER_PID" --json \
        --cpus 1,1 --rate "$rate" --payload-bytes "$size" --warmup-secs 2 \
        --kafka-partitions "$PARTITIONS" --kafka-inflight "$INFLIGHT" \
        --duration-secs "$SECONDS_RUN" >"$json" 2>"${json%.json}.log" \
        || { stop_broker; die "the generator failed: $(tail -1 "${json%.json}.log")"; }
    stop_broker
    sync
    sleep 5
    python3 - "$csv" "$size" "$round" "$rate" "$json" <<'EOF'
import json, sys
csv, size, rnd, rate, path = sys.argv[1:6]
r = json.load(open(path))["result"]
lat, req = r["produce_to_fetch"], r["produce_request"]
cpu = r["broker_cpu_us_per_record"]
with open(csv, "a") as f:
    f.write(f"{size},{rnd},{rate},{r['acked_per_s']:.0f},{r['acked_mb_per_s']:.1f},"
            f"{r['records_per_request']:.0f},{lat['p50_us']},{lat['p99_us']},{lat['p999_us']},"
            f"{req['p99_us']},{'' if cpu is None else f'{cpu:.3f}'}\n")
print(f"{r['acked_per_s']:.0f}")
EOF
}

for size in 100 1000; do
    for round in $(seq "$ROUNDS"); do
        max=$(measure "$size" "$round" 0)
        measure "$size" "$round" $((max / 2)) >/dev/null
    done
done

python3 - "$csv" "$fio_bare" "$fio_synced" "$PARTITIONS" "$INFLIGHT" >"$out/summary.txt" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
bare, synced, partitions = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print(f"fio sequential write, 1 MiB O_DIRECT: {bare:.0f} MB/s; each fdatasynced: {synced:.0f} MB/s")
print(f"{partitions} partition(s), a producer connection each, {sys.argv[5]} request(s) in flight")
print()
med = lambda sel, k: statistics.median(float(r[k]) for r in sel)
print("| records | offered | acked records/s | MB/s | of fio (bare / synced) | records/request | produce→fetch p50 / p99 / p99.9 | produce request p99 | broker CPU/record |")
print("|---|---|---|---|---|---|---|---|---|")
for size in ("100", "1000"):
    for half in (False, True):
        sel = [r for r in rows if r["size"] == size and (r["offered_per_s"] != "0") == half]
        if not sel:
            continue
        offered = f"half of max ({med(sel, 'offered_per_s'):,.0f}/s)" if half else "max"
        cpu = [float(r["broker_cpu_us_per_record"]) for r in sel if r["broker_cpu_us_per_record"]]
        cpu = f"{statistics.median(cpu):.3f} µs" if cpu else "-"
        mbs = med(sel, 'acked_mb_per_s')
        print(f"| {size} B | {offered} | {med(sel, 'acked_per_s'):,.0f} | {mbs:.1f} | {100 * mbs / bare:.0f} % / {100 * mbs / synced:.0f} % "
              f"| {med(sel, 'records_per_request'):,.0f} | {med(sel, 'p50_us') / 1000:.2f} / {med(sel, 'p99_us') / 1000:.2f} / "
              f"{med(sel, 'p999_us') / 1000:.2f} ms | {med(sel, 'request_p99_us') / 1000:.2f} ms | {cpu} |")
EOF
cat "$out/summary.txt"
echo "results: $out"
