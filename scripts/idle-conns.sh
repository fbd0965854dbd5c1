#!/usr/bin/env bash
# Idle connections, side by side: N connections (default 15000) opened at RATE per second
# (default 5000) from 16 loopback source addresses and held idle for HOLD seconds (default
# 35) with keep-alive KEEPALIVE (default 60: each sends a PINGREQ every 30 s), against
# shardmq with 2 shards, shardmq with 1 and mosquitto, over MQTT 3.1.1 and 5.0, without and
# with one QoS 1 subscription per connection. A probe client times round trips
# throughout. Prints one table: accept rate, broker RSS per idle connection, broker CPU
# while they are held (the whole hold, the settling included) and once they settled (by
# thread), pings answered, probe p99 while held.
#
#   scripts/idle-conns.sh [N] [HOLD_SECS]
#
# Environment: RATE, KEEPALIVE, SYSTEMS (default "shardmq shardmq-1 mosquitto"),
# VERSIONS (default "4 5"), QUIET_SECS (default 15: the window, from 10 s after the last
# connection opened, over which `pidstat` takes the broker's CPU by thread once every
# connection settled (parked); 0 = none; sysstat is installed if missing when run as
# root; with KEEPALIVE=20 every connection pings inside the window). Each run starts a
# fresh broker. Needs RLIMIT_NOFILE of about N + 300 for the broker and for the
# generator (each is its own process). The idle connections open in two halves, each left
# to settle; "the second half's" is the RSS the second half added, per connection (the
# broker's fixed memory that the first ones touch excluded). Results:
# target/bench-results/idle-conns-<date>/ (one JSON report per run, and report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

n=${1:-15000}
hold=${2:-35}
rate=${RATE:-5000}
keepalive=${KEEPALIVE:-60}
quiet=${QUIET_SECS:-15}
if (( quiet > 0 )) && ! command -v pidstat >/dev/null; then
    if (( EUID == 0 )); then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sysstat
    fi
    command -v pidstat >/dev/null ||
        die "pidstat (Debian: sysstat) is needed for QUIET_SECS; QUIET_SECS=0 skips it"
fi
(( quiet == 0 || hold >= quiet + 10 )) || die "HOLD_SECS must be at least QUIET_SECS + 10"
need=$(( n + 300 ))
(( $(ulimit -Hn) >= need )) || ulimit -Hn "$need" 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) >= need )) || die "RLIMIT_NOFILE is $(ulimit -n); $need needed for $n connections"

cargo build --release --bins 2>&1 | grep -E '^(error|warning)' || true
out=target/bench-results/idle-conns-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
meta_lines "scripts/idle-conns.sh $n $hold (RATE=$rate KEEPALIVE=$keepalive)" >"$out/meta.txt"
trap stop_broker EXIT
for system in ${SYSTEMS:-shardmq shardmq-1 mosquitto}; do
    for version in ${VERSIONS:-4 5}; do
        for sub in no yes; do
            case $system in
                shardmq) start_shardmq 2 ;;
                shardmq-1) start_shardmq 1 ;;
                mosquitto) start_mosquitto ;;
                *) die "unknown system $system" ;;
            esac
            name="$system-v$version-sub-$sub"
            echo "== $name: $n idle connections, held $hold s"
            args=(--port "$BROKER_PORT" --version "$version" --flood 0 --flood-hold "$n"
                  --flood-rate "$rate" --flood-keep-alive-secs "$keepalive" --hold-secs "$hold"
                  --threads 2 --source-ips 16 --probe-interval-ms 200
                  --broker-pid "$BROKER_PID" --json)
            [[ $sub == yes ]] && args+=(--flood-subscribe)
            watcher=
            if (( quiet > 0 )); then
                (sleep $(( (n + rate - 1) / rate + 10 ))
                 pidstat -u -t -p "$BROKER_PID" "$quiet" 1 >"$out/$name.pidstat" 2>&1) &
                watcher=$!
            fi
            "$BENCH_BIN" "${args[@]}" >"$out/$name.json"
            [[ -z $watcher ]] || wait "$watcher" || true
            stop_broker
        done
    done
done
python3 - "$out" <<'PY' | tee "$out/report.md"
import glob, json, os, sys

def settled(path):
    """The broker's CPU over the quiet window, and its busiest threads, from pidstat -t."""
    if not os.path.exists(path):
        return "-"
    total, threads = None, []
    for line in open(path):
        f = line.split()
        if not f or not f[0].startswith("Average") or len(f) < 10 or f[1] == "UID":
            continue
        cpu, command = float(f[8]), f[-1]
        if f[3] == "-":
            total = cpu
        else:
            threads.append((cpu, command.lstrip("|_")))
    if total is None:
        return "-"
    busy = ", ".join(f"{c} {v:.2f}" for v, c in sorted(threads, reverse=True)[:2] if v > 0)
    return f"{total:.2f} % ({busy})" if busy else f"{total:.2f} %"

rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    r = json.load(open(path))["result"]
    held = next(p for p in r["probe"] if p["phase"] == "hold")["round_trips"]
    rows.append((os.path.basename(path)[:-5], r["held"], r["hold_accepts_per_sec"],
                 r["broker_bytes_per_idle_connection"],
                 r.get("broker_marginal_bytes_per_idle_connection") or 0,
                 r["broker_cpu_percent_held"],
                 settled(path[:-5] + ".pidstat"),
                 r["pings"], r["pings_failed"], held["p99_us"]))
print("| run | held | accepted/s | broker RSS per connection | the second half's, each | broker CPU while held | broker CPU settled, by thread | pings answered / failed | probe p99 while held |")
print("|---|---|---|---|---|---|---|---|")
for name, h, acc, rss, marginal, cpu, quiet, pings, failed, p99 in rows:
    print(f"| {name} | {h:,} | {acc:,.0f} | {rss:,} B | {marginal:,} B | {cpu:.2f} % | {quiet} | {pings:,} / {failed} | {p99 / 1000:.1f} ms |")
PY
