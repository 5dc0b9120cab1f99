#!/usr/bin/env python3
"""Small stdlib-only helper for the shell benchmarks in this directory.

Subcommands
  report TSV ...          per-round table + summary (median, min-max, ratio)
  fio JSON                fsync rate from `fio --output-format=json`
  tree-cpu PID            CPU seconds of PID, its reaped children and live descendants
  tree-hwm PID            sum of VmHWM (kB) over PID and its live descendants
  memwatch PID SECS OUT   sample summed PSS of PID's process tree; write the peak (kB) to OUT
  startup BIN DATA PORT   exec BIN serve, time until /health/ready answers 200, read VmRSS, stop it
  json-get KEY            print one top-level field of the JSON object on stdin

The report TSV has a header line and these columns (tab separated):
  round  side  value  ops  cpu_s  hwm_kb  pss_peak_kb  note
round 0 is the warm-up and is left out of the statistics; side is "outpost"
or "peer"; value is the throughput of that round (higher is better); ops is
the number of successful operations in the round (used for CPU per op).
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc ----

def _stat_fields(pid):
    """Fields of /proc/PID/stat after the `(comm)` field; index 0 is state."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode("ascii", "replace")
    return data[data.rindex(")") + 2:].split()


def _children_map():
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(name)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    return children


def tree_pids(root):
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_s(root):
    """utime+stime+cutime+cstime of root plus utime+stime of live descendants.

    cutime/cstime of root hold the CPU of children it has already reaped
    (PostgreSQL backends that exited), so a before/after delta covers them.
    """
    total = 0
    for i, pid in enumerate(tree_pids(root)):
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        # after the comm field: utime=11 stime=12 cutime=13 cstime=14
        total += int(f[11]) + int(f[12])
        if i == 0:
            total += int(f[13]) + int(f[14])
    return total / CLK_TCK


def _status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:
        return _status_kb(pid, "VmRSS")
    except OSError:
        return 0


def tree_pss_kb(root):
    return sum(_pss_kb(pid) for pid in tree_pids(root))


# ------------------------------------------------------------- commands ----

def cmd_tree_cpu(a):
    print(f"{tree_cpu_s(a.pid):.2f}")


def cmd_tree_hwm(a):
    total = 0
    for pid in tree_pids(a.pid):
        try:
            total += _status_kb(pid, "VmHWM")
        except OSError:
            pass
    print(total)


def cmd_memwatch(a):
    """Bounded sampler: stops after SECS, when PID is gone, or on SIGTERM."""
    peak = 0
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    deadline = time.monotonic() + a.seconds
    while not stop and time.monotonic() < deadline and os.path.exists(f"/proc/{a.pid}"):
        peak = max(peak, tree_pss_kb(a.pid))
        with open(a.out + ".tmp", "w") as f:
            f.write(f"{peak}\n")
        os.replace(a.out + ".tmp", a.out)
        time.sleep(a.interval)


def cmd_fio(a):
    with open(a.file) as f:
        text = f.read()
    # fio may print notes before the JSON document
    d = json.loads(text[text.index("{"):])
    j = d["jobs"][0]
    w = j["write"]
    lat = j.get("sync", {}).get("lat_ns", {})
    pct = lat.get("percentile", {})
    p50 = pct.get("50.000000", lat.get("mean", 0)) / 1000.0
    p99 = pct.get("99.000000", 0) / 1000.0
    print(f"fsync_per_s={w['iops']:.0f}")
    print(f"writes={w['total_ios']} fsyncs={j.get('sync', {}).get('total_ios', 0)} "
          f"runtime_ms={j.get('job_runtime', 0)} "
          f"fsync_lat_us_p50={p50:.0f} fsync_lat_us_p99={p99:.0f}")


def cmd_json_get(a):
    d = json.load(sys.stdin)
    v = d[a.key]
    print(v if isinstance(v, str) else json.dumps(v))


