#!/usr/bin/env python3
"""Turns shardmq-bench JSON reports into CSV rows, medians, markdown tables and an SVG chart.

Used by scripts/shard-scaling.sh, scripts/compare-peers.sh and scripts/light-load.sh:

    bench_report.py row JSON CSV SYSTEM WORKLOAD MODE REPEAT SHARDS
    bench_report.py half-rate JSON FAN      per-publisher rate for half the delivered rate
    bench_report.py scaling CSV OUTDIR      medians per (workload, shards), table, SVG
    bench_report.py peers CSV OUTDIR        medians per (workload, system), ratios to shardmq
    bench_report.py fio JSON                one line from fio's JSON: syncs/s and latency
    bench_report.py targets PEERS_DIR SCALING_DIR   the issue's targets against the medians
    bench_report.py light CSV OUTDIR        medians per (offered rate, system), table, SVG

Standard library only: it runs on a bare machine without network.
"""

import csv
import json
import math
import os
import statistics
import sys

COLUMNS = [
    "system", "workload", "mode", "repeat", "shards", "version", "qos", "publishers",
    "subscribers", "rate", "window_secs", "published_msgs_s", "delivered_msgs_s",
    "sent_in_window_delivered_msgs_s", "p50_us",
    "p99_us", "broker_us_per_msg", "generator_us_per_msg", "expected", "distinct", "lost",
    "duplicates",
]


def fail(msg):
    sys.exit(f"bench_report.py: {msg}")


def row(args):
    path, out, system, workload, mode, repeat, shards = args
    with open(path) as f:
        report = json.load(f)
    p, r = report["params"], report["result"]
    if r["arrived"] == 0:
        fail(f"{path}: nothing arrived at the subscribers; the run is not a measurement")
    values = {
        "system": system, "workload": workload, "mode": mode, "repeat": repeat,
        "shards": shards, "version": p["version"], "qos": p["qos"],
        "publishers": p["publishers"], "subscribers": p["subscribers"], "rate": p["rate"],
        "window_secs": round(r["window_secs"], 3),
        "published_msgs_s": round(r["published_msgs_per_sec"]),
        # Deliveries arriving in the window: throughput even while a broker drains a queue.
        "delivered_msgs_s": round(r["arrived_msgs_per_sec"]),
        "sent_in_window_delivered_msgs_s": round(r["delivered_msgs_per_sec"]),
        # No latency without a delivery of a message sent in the window.
        "p50_us": r["latency"]["p50_us"] if r["latency"]["samples"] else "",
        "p99_us": r["latency"]["p99_us"] if r["latency"]["samples"] else "",
        "broker_us_per_msg": round(r["cpu"]["broker_us_per_delivery"] or 0.0, 3),
        "generator_us_per_msg": round(r["cpu"]["generator_us_per_delivery"], 3),
        "expected": r["delivery"]["expected"], "distinct": r["delivery"]["distinct"],
        "lost": r["delivery"]["lost"], "duplicates": r["delivery"]["duplicates"],
    }
    new = not os.path.exists(out) or os.path.getsize(out) == 0
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(values)
    print(f"  {system:<14} {workload:<12} {mode:<4} shards={shards} r{repeat}: "
          f"{values['delivered_msgs_s']:>9} delivered msg/s, "
          f"broker {values['broker_us_per_msg']:.2f} µs/msg, p99 {values['p99_us']} µs, "
          f"lost {values['lost']}")


def half_rate(args):
    """Per-publisher rate that makes the broker deliver half of what the max run did."""
    path, fan = args[0], float(args[1])
    with open(path) as f:
        report = json.load(f)
    delivered = report["result"]["arrived_msgs_per_sec"]
    publishers = report["params"]["publishers"]
    print(max(1, int(delivered / 2 / fan / publishers)))


def fio(args):
    with open(args[0]) as f:
        job = json.load(f)["jobs"][0]
    lat = job["sync"]["lat_ns"]
    p99 = lat.get("percentile", {}).get("99.000000")
    print(f"fio 4 KiB O_DIRECT write + fdatasync: {job['write']['iops']:.0f} syncs/s, "
          f"fdatasync mean {lat['mean'] / 1000:.0f} µs"
          + (f", p99 {p99 / 1000:.0f} µs" if p99 else ""))


