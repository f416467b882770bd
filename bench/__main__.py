"""``python -m bench`` / ``catzilla-mp bench``: catzilla_mp side by side with its peers.

Runs every workload of ``bench.workloads`` on catzilla_mp and on each installed peer of
``bench.peers``, repetitions interleaved (A B A B ...), each workload under a timeout, and
writes bench/results/<date>-<host>.{json,md,png}. ``--quick`` takes under 2 minutes, the
full run under 15.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import os
import platform
import shlex
import socket
import sys
import time
from pathlib import Path

from bench import peers as peers_mod
from bench import report, runner
from bench import workloads as wl

RESULTS = Path(__file__).resolve().parent / "results"

#: (params, repetitions, time budget for the repetitions in seconds). The budget stops
#: further repetitions when one more would not fit, so a slow machine still finishes in time.
MODES = {
    "quick": (dataclasses.replace(wl.QUICK, noop_tasks=2_000, round_trips=300, payloads=4,
                                  mixed_seconds=0.8, idle_seconds=1.0, timeout=20.0), 3, 100.0),
    # 10,000 no-ops (not FULL's 20,000, which bench.engine keeps): the slowest peers move
    # ~3,000/s here, and five repetitions of six peers must fit in 15 minutes.
    "full": (dataclasses.replace(wl.FULL, noop_tasks=10_000, round_trips=2_000,
                                 mixed_seconds=3.0, idle_seconds=3.0), 5, 690.0),
}


def machine() -> str:
    """CPU model and core count, e.g. 'AMD EPYC 7B13, 2 cores, Linux 6.1, Python 3.11.7'."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, 3 repetitions (< 2 min)")
    ap.add_argument("--peers", help="comma-separated subset of: " + ",".join(peers_mod.BY_NAME))
    ap.add_argument("--workloads", help="comma-separated subset of: " + ",".join(wl.BY_NAME))
    ap.add_argument("--reps", type=int, help="repetitions (default 3 quick, 5 full)")
    ap.add_argument("--timeout", type=float, help="seconds allowed per workload")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the results files")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG (no matplotlib)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    mode = "quick" if args.quick else "full"
    params, reps, budget = MODES[mode]
    if args.timeout:
        params = dataclasses.replace(params, timeout=args.timeout)
    reps = args.reps or reps
    names = args.workloads.split(",") if args.workloads else [w.name for w in wl.ALL]
    unknown = [n for n in names if n not in wl.BY_NAME]
    if unknown:
        print(f"unknown workload(s) {unknown}; choose from {list(wl.BY_NAME)}", file=sys.stderr)
        return 2
    order = list(wl.BY_NAME)
    names.sort(key=order.index)  # start-up first, shutdown last, whatever order was asked
    try:
        chosen = peers_mod.select(args.peers.split(",") if args.peers else None)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2

    skipped = {}
    runnable = []
    for peer in chosen:
        why = peer.missing()
        if why:
            skipped[peer.name] = why
            print(f"skipping {peer.label}: {why}")
        else:
            runnable.append(peer)
    if not runnable:
        print("no peer can run here; install the bench extra: pip install -e '.[bench]'",
              file=sys.stderr)
        return 1

    started = time.monotonic()
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"{mode} run: {len(runnable)} peers x {len(names)} workloads x {reps} repetitions")
    foreign = runner.ForeignLoad()
    results = runner.run_suite(runnable, names, params, reps, budget_s=budget)
    summary = runner.summarize(results)
    meta = {
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": socket.gethostname().split(".")[0],
        "machine": machine(),
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "mode": mode,
        "reps": max((len(v) for p in results.values() for w in p.values()
                     for v in w["samples"].values()), default=0),
        "workers": 2,
        "params": dataclasses.asdict(params),
        "peers": {p.name: {"label": p.label, "version": p.version(), "note": p.note,
                           "priorities": p.priorities} for p in runnable},
        "skipped": skipped,
        "elapsed_s": None,
        # Other work on the machine skews everything; say how much there was.
        "other_cpu_percent": round(foreign.percent(), 1),
    }
    with_chart = not args.no_chart
    if with_chart and importlib.util.find_spec("matplotlib") is None:
        print("matplotlib not installed: no chart")
        with_chart = False
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    paths = report.write(summary, meta, names, args.out, with_chart=with_chart)
    print()
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
