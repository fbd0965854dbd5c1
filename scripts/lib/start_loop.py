"""Start-up under load: many consecutive starts of one or more broker binaries, side by
side, on a host kept busy by CPU burners. Run by scripts/start-loop.sh (see its header).

Each broker gets its own data dir under target/, filled once with QoS 1 messages for
persistent sessions (so every start recovers a WAL, replays and restores sessions), and is
then started STARTS times. A start counts from the process's exec to its "shardmq ready"
log line; one that is not ready within --stuck-ms is stuck: it is killed, counted and its
log kept. Starts alternate between the binaries, and between a SIGTERM and a kill -9 stop,
so all of them see the same load at the same time.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--starts", type=int, default=1000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--burners", type=int, default=2 * os.cpu_count())
    p.add_argument("--stuck-ms", type=int, default=10_000)
    p.add_argument("--bench", default="target/release/shardmq-bench")
    p.add_argument("--out", required=True)
    p.add_argument("brokers", nargs="+", metavar="NAME=BIN")
    return p.parse_args()


class Broker:
    def __init__(self, name, binary, shards, out):
        self.name, self.binary, self.shards = name, binary, shards
        os.makedirs("target/bench-data", exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix=f"start-loop-{name}-", dir="target/bench-data")
        self.log_path = os.path.join(self.dir, "broker.log")
        self.out = out
        self.times_ms = []
        self.stuck = []
        self.proc = None

    def env(self):
        env = dict(os.environ)
        env.update(
            SHARDMQ_MQTT_LISTEN="127.0.0.1:0",
            SHARDMQ_METRICS_LISTEN="127.0.0.1:0",
            SHARDMQ_DATA_DIR=os.path.join(self.dir, "data"),
            SHARDMQ_LOG_FORMAT="json",
            SHARDMQ_LOG_LEVEL="info,shardmq::shard=debug",
            SHARDMQ_SHARDS=str(self.shards),
            # The broker's own give-up; the loop's --stuck-ms is shorter and decides.
            SHARDMQ_START_TIMEOUT_MS="120000",
        )
        return env

    def start(self):
        """Starts the broker; returns (ready, ms, mqtt_port)."""
        log = open(self.log_path, "w")
        began = time.monotonic()
        self.proc = subprocess.Popen([self.binary], env=self.env(), stdout=log, stderr=log)
        log.close()
        deadline = began + STUCK_MS / 1000
        offset = 0
        pending = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False, (time.monotonic() - began) * 1000, None
            with open(self.log_path) as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                if '"shardmq ready"' in line:
                    ms = (time.monotonic() - began) * 1000
                    port = json.loads(line)["mqtt_listen"].rsplit(":", 1)[1]
                    return True, ms, int(port)
            time.sleep(0.005)
        return False, (time.monotonic() - began) * 1000, None

    def stop(self, hard):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def keep_stuck_log(self, n):
        path = os.path.join(self.out, f"stuck-{self.name}-{n}.log")
        shutil.copyfile(self.log_path, path)
        self.stuck.append((n, path))


def fill(broker, bench):
    """Gives the broker's log something to recover: persistent sessions and QoS 1 data."""
    ready, _, port = broker.start()
    if not ready:
        sys.exit(f"start-loop: {broker.name} did not start for the fill (log {broker.log_path})")
    subprocess.run(
        [bench, "--host", "127.0.0.1", "--port", str(port), "--qos", "1",
         "--publishers", "4", "--subscribers", "4", "--duration-secs", "1", "--threads", "1"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    broker.stop(hard=True)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main():
    global STUCK_MS
    args = parse_args()
    STUCK_MS = args.stuck_ms
    os.makedirs(args.out, exist_ok=True)
    brokers = []
    for spec in args.brokers:
        name, _, binary = spec.partition("=")
        if not binary or not os.access(binary, os.X_OK):
            sys.exit(f"start-loop: {spec}: expected NAME=BIN with an executable BIN")
        brokers.append(Broker(name, binary, args.shards, args.out))
    for broker in brokers:
        fill(broker, args.bench)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(args.burners)]
    try:
        for n in range(1, args.starts + 1):
            for broker in brokers:
                ready, ms, _ = broker.start()
                if ready:
                    broker.times_ms.append(ms)
                else:
                    broker.keep_stuck_log(n)
                    print(f"start {n}: {broker.name} NOT ready after {ms:.0f} ms "
                          f"(log kept in {broker.stuck[-1][1]})", flush=True)
                broker.stop(hard=n % 2 == 0)
            if n % 100 == 0:
                line = ", ".join(
                    f"{b.name}: {len(b.stuck)} stuck, median {statistics.median(b.times_ms):.0f} ms"
                    for b in brokers if b.times_ms)
                print(f"after {n} starts: {line}", flush=True)
    finally:
        for burner in burners:
            burner.kill()
        for broker in brokers:
            broker.stop(hard=True)
    print()
    print("| broker | starts | stuck (not ready in "
          f"{STUCK_MS / 1000:.0f} s) | start to ready, median | p99 | max |")
    print("|---|---|---|---|---|---|")
    for b in brokers:
        t = b.times_ms or [0]
        print(f"| {b.name} | {args.starts} | {len(b.stuck)} | {statistics.median(t):.0f} ms "
              f"| {percentile(t, 0.99):.0f} ms | {max(t):.0f} ms |")
    for b in brokers:
        shutil.rmtree(b.dir, ignore_errors=True)
    return 1 if any(b.stuck for b in brokers) else 0


STUCK_MS = 10_000

if __name__ == "__main__":
    sys.exit(main())