def targets(args):
    """Checks the performance targets against the medians of one peer and one scaling run."""
    peers_dir, scaling_dir = args

    def medians(path, *keys):
        with open(path) as f:
            return {tuple(r[k] for k in keys): r for r in csv.DictReader(f)}

    peers_m = medians(os.path.join(peers_dir, "peers-medians.csv"), "workload", "system", "mode")
    scale_m = medians(os.path.join(scaling_dir, "scaling-medians.csv"), "workload", "shards")

    def val(table, key, col):
        row = table.get(key)
        return float(row[col]) if row and row[col] not in ("", "nan") else math.nan

    lines = ["| target | measured (medians) | met |", "|---|---|---|"]

    def check(text, value, ok, shown):
        met = "—" if math.isnan(value) else ("yes" if ok(value) else "**no**")
        lines.append(f"| {text} | {shown} | {met} |")

    # "shardmq" runs one shard per CPU; "shardmq-1" (when measured) one shard, the
    # per-core comparison with single-threaded mosquitto.
    ours_variants = [("shardmq", "")]
    if any(key[1] == "shardmq-1" for key in peers_m):
        ours_variants.append(("shardmq-1", ", 1 shard"))
    for w, name in [("p2p", "p2p 4 → 4"), ("fanout", "fan-out 1 → 100"), ("fanin", "fan-in 100 → 1")]:
        for system, note in ours_variants:
            ours = val(peers_m, (w, system, "max"), "delivered_msgs_s")
            our_cpu = val(peers_m, (w, system, "max"), "broker_us_per_msg")
            for peer, factor in [("mosquitto", 4.0), ("rumqttd", 2.0)]:
                r = ours / val(peers_m, (w, peer, "max"), "delivered_msgs_s")
                check(f"{name}{note}: delivered msg/s ≥ {factor:g}× {peer}", r,
                      lambda v, f=factor: v >= f, f"{r:.2f}×")
            c = our_cpu / val(peers_m, (w, "mosquitto", "max"), "broker_us_per_msg")
            check(f"{name}{note}: broker CPU/msg ≤ ¼ of mosquitto's", c, lambda v: v <= 0.25,
                  f"{c:.2f}×")
    q1 = val(peers_m, ("p2p-qos1", "shardmq", "max"), "delivered_msgs_s")
    q1m = val(peers_m, ("p2p-qos1", "mosquitto", "max"), "delivered_msgs_s")
    check("QoS 1 p2p, `fsync_policy = always`: ≥ mosquitto's QoS 1 rate", q1 / q1m,
          lambda v: v >= 1.0, f"{q1:,.0f} vs {q1m:,.0f} msg/s ({q1 / q1m:.2f}×)")
    for system, note in ours_variants:
        p99 = val(peers_m, ("p2p", system, "half"), "p99_us")
        check(f"QoS 0 p2p{note} p99 latency at half of the max rate ≤ 1 ms", p99,
              lambda v: v <= 1000, f"{p99:,.0f} µs")
    c1 = val(scale_m, ("p2p", "1"), "broker_us_per_msg")
    c2 = val(scale_m, ("p2p", "2"), "broker_us_per_msg")
    check("p2p broker CPU/msg at 2 shards ≤ 1.1× that at 1 shard", c2 / c1, lambda v: v <= 1.1,
          f"{c2:.2f} vs {c1:.2f} µs ({c2 / c1:.2f}×)")
    a = val(peers_m, ("durable-qos1", "shardmq", "max"), "delivered_msgs_s")
    n = val(peers_m, ("durable-qos1", "shardmq-none", "max"), "delivered_msgs_s")
    check("durable QoS 1, 64 publishers: `always` ≥ 50 % of `none`", a / n, lambda v: v >= 0.5,
          f"{a:,.0f} vs {n:,.0f} msg/s ({100 * a / n:.0f} %)")
    write_table(peers_dir, "targets.md", lines)


def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        fail(f"{path} has no rows")
    return rows


def med(rows, key):
    """Median, min and max of a column; blank cells (no value measured) are skipped."""
    values = [float(r[key]) for r in rows if r[key] != ""]
    if not values:
        return math.nan, math.nan, math.nan
    return statistics.median(values), min(values), max(values)


