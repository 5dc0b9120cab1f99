"""Summary and plots of a soak run (benches/soak.sh): soak_report.py SAMPLES.csv OUT.svg WARMUP_S"""
import csv
import sys


def slope(xs, ys):
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def panel(rows, x0, y0, w, h, title, series):
    """One chart: series is [(label, key, scale, colour)] over t_s."""
    t = [r["t_s"] / 60 for r in rows]
    tmax = max(t) or 1
    vals = [r[k] * s for _, k, s, _ in series for r in rows]
    vmax = max(vals + [1e-9]) * 1.1
    out = [
        f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
        f'<text x="{x0}" y="{y0 - 6}" font-size="13" font-weight="bold">{title}</text>',
        f'<text x="{x0 - 4}" y="{y0 + 10}" font-size="10" text-anchor="end">{vmax:.3g}</text>',
        f'<text x="{x0 - 4}" y="{y0 + h}" font-size="10" text-anchor="end">0</text>',
        f'<text x="{x0 + w}" y="{y0 + h + 14}" font-size="10" text-anchor="end">{tmax:.0f} min</text>',
    ]
    for i, (label, key, scale, colour) in enumerate(series):
        pts = " ".join(
            f"{x0 + w * ti / tmax:.1f},{y0 + h - h * r[key] * scale / vmax:.1f}" for ti, r in zip(t, rows)
        )
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
        out.append(f'<text x="{x0 + 8 + 150 * i}" y="{y0 + 16}" font-size="11" fill="{colour}">{label}</text>')
    return out


def main():
    samples, svg_path, warmup = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with open(samples) as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        sys.exit("no samples")
    for r in rows:
        r["written"] = r["messages"] + r["tasks_created"] + r["tasks_done"] + r["tasks_deleted"] + r["doc_updates"]
    last = rows[-1]
    after = [r for r in rows if r["t_s"] >= warmup] or rows
    first = after[0]
    rss_slope = slope([r["t_s"] / 3600 for r in after], [r["rss_kib"] / 1024 for r in after])
    store_slope = slope([r["payload_bytes"] for r in after], [r["store_bytes"] for r in after])
    minutes = last["t_s"] / 60
    print(f"run: {minutes:.1f} min, {len(rows)} samples; warm-up {warmup / 60:.0f} min")
    print(
        f"done: {last['messages']:.0f} messages, {last['tasks_created']:.0f} tasks created, "
        f"{last['tasks_done']:.0f} done, {last['tasks_deleted']:.0f} deleted, {last['doc_updates']:.0f} document updates, "
        f"{last['presence']:.0f} presence moves, {last['reads']:.0f} list reads, {last['refreshes']:.0f} token refreshes, "
        f"{last['reconnects']:.0f} reconnects, {last['events']:.0f} realtime events received"
    )
    half = [r for r in rows if r["t_s"] >= last["t_s"] / 2]
    half_slope = slope([r["t_s"] / 3600 for r in half], [r["rss_kib"] / 1024 for r in half])
    print(
        f"rss: {first['rss_kib'] / 1024:.1f} MiB after warm-up, {last['rss_kib'] / 1024:.1f} MiB at the end, "
        f"max {max(r['rss_kib'] for r in rows) / 1024:.1f} MiB; slope after warm-up {rss_slope:+.2f} MiB/h, "
        f"over the second half {half_slope:+.2f} MiB/h"
    )
    print(
        f"descriptors: {min(r['fds'] for r in after):.0f}..{max(r['fds'] for r in after):.0f} after warm-up "
        f"(end {last['fds']:.0f}); sockets {min(r['sockets'] for r in after):.0f}..{max(r['sockets'] for r in after):.0f} "
        f"(end {last['sockets']:.0f})"
    )
    print(
        f"store: {last['store_bytes'] / 2**20:.1f} MiB for {last['payload_bytes'] / 2**20:.2f} MiB of payload "
        f"({last['written']:.0f} writes); after warm-up it grew {store_slope:.1f} bytes per payload byte "
        f"({(last['store_bytes'] - first['store_bytes']) / max(1, last['written'] - first['written']):.0f} bytes per write)"
    )
    print(f"follower lag: max {max(r['follower_lag_max'] for r in rows):.0f} events (end {last['follower_lag_max']:.0f})")
    print(f"errors: {last['errors']:.0f}")

    w, h, gap = 520, 170, 60
    parts = []
    charts = [
        ("Server RSS (MiB)", [("rss", "rss_kib", 1 / 1024, "#2563eb")]),
        ("Open descriptors", [("all", "fds", 1, "#16a34a"), ("sockets", "sockets", 1, "#9333ea")]),
        ("Data directory (MiB)", [("store", "store_bytes", 2**-20, "#dc2626"), ("payload x10", "payload_bytes", 10 * 2**-20, "#f59e0b")]),
        ("Largest follower lag (events)", [("lag", "follower_lag_max", 1, "#0891b2")]),
        ("Writes (cumulative)", [("writes", "written", 1, "#475569"), ("errors x1000", "errors", 1000, "#dc2626")]),
        ("Realtime events received (cumulative)", [("events", "events", 1, "#7c3aed")]),
    ]
    for i, (title, series) in enumerate(charts):
        x0 = 60 + (i % 2) * (w + 90)
        y0 = 40 + (i // 2) * (h + gap)
        parts += panel(rows, x0, y0, w, h, title, series)
    width, height = 60 + 2 * (w + 90), 40 + 3 * (h + gap)
    with open(svg_path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">\n')
        f.write(f'<rect width="{width}" height="{height}" fill="white"/>\n')
        f.write("\n".join(parts))
        f.write("\n</svg>\n")


if __name__ == "__main__":
    main()