def cmd_startup(a):
    env = dict(os.environ)
    env.setdefault("OUTPOST_LOG__LEVEL", "warn")
    log = open(a.log, "ab") if a.log else subprocess.DEVNULL
    argv = [a.bin, "serve", "--data", a.data, "--listen", f"127.0.0.1:{a.port}"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    ready_ms = None
    try:
        deadline = t0 + a.timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                sys.exit(f"startup: outpost exited with status {proc.returncode} before ready")
            try:
                c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=1)
                c.request("GET", "/health/ready")
                status = c.getresponse().status
                c.close()
                if status == 200:
                    ready_ms = (time.monotonic() - t0) * 1000.0
                    break
            except OSError:
                pass
            time.sleep(0.002)
        if ready_ms is None:
            sys.exit(f"startup: not ready within {a.timeout}s")
        time.sleep(a.settle)
        rss = _status_kb(proc.pid, "VmRSS")
        print(f"{ready_ms:.1f} {rss}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _fmt(v):
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _mib(kb):
    return f"{kb / 1024:.1f}" if kb else "-"


def cmd_report(a):
    rows = []
    with open(a.tsv) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            if line.strip():
                rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))
    by = {}
    for i, r in enumerate(rows):
        r["_pos"] = i
        rnd = int(r["round"])
        if rnd == 0:
            continue
        by.setdefault(rnd, {})[r["side"]] = r
    sides = [s for s in ("outpost", "peer") if any(s in v for v in by.values())]
    if not sides:
        sys.exit("report: no measured rounds")
    rounds = sorted(k for k, v in by.items() if all(s in v for s in sides))
    both = len(sides) == 2
    names = {"outpost": a.outpost_name, "peer": a.peer_name}
    w = max(len(names["outpost"]), len(names["peer"]), 10) + 2

    print()
    print(f"== {a.title} ==")
    print(f"unit: {a.unit} (higher is better); warm-up round excluded")
    if not both:
        print(f"only side measured: {names[sides[0]]}")
    print()
    head = f"{'round':<6}" + "".join(f"{names[s]:>{w}}" for s in sides)
    if both:
        head += f"{'ratio':>9}   {'first':<{w}}"
    head += "  cpu_s " + "/".join(names[s] for s in sides)
    print(head)
    values = {s: [] for s in sides}
    ratios = []
    for rnd in rounds:
        line = f"{rnd:<6}"
        for s in sides:
            v = float(by[rnd][s]["value"])
            values[s].append(v)
            line += f"{_fmt(v):>{w}}"
        if both:
            o, p = by[rnd]["outpost"], by[rnd]["peer"]
            ratio = float(o["value"]) / float(p["value"]) if float(p["value"]) else float("nan")
            ratios.append(ratio)
            first = names["outpost"] if o["_pos"] < p["_pos"] else names["peer"]
            line += f"{ratio:>9.3f}   {first:<{w}}"
        line += "  " + " / ".join(f"{float(by[rnd][s]['cpu_s']):.2f}" for s in sides)
        print(line)

    def side_summary(side):
        vals = values[side]
        cpu = [float(by[r][side]["cpu_s"]) for r in rounds]
        ops = [float(by[r][side]["ops"] or 0) for r in rounds]
        us_per_op = [c / n * 1e6 for c, n in zip(cpu, ops) if n > 0]
        hwm = max(int(float(by[r][side]["hwm_kb"] or 0)) for r in rounds)
        pss = max(int(float(by[r][side]["pss_peak_kb"] or 0)) for r in rounds)
        notes = sorted({by[r][side].get("note", "") for r in rounds} - {""})
        print(f"  {names[side]:<{w}} median {_fmt(statistics.median(vals)):>10}  "
              f"min-max {_fmt(min(vals))}-{_fmt(max(vals))}  "
              f"cpu {statistics.median(cpu):.2f} s/round "
              f"({statistics.median(us_per_op) if us_per_op else 0:.0f} us/op)  "
              f"VmHWM {_mib(hwm)} MiB  tree-PSS peak {_mib(pss)} MiB")
        for n in notes:
            print(f"  {'':<{w}} note: {n}")
        return statistics.median(vals), min(vals), max(vals)

    print()
    print("summary:")
    stats = {s: side_summary(s) for s in sides}
    if both:
        rmed = statistics.median(ratios)
        print(f"  {'ratio':<{w}} median {rmed:>10.3f}  min-max {min(ratios):.3f}-{max(ratios):.3f}"
              f"  ({names['outpost']}/{names['peer']}, per round)")
    print()

    def cell(s):
        if s not in stats:
            return "-"
        m, lo, hi = stats[s]
        return f"{_fmt(m)} ({_fmt(lo)}–{_fmt(hi)})"

    ratio_cell = f"{rmed:.3g} ({min(ratios):.3g}–{max(ratios):.3g})" if both else "-"
    print("results-table row:")
    print(f"| {time.strftime('%Y-%m-%d')} | {a.machine or '-'} | {a.scenario or a.title} "
          f"| {cell('outpost')} | {cell('peer')} | {ratio_cell} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("report")
    p.add_argument("tsv")
    p.add_argument("--title", required=True)
    p.add_argument("--unit", default="ops/s")
    p.add_argument("--scenario", default="")
    p.add_argument("--machine", default="")
    p.add_argument("--outpost-name", default="outpost")
    p.add_argument("--peer-name", default="peer")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("fio")
    p.add_argument("file")
    p.set_defaults(fn=cmd_fio)

    p = sub.add_parser("tree-cpu")
    p.add_argument("pid", type=int)
    p.set_defaults(fn=cmd_tree_cpu)

    p = sub.add_parser("tree-hwm")
    p.add_argument("pid", type=int)
    p.set_defaults(fn=cmd_tree_hwm)

    p = sub.add_parser("memwatch")
    p.add_argument("pid", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("out")
    p.add_argument("--interval", type=float, default=0.25)
    p.set_defaults(fn=cmd_memwatch)

    p = sub.add_parser("startup")
    p.add_argument("bin")
    p.add_argument("data")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=0.5,
                   help="seconds to wait after ready before reading VmRSS")
    p.add_argument("--log", default="")
    p.set_defaults(fn=cmd_startup)

    p = sub.add_parser("json-get")
    p.add_argument("key")
    p.set_defaults(fn=cmd_json_get)

    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