def fmt_rate(m):
    v, lo, hi = m
    return f"{v:,.0f} ({lo:,.0f}–{hi:,.0f})"


def fmt_us(m, digits=2):
    v, lo, hi = m
    return f"{v:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def group(rows, *keys):
    out = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def write_medians(path, groups, keys):
    fields = list(keys) + ["runs", "delivered_msgs_s", "delivered_min", "delivered_max",
                           "broker_us_per_msg", "p50_us", "p99_us", "generator_us_per_msg",
                           "lost"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for key, rs in sorted(groups.items(), key=lambda kv: sort_key(kv[0])):
            d = med(rs, "delivered_msgs_s")
            w.writerow(list(key) + [len(rs), round(d[0]), round(d[1]), round(d[2]),
                                    round(med(rs, "broker_us_per_msg")[0], 3),
                                    med(rs, "p50_us")[0], med(rs, "p99_us")[0],
                                    round(med(rs, "generator_us_per_msg")[0], 3),
                                    sum(int(r["lost"]) for r in rs)])


def lost_share(rows):
    """Messages lost as a share of those the subscriptions should have got."""
    expected = sum(int(r["expected"]) for r in rows)
    lost = sum(int(r["lost"]) for r in rows)
    return f"{100 * lost / expected:.1f} %" if expected else "—"


def write_table(outdir, name, lines):
    table = "\n".join(lines) + "\n"
    with open(os.path.join(outdir, name), "w") as f:
        f.write(table)
    print(table)


def sort_key(key):
    return tuple(int(k) if k.isdigit() else k for k in key)


# --- shard scaling ----------------------------------------------------------------------

def scaling(args):
    path, outdir = args
    rows = load(path)
    groups = group(rows, "workload", "shards")
    write_medians(os.path.join(outdir, "scaling-medians.csv"), groups, ["workload", "shards"])
    workloads = sorted({w for w, _ in groups}, key=str)
    lines = ["| workload | shards | delivered msg/s, median (min–max) | vs 1 shard | "
             "broker CPU µs/msg | vs 1 shard | p99 µs | generator µs/msg | lost | runs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    series = {}
    for w in workloads:
        shards = sorted({int(s) for ww, s in groups if ww == w})
        base = groups.get((w, str(shards[0])))
        base_rate = med(base, "delivered_msgs_s")[0]
        base_cpu = med(base, "broker_us_per_msg")[0]
        for s in shards:
            rs = groups[(w, str(s))]
            rate, cpu = med(rs, "delivered_msgs_s"), med(rs, "broker_us_per_msg")
            series.setdefault(w, []).append((s, rate[0], cpu[0]))
            lines.append(
                f"| {w} | {s} | {fmt_rate(rate)} | {rate[0] / base_rate:.2f}× | {fmt_us(cpu)} | "
                f"{cpu[0] / base_cpu if base_cpu else float('nan'):.2f}× | {med(rs, 'p99_us')[0]:,.0f} | "
                f"{med(rs, 'generator_us_per_msg')[0]:.2f} | {lost_share(rs)} | {len(rs)} |")
    write_table(outdir, "scaling.md", lines)
    with open(os.path.join(outdir, "scaling.svg"), "w") as f:
        f.write(scaling_svg(series))


COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def svg_open(width, height, title):
    """The opening lines of a chart: the element, a white ground and the title."""
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="12">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">{title}</text>']


def svg_panel(out, x0, y0, y1, panel_w, title, ticks):
    """A panel's title, axes and grid; `ticks` holds (y, label) pairs."""
    out.append(f'<text x="{x0 + panel_w / 2}" y="{y0 - 8}" text-anchor="middle">{title}</text>')
    out.append(f'<line x1="{x0}" y1="{y1}" x2="{x0 + panel_w}" y2="{y1}" stroke="black"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>')
    for y, text in ticks:
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + panel_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')


def scaling_svg(series):
    """Two panels side by side: delivered msg/s and broker CPU µs/msg against shards."""
    colors = COLORS
    width, height, pad = 900, 380, 60
    panel_w = (width - 3 * pad) / 2
    max_shards = max(s for pts in series.values() for s, _, _ in pts)
    panels = [("delivered msg/s", 1, lambda v: f"{v / 1000:,.0f}k"),
              ("broker CPU µs per delivered msg", 2, lambda v: f"{v:.1f}")]
    out = svg_open(width, height, "shardmq shard scaling (medians)")
    for p, (title, idx, label) in enumerate(panels):
        x0 = pad + p * (panel_w + pad)
        y0, y1 = 50, height - pad
        top = max(v[idx] for pts in series.values() for v in pts) * 1.15 or 1.0
        svg_panel(out, x0, y0, y1, panel_w, title,
                  [(y1 - (y1 - y0) * t / 4, label(top * t / 4)) for t in range(5)])

        def xpos(s):
            return x0 + panel_w * (s - 0.5) / max_shards

        for s in range(1, max_shards + 1):
            out.append(f'<text x="{xpos(s):.1f}" y="{y1 + 16}" text-anchor="middle">{s}</text>')
        out.append(f'<text x="{x0 + panel_w / 2}" y="{y1 + 34}" text-anchor="middle">shards</text>')
        for i, (w, pts) in enumerate(sorted(series.items())):
            c = colors[i % len(colors)]
            coords = [(xpos(pt[0]), y1 - (y1 - y0) * pt[idx] / top) for pt in pts]
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>')
            for (x, y), pt in zip(coords, pts):
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{c}"/>')
                out.append(f'<text x="{x + 6:.1f}" y="{y - 6:.1f}" fill="{c}">{label(pt[idx])}</text>')
            if p == 0:
                out.append(f'<text x="{x0 + 8}" y="{y0 + 16 + 16 * i}" fill="{c}">{w}</text>')
    out.append("</svg>\n")
    return "\n".join(out)


# --- peer comparison --------------------------------------------------------------------

def peers(args):
    path, outdir = args
    rows = load(path)
    groups = group(rows, "workload", "system", "mode")
    write_medians(os.path.join(outdir, "peers-medians.csv"), groups, ["workload", "system", "mode"])
    lines = ["| workload | broker | delivered msg/s at max, median (min–max) | published msg/s | "
             "shardmq ÷ broker | broker CPU µs/msg at max | broker ÷ shardmq | "
             "p99 µs at half rate | broker CPU µs/msg at half rate | generator µs/msg | "
             "lost | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    workloads = []
    for w, _, _ in groups:
        if w not in workloads:
            workloads.append(w)
    for w in workloads:
        systems = []
        for ww, s, _ in groups:
            if ww == w and s not in systems:
                systems.append(s)
        ours = groups.get((w, "shardmq", "max"))
        our_rate = med(ours, "delivered_msgs_s")[0] if ours else None
        our_cpu = med(ours, "broker_us_per_msg")[0] if ours else None
        for s in systems:
            rs = groups.get((w, s, "max"))
            if not rs:
                continue
            rate, cpu = med(rs, "delivered_msgs_s"), med(rs, "broker_us_per_msg")
            half = groups.get((w, s, "half"))
            p99 = f"{med(half, 'p99_us')[0]:,.0f}" if half else "—"
            p99 = "—" if p99 == "nan" else p99
            half_cpu = f"{med(half, 'broker_us_per_msg')[0]:.2f}" if half else "—"
            ratio_rate = f"{our_rate / rate[0]:.2f}×" if our_rate and s != "shardmq" else "—"
            ratio_cpu = f"{cpu[0] / our_cpu:.2f}×" if our_cpu and s != "shardmq" else "—"
            lines.append(
                f"| {w} | {s} | {fmt_rate(rate)} | {med(rs, 'published_msgs_s')[0]:,.0f} | "
                f"{ratio_rate} | {fmt_us(cpu)} | {ratio_cpu} | {p99} | {half_cpu} | "
                f"{med(rs, 'generator_us_per_msg')[0]:.2f} | {lost_share(rs)} | {len(rs)} |")
    write_table(outdir, "peers.md", lines)


# --- light load ----------------------------------------------------------------------

def light(args):
    path, outdir = args
    rows = load(path)
    groups = group(rows, "mode", "system")
    rates, systems = [], []
    for rate, system in groups:
        if rate not in rates:
            rates.append(rate)
        if system not in systems:
            systems.append(system)
    rates.sort(key=lambda r: math.inf if r == "max" else int(r))
    lines = ["| offered msg/s | broker | delivered msg/s | broker CPU µs per delivery, median "
             "(min–max) | ÷ mosquitto | p50 µs | p99 µs | runs |",
             "|---|---|---|---|---|---|---|---|"]
    series = {s: [] for s in systems}
    for rate in rates:
        peer = groups.get((rate, "mosquitto"))
        peer_cpu = med(peer, "broker_us_per_msg")[0] if peer else None
        for system in systems:
            rs = groups.get((rate, system))
            if not rs:
                continue
            cpu = med(rs, "broker_us_per_msg")
            p50, p99 = med(rs, "p50_us")[0], med(rs, "p99_us")[0]
            ratio = f"{cpu[0] / peer_cpu:.2f}" if peer_cpu else "—"
            label = "max" if rate == "max" else f"{int(rate):,}"
            lines.append(f"| {label} | {system} | {fmt_rate(med(rs, 'delivered_msgs_s'))} | "
                         f"{fmt_us(cpu)} | {ratio} | {p50:,.0f} | {p99:,.0f} | {len(rs)} |")
            series[system].append((rates.index(rate), cpu[0], p99))
    write_table(outdir, "light.md", lines)
    labels = ["max" if r == "max" else f"{int(r) // 1000}k" for r in rates]
    with open(os.path.join(outdir, "light-load.svg"), "w") as f:
        f.write(light_svg(series, labels))


def light_svg(series, labels):
    """Two panels: broker CPU µs per delivery and p99 latency against the offered rate."""
    colors = COLORS
    width, height, pad = 900, 400, 60
    panel_w = (width - 3 * pad) / 2
    panels = [("broker CPU µs per delivery", 1, lambda v: f"{v:.1f}"),
              ("p99 latency, µs (log scale)", 2, lambda v: f"{v:,.0f}")]
    out = svg_open(width, height, "p2p at fixed offered rates (medians)")
    for p, (title, idx, label) in enumerate(panels):
        x0 = pad + p * (panel_w + pad)
        y0, y1 = 50, height - pad
        values = [pt[idx] for pts in series.values() for pt in pts if pt[idx] == pt[idx]]
        top = max(values) * 1.15 if values else 1.0
        log = idx == 2
        low = max(min(values) / 1.5, 1.0) if values else 1.0

        def ypos(v):
            if log:
                v = max(v, low)
                return y1 - (y1 - y0) * math.log(v / low) / math.log(top / low)
            return y1 - (y1 - y0) * v / top

        tick_values = [low * (top / low) ** (t / 4) if log else top * t / 4 for t in range(5)]
        svg_panel(out, x0, y0, y1, panel_w, title, [(ypos(v), label(v)) for v in tick_values])

        def xpos(i):
            return x0 + panel_w * (i + 0.5) / len(labels)

        for i, name in enumerate(labels):
            out.append(f'<text x="{xpos(i):.1f}" y="{y1 + 16}" text-anchor="middle">{name}</text>')
        out.append(f'<text x="{x0 + panel_w / 2}" y="{y1 + 34}" text-anchor="middle">'
                   f'offered msg/s</text>')
        for i, (name, pts) in enumerate(sorted(series.items())):
            c = colors[i % len(colors)]
            coords = [(xpos(pt[0]), ypos(pt[idx])) for pt in pts if pt[idx] == pt[idx]]
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>')
            for x, y in coords:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"/>')
            if p == 0:
                out.append(f'<text x="{x0 + panel_w - 8}" y="{y0 + 16 + 16 * i}" '
                           f'text-anchor="end" fill="{c}">{name}</text>')
    out.append("</svg>\n")
    return "\n".join(out)


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    commands = {"row": (row, 7), "half-rate": (half_rate, 2), "scaling": (scaling, 2),
                "peers": (peers, 2), "fio": (fio, 1), "targets": (targets, 2),
                "light": (light, 2)}
    if cmd not in commands or len(args) != commands[cmd][1]:
        fail(__doc__)
    commands[cmd][0](args)


if __name__ == "__main__":
    main()
